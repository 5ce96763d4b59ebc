"""Checkpoints: our own training checkpoints and those of the official DiffusionAD code.

Both use the official dict layout: `unet_model_state_dict`, `seg_model_state_dict`,
`n_epoch`, `args`. Ours add `exporter` (configs, step, optimiser states).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import build_seg, build_unet, seg_config_from_dict, unet_config_from_dict
from .errors import ExporterError
from .seg import SegConfig
from .unet import UNetConfig

OFFICIAL_DEFAULT_MULTS = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 3, 4),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_checkpoint_file(path: Path) -> Path:
    """A .pt file, or a directory holding params-best.pt / params-last.pt / one *.pt."""
    if not path.exists():
        raise ExporterError(f"checkpoint not found: {path}")
    if path.is_file():
        return path
    for name in ("params-best.pt", "params-last.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    pts = sorted(path.glob("*.pt"))
    if len(pts) == 1:
        return pts[0]
    raise ExporterError(
        f"no checkpoint in {path} (expected params-best.pt, params-last.pt or a single *.pt)"
    )


def load_checkpoint_dict(path: Path) -> dict[str, Any]:
    try:
        # weights_only=False: official checkpoints pickle a defaultdict of args.
        # Only load checkpoints you trust.
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ExporterError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ck, dict) or "unet_model_state_dict" not in ck:
        raise ExporterError(f"{path}: not a DiffusionAD checkpoint (no unet_model_state_dict)")
    return ck


def configs_from_official_args(args: dict[str, Any]) -> tuple[UNetConfig, SegConfig]:
    size = args.get("img_size", [256, 256])
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    mults = args.get("channel_mults", "") or OFFICIAL_DEFAULT_MULTS.get(size)
    if mults is None:
        raise ExporterError(f"official args: no default channel_mults for img_size {size}")
    if isinstance(mults, str):
        mults = tuple(float(m) if "." in m else int(m) for m in mults.split(","))
    att = args.get("attention_resolutions", "32,16,8")
    if isinstance(att, str):
        att = tuple(int(a) for a in att.split(",") if a)
    ch = int(args.get("channels", 3))
    unet = UNetConfig(
        image_size=size, in_channels=ch, base_channels=int(args.get("base_channels", 128)),
        channel_mults=tuple(mults), num_res_blocks=int(args.get("num_res_blocks", 2)),
        attention_resolutions=tuple(att), n_heads=int(args.get("num_heads", 4)),
        n_head_channels=int(args.get("num_head_channels", -1)), norm_groups=32,
        dropout=0.0,
    )
    seg = SegConfig(in_channels=2 * ch, base_width=int(args.get("seg_base_channels", 64)))
    return unet, seg


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True), but failing with one readable list of mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shape:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shape)):
            if keys:
                parts.append(f"{title} ({len(keys)}): " + ", ".join(keys[:20])
                             + (" ..." if len(keys) > 20 else ""))
        raise ExporterError(
            f"{what}: state dict does not match the model configuration; " + "; ".join(parts)
        )
    filtered = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(filtered, strict=True)


def infer_seg_width(state: dict[str, torch.Tensor]) -> int | None:
    w = state.get("encoder_segment.block1.0.weight")
    return int(w.shape[0]) if w is not None else None


def build_from_checkpoint(
    path: Path, official: bool, overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Returns (unet, seg, info); info has checkpoint_sha256, training, and step."""
    f = find_checkpoint_file(path)
    ck = load_checkpoint_dict(f)
    if "seg_model_state_dict" not in ck:
        raise ExporterError(f"{f}: no seg_model_state_dict")
    if official or "exporter" not in ck:
        args = dict(ck.get("args") or {})
        args.update(overrides or {})
        ucfg, scfg = configs_from_official_args(args)
        sw = infer_seg_width(ck["seg_model_state_dict"])
        if sw is not None and "seg_base_channels" not in (overrides or {}):
            scfg.base_width = sw
        training = {"data": str(args.get("mvtec_root_path", "")), "command": "official",
                    "seed": 0}
    else:
        meta = ck["exporter"]
        ucfg = unet_config_from_dict(meta["unet"])
        scfg = seg_config_from_dict(meta["seg"])
        training = dict(meta.get("training", {}))
        training["steps"] = int(meta.get("step", 0))
    unet, seg = build_unet(ucfg), build_seg(scfg)
    load_strict(unet, ck["unet_model_state_dict"], "UNet")
    load_strict(seg, ck["seg_model_state_dict"], "seg")
    info = {"checkpoint_sha256": sha256_file(f), "training": training, "path": str(f)}
    return unet, seg, info
