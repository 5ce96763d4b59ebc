from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.__main__ import main
from exporter.calibrate import quantile_threshold, score_folder
from exporter.errors import ExporterError
from exporter.export import verify_model
from exporter.onnxio import get_manifest

from .conftest import write_images


def test_quantile_rule() -> None:
    s = np.arange(1, 201, dtype=np.float32)  # 200 scores
    thr = quantile_threshold(s, 0.005)  # k = ceil(0.995 * 200) = 199
    assert 199.0 < thr < 199.001
    assert (s > thr).sum() == 1
    s = np.arange(1, 67, dtype=np.float32)  # 66 scores: only the max is safe
    assert (s > quantile_threshold(s, 0.005)).sum() == 0
    assert quantile_threshold(s, 0.005) > s.max()


def test_calibrate_writes_threshold(exported: Path, tmp_path: Path, capsys) -> None:
    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    model = d / "tiny.onnx"
    good = tmp_path / "good"
    write_images(good, 24)
    assert main(["calibrate", str(model), "--good", str(good), "--target-frr", "0.05",
                 "--threads", "1"]) == 0
    m = get_manifest(onnx.load(str(model)))
    thr = m["threshold"]
    assert thr["method"] == "quantile" and thr["n_images"] == 24 and thr["target_frr"] == 0.05
    scores, _ = score_folder(model, good, 1)
    assert (scores >= thr["value"]).sum() <= int(24 * 0.05)
    ns = m["normal_scores"]
    assert set(ns) == {"n", "mean", "std", "min", "max", "p50", "p99"}
    assert ns["max"] == pytest.approx(float(scores.max()), abs=1e-6)
    verify_model(model)  # goldens stay valid: the graph did not change
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    assert "warning" not in capsys.readouterr().err  # 24 x 0.05 >= 1: the rate is resolvable


def test_calibrate_warns_when_too_few_images_for_the_rate(
        exported: Path, tmp_path: Path, capsys) -> None:
    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    good = tmp_path / "good"
    write_images(good, 24)
    assert main(["calibrate", str(d / "tiny.onnx"), "--good", str(good), "--target-frr", "0.005",
                 "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "24 good images cannot resolve" in err and "1/25 = 0.040" in err and "2000" in err


def test_calibrate_refuses_few_images(exported: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    write_images(good, 19)
    before = exported.read_bytes()
    assert main(["calibrate", str(exported), "--good", str(good)]) == 2
    err = capsys.readouterr().err
    assert "at least 20" in err and err.count("\n") == 1
    assert exported.read_bytes() == before


def test_calibrate_rejects_bad_image(exported: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    write_images(good, 21)
    (good / "zz.png").write_bytes(b"not a png")
    with pytest.raises(ExporterError, match="cannot read image"):
        score_folder(exported, good, 1)
    assert main(["calibrate", str(exported), "--good", str(good)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_warning_matches_the_quantile_rule(exported: Path, tmp_path: Path, capsys) -> None:
    """The warning is printed exactly when the threshold is the sample maximum."""
    from exporter.calibrate import quantile_rank

    for n, frr in ((200, 0.005), (100, 0.01), (20, 0.05), (199, 0.005), (400, 0.005)):
        s = np.arange(1, n + 1, dtype=np.float32)
        at_max = quantile_threshold(s, frr) > s.max()
        assert at_max == (quantile_rank(n, frr) == n) == (n * frr < 1 - 1e-9), (n, frr)
    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    good = tmp_path / "good"
    write_images(good, 20)  # 20 x 0.05 = 1: one image may lie above, so no warning
    assert main(["calibrate", str(d / "tiny.onnx"), "--good", str(good), "--target-frr", "0.05",
                 "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "only 1 of 20 good scores lie above" in err


def test_calibrate_hundreds_and_check_good(exported: Path, tmp_path: Path, capsys) -> None:
    import json

    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    model = d / "tiny.onnx"
    tex = tmp_path / "tiles" / "brick"  # the make-tiles layout, small images
    write_images(tex / "validation" / "good", 400, seed=1)
    write_images(tex / "validation" / "test" / "good", 60, seed=2)
    assert main(["calibrate", str(model), "--good", str(tex), "--check-good", str(tex),
                 "--target-frr", "0.005", "--threads", "1"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    thr = out["threshold"]
    assert thr["n_images"] == 400 and thr["data"] == str(tex / "validation" / "good")
    assert "warning" not in cap.err and "only 2 of 400" in cap.err
    scores, _ = score_folder(model, tex / "validation" / "good", 1)
    assert (scores >= thr["value"]).sum() == 2  # floor(400 x 0.005)
    check, _ = score_folder(model, tex / "validation" / "test" / "good", 1)
    c = out["check"]
    assert c["data"] == str(tex / "validation" / "test" / "good") and c["n_images"] == 60
    assert c["rejected"] == int((check >= thr["value"]).sum())
    assert c["false_reject_rate"] == pytest.approx(c["rejected"] / 60)
    assert f"{c['rejected']}/60" in cap.err
    # the manifest keeps its schema: the check is reported, not stored
    assert "check" not in get_manifest(onnx.load(str(model)))["threshold"]
    # checking on the calibration images themselves is refused
    before = model.read_bytes()
    assert main(["calibrate", str(model), "--good", str(tex), "--check-good",
                 str(tex / "validation" / "good")]) == 2
    assert "calibration folder itself" in capsys.readouterr().err
    assert model.read_bytes() == before
