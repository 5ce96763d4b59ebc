"""Segmentation sub-network: 6-block conv-BN-ReLU encoder, bilinear decoder with skips.

Names follow the official `SegmentationSubNetwork` (encoder_segment.block1..6,
decoder_segment.up_b/db_b/up1..4/db1..4/fin_out); the implementation is our own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class SegConfig:
    in_channels: int = 2
    base_width: int = 8
    out_channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SegConfig:
        return cls(**d)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _up_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class EncoderSegmentation(nn.Module):
    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        prev = cin
        for i, cw in enumerate(widths, start=1):
            setattr(self, f"block{i}", _double_conv(prev, cw))
            if i < 6:
                setattr(self, f"mp{i}", nn.Sequential(nn.MaxPool2d(2)))
            prev = cw

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = x
        for i in range(1, 7):
            if i > 1:
                h = getattr(self, f"mp{i - 1}")(h)
            h = getattr(self, f"block{i}")(h)
            feats.append(h)
        return feats


class DecoderSegmentation(nn.Module):
    def __init__(self, w: int, cout: int) -> None:
        super().__init__()
        self.up_b = _up_conv(8 * w, 8 * w)
        self.db_b = _double_conv(16 * w, 8 * w)
        self.up1 = _up_conv(8 * w, 4 * w)
        self.db1 = _double_conv(12 * w, 4 * w)
        self.up2 = _up_conv(4 * w, 2 * w)
        self.db2 = _double_conv(6 * w, 2 * w)
        self.up3 = _up_conv(2 * w, w)
        self.db3 = _double_conv(3 * w, w)
        self.up4 = _up_conv(w, w)
        self.db4 = _double_conv(2 * w, w)
        self.fin_out = nn.Sequential(nn.Conv2d(w, cout, 3, padding=1), nn.Sigmoid())

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        b1, b2, b3, b4, b5, b6 = feats
        h = self.db_b(torch.cat([self.up_b(b6), b5], 1))
        h = self.db1(torch.cat([self.up1(h), b4], 1))
        h = self.db2(torch.cat([self.up2(h), b3], 1))
        h = self.db3(torch.cat([self.up3(h), b2], 1))
        h = self.db4(torch.cat([self.up4(h), b1], 1))
        return self.fin_out(h)


class SegmentationSubNetwork(nn.Module):
    def __init__(self, cfg: SegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_segment = EncoderSegmentation(cfg.in_channels, cfg.base_width)
        self.decoder_segment = DecoderSegmentation(cfg.base_width, cfg.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder_segment(self.encoder_segment(x))
