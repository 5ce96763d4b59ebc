"""Bad input: one line on stderr, exit code 2, nothing partial left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.__main__ import main
from exporter.errors import ExporterError
from exporter.preprocess import load_pixels


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_missing_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "not found" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_garbage_checkpoint(tmp_path: Path, capsys) -> None:
    ck = tmp_path / "last.pt"
    ck.write_bytes(b"\x00garbage")
    assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "cannot read checkpoint" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_existing_output_needs_force(exported: Path, capsys) -> None:
    assert main(["export", "--checkpoint", str(exported), "--out", str(exported)]) == 2
    before = exported.read_bytes()
    assert "exists (use --force" in _one_line_error(capsys)
    assert exported.read_bytes() == before


def test_missing_model_and_no_manifest(tmp_path: Path, capsys) -> None:
    assert main(["verify", str(tmp_path / "none.onnx")]) == 2
    assert "not found" in _one_line_error(capsys)
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    p = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g), str(p))
    assert main(["verify", str(p)]) == 2
    assert "diffad.manifest" in _one_line_error(capsys)


def test_unreadable_and_odd_images(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    with pytest.raises(ExporterError, match="cannot read image"):
        load_pixels(bad, 1)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 5), np.uint8)).save(tiny)
    with pytest.raises(ExporterError, match="too small"):
        load_pixels(tiny, 1)
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(ok)  # RGBA is converted
    assert load_pixels(ok, 3).shape == (4, 4, 3)
    with pytest.raises(ExporterError, match="channel"):
        load_pixels(ok, 2)


def test_train_bad_inputs(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "ck"),
                 "--image-size", "32", "--steps", "1"]) == 2
    assert "no images" in _one_line_error(capsys)
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "ck"),
                 "--image-size", "32"]) == 2
    _one_line_error(capsys)
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "ck"),
                 "--image-size", "50"]) == 2
    assert "multiple of 32" in _one_line_error(capsys)
