"""The reference models committed under models/: manifest, goldens, size (ORT only)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from exporter.onnxio import get_manifest
from exporter.verify import verify_model

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "models").glob("tiles-*/model.onnx"))


@pytest.mark.skipif(not MODELS, reason="no committed models")
@pytest.mark.parametrize("path", MODELS, ids=[p.parent.name for p in MODELS])
def test_committed_model(path: Path) -> None:
    assert path.stat().st_size <= 20 * 1024 * 1024
    model = onnx.load(str(path))
    m = get_manifest(model)
    assert m["schema_version"] == 1 and m["method"] == "diffusionad"
    assert m["name"] == path.parent.name
    assert [i.name for i in model.graph.input] == [m["input"]["name"]]
    assert [o.name for o in model.graph.output] == [m["outputs"]["map"], m["outputs"]["score"]]
    assert m["threshold"] is not None and m["threshold"]["method"] == "quantile"
    assert m["normal_scores"]["n"] == m["threshold"]["n_images"] >= 20
    assert m["flops_per_frame"] > 0
    golden = json.loads(path.with_name("model.golden.json").read_text())
    assert len(golden["cases"]) >= 3
    verify_model(path)
    assert (path.parent / "MODEL.md").is_file()
