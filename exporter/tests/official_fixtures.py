"""Official-layout checkpoints for the tests.

The key names and shapes are generated here from the official module structure
(UNetModel: time_embedding / down / middle / up / out; SegmentationSubNetwork:
encoder_segment / decoder_segment), independently of exporter.unet / exporter.seg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def official_unet_shapes(size, cin, base, mults, nrb, att_res) -> dict[str, tuple]:
    s: dict[str, tuple] = {}
    emb = 4 * base
    att_ds = {size // r for r in att_res}

    def res(p, ci, co):
        s[f"{p}.in_layers.0.weight"] = (ci,)
        s[f"{p}.in_layers.0.bias"] = (ci,)
        s[f"{p}.in_layers.2.weight"] = (co, ci, 3, 3)
        s[f"{p}.in_layers.2.bias"] = (co,)
        s[f"{p}.embed_layers.1.weight"] = (co, emb)
        s[f"{p}.embed_layers.1.bias"] = (co,)
        s[f"{p}.out_layers.0.weight"] = (co,)
        s[f"{p}.out_layers.0.bias"] = (co,)
        s[f"{p}.out_layers.3.weight"] = (co, co, 3, 3)
        s[f"{p}.out_layers.3.bias"] = (co,)
        if ci != co:
            s[f"{p}.skip_connection.weight"] = (co, ci, 1, 1)
            s[f"{p}.skip_connection.bias"] = (co,)

    def att(p, c):
        s[f"{p}.norm.weight"] = (c,)
        s[f"{p}.norm.bias"] = (c,)
        s[f"{p}.to_qkv.weight"] = (3 * c, c, 1)
        s[f"{p}.to_qkv.bias"] = (3 * c,)
        s[f"{p}.proj_out.weight"] = (c, c, 1)
        s[f"{p}.proj_out.bias"] = (c,)

    s["time_embedding.1.weight"] = (emb, base)
    s["time_embedding.1.bias"] = (emb,)
    s["time_embedding.3.weight"] = (emb, emb)
    s["time_embedding.3.bias"] = (emb,)
    s["down.0.0.weight"] = (base, cin, 3, 3)
    s["down.0.0.bias"] = (base,)
    ch, chans, ds, idx = mults[0] * base, [mults[0] * base], 1, 1
    for i, m in enumerate(mults):
        for _ in range(nrb):
            res(f"down.{idx}.0", ch, base * m)
            ch = base * m
            if ds in att_ds:
                att(f"down.{idx}.1", ch)
            chans.append(ch)
            idx += 1
        if i != len(mults) - 1:
            res(f"down.{idx}.0", ch, ch)
            chans.append(ch)
            idx += 1
            ds *= 2
    res("middle.0", ch, ch)
    att("middle.1", ch)
    res("middle.2", ch, ch)
    idx = 0
    for i, m in reversed(list(enumerate(mults))):
        for j in range(nrb + 1):
            res(f"up.{idx}.0", ch + chans.pop(), base * m)
            ch = base * m
            li = 1
            if ds in att_ds:
                att(f"up.{idx}.1", ch)
                li = 2
            if i and j == nrb:
                res(f"up.{idx}.{li}", ch, ch)
                ds //= 2
            idx += 1
    s["out.0.weight"] = (ch,)
    s["out.0.bias"] = (ch,)
    s["out.2.weight"] = (cin, base * mults[0], 3, 3)
    s["out.2.bias"] = (cin,)
    return s


def official_seg_shapes(cin: int, w: int) -> dict[str, tuple]:
    s: dict[str, tuple] = {}

    def conv(p, ci, co):
        s[f"{p}.weight"] = (co, ci, 3, 3)
        s[f"{p}.bias"] = (co,)

    def bn(p, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            s[f"{p}.{k}"] = (c,)
        s[f"{p}.num_batches_tracked"] = ()

    def double(p, ci, co):
        conv(f"{p}.0", ci, co)
        bn(f"{p}.1", co)
        conv(f"{p}.3", co, co)
        bn(f"{p}.4", co)

    widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
    prev = cin
    for i, c in enumerate(widths, 1):
        double(f"encoder_segment.block{i}", prev, c)
        prev = c
    d = "decoder_segment"
    for name, ci, co, dci in (("b", 8, 8, 16), ("1", 8, 4, 12), ("2", 4, 2, 6), ("3", 2, 1, 3),
                              ("4", 1, 1, 2)):
        up = f"{d}.up_{name}" if name == "b" else f"{d}.up{name}"
        db = f"{d}.db_{name}" if name == "b" else f"{d}.db{name}"
        conv(f"{up}.1", ci * w, co * w)
        bn(f"{up}.2", co * w)
        double(db, dci * w, co * w)
    conv(f"{d}.fin_out.0", w, 1)
    s[f"{d}.fin_out.0.weight"] = (1, w, 3, 3)
    return s


def random_state(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Random weights that keep activations alive: norm scales near 1, fan-in scaled layers
    (so the map depends on the input, and a changed computation shows in it)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, sh in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(sh, generator=g) + 0.5
        elif k.endswith(".weight") and len(sh) == 1:  # GroupNorm / BatchNorm scale
            out[k] = 1 + 0.1 * torch.randn(sh, generator=g)
        elif len(sh) > 1:
            fan_in = 1
            for n in sh[1:]:
                fan_in *= n
            out[k] = torch.randn(sh, generator=g) / fan_in**0.5
        else:
            out[k] = torch.randn(sh, generator=g) * 0.05
    return out


def light_state(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Tensors of the right shapes on a one-element storage (for shape-only checks)."""
    return {k: torch.zeros(1).expand(sh) if sh else torch.tensor(0) for k, sh in shapes.items()}


def stock_args(**changes: Any) -> dict[str, Any]:
    """The keys and values of the official args/args1.json, with `changes`."""
    a = {
        "img_size": [256, 256], "Batch_Size": 16, "EPOCHS": 3000, "T": 1000,
        "base_channels": 128, "beta_schedule": "linear", "loss_type": "l2",
        "diffusion_lr": 1e-4, "seg_lr": 1e-5, "random_slice": True, "weight_decay": 0.0,
        "save_imgs": True, "save_vids": False, "dropout": 0, "attention_resolutions": "32,16,8",
        "num_heads": 4, "num_head_channels": -1, "noise_fn": "gauss", "channels": 3,
        "mvtec_root_path": "datasets/mvtec", "visa_root_path": "datasets/VisA_1class/1cls",
        "dagm_root_path": "datasets/dagm", "mpdd_root_path": "datasets/mpdd",
        "anomaly_source_path": "datasets/DTD", "noisier_t_range": 600, "less_t_range": 300,
        "condition_w": 1, "eval_normal_t": 200, "eval_noisier_t": 400, "output_path": "outputs",
    }
    a.update(changes)
    return a


# small enough for CI: 32 px, widths 32 / 64, attention at 32 and 16 px (the official 32,16,8)
SMALL = {"img_size": [32, 32], "base_channels": 32, "channel_mults": [1, 2]}


def small_args(**changes: Any) -> dict[str, Any]:
    return stock_args(**{**SMALL, **changes})


def write_official(
    d: Path, args: dict[str, Any] | None, *, cin: int = 3, base: int = 32,
    mults: tuple = (1, 2), nrb: int = 2, att: tuple = (32, 16, 8), size: int = 32,
    seg_in: int | None = None, seg_w: int = 8, seed: int = 1, light: bool = False,
    name: str = "params-best.pt",
) -> Path:
    """An official-layout checkpoint as train.py saves it; returns its directory."""
    us = official_unet_shapes(size, cin, base, mults, nrb, att)
    ss = official_seg_shapes(2 * cin if seg_in is None else seg_in, seg_w)
    if light:
        ustate, sstate = light_state(us), light_state(ss)
    else:
        ustate, sstate = random_state(us, seed), random_state(ss, seed + 1)
    ck: dict[str, Any] = {"n_epoch": 3, "unet_model_state_dict": ustate,
                          "seg_model_state_dict": sstate}
    if args is not None:
        ck["args"] = args
    d.mkdir(parents=True, exist_ok=True)
    torch.save(ck, d / name)
    return d
