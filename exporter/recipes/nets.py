"""The recipes' networks: the edge eps-UNet (AdvRAD, AnoDDPM) and the DTE time classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..edge import EdgeUNet, EdgeUNetConfig


@dataclass
class DTEConfig:
    """Patch-wise diffusion-time classifier: logits over `bins` equal bins of t in [0, t_max)
    at every cell of a 1/16-resolution grid."""

    image_size: int = 128
    in_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 128)
    bins: int = 50
    t_max: int = 200

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.t_max % self.bins:
            raise ValueError(f"DTE: t_max {self.t_max} must be a multiple of bins {self.bins}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(d["widths"])
        return d

    @property
    def stride(self) -> int:
        return 2 ** len(self.widths)


class DTENet(nn.Module):
    """image [B,C,H,W] -> time logits [B, bins, H/16, W/16]; each stage halves the size."""

    def __init__(self, cfg: DTEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        cin = cfg.in_channels
        for w in cfg.widths:
            layers += [nn.Conv2d(cin, w, 3, 2, 1), nn.ReLU(), nn.Conv2d(w, w, 3, 1, 1), nn.ReLU()]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, cfg.bins, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def expected_time(self, x: torch.Tensor) -> torch.Tensor:
        """E[t] / t_max per cell, [B, 1, h, w] in [0, 1]: the mean of the predicted
        distribution over bin centres."""
        c = self.cfg
        centres = (torch.arange(c.bins, dtype=torch.float32) + 0.5) / c.bins
        p = F.softmax(self.forward(x), dim=1)
        return (p * centres.view(1, -1, 1, 1)).sum(1, keepdim=True)


def build_eps(cfg: EdgeUNetConfig) -> EdgeUNet:
    return EdgeUNet(cfg)


def build_dte(cfg: DTEConfig) -> DTENet:
    return DTENet(cfg)
