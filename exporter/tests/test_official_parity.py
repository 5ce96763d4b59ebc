"""Issue #17: parity with the official code (a stand-in checkout), the noise recipe in the
manifest, and the official 8-bit resize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from exporter.__main__ import main
from exporter.diffusion import alphas_cumprod
from exporter.errors import ExporterError
from exporter.official_parity import verify_official
from exporter.onnxio import get_manifest, ort_session
from exporter.preprocess import preprocess_file, resize_bilinear, resize_uint8

from .conftest import tiny_models
from .official_fixtures import small_args, write_official
from .official_standin import DDPM, SWAPPED_ORDER, write_standin


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An official checkpoint with non-default settings, exported, and real 100 px images."""
    root = tmp_path_factory.mktemp("official")
    args = small_args(eval_normal_t=150, eval_noisier_t=350, condition_w=0.7,
                      beta_schedule="cosine")
    ck = write_official(root / "ck", args)
    out = root / "m.onnx"
    assert main(["export", "--official-checkpoint", str(ck), "--out", str(out), "--top-k",
                 "20", "--noise-seed", "3", "--threads", "1"]) == 0
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:100, 0:100]
    for i in range(2):
        a = np.stack([xx * 2.5, yy * 2.5, (xx + yy) * 1.2], 2) + rng.normal(0, 25, (100, 100, 3))
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(imgs / f"{i}.png")
    return {"ck": ck, "model": out, "imgs": imgs, "code": write_standin(root / "code")}


# --- finding 6: verify against the code a checkpoint came from

def test_verify_against_the_official_code(official: dict[str, Path], capsys) -> None:
    assert main(["verify", str(official["model"]), "--official-code", str(official["code"]),
                 "--official-checkpoint", str(official["ck"]), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "official code parity OK: 4 golden cases + 0 images" in out
    assert "note: score: top_k 20 (the official eval uses 50)" in out
    r = verify_official(official["model"], official["code"], official["ck"])
    assert r["map_max_abs_diff"] <= 1e-4 and r["score_max_abs_diff"] <= 1e-4


def test_parity_fails_when_the_code_differs(official: dict[str, Path], tmp_path: Path) -> None:
    # the noisier step's noise drawn first: another model, which parity must see
    code = write_standin(tmp_path / "swapped", ddpm=DDPM.replace(*SWAPPED_ORDER))
    with pytest.raises(ExporterError, match=r"disagrees with the official code: max \|map\|"):
        verify_official(official["model"], code, official["ck"])


def test_parity_refuses_the_wrong_inputs(official: dict[str, Path], exported: Path,
                                         tmp_path: Path) -> None:
    other = write_official(tmp_path / "other", small_args(), seed=9, light=True)
    with pytest.raises(ExporterError, match="is not the checkpoint m.onnx was exported from"):
        verify_official(official["model"], official["code"], other)
    with pytest.raises(ExporterError, match="not exported from an official checkpoint"):
        verify_official(exported, official["code"], official["ck"])
    with pytest.raises(ExporterError, match="not a checkout of the official DiffusionAD code: no "
                                            "models/Recon_subnetwork.py"):
        verify_official(official["model"], tmp_path, official["ck"])
    code = write_standin(tmp_path / "deps", extra_import="import not_installed_pkg_17\n")
    with pytest.raises(ExporterError, match="imports not_installed_pkg_17, which is not "
                                            "installed here"):
        verify_official(official["model"], code, official["ck"])


# --- finding 5: the manifest says how to redraw the noise

def test_manifest_noise_recipe_reproduces_the_graph(exported: Path) -> None:
    m = get_manifest(onnx.load(str(exported)))
    d = m["diffusion"]
    noise = d["noise"]
    assert noise["generator"] == "torch.Generator(device='cpu').manual_seed(noise_seed)"
    assert noise["order"] == ["n1", "n2"] and noise["shape"] == [1, 1, 32, 32]
    assert "t_s" in noise["n1"] and "t_b" in noise["n2"]
    # redraw from the manifest alone and recompute §1 by hand: it must equal the graph
    g = torch.Generator(device="cpu").manual_seed(d["noise_seed"])
    drawn = {name: torch.randn(noise["shape"], generator=g, dtype=torch.float32)
             for name in noise["order"]}
    ab = alphas_cumprod(d["T"], d["beta_start"], d["beta_end"])
    assert (ab[d["t_s"]], ab[d["t_b"]]) == (d["abar_s"], d["abar_b"])
    unet, seg = tiny_models()
    x0 = torch.from_numpy(np.random.default_rng(1).random((1, 1, 32, 32), np.float32))

    def by_hand(n1: torch.Tensor, n2: torch.Tensor) -> np.ndarray:
        a_s, a_b = d["abar_s"], d["abar_b"]
        with torch.no_grad():
            x_s = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * n1
            x_b = a_b**0.5 * x0 + (1 - a_b) ** 0.5 * n2
            e_s = unet(x_s, torch.tensor([float(d["t_s"])]))
            e_b = unet(x_b, torch.tensor([float(d["t_b"])]))
            x0_b = ((x_b - (1 - a_b) ** 0.5 * e_b) / a_b**0.5).clamp(-1, 1)
            e_hat = e_s - d["w"] * (1 - a_s) ** 0.5 * (a_s**0.5 * x0_b + (1 - a_s) ** 0.5 * e_s
                                                       - x_s)
            x0_hat = ((x_s - (1 - a_s) ** 0.5 * e_hat) / a_s**0.5).clamp(-1, 1)
            return seg(torch.cat([x0, x0_hat], 1)).numpy()

    graph = ort_session(exported, 1).run(["anomaly_map"], {"image": x0.numpy()})[0]
    assert np.abs(by_hand(drawn["n1"], drawn["n2"]) - graph).max() <= 1e-4
    assert np.abs(by_hand(drawn["n2"], drawn["n1"]) - graph).max() > 1e-3  # order matters
    # what the manifest says of the official eval: the global seed draws the same pair
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(d["noise_seed"])
        first, second = torch.randn_like(x0), torch.randn_like(x0)
    assert torch.equal(first, drawn["n1"]) and torch.equal(second, drawn["n2"])


# --- finding 7: the official resize rounds to 8 bit; ours does not; the difference is measured

def test_official_resize_rounds_to_8_bit() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    ours = resize_bilinear(img, 64, 64)
    theirs = resize_uint8(img, 64, 64)
    assert theirs.dtype == np.uint8 and theirs.shape == (64, 64, 3)
    err = np.abs(theirs - ours)
    assert err.max() <= 0.5 + 1e-9 and err.mean() > 0.1  # rounded: up to half a grey level
    assert np.array_equal(resize_uint8(img[:64, :64], 64, 64), img[:64, :64])


def test_verify_reports_the_resize_difference(official: dict[str, Path], capsys) -> None:
    assert main(["verify", str(official["model"]), "--official-code", str(official["code"]),
                 "--official-checkpoint", str(official["ck"]), "--images",
                 str(official["imgs"]), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "official code parity OK: 4 golden cases + 2 images" in out
    line = next(s for s in out.splitlines() if s.startswith("official 8-bit resize vs ours"))
    r = verify_official(official["model"], official["code"], official["ck"],
                        images=official["imgs"])
    z = r["resize"]
    assert 0 < z["input_max_abs_diff"] <= 0.5 / 255 + 1e-6
    assert z["map_max_abs_diff"] > 0 and f"map {z['map_max_abs_diff']:.3g}" in line
    # the same input through both: the real images agree like the golden ones
    x = preprocess_file(next(official["imgs"].iterdir()), 3, 32, 32)
    assert x.shape == (3, 32, 32)


def test_manifest_records_the_official_settings(official: dict[str, Path]) -> None:
    m = get_manifest(onnx.load(str(official["model"])))
    rec = m["training"]["official"]
    assert rec["args_from"] == "checkpoint"
    assert rec["args"]["beta_schedule"] == "cosine" and rec["overrides"] == {}
    assert rec["fixed"] == {"attention_resolutions": "32,16,8", "num_res_blocks": 2}
    assert m["diffusion"]["noise_seed"] == 3
    assert json.loads(json.dumps(m)) == m
