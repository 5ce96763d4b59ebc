from __future__ import annotations

import json
import shutil
from pathlib import Path

from exporter.__main__ import main
from exporter.card import image_counts, tiles_texture, write_card
from exporter.onnxio import graph_sha256, load_model

from .test_tiles_eval import _tiny_dataset

TILES_ONLY = ("scikit-image", "make-tiles", "exporter/tiles.py", "x >= 384")


def test_card_describes_the_users_data(exported: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    model = d / "tiny.onnx"
    ds = _tiny_dataset(tmp_path / "part")
    assert tiles_texture(ds) is None
    assert image_counts(ds) == {"test/good": 4, "test/spot": 4}  # masks not counted
    out = d / "MODEL.md"
    write_card(model, ds, out, threads=1)
    card = out.read_text()
    for phrase in TILES_ONLY:
        assert phrase not in card, phrase
    assert f"grey images; evaluated on `{ds}`" in card
    assert "- `test/good`: 4" in card and "- `test/spot`: 4" in card
    assert "- `tiny.onnx` (" in card and "`tiny.golden.json` + `tiny.golden/`" in card
    assert "model.onnx" not in card
    sha = graph_sha256(load_model(model))
    assert f"model id (graph sha256, unchanged by calibrate) `{sha}`" in card
    assert "checkpoint sha256 `x`" in card
    assert "4 good, 4 defective in spot" in card


def test_card_tiles_text_only_for_make_tiles_output(exported: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(exported.parent, d)
    ds = _tiny_dataset(tmp_path / "brick")
    (ds / "tiles.json").write_text(json.dumps({"texture": "brick", "tiles": {}}))
    assert tiles_texture(ds) == "brick"
    out = d / "MODEL.md"
    write_card(d / "tiny.onnx", ds, out, threads=1)
    card = out.read_text()
    assert "grey tiles of scikit-image `brick()`" in card
    assert "defects are made by `exporter/tiles.py`" in card
    assert "## Data" not in card
    (ds / "tiles.json").write_text("not json")
    assert tiles_texture(ds) is None


def test_export_prints_the_model_id(tmp_path: Path, capsys) -> None:
    import torch

    from .conftest import tiny_models, tiny_unet_cfg

    unet, seg = tiny_models()
    ck = {"unet_model_state_dict": unet.state_dict(), "seg_model_state_dict": seg.state_dict(),
          "n_epoch": 1, "exporter": {"unet": tiny_unet_cfg().to_dict(), "seg": seg.cfg.to_dict(),
                                     "step": 1, "wall_seconds": 0.0, "training": {}}}
    torch.save(ck, tmp_path / "last.pt")
    out = tmp_path / "e.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "last.pt"), "--out", str(out),
                 "--threads", "1"]) == 0
    sha = graph_sha256(load_model(out))
    assert f"model id (graph sha256) {sha[:12]}" in capsys.readouterr().out
