"""How many defective parts an L-infinity PGD attack turns into passes (the AdvRAD question).

Measured, never tuned for. Each model is attacked through its PyTorch twin: the module the ONNX
graph was exported from, rebuilt from the checkpoint and the manifest's settings, and checked
to give the ONNX model's scores (within 1e-4) before any attack. The attack lowers the score
of each defective tile the model rejects, with `steps` signed-gradient steps of eps/4, kept
within eps (in 8-bit grey levels, eps/255 of the input range) of the tile and within the
input range; a tile counts as turned when its score falls below the model's threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..diffusion import DiffusionConfig, OneStepDetector
from ..errors import ExporterError
from ..evaluate import load_dataset
from ..onnxio import get_manifest, load_model, ort_session, run_batched
from ..preprocess import preprocess_file
from .detect import ScoreSpec
from .export import RecipeExportOptions, detector
from .train import load_recipe_checkpoint

TWIN_TOL = 1e-4


def twin(model: Path, checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The PyTorch module behind an exported one-graph model, and the model's manifest."""
    m = get_manifest(load_model(model))
    if m["method"] == "diffusionad":
        from ..arch import prepare_for_export
        from ..official import build_from_checkpoint

        d = m["diffusion"]
        unet, seg, _ = build_from_checkpoint(checkpoint, official=False)
        prepare_for_export(unet, seg)
        cfg = DiffusionConfig(T=d["T"], schedule=d["schedule"], t_s=d["t_s"], t_b=d["t_b"],
                              w=d["w"], top_k=m["score"]["top_k"],
                              score_sigma=m["score"].get("blur_sigma", 0.0),
                              noise_seed=d["noise_seed"])
        return OneStepDetector(unet, seg, cfg).eval(), m
    if m["method"] in ("advrad", "dte"):
        record, net = load_recipe_checkpoint(checkpoint)
        r, s = m.get("recipe", {}), m["score"]
        o = RecipeExportOptions(name=m["name"], t=r.get("t", 100),
                                noise_seed=r.get("noise_seed", 0),
                                score=ScoreSpec.from_manifest(s))
        return detector(record, net, o).eval(), m
    raise ExporterError(f"{model}: method {m['method']!r} has no one-graph twin to attack")


def pgd(det: nn.Module, x: torch.Tensor, eps: float, steps: int, lo: float, hi: float
        ) -> torch.Tensor:
    """Images within eps (L-inf) of x and within [lo, hi] whose scores PGD lowered."""
    alpha = eps / 4
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        _, score = det(adv)
        (g,) = torch.autograd.grad(score.sum(), adv)
        with torch.no_grad():
            adv = adv - alpha * g.sign()
            adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(lo, hi)
    return adv.detach()


def attack(model: Path, checkpoint: Path, dataset: Path, eps_levels: tuple[float, ...],
           steps: int = 10) -> dict[str, Any]:
    """Rows per eps: defective tiles rejected before, and how many of them pass after."""
    det, m = twin(model, checkpoint)
    thr = (m.get("threshold") or {}).get("value")
    if thr is None:
        raise ExporterError(f"{model} has no calibrated threshold")
    inp = m["input"]
    h, w, c, (lo, hi) = inp["height"], inp["width"], inp["channels"], inp["range"]
    files, y, kinds, _ = load_dataset(dataset, h, w)
    files = [f for f, label in zip(files, y, strict=True) if label == 1]
    x = np.stack([preprocess_file(p, c, h, w, (lo, hi)) for p in files])
    _, ort_scores = run_batched(ort_session(model), x, inp["batch"])
    xt = torch.from_numpy(x)
    with torch.no_grad():
        scores = torch.cat([det(xt[i : i + 1])[1] for i in range(len(xt))]).numpy()
    gap = float(np.abs(scores - ort_scores).max())
    if gap > TWIN_TOL:
        raise ExporterError(f"{model}: the PyTorch twin from {checkpoint} scores up to {gap:.3g} "
                            "away from the ONNX model; wrong checkpoint?")
    caught = scores >= thr
    rows = []
    for eps_px in eps_levels:
        eps = eps_px / 255 * (hi - lo)
        after = []
        for i in np.flatnonzero(caught):
            adv = pgd(det, xt[i : i + 1], eps, steps, lo, hi)
            with torch.no_grad():
                after.append(float(det(adv)[1]))
        turned = int(sum(s < thr for s in after))
        rows.append({"eps_px": eps_px, "caught_before": int(caught.sum()), "turned": turned,
                     "mean_score_drop": float(np.mean(scores[caught] - np.array(after)))
                     if after else 0.0})
    return {"model": str(model), "method": m["method"], "threshold": thr,
            "defective": len(files), "steps": steps, "rows": rows}
