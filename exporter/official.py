"""Checkpoints: our own training checkpoints and those of the official DiffusionAD code.

Both use the official dict layout: `unet_model_state_dict`, `seg_model_state_dict`,
`n_epoch`, `args`. Ours add `exporter` (configs, step, optimiser states). For an official one,
the settings come from its args as the official eval reads them (official_args.py), checked
against its tensor shapes (official_layout.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import build_seg, build_unet, seg_config_from_dict, unet_config_from_dict
from .errors import ExporterError
from .official_args import OfficialFlags, OfficialSettings, resolve_official
from .official_layout import check_heads, diagnose_unet, read_unet_layout, seg_config_for
from .seg import SegConfig
from .unet import UNetConfig


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


def _build(build: Any, cfg: Any, what: str) -> nn.Module:
    try:
        return build(cfg)
    except (ValueError, TypeError) as e:  # e.g. heads that cannot split a block
        raise ExporterError(f"{what}: cannot build the network from its configuration: {e}") \
            from None


def official_configs(
    ck: dict[str, Any], f: Path, flags: OfficialFlags
) -> tuple[UNetConfig, SegConfig, OfficialSettings, list[str]]:
    """Configs for an official checkpoint from its args (or flags.args_file) and the flags.

    A contradiction between the args and the checkpoint's tensor shapes is one error naming
    each setting at fault; the key-by-key list of load_strict is the last resort."""
    s = resolve_official(ck.get("args") or None, flags)
    ustate, sstate = ck["unet_model_state_dict"], ck["seg_model_state_dict"]
    layout = read_unet_layout(ustate)
    problems = diagnose_unet(layout, s) if layout is not None else []
    notes: list[str] = []
    scfg = None
    try:
        scfg, notes = seg_config_for(sstate, layout.in_channels if layout else s.unet.in_channels)
    except ExporterError as e:
        problems.append(str(e))
    if problems:
        raise ExporterError(f"{f.name} does not fit the official args ({s.source}): "
                            + "; ".join(problems))
    check_heads(s.unet)
    return s.unet, scfg, s, notes


def build_from_checkpoint(
    path: Path, official: bool, flags: OfficialFlags | None = None
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Returns (unet, seg, info); info has checkpoint_sha256, training and path, and for an
    official checkpoint also diffusion (DiffusionConfig keywords from the args) and log."""
    f = find_checkpoint_file(path)
    ck = load_checkpoint_dict(f)
    if "seg_model_state_dict" not in ck:
        raise ExporterError(f"{f}: no seg_model_state_dict")
    flags = flags or OfficialFlags()
    info: dict[str, Any] = {}
    if official or "exporter" not in ck:
        ucfg, scfg, settings, notes = official_configs(ck, f, flags)
        info["diffusion"] = dict(settings.diffusion)
        info["log"] = settings.log + notes
        training = {"data": str(settings.args.get("mvtec_root_path", "")),
                    "command": "official", "seed": 0, "official": settings.record()}
    else:
        if flags.given():
            raise ExporterError(f"{', '.join(flags.given())}: only for official checkpoints; "
                                f"{f} is an exporter checkpoint, its configuration is inside it")
        meta = ck["exporter"]
        ucfg = unet_config_from_dict(meta["unet"])
        scfg = seg_config_from_dict(meta["seg"])
        training = dict(meta.get("training", {}))
        training["steps"] = int(meta.get("step", 0))
    unet, seg = _build(build_unet, ucfg, "UNet"), _build(build_seg, scfg, "seg")
    load_strict(unet, ck["unet_model_state_dict"], "UNet")
    load_strict(seg, ck["seg_model_state_dict"], "seg")
    info.update(checkpoint_sha256=sha256_file(f), training=training, path=str(f))
    return unet, seg, info
