"""One place that maps a saved configuration to its networks: the official-compatible pair
(unet.py, seg.py) or the edge pair (edge.py), told apart by the config's `arch` key."""

from __future__ import annotations

from typing import Any

from torch import nn

from .edge import ARCH as EDGE
from .edge import EdgeSeg, EdgeSegConfig, EdgeUNet, EdgeUNetConfig, fold_batchnorms
from .errors import ExporterError
from .seg import SegConfig, SegmentationSubNetwork
from .unet import UNetConfig, UNetModel

OFFICIAL = "official"
ARCHS = (OFFICIAL, EDGE)

UNetCfg = UNetConfig | EdgeUNetConfig
SegCfg = SegConfig | EdgeSegConfig


def arch_of(cfg: Any) -> str:
    return getattr(cfg, "arch", OFFICIAL)


def _config_from_dict(d: dict[str, Any], what: str, edge_cls: type, official_cls: type) -> Any:
    arch = d.get("arch", OFFICIAL)
    try:
        if arch == EDGE:
            return edge_cls.from_dict(d)
        if arch == OFFICIAL:
            return official_cls.from_dict({k: v for k, v in d.items() if k != "arch"})
    except (TypeError, ValueError) as e:
        raise ExporterError(f"{what} configuration ({arch}) is not valid: {e}") from None
    raise ExporterError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")


def unet_config_from_dict(d: dict[str, Any]) -> UNetCfg:
    return _config_from_dict(d, "UNet", EdgeUNetConfig, UNetConfig)


def seg_config_from_dict(d: dict[str, Any]) -> SegCfg:
    return _config_from_dict(d, "seg", EdgeSegConfig, SegConfig)


def build_unet(cfg: UNetCfg) -> nn.Module:
    return EdgeUNet(cfg) if isinstance(cfg, EdgeUNetConfig) else UNetModel(cfg)


def build_seg(cfg: SegCfg) -> nn.Module:
    return EdgeSeg(cfg) if isinstance(cfg, EdgeSegConfig) else SegmentationSubNetwork(cfg)


def default_seg_config(unet: UNetCfg, width: int) -> SegCfg:
    """The seg head that goes with a UNet: official seg on 2C channels, or the edge head whose
    widths start at `width` (16, 32, 64, 64 for width 16)."""
    if isinstance(unet, EdgeUNetConfig):
        return EdgeSegConfig(in_channels=unet.in_channels,
                             widths=(width, 2 * width, 4 * width, 4 * width), stem=unet.stem)
    return SegConfig(2 * unet.in_channels, width)


def prepare_for_export(unet: nn.Module, seg: nn.Module) -> int:
    """Eval mode, every BatchNorm folded into its convolution; returns how many were folded."""
    unet.eval()
    seg.eval()
    return fold_batchnorms(unet) + fold_batchnorms(seg)
