from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.__main__ import main
from exporter.errors import ExporterError
from exporter.evaluate import evaluate, format_table, pro_auc
from exporter.tiles import DEFECTS, make_tiles, photo


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_tile_layout(tiles: Path) -> None:
    for tex in ("brick", "grass", "gravel"):
        root = tiles / tex
        assert len(list((root / "train" / "good").glob("*.png"))) >= 40
        assert len(list((root / "validation" / "good").glob("*.png"))) >= 40
        assert len(list((root / "test" / "good").glob("*.png"))) >= 10
        for kind in DEFECTS:
            imgs = sorted((root / "test" / kind).glob("*.png"))
            assert imgs
            for p in imgs[:3]:
                m = np.asarray(Image.open(root / "ground_truth" / kind / f"{p.stem}_mask.png"))
                assert m.shape == (128, 128) and set(np.unique(m)) <= {0, 255} and m.any()
        assert (tiles / "photos" / f"{tex}.png").is_file()
    # regions: test tiles come from x >= 384, train from x < 384, y < 320
    # (test_validation_split.py checks every tile against the tiles.json manifest)
    img = photo("brick")
    t0 = np.asarray(Image.open(tiles / "brick" / "test" / "good" / "000.png"))
    assert np.array_equal(t0, img[0:128, 384:512])
    r0 = np.asarray(Image.open(tiles / "brick" / "train" / "good" / "000.png"))
    assert np.array_equal(r0, img[0:128, 0:128])


def test_tiles_deterministic_and_refuse_overwrite(tiles: Path, tmp_path: Path) -> None:
    with pytest.raises(ExporterError, match="exists"):
        make_tiles(tiles)
    make_tiles(tmp_path, seed=0)
    for rel in ("gravel/test/crack/003.png", "grass/ground_truth/stain/005_mask.png"):
        assert _md5(tiles / rel) == _md5(tmp_path / rel)


def test_pro_perfect_and_random() -> None:
    gt = np.zeros((2, 16, 16), bool)
    gt[0, 2:6, 2:6] = True
    gt[1, 8:12, 3:5] = True
    assert pro_auc(gt.astype(np.float32), gt) == pytest.approx(1.0, abs=0.02)
    rnd = np.random.default_rng(0).random(gt.shape).astype(np.float32)
    assert pro_auc(rnd, gt) < 0.4


def _tiny_dataset(ds: Path) -> Path:
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(100, 140, (32, 32), dtype=np.uint8)).save(
            (ds / "test" / "good").mkdir(parents=True, exist_ok=True)
            or ds / "test" / "good" / f"{i:03d}.png")
        a = rng.integers(100, 140, (32, 32), dtype=np.uint8)
        m = np.zeros((32, 32), np.uint8)
        m[4:12, 4:12] = 255
        a[m > 0] = 255
        (ds / "test" / "spot").mkdir(parents=True, exist_ok=True)
        (ds / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(ds / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray(m).save(ds / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    return ds


def test_evaluate_tiny_dataset(exported: Path, tmp_path: Path, capsys) -> None:
    ds = _tiny_dataset(tmp_path / "ds")
    r = evaluate(exported, ds, threads=1)
    for k in ("image_auroc", "pixel_auroc", "pro_30"):
        assert 0.0 <= r[k] <= 1.0
    assert r["threshold"] is None and "escape_rate" not in r["per_kind"]["spot"]
    assert "| spot | 4 |" in format_table(r)
    assert main(["evaluate", str(exported), "--dataset", str(ds), "--json"]) == 0
    assert '"image_auroc"' in capsys.readouterr().out
    shutil.rmtree(ds / "ground_truth")
    assert main(["evaluate", str(exported), "--dataset", str(ds)]) == 2
    assert "missing mask" in capsys.readouterr().err


def test_evaluate_threshold_and_sweep(exported: Path, tmp_path: Path, capsys) -> None:
    import json

    from exporter.sweep import sweep

    ds = _tiny_dataset(tmp_path / "ds")
    r = evaluate(exported, ds, threads=1, threshold=-1.0, sweep=True)
    # every score is >= -1: all good parts rejected, no defect escapes
    assert r["threshold"] == -1.0 and r["threshold_source"] == "--threshold"
    assert r["false_reject_rate"] == 1.0 and r["escape_rate"] == 0.0
    assert r["sweep"]["good"] == 4 and r["sweep"]["defective"] == 4
    assert r["sweep"]["points"] and r["sweep"]["points"][0]["target"] == "escapes<=0"
    assert main(["evaluate", str(exported), "--dataset", str(ds), "--threshold", "1e9",
                 "--sweep", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["escape_rate"] == 1.0 and j["false_reject_rate"] == 0.0
    assert j["sweep"] == r["sweep"]
    # the threshold for "escapes <= 0" lets no defect escape
    p0 = j["sweep"]["points"][0]
    assert p0["escapes"] == 0 and p0["escape"] == 0.0
    assert sweep([0.0], [1.0])["points"][0]["threshold"] == 0.5
    assert main(["evaluate", str(exported), "--dataset", str(ds), "--sweep"]) == 0
    out = capsys.readouterr().out
    assert "target                 threshold   false rejects        escapes" in out
    assert "escapes <= 0%" in out
