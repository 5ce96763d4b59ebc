"""Weight averaging of snapshots and the held-out check that decides it (`average.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.__main__ import main
from exporter.average import average_snapshots, held_out_check
from exporter.errors import ExporterError
from exporter.select import format_selection, select, snapshots

from .conftest import write_blot_validation, write_images
from .test_edge import TINY_TRAIN


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny edge run with a snapshot at every one of its 4 steps."""
    root = tmp_path_factory.mktemp("avg")
    write_images(root / "good", 4)
    out = root / "ck"
    assert main(["train", *TINY_TRAIN, "--data", str(root / "good"), "--out", str(out),
                 "--steps", "4", "--keep-every", "1"]) == 0
    return out


def _load(p: Path) -> dict:
    return torch.load(p, map_location="cpu", weights_only=False)


def test_average_is_the_mean_of_the_snapshots(run: Path) -> None:
    chosen = [s for s in snapshots(run) if s[0] >= 2]
    ck = average_snapshots(chosen)
    parts = [_load(p) for _, p in chosen]
    moved = 0
    for key in ("unet_model_state_dict", "seg_model_state_dict"):
        for name, v in ck[key].items():
            if not v.is_floating_point():
                assert torch.equal(v, parts[-1][key][name])
                continue
            want = sum(p[key][name].double() for p in parts) / 3
            assert torch.allclose(v.double(), want, atol=1e-6), name
            moved += int(not torch.equal(parts[0][key][name], parts[-1][key][name]))
    assert moved > 0  # the snapshots differ, so the mean is not any one of them
    assert ck["exporter"]["training"]["averaged"] == {"from": 2, "to": 4, "steps": [2, 3, 4]}
    assert ck["exporter"]["step"] == 4


def test_average_refuses_what_does_not_belong_together(run: Path, tmp_path: Path) -> None:
    chosen = snapshots(run)
    with pytest.raises(ExporterError, match="at least two"):
        average_snapshots(chosen[-1:])
    bad = _load(chosen[1][1])
    name = next(iter(bad["seg_model_state_dict"]))
    bad["seg_model_state_dict"][name][...] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(ExporterError, match=r"nan\.pt.*NaN"):
        average_snapshots([chosen[0], (2, tmp_path / "nan.pt")])
    other = _load(chosen[1][1])
    other["exporter"]["seg"] = {**other["exporter"]["seg"], "widths": [8, 8, 8]}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ExporterError, match=r"other\.pt.*architecture"):
        average_snapshots([chosen[0], (2, tmp_path / "other.pt")])


def test_held_out_check_sees_through_a_lucky_snapshot() -> None:
    rng = np.random.default_rng(0)
    kinds = ["good"] * 40 + ["a"] * 20 + ["b"] * 20
    y = np.array([k != "good" for k in kinds], int)
    # 30 snapshots that are chance on new images, one lucky on some of them; the average
    # separates the two classes with some overlap
    single = rng.random((30, len(y)))
    average = y + rng.normal(0, 0.6, len(y))
    r = held_out_check(single.tolist(), average.tolist(), y, kinds, splits=50)
    assert 0.4 < r["best_single"] < 0.65  # chosen on one half, chance on the other
    assert r["average"] > 0.8 > r["best_single"]
    single[7] = y  # a snapshot that really is perfect is found, and holds up
    r = held_out_check(single.tolist(), average.tolist(), y, kinds, splits=50)
    assert r["best_single"] == 1.0 > r["average"]
    with pytest.raises(ExporterError, match="do not match"):
        held_out_check(single.tolist(), average[:-1].tolist(), y, kinds)
    with pytest.raises(ExporterError, match="two or more of each"):
        held_out_check(single[:, 39:41].tolist(), average[39:41].tolist(), y[39:41],
                       kinds[39:41])
    average[3] = np.nan
    with pytest.raises(ExporterError, match="NaN"):
        held_out_check(single.tolist(), average.tolist(), y, kinds)


def test_select_averages_the_tail_and_the_card_names_it(run: Path, tmp_path: Path,
                                                        capsys) -> None:
    val = write_blot_validation(tmp_path / "val", 4)
    r = select(run, val, threads=1, average_from=3)
    avg = r["average"]
    assert (avg["averaged_from"], avg["step"], avg["n_averaged"]) == (3, 4, 2)
    assert Path(avg["checkpoint"]).name == "average-000003-000004.pt"
    assert _load(Path(avg["checkpoint"]))["exporter"]["training"]["averaged"]["steps"] == [3, 4]
    h = avg["held_out"]
    assert h["splits"] == 200 and 0.0 <= h["best_single"] <= 1.0
    best = max(r["rows"], key=lambda row: (row["image_auroc"], row["pixel_auroc"],
                                           -row["step"]))
    assert r["chosen"] == (avg if h["average"] >= h["best_single"] else best)
    table = format_selection(r)
    assert "| average of 2, steps 3-4 |" in table and "Held-out check" in table
    assert table.count("averaged |") == 2  # steps 3 and 4 are marked as part of it
    # a second run reuses every row, the average's too
    import exporter.select as sel

    def no_export(*_a, **_k):
        raise AssertionError("exported again")

    orig, sel.export_model = sel.export_model, no_export
    try:
        again = select(run, val, threads=1, average_from=3)
    finally:
        sel.export_model = orig
    assert again["average"]["image_auroc"] == avg["image_auroc"]
    # too late a start leaves nothing to average: refused, named
    out = tmp_path / "sel.json"
    assert main(["select", "--checkpoints", str(run), "--dataset", str(val), "--threads", "1",
                 "--average-from", "4"]) == 2
    assert "--average-from 4" in capsys.readouterr().err
    # the exported average carries its origin into the manifest, and the card says it
    assert main(["select", "--checkpoints", str(run), "--dataset", str(val), "--threads", "1",
                 "--average-from", "3", "--out", str(out)]) == 0
    model = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", avg["checkpoint"], "--out", str(model),
                 "--threads", "1"]) == 0
    card = tmp_path / "MODEL.md"
    assert main(["card", str(model), "--dataset", str(val), "--out", str(card),
                 "--selection", str(out), "--threads", "1"]) == 0
    text = card.read_text()
    assert "uniform average of 2 snapshots, steps 3-4" in text
    assert "| average of 2, steps 3-4 |" in text
    assert json.loads(out.read_text())["average"]["n_averaged"] == 2
