"""Golden re-check with ONNX Runtime (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExporterError
from .onnxio import get_manifest, graph_sha256, load_model, ort_session, run_batched
from .preprocess import preprocess_file


def golden_paths(model_path: Path) -> tuple[Path, Path]:
    stem = model_path.with_suffix("")
    return stem.with_name(stem.name + ".golden.json"), stem.with_name(stem.name + ".golden")


def verify_model(path: Path, tol: float = 1e-4) -> dict[str, Any]:
    """Re-runs the golden cases with ORT CPU; raises ExporterError on any mismatch."""
    model = load_model(path)
    manifest = get_manifest(model)
    gjson, _ = golden_paths(path)
    if not gjson.is_file():
        raise ExporterError(f"golden file not found: {gjson}")
    golden = json.loads(gjson.read_text())
    sha = graph_sha256(model)
    if golden.get("model_sha256") != sha:
        raise ExporterError(f"model_sha256 mismatch: golden {golden.get('model_sha256')} "
                            f"vs model {sha}")
    inp = manifest["input"]
    sess = ort_session(path)
    imgs = np.stack([
        preprocess_file(gjson.parent / c["image"], inp["channels"], inp["height"], inp["width"],
                        tuple(inp["range"]))
        for c in golden["cases"]
    ])
    # a sampler model's goldens name their step count, which calibration may have moved from
    maps, scores = run_batched(sess, imgs, inp["batch"], steps=golden.get("sampler_steps"))
    worst = 0.0
    for c, m, s in zip(golden["cases"], maps, scores, strict=True):
        npx = m.size
        errs = [abs(float(s) - c["score"]), abs(float(m.max()) - c["map_max"]),
                abs(float(m.astype(np.float64).mean()) - c["map_mean"]),
                abs(float(m.astype(np.float64).sum()) - c["map_sum"]) / npx]
        worst = max(worst, *errs)
    if worst > tol:
        raise ExporterError(f"golden mismatch: max error {worst:.3g} > {tol:g}")
    return {"max_err": worst, "cases": len(golden["cases"]), "manifest": manifest}
