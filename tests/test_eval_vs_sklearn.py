"""`diffad eval` agrees with scikit-learn on the same scores (image and pixel AUROC).

Uses the sigmoid fixture model, whose map is sigmoid(pixel / 255), on a small MVTec-style folder
made here, so the expected pixel scores are known exactly. Needs the `diffad` binary that
`cargo test` built (scripts/test runs cargo first).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests/fixtures/sigmoid.onnx"


def diffad() -> Path:
    for profile in ("debug", "release"):
        exe = ROOT / "target" / profile / "diffad"
        if exe.exists():
            return exe
    pytest.fail("target/debug/diffad not built: run `cargo build` (scripts/test does) first")


def make_dataset(root: Path, rng: np.random.Generator) -> None:
    for kind, n in (("good", 12), ("bright_spot", 8), ("stripe", 6)):
        (root / "test" / kind).mkdir(parents=True)
        if kind != "good":
            (root / "ground_truth" / kind).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 230, (16, 16), dtype=np.uint8)
            mask = np.zeros((16, 16), np.uint8)
            if kind == "bright_spot":
                y, x = rng.integers(2, 12, 2)
                mask[y : y + 3, x : x + 3] = 255
            elif kind == "stripe":
                mask[:, rng.integers(0, 15)] = 255
            # Defects are brighter on average but overlap the good range, so AUROC is not trivial.
            img = np.where(mask > 0, rng.integers(100, 256, (16, 16)), img).astype(np.uint8)
            Image.fromarray(img).save(root / "test" / kind / f"{i:03d}.png")
            if kind != "good":
                Image.fromarray(mask).save(root / "ground_truth" / kind / f"{i:03d}_mask.png")


def test_eval_auroc_matches_sklearn(tmp_path: Path) -> None:
    make_dataset(tmp_path, np.random.default_rng(7))
    out = subprocess.run(
        [diffad(), "eval", "--json", "--model", MODEL, "--dataset", tmp_path],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    labels, scores, pixel_scores, pixel_labels = [], [], [], []
    for kind_dir in sorted((tmp_path / "test").iterdir()):
        lines = subprocess.run(
            [diffad(), "infer", "--json", "--model", MODEL, kind_dir], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        for line in lines:
            rec = json.loads(line)
            path = Path(rec["image"])
            labels.append(kind_dir.name != "good")
            scores.append(rec["score"])
            img = np.asarray(Image.open(path), dtype=np.float64)
            pixel_scores.append(1 / (1 + np.exp(-img / 255)))
            mask_path = tmp_path / "ground_truth" / kind_dir.name / f"{path.stem}_mask.png"
            mask = np.asarray(Image.open(mask_path)) > 127 if mask_path.exists() else np.zeros((16, 16), bool)
            pixel_labels.append(mask)
    assert report["images"] == len(scores) == 26
    assert report["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert 0.5 < report["image_auroc"] < 1.0
    pix = roc_auc_score(
        np.concatenate([m.ravel() for m in pixel_labels]), np.concatenate([s.ravel() for s in pixel_scores])
    )
    # float32 maps vs float64 reference: ties can split differently, hence the looser bound.
    assert report["pixel_auroc"] == pytest.approx(pix, abs=1e-4)
    assert {k["kind"] for k in report["kinds"]} == {"good", "bright_spot", "stripe"}


def test_eval_report_curves_match_sklearn(tmp_path: Path) -> None:
    """`eval --report`'s figures are drawn from the points scikit-learn computes from `infer`'s scores."""
    from sklearn.metrics import roc_curve

    data, out_dir = tmp_path / "data", tmp_path / "report"
    make_dataset(data, np.random.default_rng(7))
    out = subprocess.run(
        [diffad(), "eval", "--json", "--model", MODEL, "--dataset", data, "--report", out_dir],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    figures = json.loads((out_dir / "figures.json").read_text())
    labels, scores = [], []
    for kind_dir in sorted((data / "test").iterdir()):
        for line in subprocess.run(
            [diffad(), "infer", "--json", "--model", MODEL, kind_dir], check=True, capture_output=True, text=True
        ).stdout.splitlines():
            labels.append(kind_dir.name != "good")
            scores.append(json.loads(line)["score"])
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, np.float32), drop_intermediate=False)
    points = np.asarray(figures["image_roc"]["points"])
    np.testing.assert_allclose(points[:, 0], fpr, atol=1e-12)
    np.testing.assert_allclose(points[:, 1], tpr, atol=1e-12)
    assert figures["image_roc"]["auroc_trapezoid"] == pytest.approx(report["image_auroc"], abs=1e-12)
    assert sorted(s["score"] for s in figures["scores"]) == pytest.approx(sorted(scores), abs=1e-6)
    assert figures["pixel_roc"]["auroc_trapezoid"] == pytest.approx(report["pixel_auroc"], abs=1e-9)
    index = (out_dir / "index.md").read_text()
    for name in ("roc_image.png", "roc_pixel.png", "scores.png", "kind_bright_spot.png", "kind_stripe.png"):
        assert f"]({name})" in index
        assert Image.open(out_dir / name).size[0] > 0
