"""Evaluation on an MVTec-style dataset: image / pixel AUROC, PRO@30% FPR, FRR, escapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from .errors import ExporterError
from .onnxio import get_manifest, load_model, ort_session, run_batched
from .preprocess import list_images, preprocess_file


def pro_auc(maps: np.ndarray, gts: np.ndarray, max_fpr: float = 0.3, n_thr: int = 200) -> float:
    """Per-region overlap integrated over FPR in [0, max_fpr], normalised by max_fpr."""
    regions = []
    for i, g in enumerate(gts):
        lab, n = ndimage.label(g)
        for r in range(1, n + 1):
            regions.append((i, lab == r))
    if not regions:
        return float("nan")
    neg = ~gts
    n_neg = max(int(neg.sum()), 1)
    base = maps[neg] if neg.any() else maps.ravel()
    thrs = np.unique(np.concatenate([
        np.quantile(base, np.linspace(1.0 - max_fpr - 0.02, 1.0, n_thr)),
        [maps.min() - 1e-6, maps.max()],
    ]))
    fprs, pros = [], []
    for t in thrs:
        b = maps > t
        fprs.append((b & neg).sum() / n_neg)
        pros.append(np.mean([(b[i] & r).sum() / r.sum() for i, r in regions]))
    fprs, pros = np.asarray(fprs, float), np.asarray(pros, float)
    # upper envelope: for each FPR the best PRO, FPR ascending
    order = np.lexsort((pros, fprs))
    fprs, pros = fprs[order], pros[order]
    last = np.r_[fprs[1:] != fprs[:-1], True]
    fprs, pros = fprs[last], pros[last]
    pros = np.maximum.accumulate(pros)
    keep = fprs < max_fpr
    f = np.r_[fprs[keep], max_fpr]
    p = np.r_[pros[keep], np.interp(max_fpr, fprs, pros)]
    return float(np.trapezoid(p, f) / max_fpr)


def _load_mask(path: Path, h: int, w: int) -> np.ndarray:
    with Image.open(path) as im:
        m = im.convert("L")
        if m.size != (w, h):
            m = m.resize((w, h), Image.NEAREST)
        return np.asarray(m) > 127


def load_dataset(dataset: Path, h: int, w: int
                 ) -> tuple[list[Path], np.ndarray, list[str], np.ndarray]:
    """(image files, labels 0 good / 1 defective, kind per image, masks [N, h, w]) of
    dataset/test and its ground_truth."""
    files, labels, kind_of = list_dataset(dataset)
    gts = []
    for p, k in zip(files, kind_of, strict=True):
        if k == "good":
            gts.append(np.zeros((h, w), bool))
        else:
            mp = dataset / "ground_truth" / k / f"{p.stem}_mask.png"
            if not mp.is_file():
                raise ExporterError(f"missing mask {mp}")
            gts.append(_load_mask(mp, h, w))
    return files, labels, kind_of, np.stack(gts)


def list_dataset(dataset: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image files, labels 0 good / 1 defective, kind per image) of dataset/test, in the
    order every evaluation scores them."""
    test = dataset / "test"
    if not test.is_dir():
        raise ExporterError(f"no test/ folder in {dataset}")
    kinds = sorted(d.name for d in test.iterdir() if d.is_dir())
    if "good" not in kinds or len(kinds) < 2:
        raise ExporterError(f"{test} needs good/ and at least one defect folder")
    files, labels, kind_of = [], [], []
    for k in kinds:
        for p in list_images(test / k):
            files.append(p)
            labels.append(0 if k == "good" else 1)
            kind_of.append(k)
    return files, np.array(labels), kind_of


def metrics(dataset: Path, maps: np.ndarray, scores: np.ndarray, y: np.ndarray,
            gt: np.ndarray) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and PRO of maps [N, H, W] and scores [N] against labels y and
    masks gt."""
    return {
        "dataset": str(dataset), "n_good": int((y == 0).sum()),
        "n_defective": int((y == 1).sum()),
        "image_auroc": float(roc_auc_score(y, scores)),
        "pixel_auroc": float(roc_auc_score(gt.ravel(), maps.ravel())),
        "pro_30": pro_auc(maps, gt),
    }


def per_kind_auroc(scores: np.ndarray, y: np.ndarray, kinds: list[str]) -> dict[str, float]:
    """Image AUROC of each defect kind against all good images."""
    k_arr, good = np.array(kinds), scores[y == 0]
    return {k: float(roc_auc_score(np.r_[np.zeros(len(good)), np.ones((k_arr == k).sum())],
                                   np.r_[good, scores[k_arr == k]]))
            for k in sorted(set(kinds) - {"good"})}


def evaluate(model_path: Path, dataset: Path, threads: int = 2, threshold: float | None = None,
             sweep: bool = False, keep_scores: bool = False) -> dict[str, Any]:
    """Metrics on dataset/test; at `threshold` instead of the manifest's when given; with
    `sweep`, also the false-reject / escape operating points (`sweep.py`) under "sweep";
    with `keep_scores`, each image's score (in `list_dataset` order) under "scores"."""
    manifest = get_manifest(load_model(model_path))
    inp = manifest["input"]
    h, w, c = inp["height"], inp["width"], inp["channels"]
    files, y, kind_of, gt = load_dataset(dataset, h, w)
    imgs = np.stack([preprocess_file(p, c, h, w, tuple(inp["range"])) for p in files])
    sess = ort_session(model_path, threads)
    maps, scores = run_batched(sess, imgs, inp["batch"])
    res = {"model": str(model_path), **metrics(dataset, maps[:, 0], scores, y, gt)}
    if keep_scores:
        res["scores"] = [float(v) for v in scores]
    thr = (manifest.get("threshold") or {}).get("value")
    res["threshold_source"] = "manifest" if thr is not None else None
    if threshold is not None:
        thr = float(threshold)
        res["threshold_source"] = "--threshold"
    res["threshold"] = thr
    per_kind: dict[str, Any] = {}
    kind_arr = np.array(kind_of)
    kind_auroc = per_kind_auroc(scores, y, kind_of)
    for k in sorted(set(kind_of)):
        sel = kind_arr == k
        entry: dict[str, Any] = {"n": int(sel.sum()), "mean_score": float(scores[sel].mean())}
        if k != "good":
            entry["image_auroc"] = kind_auroc[k]
        if thr is not None:
            rejected = scores[sel] >= thr  # the runtime rejects at score >= threshold
            if k == "good":
                entry["false_reject_rate"] = float(rejected.mean())
            else:
                entry["escape_rate"] = float((~rejected).mean())
        per_kind[k] = entry
    res["per_kind"] = per_kind
    if thr is not None:
        res["false_reject_rate"] = per_kind["good"]["false_reject_rate"]
        res["escape_rate"] = float((scores[y == 1] < thr).mean())
    if sweep:
        from .sweep import sweep as sweep_points

        res["sweep"] = sweep_points(scores[y == 0], scores[y == 1])
    return res


def below_chance_hint(pixel_auroc: float | None) -> str | None:
    """What a pixel AUROC below 0.5 usually means (the runtime's `diffad eval` says the same)."""
    if pixel_auroc is None or pixel_auroc >= 0.5:
        return None
    return ("note: pixel AUROC below 0.5 ranks defect pixels BELOW good ones. Usually the masks "
            "mark more than what changed (large smears or blobs whose inside looks normal, so "
            "the map fires on their edges only) or they are inverted or misaligned: overlay a "
            "few masks on their images (`diffad eval --report`) before trusting the figure")


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"image AUROC {r['image_auroc']:.4f} | pixel AUROC {r['pixel_auroc']:.4f} | "
        f"PRO@30% {r['pro_30']:.4f} | good {r['n_good']}, defective {r['n_defective']}",
    ]
    hint = below_chance_hint(r.get("pixel_auroc"))
    if hint:
        lines.append(hint)
    thr = r.get("threshold")
    src = r.get("threshold_source")
    lines.append(f"threshold: {thr if thr is not None else 'not calibrated'}"
                 + (" (from --threshold)" if src == "--threshold" else ""))
    lines.append("")
    lines.append("| kind | n | mean score | image AUROC vs good | FRR / escape rate |")
    lines.append("|---|---|---|---|---|")
    for k, e in r["per_kind"].items():
        au = f"{e['image_auroc']:.4f}" if "image_auroc" in e else "-"
        rate = e.get("false_reject_rate", e.get("escape_rate"))
        rs = "-" if rate is None else (f"FRR {rate:.3f}" if k == "good" else f"escape {rate:.3f}")
        lines.append(f"| {k} | {e['n']} | {e['mean_score']:.4f} | {au} | {rs} |")
    if thr is not None:
        lines.append(f"| **all defects** | {r['n_defective']} | | {r['image_auroc']:.4f} | "
                     f"escape {r['escape_rate']:.3f} |")
    if "sweep" in r:
        from .sweep import format_sweep

        lines += ["", "Operating points (a part is rejected at score >= threshold):", "",
                  format_sweep(r["sweep"])]
    return "\n".join(lines)
