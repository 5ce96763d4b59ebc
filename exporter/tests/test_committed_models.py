"""The reference models committed under models/: manifest, goldens, size (ORT only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest

from exporter.evaluate import evaluate, format_table
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
    # the manifest's count is the graph's real work (within 1 %), not a shape-inference guess
    from exporter.onnxio import count_flops

    real = count_flops(model) / m["input"]["batch"]
    assert abs(m["flops_per_frame"] - real) <= 0.01 * real, (m["flops_per_frame"], real)
    golden = json.loads(path.with_name("model.golden.json").read_text())
    assert len(golden["cases"]) >= 3
    verify_model(path)
    assert (path.parent / "MODEL.md").is_file()


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+|\d+", text)]


@pytest.mark.skipif(not MODELS, reason="no committed models")
@pytest.mark.parametrize("path", MODELS, ids=[p.parent.name for p in MODELS])
def test_evaluation_reproduces_card(path: Path, tiles: Path) -> None:
    """The card's evaluation table is what `exporter evaluate` gives on a fresh make-tiles."""
    card = (path.parent / "MODEL.md").read_text()
    texture = path.parent.name.removeprefix("tiles-")
    table = format_table(evaluate(path, tiles / texture, threads=1)).splitlines()
    first = next(i for i, line in enumerate(card.splitlines()) if line.startswith("image AUROC"))
    carded = card.splitlines()[first : first + len(table)]
    for got, want in zip(table, carded, strict=True):
        assert re.sub(r"[\d.]+", "#", got) == re.sub(r"[\d.]+", "#", want), (got, want)
        # 4-decimal figures: allow one rounding step of drift across CPUs
        assert _numbers(got) == pytest.approx(_numbers(want), abs=2e-4), (got, want)
