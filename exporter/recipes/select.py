"""Choosing a recipe's stopping point and settings on the validation split, never on the
evaluation set: every kept snapshot, at every setting of a small grid, is scored in PyTorch
on `TILES/<texture>/validation`; the best by image AUROC, then pixel AUROC, then the earlier
step, wins. The table is what the README's comparison quotes for "how it was chosen"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluate import load_dataset, metrics, per_kind_auroc
from ..export import run_torch
from ..preprocess import preprocess_file
from ..select import check_validation_split, selection_key, snapshots
from .export import RANGE, RecipeExportOptions, detector
from .train import load_recipe_checkpoint

# top-k that averages the whole 128x128 map: the mean reconstruction error, AnoDDPM's own score
MEAN = 128 * 128
# The settings tried per recipe (beside the snapshot): AdvRAD's noise level, DTE's pooling,
# AnoDDPM's noise level (the paper's is a quarter of T; textures keep their detail at less), step
# rule and pooling.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "advrad": [{"t": 50}, {"t": 100}, {"t": 200}, {"t": 50, "top_k": MEAN},
               {"t": 100, "top_k": MEAN}],
    "dte": [{"top_k": 50}, {"top_k": 1000}, {"top_k": MEAN}],
    "anoddpm": [{"t_start": 250, "kind": "ddpm", "top_k": 50},
                {"t_start": 50, "kind": "ddpm", "top_k": 50},
                {"t_start": 50, "kind": "ddim", "top_k": 50},
                {"t_start": 50, "kind": "ddpm", "top_k": MEAN},
                {"t_start": 50, "kind": "ddim", "top_k": MEAN},
                {"t_start": 100, "kind": "ddim", "top_k": MEAN}],
}


def apply(o: RecipeExportOptions, setting: dict[str, Any]) -> RecipeExportOptions:
    if "t" in setting:
        o = replace(o, t=setting["t"])
    if "top_k" in setting:
        o = replace(o, score=replace(o.score, top_k=setting["top_k"]))
    if "t_start" in setting:
        o = replace(o, sampler=replace(o.sampler, t_start=setting["t_start"]))
    if "kind" in setting:
        o = replace(o, sampler=replace(o.sampler, kind=setting["kind"]))
    return o


def score_images(det: torch.nn.Module, images: np.ndarray, batch: int = 16):
    """(maps [N, H, W], scores [N]); the last batch is padded (AdvRAD bakes the batch size)."""
    with torch.no_grad():
        maps, scores = run_torch(det, images, batch)
    return maps[:, 0], scores


def select_recipe(folder: Path, dataset: Path, base: RecipeExportOptions, every: int = 0,
                  threads: int = 1) -> dict[str, Any]:
    check_validation_split(dataset)
    torch.set_num_threads(threads)
    rows = []
    images = None
    for step, path in snapshots(folder, every):
        record, net = load_recipe_checkpoint(path)
        n = record["network"]
        if images is None:
            size, ch = n["image_size"], n["in_channels"]
            files, y, kinds, gt = load_dataset(dataset, size, size)
            images = np.stack([preprocess_file(p, ch, size, size, RANGE) for p in files])
        for setting in GRIDS[record["recipe"]]:
            o = apply(base, setting)
            maps, scores = score_images(detector(record, net, replace(o, batch=16)), images)
            m = metrics(dataset, maps, scores, y, gt)
            per_kind = per_kind_auroc(scores, y, kinds)
            row = {"step": step, "checkpoint": str(path), "setting": setting,
                   "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                   "pro_30": m["pro_30"], "per_kind_auroc": per_kind}
            print(f"step {step} {setting}: image AUROC {row['image_auroc']:.4f}, pixel AUROC "
                  f"{row['pixel_auroc']:.4f}, PRO@30% {row['pro_30']:.4f}", flush=True)
            rows.append(row)
    best = max(rows, key=selection_key)
    return {"dataset": str(dataset), "recipe": record["recipe"],
            "criterion": "image AUROC, then pixel AUROC, then earlier", "rows": rows,
            "chosen": best}
