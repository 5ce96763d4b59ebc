"""scripts/train-device, the prepared GPU run, end to end on the CPU with a tiny budget."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_train_device_leaves_a_chosen_snapshot_per_texture(tiles: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    # a step limit, not a time one: a loaded machine would otherwise end the run before the
    # first snapshot (the first step waits for the worker process to start)
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train-device"), "--out", str(out), "--device",
         "cpu", "--minutes", "5", "--steps", "4", "--textures", "brick", "--batch", "2",
         "--workers", "1", "--keep-every", "1", "--max-selected", "4", "--tiles", str(tiles),
         "--work", str(work)],
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["brick.tar", "train-device.log"]
    with tarfile.open(out / "brick.tar") as tar:
        assert sorted(tar.getnames()) == ["chosen.pt", "loss.csv", "newest.pt", "selection.json",
                                          "train.log"]
        tar.extractall(tmp_path / "x", filter="data")
    sel = json.loads((tmp_path / "x" / "selection.json").read_text())
    # chosen on the validation split, from the snapshots of this run only
    assert sel["dataset"].endswith("brick/validation")
    assert [row["step"] for row in sel["rows"]] == [1, 2, 3, 4]
    # the second half is averaged too, and the held-out check decides which one ships
    assert (sel["average"]["averaged_from"], sel["average"]["step"]) == (3, 4)
    ck = torch.load(tmp_path / "x" / "chosen.pt", weights_only=False)
    assert ck["exporter"]["step"] == sel["chosen"]["step"] <= 4
    assert ck["exporter"]["training"]["device"] == "cpu"
    assert 0.0 <= sel["chosen"]["image_auroc"] <= 1.0
    averaged = ck["exporter"]["training"].get("averaged")
    assert (averaged is not None) == ("averaged_from" in sel["chosen"])
    want = "brick: chosen average of steps 3-4" if averaged else "brick: chosen step"
    assert want in (out / "train-device.log").read_text()


def test_train_device_refuses_an_unknown_texture(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train-device"), "--out",
                        str(tmp_path), "--textures", "marble"], capture_output=True, text=True)
    assert r.returncode != 0 and "no recipe for marble" in r.stderr
