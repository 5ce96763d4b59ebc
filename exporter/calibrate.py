"""Threshold calibration on good images.

Rule: with the n good scores sorted s_(1) <= ... <= s_(n) and q = 1 - target_frr,
k = ceil(q n) and threshold = s_(k) nudged up by one float32 ulp. The runtime rejects
at score >= threshold; thanks to the nudge s_(k) itself passes under ">=" and ">" alike,
so on the calibration set at most n - k <= floor(n target_frr) images are rejected.
With fewer than 1 / target_frr images this is simply just above the largest score.

`check_good` scores a second folder of good images (e.g. make-tiles'
`validation/test/good`, crops disjoint from `validation/good`) and reports the false-reject
rate of the new threshold on it: an honest estimate, unlike the rate on the calibration
images, which is at most target_frr by construction.
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


def quantile_rank(n: int, target_frr: float) -> int:
    """k: the threshold sits just above the k-th smallest of n scores (k == n: the maximum)."""
    return min(n, max(1, math.ceil((1.0 - target_frr) * n - 1e-9)))


def quantile_threshold(scores: np.ndarray, target_frr: float) -> float:
    s = np.sort(np.asarray(scores, dtype=np.float32))
    k = quantile_rank(len(s), target_frr)
    return float(np.nextafter(s[k - 1], np.float32(np.inf)))


def normal_stats(scores: np.ndarray) -> dict[str, float]:
    s = np.asarray(scores, dtype=np.float64)
    return {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std()),
            "min": float(s.min()), "max": float(s.max()),
            "p50": float(np.percentile(s, 50)), "p99": float(np.percentile(s, 99))}


CALIBRATION_SUBDIRS = (("validation", "good"), ("good",))
CHECK_SUBDIRS = (("validation", "test", "good"), ("test", "good"), ("good",))


def good_folder(path: Path, subdirs: tuple[tuple[str, ...], ...]) -> Path:
    """`path` if it holds images, else its first existing `subdirs` entry: for calibration a
    make-tiles texture dir means validation/good; for a check, validation/test/good."""
    if path.is_dir() and list_images(path):
        return path
    for sub in subdirs:
        if path.joinpath(*sub).is_dir():
            return path.joinpath(*sub)
    return path


def calibrate(model_path: Path, good: Path, target_frr: float, threads: int = 2,
              check_good: Path | None = None) -> dict[str, Any]:
    """Set the manifest threshold from `good`; with `check_good`, also return the
    false-reject rate of that threshold on those other good images under "check"."""
    if not 0.0 < target_frr < 1.0:
        raise ExporterError(f"--target-frr must be in (0, 1), got {target_frr}")
    model = load_model(model_path)
    manifest = get_manifest(model)
    good = good_folder(good, CALIBRATION_SUBDIRS)
    files = list_images(good)
    if len(files) < MIN_IMAGES:
        raise ExporterError(f"calibration needs at least {MIN_IMAGES} good images, "
                            f"{good} has {len(files)}")
    if check_good is not None:
        check_good = good_folder(check_good, CHECK_SUBDIRS)
        if not list_images(check_good):
            raise ExporterError(f"no images in {check_good}")
        if check_good.resolve() == good.resolve():
            raise ExporterError(f"--check-good {check_good} is the calibration folder itself")
    scores, _ = score_folder(model_path, good, threads)
    thr = quantile_threshold(scores, target_frr)
    check = None
    if check_good is not None:
        cs, _ = score_folder(model_path, check_good, threads)
        rejected = int((cs >= thr).sum())  # the runtime rejects at score >= threshold
        check = {"data": str(check_good), "n_images": int(len(cs)), "rejected": rejected,
                 "false_reject_rate": rejected / len(cs), "max_score": float(cs.max())}
    manifest["threshold"] = {"value": thr, "method": "quantile", "target_frr": target_frr,
                             "n_images": int(len(scores)), "data": str(good)}
    manifest["normal_scores"] = normal_stats(scores)
    set_manifest(model, manifest)
    save_model_atomic(model, model_path)
    if check is not None:
        return {**manifest, "check": check}
    return manifest
