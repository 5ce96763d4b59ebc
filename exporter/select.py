"""Choosing the stopping point on the validation split, never on the evaluation set.

`python -m exporter select --checkpoints DIR --dataset TILES/<texture>/validation` exports each
kept snapshot (step-NNNNNN.pt) to a temporary graph, evaluates it on the validation dataset and
picks the best by image AUROC, then pixel AUROC, then the earlier step. The table it writes is
what a model card quotes for "how the stopping point was chosen".

With `--average-from STEP` it also averages the kept snapshots from STEP on (`average.py`)
and ships that average instead when, on halves of the split that the choice did not see, it
scores at least as well as the best single snapshot chosen on the other half.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from .average import average_file_name, held_out_check, write_average
from .diffusion import DiffusionConfig
from .errors import ExporterError
from .evaluate import evaluate, list_dataset
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
           diff: DiffusionConfig | None = None, average_from: int | None = None
           ) -> dict[str, Any]:
    """Evaluates every snapshot on `dataset`; returns the rows and the chosen one; with
    `average_from`, also the average of the snapshots from that step on ("average") and
    the held-out check that decides between it and the best single snapshot."""
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
    kept = snapshots(folder, every)
    rows = []
    with tempfile.TemporaryDirectory() as td:

        def scored(key: str, step: int, path: Path, stamp: str) -> dict[str, Any]:
            hit = cache.get(key)
            # the held-out check needs each image's score; rows cached before it are redone
            if (hit is not None and hit.get("stamp") == stamp
                    and (average_from is None or "scores" in hit["row"])):
                return hit["row"]
            unet, seg, _ = build_from_checkpoint(path, official=False)
            out = Path(td) / f"{path.stem}.onnx"
            export_model(unet, seg, {}, out, ExportOptions(name=out.stem, diff=diff, force=True))
            r = evaluate(out, dataset, threads=threads, keep_scores=True)
            row = {"step": step, "checkpoint": str(path), "image_auroc": r["image_auroc"],
                   "pixel_auroc": r["pixel_auroc"], "pro_30": r["pro_30"],
                   "per_kind_auroc": {k: e["image_auroc"] for k, e in r["per_kind"].items()
                                      if "image_auroc" in e},
                   "scores": r["scores"]}
            print(f"{path.stem}: image AUROC {row['image_auroc']:.4f}, pixel AUROC "
                  f"{row['pixel_auroc']:.4f}, PRO@30% {row['pro_30']:.4f}", flush=True)
            cache[key] = {"stamp": stamp, "row": row}
            _save_cache(cache_path, settings, cache)
            return row

        for step, path in kept:
            rows.append(scored(str(step), step, path, _stamp(path)))
        best = max(rows, key=selection_key)
        result = {"dataset": str(dataset),
                  "criterion": "image AUROC, then pixel AUROC, then earlier",
                  "rows": rows, "chosen": best}
        if average_from is None:
            return result
        tail = [(s, p) for s, p in kept if s >= average_from]
        if len(tail) < 2:
            raise ExporterError(f"--average-from {average_from}: {len(tail)} kept snapshot(s) "
                                f"in {folder} from that step on; averaging needs two or more")
        path = folder / average_file_name(tail[0][0], tail[-1][0])
        # the average is as fresh as the snapshots it is made of
        stamp = "+".join(_stamp(p) for _, p in tail)
        key = f"average-{tail[0][0]}-{tail[-1][0]}"
        if not path.is_file() or (cache.get(key) or {}).get("stamp") != stamp:
            write_average(tail, path)
        avg = dict(scored(key, tail[-1][0], path, stamp),
                   averaged_from=tail[0][0], n_averaged=len(tail))
    _, labels, kinds = list_dataset(dataset)
    check = held_out_check([r["scores"] for r in rows], avg["scores"], labels, kinds)
    avg["held_out"] = check
    result["average"] = avg
    result["criterion"] = ("the average of the snapshots from step "
                           f"{tail[0][0]} on, if on held-out halves of the split it scores at "
                           "least as well as the best single snapshot chosen on the other "
                           "half; else image AUROC, then pixel AUROC, then earlier")
    if check["average"] >= check["best_single"]:
        result["chosen"] = avg
    return result


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


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
    avg = r.get("average")
    chosen = r["chosen"]
    for row in r["rows"]:
        mark = "**chosen**" if row == chosen else ""
        if avg is not None and row["step"] >= avg["averaged_from"]:
            mark = f"{mark} averaged".strip()
        lines.append(f"| {row['step']} | {row['image_auroc']:.4f} | {row['pixel_auroc']:.4f} | "
                     f"{row['pro_30']:.4f} | {mark} |")
    if avg is None:
        return "\n".join(lines)
    mark = "**chosen**" if chosen == avg else ""
    h = avg["held_out"]
    lines += [f"| average of {avg['n_averaged']}, steps {avg['averaged_from']}-{avg['step']} | "
              f"{avg['image_auroc']:.4f} | {avg['pixel_auroc']:.4f} | {avg['pro_30']:.4f} | "
              f"{mark} |", "",
              f"Held-out check ({h['splits']} splits of the validation set into halves, per "
              f"kind; image AUROC on the half the choice did not see): best single snapshot "
              f"chosen on the other half {h['best_single']:.4f}, median snapshot "
              f"{h['median_single']:.4f}, average {h['average']:.4f} (sd of the "
              f"difference {h['sd']:.4f})."]
    return "\n".join(lines)


def write_selection(r: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(r, indent=2) + "\n")
