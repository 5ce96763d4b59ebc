"""Loading checkpoints written in the official DiffusionAD layout.

The key names and shapes are generated here from the official module structure
(UNetModel: time_embedding / down / middle / up / out; SegmentationSubNetwork:
encoder_segment / decoder_segment), independently of exporter.unet / exporter.seg.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exporter.__main__ import main
from exporter.errors import ExporterError
from exporter.official import build_from_checkpoint, load_strict
from exporter.seg import SegConfig, SegmentationSubNetwork
from exporter.unet import UNetConfig, UNetModel


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
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, sh in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(sh, generator=g) + 0.5
        else:
            out[k] = torch.randn(sh, generator=g) * 0.05
    return out


OFFICIAL_ARGS = {"img_size": [32, 32], "base_channels": 32, "channel_mults": "1,2",
                 "attention_resolutions": "16", "num_heads": 2, "num_head_channels": -1,
                 "channels": 3, "num_res_blocks": 1}


def test_our_modules_have_official_names_and_shapes() -> None:
    for mults, nrb, att in (((1, 2), 1, (16,)), ((1, 1, 2), 2, (16, 8))):
        cfg = UNetConfig(image_size=32, in_channels=3, base_channels=32, channel_mults=mults,
                         num_res_blocks=nrb, attention_resolutions=att, n_heads=2,
                         norm_groups=32)
        ours = {k: tuple(v.shape) for k, v in UNetModel(cfg).state_dict().items()}
        assert ours == official_unet_shapes(32, 3, 32, mults, nrb, att)
    seg = {k: tuple(v.shape) for k, v in SegmentationSubNetwork(SegConfig(6, 8)).state_dict()
           .items()}
    assert seg == official_seg_shapes(6, 8)


def test_official_checkpoint_loads_strictly(tmp_path: Path) -> None:
    us = random_state(official_unet_shapes(32, 3, 32, (1, 2), 1, (16,)), 1)
    ss = random_state(official_seg_shapes(6, 8), 2)
    d = tmp_path / "official"
    d.mkdir()
    torch.save({"unet_model_state_dict": us, "seg_model_state_dict": ss, "n_epoch": 3,
                "args": dict(OFFICIAL_ARGS)}, d / "params-best.pt")
    unet, seg, info = build_from_checkpoint(d, official=True)
    assert unet.cfg.base_channels == 32 and unet.cfg.in_channels == 3
    assert seg.cfg.base_width == 8 and seg.cfg.in_channels == 6
    for k, v in us.items():
        assert torch.equal(unet.state_dict()[k], v), k
    assert torch.equal(seg.state_dict()["decoder_segment.fin_out.0.weight"],
                       ss["decoder_segment.fin_out.0.weight"])
    assert len(info["checkpoint_sha256"]) == 64


def test_mismatched_keys_are_listed() -> None:
    us = random_state(official_unet_shapes(32, 3, 32, (1, 2), 1, (16,)), 1)
    us["down.1.0.in_layers.2.weight"] = torch.zeros(5, 5, 3, 3)
    del us["middle.1.to_qkv.bias"]
    us["extra.weight"] = torch.zeros(1)
    cfg = UNetConfig(image_size=32, in_channels=3, base_channels=32, channel_mults=(1, 2),
                     num_res_blocks=1, attention_resolutions=(16,), n_heads=2)
    with pytest.raises(ExporterError) as ei:
        load_strict(UNetModel(cfg), us, "UNet")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "middle.1.to_qkv.bias" in msg and "extra.weight" in msg
    assert "down.1.0.in_layers.2.weight: checkpoint (5, 5, 3, 3) vs model (32, 32, 3, 3)" in msg


def test_cli_export_official(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    us = random_state(official_unet_shapes(32, 3, 32, (1, 2), 1, (16,)), 1)
    ss = random_state(official_seg_shapes(6, 8), 2)
    d = tmp_path / "official"
    d.mkdir()
    torch.save({"unet_model_state_dict": us, "seg_model_state_dict": ss,
                "args": dict(OFFICIAL_ARGS)}, d / "params-last.pt")
    out = tmp_path / "m.onnx"
    assert main(["export", "--official-checkpoint", str(d), "--out", str(out),
                 "--top-k", "5", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "max abs error map" in printed
    assert out.exists()
    # a wrong-architecture override: one clear line, exit code 2, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text('{"base_channels": 16}')
    out2 = tmp_path / "m2.onnx"
    assert main(["export", "--official-checkpoint", str(d), "--official-args", str(bad),
                 "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: UNet: state dict does not match") and err.count("\n") == 1
    assert not out2.exists()
