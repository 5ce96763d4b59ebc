"""`unlike-training` and `calibrate --train`: the shipped brick model, brick crops from the
training columns (x < 384) as the training set, and grass crops slipped among other brick crops
as content the training never had."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models/tiles-brick/model.onnx"
TILE = 128


def crops(photo: np.ndarray, folder: Path, n: int, seed: int, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        y, x = int(rng.integers(0, 512 - TILE)), int(rng.integers(0, 384 - TILE))
        Image.fromarray(photo[y:y + TILE, x:x + TILE]).save(folder / f"{prefix}{i:03}.png")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    skd = pytest.importorskip("skimage.data")
    d = tmp_path_factory.mktemp("novelty")
    crops(skd.brick(), d / "train", 40, seed=1)
    crops(skd.brick(), d / "calib", 30, seed=2)
    crops(skd.grass(), d / "calib", 3, seed=3, prefix="grass")
    crops(skd.grass(), d / "all-grass", 12, seed=4)
    return d


def test_images_unlike_training_are_listed_with_thumbnails(sets: Path, capsys) -> None:
    sheet = sets / "sheet.png"
    assert main(["unlike-training", str(MODEL), "--train", str(sets / "train"),
                 str(sets / "calib"), str(sets / "all-grass"), "--sheet", str(sheet),
                 "--threads", "1"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    calib, grass = out["checked"]
    listed = sorted(Path(u["image"]).name for u in calib["unlike"])
    assert listed == ["grass000.png", "grass001.png", "grass002.png"], listed
    assert not calib["shifted"]  # 3 odd images in 33 do not move the folder's median
    assert all(u["score"] > out["train"]["max"] and u["z"] > 3 for u in calib["unlike"])
    # A folder of nothing but novel content is called out as a whole.
    assert grass["shifted"] and len(grass["unlike"]) == 12
    assert "WARNING: " + str(sets / "all-grass") in cap.err and "grass000.png" in cap.err
    with Image.open(sheet) as im:
        assert im.size[0] >= 6 * 112 and im.size[1] >= 3 * 112  # 15 thumbnails, 6 a row


def test_calibrate_lists_them_before_calibrating(sets: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(MODEL.read_bytes())
    # The grass crops push the threshold up; whatever calibrate decides, the reason is shown.
    main(["calibrate", str(model), "--good", str(sets / "calib"), "--train", str(sets / "train"),
          "--target-frr", "0.05", "--max-frr", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert err.index("3 of 33 images unlike training") < err.index("recommended threshold")
    assert (tmp_path / "model.unlike-training.png").exists()


def test_too_few_training_images_is_an_error_naming_the_folder(
        sets: Path, tmp_path: Path, capsys) -> None:
    few = tmp_path / "few"
    crops(np.zeros((512, 512), np.uint8) + 128, few, 4, seed=0)
    assert main(["unlike-training", str(MODEL), "--train", str(few), str(sets / "calib")]) == 2
    assert f"--train {few}: 4 images" in capsys.readouterr().err
