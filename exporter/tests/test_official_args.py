"""Issue #17: every setting of the official args reaches the export, or an error names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporter.__main__ import main
from exporter.errors import ExporterError
from exporter.official import build_from_checkpoint
from exporter.official_args import OfficialFlags, resolve_official
from exporter.onnxio import get_manifest

from .conftest import tiny_models
from .official_fixtures import small_args, stock_args, write_official


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _cosine_abar(T: int, t: int) -> float:
    """Written out from the formula of the official get_beta_schedule("cosine")."""
    abar = 1.0
    for i in range(t + 1):
        f1 = np.cos((i / T + 0.008) / 1.008 * np.pi / 2) ** 2
        f2 = np.cos(((i + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        abar *= 1 - min(1 - f2 / f1, 0.999)
    return abar


# --- finding 1: eval_normal_t, eval_noisier_t, condition_w, beta_schedule reach the manifest

def test_official_eval_settings_reach_the_manifest(tmp_path: Path, capsys) -> None:
    args = small_args(eval_normal_t=150, eval_noisier_t=350, condition_w=0.5,
                      beta_schedule="cosine")
    d = write_official(tmp_path / "ck", args)
    out = tmp_path / "m.onnx"
    assert main(["export", "--official-checkpoint", str(d), "--out", str(out), "--threads",
                 "1"]) == 0
    printed = capsys.readouterr().out
    assert "eval_normal_t -> t_s 150; eval_noisier_t -> t_b 350; condition_w -> w 0.5" in printed
    diff = get_manifest(onnx.load(str(out)))["diffusion"]
    assert (diff["t_s"], diff["t_b"], diff["w"], diff["schedule"]) == (150, 350, 0.5, "cosine")
    assert "beta_start" not in diff
    assert diff["abar_s"] == pytest.approx(_cosine_abar(1000, 150), rel=1e-12)
    assert diff["abar_b"] == pytest.approx(_cosine_abar(1000, 350), rel=1e-12)
    rec = get_manifest(onnx.load(str(out)))["training"]["official"]
    assert rec["args_from"] == "checkpoint" and rec["args"]["eval_normal_t"] == 150


def test_explicit_flags_override_the_args_and_say_so(tmp_path: Path, capsys) -> None:
    d = write_official(tmp_path / "ck", small_args(eval_normal_t=150))
    out = tmp_path / "m.onnx"
    assert main(["export", "--official-checkpoint", str(d), "--out", str(out), "--t-s", "100",
                 "--w", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "official: --t-s 100 overrides eval_normal_t (150 of the args): 100" in printed
    assert "official: --w 2 overrides condition_w (1 of the args): 2.0" in printed
    m = get_manifest(onnx.load(str(out)))
    assert (m["diffusion"]["t_s"], m["diffusion"]["t_b"], m["diffusion"]["w"]) == (100, 400, 2.0)
    assert m["training"]["official"]["overrides"] == {"eval_normal_t": 100, "condition_w": 2.0}


def test_linear_schedule_scales_with_T_as_the_official_code() -> None:
    s = resolve_official(small_args(T=500, eval_normal_t=100, eval_noisier_t=200),
                         OfficialFlags())
    assert s.diffusion["T"] == 500
    assert s.diffusion["beta_start"] == pytest.approx(2e-4)
    assert s.diffusion["beta_end"] == pytest.approx(0.04)


@pytest.mark.parametrize(("change", "named", "fix"), [
    ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid'", "linear"),
    ({"noise_fn": "simplex"}, "noise_fn 'simplex'", "gauss"),
    ({"eval_normal_t": 1000}, "eval_normal_t 1000", "--t-s"),
    ({"condition_w": "1"}, "condition_w '1'", "--w"),
    ({"channel_mults": "1,2"}, "channel_mults '1,2'", "JSON list"),
    ({"img_size": 64}, "img_size 64", "[H, W]"),
    ({"img_size": [64, 32]}, "img_size [64, 32]", "square"),
    ({"channels": 2}, "channels 2", "1 or 3"),
])
def test_a_setting_the_exporter_cannot_honour_is_named(change, named, fix) -> None:
    with pytest.raises(ExporterError) as ei:
        resolve_official(small_args(**change), OfficialFlags())
    assert named in str(ei.value) and fix in str(ei.value)


def test_missing_settings_are_named_and_flags_complete_them() -> None:
    args = small_args()
    del args["eval_normal_t"], args["condition_w"]
    with pytest.raises(ExporterError, match="eval_normal_t missing.*--t-s"):
        resolve_official(args, OfficialFlags())
    s = resolve_official(args, OfficialFlags(t_s=180, w=0.5))
    assert (s.diffusion["t_s"], s.diffusion["w"]) == (180, 0.5)
    assert "--t-s 180 overrides eval_normal_t (absent from the args): 180" in s.log


def test_training_only_and_unknown_keys_are_noted() -> None:
    s = resolve_official(small_args(my_key=1), OfficialFlags())
    notes = "\n".join(s.log)
    assert "training-only settings, no effect on the exported graph: Batch_Size, EPOCHS" in notes
    assert "unknown keys, ignored (the official code does not read them): my_key" in notes


# --- finding 2: attention_resolutions (and num_res_blocks) are ignored, as by the official code

def test_attention_resolutions_in_the_args_is_ignored_like_official(tmp_path: Path) -> None:
    # the stock code builds attention at 32,16,8 whatever the args say
    d = write_official(tmp_path / "ck", small_args(attention_resolutions="16,8",
                                                   num_res_blocks=1))
    unet, _, info = build_from_checkpoint(d, official=True)
    assert unet.cfg.attention_resolutions == (32, 16, 8) and unet.cfg.num_res_blocks == 2
    notes = "\n".join(info["log"])
    assert "attention_resolutions '16,8' ignored, as by the official train.py and eval.py" in notes
    assert "num_res_blocks 1 ignored" in notes
    assert info["training"]["official"]["fixed"] == {"attention_resolutions": "32,16,8",
                                                     "num_res_blocks": 2}


def test_attention_of_a_modified_code_checkpoint_is_named(tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", small_args(attention_resolutions="16"), att=(16,))
    with pytest.raises(ExporterError) as ei:
        build_from_checkpoint(d, official=True)
    msg = str(ei.value)
    assert "attention_resolutions: the checkpoint has 16, the official code always builds " \
           "32,16,8" in msg
    assert "export with --attention-resolutions 16" in msg and "missing (" not in msg
    assert "or it is an img_size 64 checkpoint" in msg  # the same layout, another explanation
    unet, _, info = build_from_checkpoint(
        d, official=True, flags=OfficialFlags(attention_resolutions=(16,)))
    assert unet.cfg.attention_resolutions == (16,)
    assert info["training"]["official"]["fixed"]["attention_resolutions"] == "16"


def test_res_blocks_of_a_modified_code_checkpoint_are_named(tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", small_args(), nrb=1, light=True)
    with pytest.raises(ExporterError, match="num_res_blocks: the checkpoint has 1, the official "
                                            "code always builds 2.*--num-res-blocks 1"):
        build_from_checkpoint(d, official=True)


# --- finding 3: --official-args is the official args file; a wrong img_size is named

def test_stock_args_file_against_a_64px_checkpoint_names_img_size(tmp_path: Path,
                                                                  capsys) -> None:
    trained = stock_args(img_size=[64, 64], base_channels=32)
    d = write_official(tmp_path / "ck", trained, size=64, base=32, mults=(1, 2, 3, 4),
                       light=True)
    f = tmp_path / "args1.json"
    f.write_text(json.dumps(stock_args(base_channels=32)))  # the stock 256 px
    out = tmp_path / "m.onnx"
    assert main(["export", "--official-checkpoint", str(d), "--official-args", str(f),
                 "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "img_size: the args (" in err and "say 256" in err
    assert "what img_size 64 builds" in err
    assert "the args saved in the checkpoint say [64, 64]" in err
    assert "missing (" not in err and not out.exists()
    # the stock file as it is (base_channels 128 too): both settings are named
    f.write_text(json.dumps(stock_args()))
    assert main(["export", "--official-checkpoint", str(d), "--official-args", str(f),
                 "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "img_size:" in err and "base_channels: the args say 128, the checkpoint has 32" in err


def test_official_args_file_is_read_whole_and_checked_against_the_checkpoint(
        tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", small_args(), light=True)
    f = tmp_path / "args.json"
    f.write_text(json.dumps(small_args(eval_normal_t=250)))
    s = resolve_official(small_args(), OfficialFlags(args_file=f))
    assert s.source == str(f) and s.diffusion["t_s"] == 250
    assert any("differs from the args saved in the checkpoint" in n and "eval_normal_t 250 vs "
               "200" in n for n in s.log)
    f.write_text(json.dumps({"img_size": [32, 32]}))  # not an args file: names what is missing
    with pytest.raises(ExporterError, match="num_heads: the args file .* has none, the "
                                            "checkpoint was trained with 4"):
        build_from_checkpoint(d, official=True, flags=OfficialFlags(args_file=f))
    f.write_text(json.dumps({"img_size": [32, 32], "num_heads": 4, "num_head_channels": -1}))
    with pytest.raises(ExporterError, match="channels missing"):
        build_from_checkpoint(d, official=True, flags=OfficialFlags(args_file=f))
    f.write_text("{oops")
    with pytest.raises(ExporterError, match="not valid JSON"):
        resolve_official(None, OfficialFlags(args_file=f))


def test_no_args_anywhere_is_an_error(tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", None, light=True)
    with pytest.raises(ExporterError, match="holds no official args.*--official-args"):
        build_from_checkpoint(d, official=True)


def test_channels_and_mults_are_named(tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", small_args(channel_mults=[1, 2, 2]), light=True)
    with pytest.raises(ExporterError, match=r"channel_mults: 1,2,2 in the args; the checkpoint "
                                            r"has 1,2; set \"channel_mults\": \[1, 2\]"):
        build_from_checkpoint(d, official=True)
    d = write_official(tmp_path / "ck1", small_args(channels=3), cin=1, seg_in=2, light=True)
    with pytest.raises(ExporterError, match="channels: the args say 3, the checkpoint's UNet "
                                            "takes 1"):
        build_from_checkpoint(d, official=True)


# --- finding 4: grey checkpoints and the seg network's hard-coded in_channels=6

def test_grey_checkpoint_with_the_official_6_channel_seg_says_why(tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", small_args(channels=1), cin=1, seg_in=6, light=True)
    with pytest.raises(ExporterError) as ei:
        build_from_checkpoint(d, official=True)
    msg = str(ei.value)
    assert "train.py hard-codes SegmentationSubNetwork(in_channels=6)" in msg
    assert "Retrain with channels 3" in msg and "\n" not in msg


def test_grey_checkpoint_from_modified_code_loads_with_a_note(tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", small_args(channels=1), cin=1)
    unet, seg, info = build_from_checkpoint(d, official=True)
    assert unet.cfg.in_channels == 1 and seg.cfg.in_channels == 2
    assert any("hard-codes the seg network's in_channels=6" in n for n in info["log"])


# --- heads: no trace in the weights, so the checks are what the official code asserts

def test_heads_that_cannot_split_a_block_are_named(tmp_path: Path) -> None:
    d = write_official(tmp_path / "ck", small_args(num_heads=3), light=True)
    with pytest.raises(ExporterError, match="num_heads 3 does not divide the 32 channels"):
        build_from_checkpoint(d, official=True)
    d = write_official(tmp_path / "ck2", small_args(num_head_channels=24), light=True)
    with pytest.raises(ExporterError, match="num_head_channels 24 does not divide"):
        build_from_checkpoint(d, official=True)


def test_heads_differing_from_the_checkpoint_args_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "args.json"
    f.write_text(json.dumps(small_args(num_heads=2)))
    with pytest.raises(ExporterError, match="num_heads: the args file .* says 2, the checkpoint "
                                            "was trained with 4"):
        resolve_official(small_args(), OfficialFlags(args_file=f))
    s = resolve_official(small_args(), OfficialFlags(args_file=f, set_args={"num_heads": 2}))
    assert s.unet.n_heads == 2


def test_official_flags_are_refused_for_our_checkpoints(tmp_path: Path, capsys) -> None:
    unet, seg = tiny_models()
    ck = tmp_path / "last.pt"
    torch.save({"unet_model_state_dict": unet.state_dict(),
                "seg_model_state_dict": seg.state_dict(),
                "exporter": {"unet": unet.cfg.to_dict(), "seg": seg.cfg.to_dict()}}, ck)
    assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "m.onnx"),
                 "--attention-resolutions", "16"]) == 2
    assert "--attention-resolutions: only for official checkpoints" in _one_line_error(capsys)
