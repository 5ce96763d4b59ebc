"""Threshold calibration on good images.

Rule: with the n good scores sorted s_(1) <= ... <= s_(n) and q = 1 - target_frr,
k = ceil(q n) and threshold = s_(k) nudged up by one float32 ulp. The runtime rejects
at score >= threshold; thanks to the nudge s_(k) itself passes under ">=" and ">" alike,
so on the calibration set at most n - k <= floor(n target_frr) images are rejected.
With fewer than 1 / target_frr images this is simply just above the largest score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExporterError
from .onnxio import (
    get_manifest,
    load_model,
    ort_session,
    run_batched,
    save_model_atomic,
    set_manifest,
)
from .preprocess import list_images, preprocess_file

MIN_IMAGES = 20


def score_folder(model_path: Path, folder: Path, threads: int = 2) -> tuple[np.ndarray, list[Path]]:
    manifest = get_manifest(load_model(model_path))
    files = list_images(folder)
    inp = manifest["input"]
    imgs = np.stack([
        preprocess_file(p, inp["channels"], inp["height"], inp["width"], tuple(inp["range"]))
        for p in files
    ]) if files else np.zeros((0,))
    if not files:
        return np.zeros(0, np.float32), files
    sess = ort_session(model_path, threads)
    _, scores = run_batched(sess, imgs, inp["batch"])
    return scores, files


def quantile_threshold(scores: np.ndarray, target_frr: float) -> float:
    s = np.sort(np.asarray(scores, dtype=np.float32))
    n = len(s)
    k = min(n, max(1, math.ceil((1.0 - target_frr) * n - 1e-9)))
    return float(np.nextafter(s[k - 1], np.float32(np.inf)))


def normal_stats(scores: np.ndarray) -> dict[str, float]:
    s = np.asarray(scores, dtype=np.float64)
    return {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std()),
            "min": float(s.min()), "max": float(s.max()),
            "p50": float(np.percentile(s, 50)), "p99": float(np.percentile(s, 99))}


def calibrate(model_path: Path, good: Path, target_frr: float, threads: int = 2
              ) -> dict[str, Any]:
    if not 0.0 < target_frr < 1.0:
        raise ExporterError(f"--target-frr must be in (0, 1), got {target_frr}")
    model = load_model(model_path)
    manifest = get_manifest(model)
    if (good / "validation" / "good").is_dir():
        good = good / "validation" / "good"
    files = list_images(good)
    if len(files) < MIN_IMAGES:
        raise ExporterError(f"calibration needs at least {MIN_IMAGES} good images, "
                            f"{good} has {len(files)}")
    scores, _ = score_folder(model_path, good, threads)
    thr = quantile_threshold(scores, target_frr)
    manifest["threshold"] = {"value": thr, "method": "quantile", "target_frr": target_frr,
                             "n_images": int(len(scores)), "data": str(good)}
    manifest["normal_scores"] = normal_stats(scores)
    set_manifest(model, manifest)
    save_model_atomic(model, model_path)
    return manifest
