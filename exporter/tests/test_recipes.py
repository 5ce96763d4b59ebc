"""The survey recipes: simplex noise pinned to the runtime's fixtures, the reference sampler,
and train -> export -> evaluate through the CLI for each recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter import simplex
from exporter.__main__ import main
from exporter.evaluate import evaluate
from exporter.onnxio import get_manifest, load_model, ort_session, run_batched
from exporter.recipes.detect import SamplerSpec, sample, timesteps
from exporter.recipes.nets import DTEConfig, DTENet
from exporter.recipes.train import ANODDPM_SIMPLEX

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "simplex"


def test_simplex_fields_are_the_bytes_the_runtime_is_tested_against(tmp_path: Path) -> None:
    cases = simplex.write_fixtures(tmp_path)
    committed = json.loads((FIXTURES / "cases.json").read_text())
    assert cases == committed
    for c in cases:
        assert (tmp_path / c["file"]).read_bytes() == (FIXTURES / c["file"]).read_bytes(), c
    # and the fields are noise: different per draw and seed, spread about 1 at unit scale
    a = simplex.field(1, 0, 64, 64, ANODDPM_SIMPLEX)
    assert not np.array_equal(a, simplex.field(1, 1, 64, 64, ANODDPM_SIMPLEX))
    assert not np.array_equal(a, simplex.field(2, 0, 64, 64, ANODDPM_SIMPLEX))
    assert 0.6 < a.std() < 1.6


def test_the_anoddpm_noise_scale_is_the_unit_scale() -> None:
    raw = simplex.SimplexConfig(ANODDPM_SIMPLEX.octaves, ANODDPM_SIMPLEX.persistence,
                                ANODDPM_SIMPLEX.period, 1.0)
    assert simplex.unit_scale(raw) == ANODDPM_SIMPLEX.scale


def test_timesteps_and_a_perfect_denoiser_reconstruct_the_image() -> None:
    assert timesteps(250, 10) == [250, 225, 200, 175, 150, 125, 100, 75, 50, 25]
    assert timesteps(7, 3) == [7, 4, 2]
    with pytest.raises(ValueError):
        timesteps(10, 11)
    x0 = torch.rand(2, 1, 32, 32) * 2 - 1
    for kind in ("ddpm", "ddim"):
        spec = SamplerSpec(t_start=100, steps=5, kind=kind, noise=ANODDPM_SIMPLEX)
        ab = torch.tensor(spec.abar(), dtype=torch.float32)

        def oracle(x: torch.Tensor, t: int, ab: torch.Tensor = ab) -> torch.Tensor:
            # the eps that makes x0_hat exactly x0
            return (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()

        assert torch.allclose(sample(oracle, x0, spec, 5), x0, atol=1e-4), kind


def test_dte_expected_time_lies_in_0_1_per_cell() -> None:
    net = DTENet(DTEConfig(image_size=64, widths=(16, 16, 16, 16), bins=10, t_max=100))
    e = net.expected_time(torch.rand(2, 1, 64, 64))
    assert e.shape == (2, 1, 4, 4)
    assert float(e.detach().min()) > 0 and float(e.detach().max()) < 1


def small_dataset(src: Path, dst: Path, n: int = 3) -> Path:
    """n good and n defective images (one kind) of a make-tiles validation split, with masks."""
    import shutil

    kind = sorted(d.name for d in (src / "test").iterdir() if d.name != "good")[0]
    for k in ("good", kind):
        (dst / "test" / k).mkdir(parents=True)
        for p in sorted((src / "test" / k).glob("*.png"))[:n]:
            shutil.copy(p, dst / "test" / k / p.name)
            if k != "good":
                (dst / "ground_truth" / k).mkdir(parents=True, exist_ok=True)
                mask = src / "ground_truth" / k / f"{p.stem}_mask.png"
                shutil.copy(mask, dst / "ground_truth" / k / mask.name)
    return dst


@pytest.mark.parametrize("recipe", ["advrad", "dte", "anoddpm"])
def test_train_resume_export_evaluate(recipe: str, tiles: Path, tmp_path: Path) -> None:
    data = tiles / "brick"
    ck = tmp_path / "ck"
    args = ["recipe-train", "--recipe", recipe, "--data", str(data), "--out", str(ck),
            "--steps", "2", "--batch", "2", "--crop", "32", "--widths", "16,16,16,16",
            "--keep-every", "1"]
    assert main(args) == 0
    assert main([*args[:-4], "--steps", "3", "--widths", "16,16,16,16"]) == 0  # resumes
    assert sorted(p.name for p in ck.glob("step-*.pt")) == ["step-000001.pt", "step-000002.pt"]
    assert len((ck / "loss.csv").read_text().splitlines()) == 3
    out = tmp_path / "m.onnx"
    extra = ["--steps", "3", "--t-start", "30", "--parity-steps", "2"] if recipe == "anoddpm" \
        else []
    assert main(["recipe-export", "--checkpoint", str(ck / "last.pt"), "--out", str(out),
                 *extra]) == 0
    m = get_manifest(load_model(out))
    assert m["method"] == recipe and m["input"]["range"] == [-1.0, 1.0]
    assert ("sampler" in m) == (recipe == "anoddpm")
    golden = json.loads(out.with_name("m.golden.json").read_text())
    if recipe == "anoddpm":
        assert golden["sampler_steps"] == 3 and [g["steps"] for g in golden["more_steps"]] == [2]
        maps, scores = run_batched(ort_session(out), np.zeros((2, 1, 128, 128), np.float32), 1,
                                   steps=2)
        assert maps.shape == (2, 1, 128, 128) and np.isfinite(scores).all()
    val = small_dataset(data / "validation", tmp_path / "val")
    r = evaluate(out, val)
    if recipe != "anoddpm":  # the twin the robustness attack runs on scores as the graph does
        from exporter.recipes.robust import twin

        det, _ = twin(out, ck / "last.pt")
        x = np.random.default_rng(1).uniform(-1, 1, (1, 1, 128, 128)).astype(np.float32)
        with torch.no_grad():
            s_torch = float(det(torch.from_numpy(x))[1])
        assert abs(s_torch - float(run_batched(ort_session(out), x, 1)[1][0])) < 1e-4
    assert 0.0 <= r["image_auroc"] <= 1.0 and r["n_defective"] > 0
    assert main(["recipe-export", "--checkpoint", str(ck / "last.pt"), "--out", str(out)]) == 2
    if recipe != "anoddpm":  # the sampler's selection is the same code, only slower
        sel = tmp_path / "selection.json"
        assert main(["recipe-select", "--checkpoints", str(ck), "--dataset", str(val),
                     "--out", str(sel)]) == 0
        rows = json.loads(sel.read_text())["rows"]
        assert {r["step"] for r in rows} == {1, 2} and len(rows) % 2 == 0
        assert main(["recipe-select", "--checkpoints", str(ck), "--dataset", str(data)]) == 2


def test_calibrate_at_a_step_count_makes_it_the_models_default(tmp_path: Path) -> None:
    import shutil

    from PIL import Image

    from exporter.calibrate import calibrate
    from exporter.errors import ExporterError

    fixtures = ROOT / "tests" / "fixtures"
    model = tmp_path / "anoddpm-ddpm.onnx"
    shutil.copy(fixtures / "anoddpm-ddpm.onnx", model)
    shutil.copy(fixtures / "anoddpm-ddpm.golden.json", tmp_path)
    shutil.copytree(fixtures / "anoddpm-ddpm.golden", tmp_path / "anoddpm-ddpm.golden")
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(90, 160, (32, 32), dtype=np.uint8)).save(good / f"{i}.png")
    r2 = calibrate(model, good, 0.05, threads=1, steps=2)
    m = get_manifest(load_model(model))
    assert m["sampler"]["steps"] == 2 and m["threshold"]["sampler_steps"] == 2
    r8 = calibrate(model, good, 0.05, threads=1, steps=8)
    assert get_manifest(load_model(model))["threshold"]["sampler_steps"] == 8
    assert r2["threshold"]["value"] != r8["threshold"]["value"]
    from exporter.verify import verify_model

    assert verify_model(model)["max_err"] <= 1e-4  # goldens at their own step count
    with pytest.raises(ExporterError, match="t_start"):
        calibrate(model, good, 0.05, threads=1, steps=41)
    shutil.copy(fixtures / "sigmoid.onnx", model)
    with pytest.raises(ExporterError, match="no sampler"):
        calibrate(model, good, 0.05, threads=1, steps=2)


def test_pgd_lowers_the_score_within_eps_and_the_input_range() -> None:
    from torch import nn

    from exporter.recipes.robust import pgd

    class Mean(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x.mean((1, 2, 3))

    x = torch.rand(2, 1, 8, 8) * 2 - 1
    adv = pgd(Mean(), x, 0.1, 5, -1.0, 1.0)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= -1 and float(adv.max()) <= 1
    assert bool((Mean()(adv)[1] < Mean()(x)[1] - 0.05).all())
