"""Weight averaging of a run's kept snapshots, the alternative to picking one of them.

With a constant learning rate the weights wander around one basin late in a run, so one
snapshot's validation figure is partly luck, and the best of many snapshots is the luckiest:
its figure overstates what it does on parts it was not chosen on. The uniform average of the
tail's snapshots sits nearer the middle of the basin and needs no choice among them.
`held_out_check` measures both on halves of the validation split that the choice did not see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .errors import ExporterError
from .official import load_checkpoint_dict
from .onnxio import atomic_path

STATE_KEYS = ("unet_model_state_dict", "seg_model_state_dict")


def average_file_name(first: int, last: int) -> str:
    """Name of the averaged checkpoint beside the snapshots; not step-*.pt, so it is never
    taken for a snapshot."""
    return f"average-{first:06d}-{last:06d}.pt"


def average_snapshots(chosen: list[tuple[int, Path]]) -> dict[str, Any]:
    """One checkpoint whose weights are the uniform mean of the given (step, path) snapshots
    (BN running statistics too); configs and training record are the last snapshot's, with
    training["averaged"] naming the steps."""
    if len(chosen) < 2:
        raise ExporterError(f"averaging needs at least two snapshots, got "
                            f"{[str(p) for _, p in chosen]}; start the average earlier")
    acc: dict[str, dict[str, torch.Tensor]] = {}
    ref: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    for _, path in chosen:
        ck = load_checkpoint_dict(path)
        meta = ck.get("exporter")
        if meta is None:
            raise ExporterError(f"{path}: not an exporter snapshot (no configs inside); "
                                "only snapshots of `python -m exporter train` are averaged")
        if ref is None:
            ref = {"unet": meta["unet"], "seg": meta["seg"]}
            acc = {k: {n: torch.zeros_like(v, dtype=torch.float64) for n, v in ck[k].items()
                       if v.is_floating_point()} for k in STATE_KEYS}
        elif {"unet": meta["unet"], "seg": meta["seg"]} != ref:
            raise ExporterError(f"{path}: its architecture differs from {chosen[0][1]}; "
                                "average snapshots of one run only")
        for k in STATE_KEYS:
            state = ck[k]
            if set(n for n, v in state.items() if v.is_floating_point()) != set(acc[k]):
                raise ExporterError(f"{path}: its {k} holds other tensors than "
                                    f"{chosen[0][1]}'s; average snapshots of one run only")
            for n, total in acc[k].items():
                v = state[n]
                if v.shape != total.shape:
                    raise ExporterError(f"{path}: {k}[{n}] has shape {tuple(v.shape)}, "
                                        f"{chosen[0][1]} has {tuple(total.shape)}")
                if not torch.isfinite(v).all():
                    raise ExporterError(f"{path}: {k}[{n}] holds NaN or infinite values; "
                                        "leave this snapshot out of the average")
                total += v.double()
        last = ck
    out = {k: dict(last[k]) for k in STATE_KEYS}
    for k in STATE_KEYS:
        for n, total in acc[k].items():
            out[k][n] = (total / len(chosen)).to(last[k][n].dtype)
    meta = dict(last["exporter"])
    steps = [s for s, _ in chosen]
    meta["training"] = {**meta.get("training", {}),
                        "averaged": {"from": steps[0], "to": steps[-1], "steps": steps}}
    return {**out, "n_epoch": steps[-1], "exporter": meta}


def write_average(chosen: list[tuple[int, Path]], out: Path) -> Path:
    """Writes the average of `chosen` to `out` (atomically)."""
    ck = average_snapshots(chosen)
    with atomic_path(out) as tmp:
        torch.save(ck, tmp)
    return out


def held_out_check(single: list[list[float]], average: list[float], labels: np.ndarray,
                   kinds: list[str], splits: int = 200, seed: int = 0) -> dict[str, Any]:
    """Image AUROC on one half of the validation split (halved per kind, `splits` times):
    of the single snapshot with the best image AUROC on the other half, of the median
    snapshot, and of the average, which no half chose. Means over the splits."""
    s = np.asarray(single, np.float64)
    a = np.asarray(average, np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or s.shape[1] != len(y) or a.shape != y.shape or len(kinds) != len(y):
        raise ExporterError(f"held-out check: {s.shape} snapshot scores, {a.shape} average "
                            f"scores and {len(y)} labels do not match")
    if not (np.isfinite(s).all() and np.isfinite(a).all()):
        raise ExporterError("held-out check: a validation score is NaN or infinite")
    k_arr = np.asarray(kinds)
    rng = np.random.default_rng(seed)
    best, median, avg = [], [], []
    for _ in range(splits):
        half = np.zeros(len(y), bool)
        for k in np.unique(k_arr):
            idx = np.flatnonzero(k_arr == k)
            half[rng.permutation(idx)[: len(idx) // 2]] = True
        other = ~half
        if any(len(set(y[h])) < 2 for h in (half, other)):
            raise ExporterError(f"held-out check: {int((y == 0).sum())} good and "
                                f"{int((y == 1).sum())} defective images cannot be halved so "
                                "that each half holds both; the validation split needs two "
                                "or more of each")
        on_half = [roc_auc_score(y[half], row[half]) for row in s]
        on_other = [roc_auc_score(y[other], row[other]) for row in s]
        best.append(on_other[int(np.argmax(on_half))])
        median.append(float(np.median(on_other)))
        avg.append(roc_auc_score(y[other], a[other]))
    return {"splits": splits, "best_single": float(np.mean(best)),
            "median_single": float(np.mean(median)), "average": float(np.mean(avg)),
            "sd": float(np.std(np.asarray(avg) - np.asarray(best)))}
