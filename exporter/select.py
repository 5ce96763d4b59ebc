"""Choosing the stopping point on the validation split, never on the evaluation set.

`python -m exporter select --checkpoints DIR --dataset TILES/<texture>/validation` exports each
kept snapshot (step-NNNNNN.pt) to a temporary graph, evaluates it on the validation dataset and
picks the best by image AUROC, then pixel AUROC, then the earlier step. The table it writes is
what a model card quotes for "how the stopping point was chosen".
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from .diffusion import DiffusionConfig
from .errors import ExporterError
from .evaluate import evaluate
from .export import ExportOptions, export_model
from .official import build_from_checkpoint
from .onnxio import write_text_atomic

SNAPSHOT = re.compile(r"step-(\d+)\.pt$")


def snapshots(folder: Path, every: int = 0) -> list[tuple[int, Path]]:
    """(step, path) of the kept snapshots, oldest first; with `every`, only multiples of it
    (and always the last one)."""
    found = sorted((int(m.group(1)), p) for p in folder.glob("step-*.pt")
                   if (m := SNAPSHOT.search(p.name)))
    if not found:
        raise ExporterError(f"no step-NNNNNN.pt snapshots in {folder} (train with --keep-every)")
    if every:
        found = [s for s in found if s[0] % every == 0 or s is found[-1]]
    return found


def selection_key(row: dict[str, Any]) -> tuple[float, float, int]:
    """Best first by image AUROC, then pixel AUROC, then the earlier step."""
    return (row["image_auroc"], row["pixel_auroc"], -row["step"])


def check_validation_split(dataset: Path) -> None:
    """Refuses a folder that is not a validation split: one without test/, or the root of a
    make-tiles tree, whose test/ is the evaluation set that no choice may be made on."""
    if not (dataset / "test").is_dir():
        raise ExporterError(f"{dataset} is not a validation dataset (no test/ folder); "
                            "make one with `python -m exporter make-tiles`")
    if (dataset / "validation").is_dir():
        raise ExporterError(f"{dataset} holds the evaluation set (test/) beside its validation "
                            f"split: select on {dataset / 'validation'}")


def select(folder: Path, dataset: Path, every: int = 0, threads: int = 2,
           diff: DiffusionConfig | None = None) -> dict[str, Any]:
    """Evaluates every snapshot on `dataset`; returns the rows and the chosen one."""
    check_validation_split(dataset)
    diff = diff or DiffusionConfig()
    # rows already evaluated with the same settings are kept beside the snapshots, so select
    # can run while training goes on and only new snapshots cost time
    settings = json.dumps({"dataset": str(dataset.resolve()), "diff": diff.to_dict()},
                          sort_keys=True)
    # caches written before the schedule was a setting hold linear-schedule rows
    legacy = {k: v for k, v in diff.to_dict().items() if k != "schedule"}
    legacy_settings = json.dumps({"dataset": str(dataset.resolve()), "diff": legacy},
                                 sort_keys=True) if diff.schedule == "linear" else settings
    cache_path = folder / "select-cache.json"
    cache = {}
    if cache_path.is_file():
        try:
            stored = json.loads(cache_path.read_text())
            cache = stored.get(settings) or stored.get(legacy_settings, {})
        except (json.JSONDecodeError, AttributeError):
            cache = {}
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for step, path in snapshots(folder, every):
            stamp = f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
            hit = cache.get(str(step))
            if hit is not None and hit.get("stamp") == stamp:
                rows.append(hit["row"])
                continue
            unet, seg, _ = build_from_checkpoint(path, official=False)
            out = Path(td) / f"step-{step}.onnx"
            export_model(unet, seg, {}, out, ExportOptions(name=out.stem, diff=diff, force=True))
            r = evaluate(out, dataset, threads=threads)
            row = {"step": step, "checkpoint": str(path), "image_auroc": r["image_auroc"],
                   "pixel_auroc": r["pixel_auroc"], "pro_30": r["pro_30"],
                   "per_kind_auroc": {k: e["image_auroc"] for k, e in r["per_kind"].items()
                                      if "image_auroc" in e}}
            print(f"step {step}: image AUROC {row['image_auroc']:.4f}, pixel AUROC "
                  f"{row['pixel_auroc']:.4f}, PRO@30% {row['pro_30']:.4f}", flush=True)
            rows.append(row)
            cache[str(step)] = {"stamp": stamp, "row": row}
            _save_cache(cache_path, settings, cache)
    best = max(rows, key=selection_key)
    return {"dataset": str(dataset), "criterion": "image AUROC, then pixel AUROC, then earlier",
            "rows": rows, "chosen": best}


def _save_cache(path: Path, settings: str, rows: dict[str, Any]) -> None:
    data = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[settings] = rows
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def format_selection(r: dict[str, Any]) -> str:
    lines = [f"validation: `{r['dataset']}`; criterion: {r['criterion']}", "",
             "| step | image AUROC | pixel AUROC | PRO@30% | |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        mark = "**chosen**" if row["step"] == r["chosen"]["step"] else ""
        lines.append(f"| {row['step']} | {row['image_auroc']:.4f} | {row['pixel_auroc']:.4f} | "
                     f"{row['pro_30']:.4f} | {mark} |")
    return "\n".join(lines)


def write_selection(r: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(r, indent=2) + "\n")
