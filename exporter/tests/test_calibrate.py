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
    assert "warning:" not in capsys.readouterr().err  # 24 x 0.05 >= 1: the rate is resolvable


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
    assert "warning:" not in err and "only 1 of 20 good scores lie above" in err


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
    assert "warning:" not in cap.err and "only 2 of 400" in cap.err
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


def test_drift_statistics() -> None:
    from exporter.calibrate import drift

    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 0.05, 300)
    same = drift(a, rng.normal(0.3, 0.05, 200))
    assert not same["differ"] and same["shift_std"] < 0.5 and same["ks_p"] > 0.01
    shifted = drift(a, rng.normal(0.33, 0.05, 200))  # 0.6 std apart
    assert shifted["differ"] and shifted["shift_std"] > 0.5
    assert shifted["calibration_mean"] == pytest.approx(a.mean())


def test_calibrate_defects_max_escapes_plot_and_drift(
        exported: Path, tmp_path: Path, capsys) -> None:
    import json

    from PIL import Image

    from exporter.sweep import escape_point

    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    model = d / "tiny.onnx"
    good = tmp_path / "good"
    write_images(good, 24)
    root = tmp_path / "val"  # MVTec-style: root/test/<kind>, good and ground_truth ignored
    write_images(root / "test" / "good", 3, seed=7)
    write_images(root / "test" / "spot", 10, seed=5)
    write_images(root / "ground_truth" / "spot", 10, seed=6)
    flat = tmp_path / "flat"  # other "good" images, unlike the calibration ones
    flat.mkdir()
    for i in range(20):
        Image.fromarray(np.full((32, 32), 40 + i, np.uint8)).save(flat / f"{i:03d}.png")
    plot = tmp_path / "cal.png"
    assert main(["calibrate", str(model), "--good", str(good), "--defects", str(root),
                 "--max-escapes", "0.2", "--check-good", str(flat), "--plot", str(plot),
                 "--max-frr", "1", "--threads", "1"]) == 0  # untrained: accepted knowingly
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    thr = get_manifest(onnx.load(str(model)))["threshold"]
    assert thr["method"] == "max_escapes" and thr["max_escapes"] == 0.2
    assert thr["n_defects"] == 10 and thr["defects"] == str(root / "test")
    gs, _ = score_folder(model, good, 1)
    bs, _ = score_folder(model, root / "test" / "spot", 1)
    p = escape_point(gs, bs, 0.2)
    assert thr["value"] == pytest.approx(p.threshold, rel=1e-6)
    assert (bs < thr["value"]).sum() <= 2  # 20% of 10
    assert out["defects"]["escapes"] == int((bs < thr["value"]).sum())
    # fewest false rejects: nxt[0] is the chosen candidate (the threshold sits just below it),
    # the next larger one would let more than 20% escape
    allv = np.unique(np.r_[gs, bs])
    nxt = allv[allv > thr["value"]]
    assert (bs < nxt[0]).mean() <= 0.2
    assert len(nxt) < 2 or (bs < nxt[1]).mean() > 0.2
    assert "target                 threshold" in cap.err and "recommended threshold" in cap.err
    assert "escapes <= 20%" in cap.err
    assert out["sweep"]["defective"] == 10 and out["sweep"]["good"] == 24
    # the flat check images score unlike the calibration images
    assert out["check"]["drift"]["differ"]
    assert "score differently" in cap.err
    assert f"{out['check']['drift']['check_mean']:.6f}" in cap.err
    with Image.open(plot) as im:
        assert im.size == (720, 440)
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(px, axis=0)) > 3  # curves drawn, not a blank image
    # --max-escapes without --defects is refused
    assert main(["calibrate", str(model), "--good", str(good), "--max-escapes", "0.1"]) == 2
    assert "--defects" in capsys.readouterr().err


def test_calibrate_default_plot_beside_the_model(exported: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    good = tmp_path / "good"
    write_images(good, 20)
    assert main(["calibrate", str(d / "tiny.onnx"), "--good", str(good), "--target-frr",
                 "0.05", "--threads", "1"]) == 0
    assert (d / "tiny.calibration.png").is_file()


def test_images_smaller_than_the_model_are_refused_unless_allow_upscale(
        exported: Path, tmp_path: Path, capsys) -> None:
    # The tiny model takes 32 x 32; 24-px images were silently enlarged before.
    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    small = tmp_path / "small"
    write_images(small, 24, size=24)
    args = ["calibrate", str(d / "tiny.onnx"), "--good", str(small), "--target-frr", "0.05",
            "--threads", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "000.png: 24x24 is smaller than the model's input 32x32" in err
    assert "--allow-upscale" in err
    assert main([*args, "--allow-upscale"]) == 0
    err = capsys.readouterr().err
    assert err.count("upscaled to the model's 32x32") == 1, err  # once per size, not per image
    # The rule is per command line: the next one refuses again.
    assert main(args) == 2


def test_an_operating_point_over_the_false_reject_ceiling_is_refused_and_nothing_written(
        exported: Path, tmp_path: Path, capsys) -> None:
    import json

    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    model = d / "tiny.onnx"
    before = model.read_bytes()
    good = tmp_path / "good"
    write_images(good, 24)
    bad = tmp_path / "bad"
    write_images(bad, 10, seed=5)  # the same noise as the good ones: the model cannot tell them
    args = ["calibrate", str(model), "--good", str(good), "--defects", str(bad),
            "--max-escapes", "0", "--threads", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot meet escapes <= 0 % within the false-reject ceiling --max-frr 0.1" in err
    assert f"Nothing was written to {model}" in err and "target" in err and "threshold" in err
    assert model.read_bytes() == before
    # Accepted knowingly: written, with the rates it costs in the manifest.
    assert main([*args, "--max-frr", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    thr = get_manifest(onnx.load(str(model)))["threshold"]
    assert thr["false_reject_rate"] == out["calibration"]["false_reject_rate"] > 0.1
    assert thr["escape_rate"] == 0.0 and thr["max_frr"] == 1.0
    # A target above the ceiling is a contradiction, refused before any scoring.
    assert main(["calibrate", str(model), "--good", str(good), "--target-frr", "0.2"]) == 2
    assert "above the ceiling --max-frr 0.1" in capsys.readouterr().err
