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
