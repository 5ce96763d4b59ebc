"""Threshold calibration on good images.

Rule: with the n good scores sorted s_(1) <= ... <= s_(n) and q = 1 - target_frr,
k = ceil(q n) and threshold = s_(k) nudged up by one float32 ulp. The runtime rejects
at score >= threshold; thanks to the nudge s_(k) itself passes under ">=" and ">" alike,
so on the calibration set at most n - k <= floor(n target_frr) images are rejected.
With fewer than 1 / target_frr images this is simply just above the largest score.

`check_good` scores a second folder of good images (e.g. make-tiles'
`validation/test/good`, crops disjoint from `validation/good`) and reports the false-reject
rate of the new threshold on it: an honest estimate, unlike the rate on the calibration
images, which is at most target_frr by construction. It also compares the two score
distributions (mean shift in pooled standard deviations, two-sample Kolmogorov-Smirnov):
calibration images unlike the line's good parts give a threshold that does not hold there.

`defects` (known defective images) adds escapes to the trade-off (`sweep.py`); with
`max_escapes` the threshold is the spec's "escapes <= X at the fewest false rejects" instead
of the good-score quantile.

`max_frr` is the false-reject ceiling: a threshold that rejects more of the calibration good
images (or of the `check_good` ones) is refused with the trade-offs the model can offer, and
nothing is written. A weak model then says so instead of shipping a "recommended" threshold
that rejects most good parts; the user raises the ceiling to accept such a point knowingly.
The manifest records the calibrated false-reject (and escape) rates beside the threshold.
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


def score_folder(model_path: Path, folder: Path, threads: int = 2, steps: int | None = None
                 ) -> tuple[np.ndarray, list[Path]]:
    return score_files(model_path, list_images(folder), threads, steps)


def score_files(model_path: Path, files: list[Path], threads: int = 2,
                steps: int | None = None) -> tuple[np.ndarray, list[Path]]:
    manifest = get_manifest(load_model(model_path))
    inp = manifest["input"]
    imgs = np.stack([
        preprocess_file(p, inp["channels"], inp["height"], inp["width"], tuple(inp["range"]))
        for p in files
    ]) if files else np.zeros((0,))
    if not files:
        return np.zeros(0, np.float32), files
    sess = ort_session(model_path, threads)
    _, scores = run_batched(sess, imgs, inp["batch"], steps=steps)
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


DEFECT_ROOTS = (("validation", "test"), ("test",), ())
NOT_DEFECTS = ("good", "ground_truth")
DRIFT_STD = 0.5  # warn when the calibration mean is further than this, in pooled stds
DRIFT_P = 0.01  # ... or when the KS test's p-value is below this


def defect_files(path: Path) -> tuple[list[Path], Path]:
    """Defective images: `path` itself if it holds images, else the images of the non-good
    subfolders of its first root among validation/test, test and itself (so a make-tiles
    texture dir means its validation defects, never the test split's)."""
    if path.is_dir() and list_images(path):
        return list_images(path), path
    for sub in DEFECT_ROOTS:
        root = path.joinpath(*sub)
        if not root.is_dir():
            continue
        files = [f for d in sorted(root.iterdir()) if d.is_dir() and d.name not in NOT_DEFECTS
                 for f in list_images(d)]
        if files:
            return files, root
    raise ExporterError(f"no defective images in {path} (give a folder of defective images, or "
                        "a root whose non-good subfolders hold them)")


def drift(cal: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """How far the calibration good scores are from other good scores: mean shift in pooled
    standard deviations and the two-sample KS statistic with its p-value."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(cal, np.float64), np.asarray(other, np.float64)
    dof = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / dof) \
        if dof > 0 and len(a) > 1 and len(b) > 1 else 0.0
    diff = float(a.mean() - b.mean())
    shift = abs(diff) / pooled if pooled > 0 else (0.0 if diff == 0 else math.inf)
    ks = ks_2samp(a, b)
    return {"calibration_mean": float(a.mean()), "check_mean": float(b.mean()),
            "pooled_std": pooled, "shift_std": shift, "ks": float(ks.statistic),
            "ks_p": float(ks.pvalue), "differ": bool(shift > DRIFT_STD or ks.pvalue < DRIFT_P)}


def manifest_threshold(x: float, below: float | None) -> float:
    """`x` as the runtime reads it (float32), kept above the score `below` it must pass."""
    v = np.float32(x)
    if below is not None and v <= np.float32(below):
        v = np.nextafter(np.float32(below), np.float32(np.inf))
    return float(v)


def calibrate(model_path: Path, good: Path, target_frr: float, threads: int = 2,
              check_good: Path | None = None, defects: Path | None = None,
              max_escapes: float | None = None, steps: int | None = None,
              max_frr: float = 0.10) -> dict[str, Any]:
    """Set the manifest threshold from `good` (and `defects` with `max_escapes`); with
    `check_good`, also return the false-reject rate of that threshold on those other good
    images and how their scores differ under "check"; with `defects`, the trade-off table
    under "sweep" and the defect scores' escapes under "defects"."""
    if not 0.0 < target_frr < 1.0:
        raise ExporterError(f"--target-frr must be in (0, 1), got {target_frr}")
    if max_escapes is not None and defects is None:
        raise ExporterError("--max-escapes needs --defects DIR (known defective images)")
    if max_escapes is not None and not 0.0 <= max_escapes < 1.0:
        raise ExporterError(f"--max-escapes must be in [0, 1), got {max_escapes}")
    if not 0.0 < max_frr <= 1.0:
        raise ExporterError(f"--max-frr must be in (0, 1], got {max_frr}")
    if target_frr > max_frr:
        raise ExporterError(f"--target-frr {target_frr:g} is above the ceiling --max-frr "
                            f"{max_frr:g}: raise --max-frr or aim lower")
    model = load_model(model_path)
    manifest = get_manifest(model)
    if steps is not None:
        # a sampler's scores move with its step count: the threshold is for this one, which
        # becomes the model's default
        if "sampler" not in manifest:
            raise ExporterError(f"--steps: {model_path} ({manifest['method']}) has no sampler")
        if not 1 <= steps <= manifest["sampler"]["t_start"]:
            raise ExporterError(f"--steps {steps} must lie in [1, t_start = "
                                f"{manifest['sampler']['t_start']}]")
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
    bad_files, bad_root = defect_files(defects) if defects is not None else ([], None)
    scores, _ = score_folder(model_path, good, threads, steps)
    bad = (score_files(model_path, bad_files, threads, steps)[0] if bad_files
           else np.zeros(0, np.float32))
    from .sweep import escape_point, sweep

    extra: dict[str, Any] = {"good_scores": scores, "defect_scores": bad}
    thr = quantile_threshold(scores, target_frr)
    manifest["threshold"] = {"value": thr, "method": "quantile", "target_frr": target_frr,
                             "n_images": int(len(scores)), "data": str(good)}
    if max_escapes is not None:
        p = escape_point(scores, bad, max_escapes)
        assert p is not None  # the smallest candidate lets no defect escape
        allv = np.unique(np.concatenate([scores, bad]).astype(np.float64))
        below = allv[allv < p.threshold]
        thr = manifest_threshold(p.threshold, float(below.max()) if len(below) else None)
        manifest["threshold"] = {"value": thr, "method": "max_escapes",
                                 "max_escapes": max_escapes, "n_images": int(len(scores)),
                                 "data": str(good), "n_defects": int(len(bad)),
                                 "defects": str(bad_root)}
    if bad_root is not None:
        esc = int((bad < thr).sum())
        extra["defects"] = {"data": str(bad_root), "n_images": int(len(bad)), "escapes": esc,
                            "escape_rate": esc / len(bad)}
    extra["sweep"] = sweep(scores, bad)
    frr = float((scores >= thr).mean())
    extra["calibration"] = {"false_rejects": int((scores >= thr).sum()),
                            "false_reject_rate": frr}
    manifest["threshold"]["false_reject_rate"] = frr
    manifest["threshold"]["max_frr"] = max_frr
    if bad_root is not None:
        manifest["threshold"]["escape_rate"] = extra["defects"]["escape_rate"]
    over = []
    if frr > max_frr:
        over.append(f"{frr * 100:.1f} % of the {len(scores)} good images in {good}")
    if check_good is not None:
        cs, _ = score_folder(model_path, check_good, threads, steps)
        rejected = int((cs >= thr).sum())  # the runtime rejects at score >= threshold
        extra["check"] = {"data": str(check_good), "n_images": int(len(cs)),
                          "rejected": rejected, "false_reject_rate": rejected / len(cs),
                          "max_score": float(cs.max()), "drift": drift(scores, cs)}
        manifest["threshold"]["check_false_reject_rate"] = rejected / len(cs)
        if rejected / len(cs) > max_frr:
            over.append(f"{rejected / len(cs) * 100:.1f} % of the {len(cs)} good images in "
                        f"{check_good}")
    if over:
        from .sweep import format_sweep

        what = (f"escapes <= {max_escapes * 100:g} %" if max_escapes is not None
                else f"the {target_frr:g} quantile of the good scores")
        raise ExporterError(
            f"this model cannot meet {what} within the false-reject ceiling --max-frr "
            f"{max_frr:g}: the threshold {thr:.6f} rejects " + " and ".join(over)
            + f". Nothing was written to {model_path}. What it can offer (rejected at score "
            f">= threshold):\n{format_sweep(extra['sweep'])}\nPick a point: raise --max-frr to "
            "accept it, or a larger --max-escapes for fewer false rejects; or improve the model "
            "(more training, images like the line's).")
    manifest["normal_scores"] = normal_stats(scores)
    if "sampler" in manifest:
        if steps is not None:
            manifest["sampler"]["steps"] = steps
        manifest["threshold"]["sampler_steps"] = manifest["sampler"]["steps"]
    set_manifest(model, manifest)
    save_model_atomic(model, model_path)
    return {**manifest, **extra}
