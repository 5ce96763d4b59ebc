from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporter.diffusion import DiffusionConfig, OneStepDetector
from exporter.errors import ExporterError
from exporter.export import ExportOptions, export_model, verify_model
from exporter.onnxio import MANIFEST_KEY, get_manifest, graph_sha256, ort_session
from exporter.preprocess import preprocess_file

from .conftest import tiny_models


def test_graph_io_and_manifest(exported: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 32, 32]
    assert model.opset_import[0].version >= 17
    m = get_manifest(model)
    assert MANIFEST_KEY == "diffad.manifest"
    assert m["schema_version"] == 1 and m["method"] == "diffusionad"
    assert m["input"] == {"name": "image", "batch": 1, "channels": 1, "height": 32,
                          "width": 32, "range": [0.0, 1.0], "resize": "bilinear"}
    assert m["outputs"] == {"map": "anomaly_map", "score": "score"}
    assert m["diffusion"]["t_s"] == 200 and m["diffusion"]["t_b"] == 400
    assert m["score"] == {"reduction": "topk_mean", "top_k": 10, "range": [0.0, 1.0]}
    assert m["threshold"] is None and m["normal_scores"] is None
    assert m["flops_per_frame"] > 0
    for key in ("architecture", "training", "checkpoint_sha256", "exporter_version", "name"):
        assert key in m
    # no int64 Sin/Cos, no Einsum: timestep embeddings are constants, attention is MatMul
    ops = {n.op_type for n in model.graph.node}
    assert "Einsum" not in ops and "Sin" not in ops and "Cos" not in ops


def test_ort_matches_pytorch_and_goldens(exported: Path) -> None:
    gjson = exported.with_name("tiny.golden.json")
    golden = json.loads(gjson.read_text())
    assert golden["model_sha256"] == graph_sha256(onnx.load(str(exported)))
    assert len(golden["cases"]) >= 3
    unet, seg = tiny_models()
    det = OneStepDetector(unet, seg, DiffusionConfig(top_k=10)).eval()
    sess = ort_session(exported, 1)
    for case in golden["cases"]:
        png = gjson.parent / case["image"]
        assert png.is_file()
        x = preprocess_file(png, 1, 32, 32)[None]
        amap, score = sess.run(["anomaly_map", "score"], {"image": x})
        assert amap.shape == (1, 1, 32, 32) and score.shape == (1,)
        with torch.no_grad():
            tm, ts = det(torch.from_numpy(x))
        assert np.abs(tm.numpy() - amap).max() <= 1e-4
        assert abs(float(score[0]) - case["score"]) < 1e-6
        assert abs(float(amap.max()) - case["map_max"]) < 1e-6
    r = verify_model(exported)
    assert r["max_err"] < 1e-5


def test_export_refuses_existing_output(exported: Path) -> None:
    unet, seg = tiny_models()
    with pytest.raises(ExporterError, match="exists"):
        export_model(unet, seg, {}, exported, ExportOptions(name="x", diff=DiffusionConfig()))


def test_batch_and_fp16_export(tmp_path: Path) -> None:
    unet, seg = tiny_models()
    out = tmp_path / "b2.onnx"
    r = export_model(unet, seg, {}, out, ExportOptions(name="b2", diff=DiffusionConfig(),
                                                       batch=2, opset=18))
    assert r["map_max_abs_err"] <= 1e-4
    sess = ort_session(out, 1)
    m, s = sess.run(None, {"image": np.random.rand(2, 1, 32, 32).astype(np.float32)})
    assert m.shape == (2, 1, 32, 32) and s.shape == (2,)
    unet, seg = tiny_models()
    out16 = tmp_path / "h.onnx"
    r16 = export_model(unet, seg, {}, out16, ExportOptions(name="h", diff=DiffusionConfig(),
                                                           fp16=True))
    assert r16["manifest"]["architecture"]["precision"] == "fp16"
    assert out16.stat().st_size < 0.7 * out.stat().st_size
    verify_model(out16)


def test_verify_detects_tampering(exported: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(exported.parent, d)
    g = d / "tiny.golden.json"
    data = json.loads(g.read_text())
    data["cases"][0]["score"] += 0.01
    g.write_text(json.dumps(data))
    with pytest.raises(ExporterError, match="golden mismatch"):
        verify_model(d / "tiny.onnx")


def test_bad_export_options(tmp_path: Path) -> None:
    unet, seg = tiny_models()
    with pytest.raises(ExporterError, match="opset"):
        export_model(unet, seg, {}, tmp_path / "a.onnx",
                     ExportOptions(name="a", diff=DiffusionConfig(), opset=13))
    with pytest.raises(ExporterError, match="t_s"):
        export_model(unet, seg, {}, tmp_path / "a.onnx",
                     ExportOptions(name="a", diff=DiffusionConfig(t_s=1000)))
    assert list(tmp_path.iterdir()) == []
