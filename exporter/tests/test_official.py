"""Loading checkpoints written in the official DiffusionAD layout (see official_fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exporter.__main__ import main
from exporter.errors import ExporterError
from exporter.official import build_from_checkpoint, load_strict
from exporter.seg import SegConfig, SegmentationSubNetwork
from exporter.unet import UNetConfig, UNetModel

from .official_fixtures import (
    official_seg_shapes,
    official_unet_shapes,
    random_state,
    small_args,
    write_official,
)


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
    d = write_official(tmp_path / "official", small_args())
    ck = torch.load(d / "params-best.pt", weights_only=False)
    unet, seg, info = build_from_checkpoint(d, official=True)
    assert unet.cfg.base_channels == 32 and unet.cfg.in_channels == 3
    assert unet.cfg.attention_resolutions == (32, 16, 8) and unet.cfg.num_res_blocks == 2
    assert seg.cfg.base_width == 8 and seg.cfg.in_channels == 6
    for k, v in ck["unet_model_state_dict"].items():
        assert torch.equal(unet.state_dict()[k], v), k
    assert torch.equal(seg.state_dict()["decoder_segment.fin_out.0.weight"],
                       ck["seg_model_state_dict"]["decoder_segment.fin_out.0.weight"])
    assert len(info["checkpoint_sha256"]) == 64
    assert info["diffusion"] == {"T": 1000, "schedule": "linear", "beta_start": 1e-4,
                                 "beta_end": 0.02, "t_s": 200, "t_b": 400, "w": 1.0}


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
    d = write_official(tmp_path / "official", small_args(), name="params-last.pt")
    out = tmp_path / "m.onnx"
    assert main(["export", "--official-checkpoint", str(d), "--out", str(out),
                 "--top-k", "5", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "max abs error map" in printed
    assert out.exists()
    # a wrong-architecture override: one clear line naming the setting, exit 2, nothing written
    out2 = tmp_path / "m2.onnx"
    assert main(["export", "--official-checkpoint", str(d), "--official-set",
                 "base_channels=16", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params-last.pt does not fit the official args") and \
        err.count("\n") == 1
    assert "base_channels: the args say 16, the checkpoint has 32" in err
    assert not out2.exists()
