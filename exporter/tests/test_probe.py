"""The feature probe: the Gaussian's distances, and the command on a tiny recipe checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exporter.__main__ import main
from exporter.errors import ExporterError
from exporter.probe import fit_gaussian, mahalanobis_maps

from .test_recipes import small_dataset


def test_an_outlying_position_is_the_maps_peak_and_the_mean_scores_zero() -> None:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(8, 3, 8, 8, generator=g)
    mean, precision = fit_gaussian(normal)
    probe = torch.randn(1, 3, 8, 8, generator=g)
    probe[0, :, 5, 2] = torch.tensor([6.0, -6.0, 6.0])
    m = mahalanobis_maps(probe, mean, precision, 8)[0]
    assert m.shape == (8, 8) and m.argmax() == 5 * 8 + 2
    at_mean = mean.float().view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    assert mahalanobis_maps(at_mean, mean, precision, 2).max() < 1e-3


def test_too_few_positions_for_the_channels_is_an_error() -> None:
    with pytest.raises(ExporterError, match="cannot fit a Gaussian"):
        fit_gaussian(torch.zeros(1, 16, 2, 2))


def test_the_probe_runs_on_the_validation_split_only(tiles: Path, tmp_path: Path) -> None:
    data = tiles / "brick"
    ck = tmp_path / "ck"
    train = ["recipe-train", "--data", str(data), "--steps", "1", "--batch", "2", "--crop", "32",
             "--widths", "16,16,16,16"]
    assert main([*train, "--recipe", "advrad", "--out", str(ck)]) == 0
    val = small_dataset(data / "validation", tmp_path / "val")
    out = tmp_path / "probe.json"
    probe = ["feature-probe", "--checkpoint", str(ck / "last.pt"), "--train",
             str(data / "train" / "good"), "--levels", "1,0+2", "--t", "0,50", "--top-k", "50"]
    assert main([*probe, "--dataset", str(val), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["rows"]) == 4 and r["train_images"] == len(list((data / "train/good").iterdir()))
    assert all(0.0 <= row["image_auroc"] <= 1.0 for row in r["rows"])
    assert r["best"]["image_auroc"] == max(row["image_auroc"] for row in r["rows"])
    assert main([*probe, "--dataset", str(data)]) == 2  # the tiles root holds the test set
    assert main([*probe[:-6], "--levels", "7", "--dataset", str(val)]) == 2
    dte = tmp_path / "dte"
    assert main([*train, "--recipe", "dte", "--out", str(dte)]) == 0
    assert main(["feature-probe", "--checkpoint", str(dte / "last.pt"), "--train",
                 str(data / "train" / "good"), "--dataset", str(val)]) == 2
