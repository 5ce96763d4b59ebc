"""Exporting a recipe: one static graph image -> (anomaly_map, score) for AdvRAD and DTE; the
eps-network (x_t, t) -> eps for AnoDDPM, whose sampler the runtime runs from the manifest.

Every export compares ONNX Runtime with PyTorch on the golden inputs. For AnoDDPM the goldens
are the PyTorch sampler's outputs at the manifest's step count and at each of `parity_steps`:
the runtime's sampler is held to them at 1e-4 (its self-test at start, and the engine tests).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..diffusion import alphas_cumprod
from ..errors import ExporterError
from ..export import (
    PARITY_TOL_FP32,
    golden_cases,
    golden_inputs,
    golden_paths,
    run_torch,
    seal,
    write_model_and_goldens,
)
from ..onnxio import graph_sha256, ort_session, run_batched
from .detect import (
    KINDS,
    OneShotDenoiser,
    PartialDiffusion,
    SamplerSpec,
    ScoreSpec,
    TimeEstimator,
    timesteps,
)
from .train import load_recipe_checkpoint

RANGE = (-1.0, 1.0)


@dataclass
class RecipeExportOptions:
    name: str
    score: ScoreSpec = field(default_factory=ScoreSpec)
    t: int = 100  # advrad: the noise level of the one-shot step
    noise_seed: int = 0
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    parity_steps: tuple[int, ...] = (5, 25)
    batch: int = 1
    opset: int = 17
    force: bool = False


class EpsGraph(nn.Module):
    """(x_t [B,C,H,W], t [B] float) -> eps: what the runtime's sampler calls each step."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t)


def detector(record: dict[str, Any], net: nn.Module, o: RecipeExportOptions) -> nn.Module:
    recipe = record["recipe"]
    if recipe == "advrad":
        if not 0 <= o.t < record["T"]:
            raise ExporterError(f"advrad: t {o.t} must lie in [0, {record['T']})")
        return OneShotDenoiser(net, record["T"], o.t, o.noise_seed, o.score, o.batch)
    if recipe == "dte":
        return TimeEstimator(net, o.score)
    if o.sampler.kind not in KINDS:
        raise ExporterError(f"sampler kind {o.sampler.kind!r} (known: {', '.join(KINDS)})")
    try:
        for s in (o.sampler.steps, *o.parity_steps):
            timesteps(o.sampler.t_start, s)
    except ValueError as e:
        raise ExporterError(f"anoddpm: {e}") from None
    return PartialDiffusion(net, o.sampler, o.score)


def recipe_section(record: dict[str, Any], o: RecipeExportOptions) -> dict[str, Any]:
    """The manifest's `recipe`: the method's own parameters."""
    recipe = record["recipe"]
    if recipe == "advrad":
        ab = float(alphas_cumprod(record["T"])[o.t])
        return {"T": record["T"], "schedule": "linear", "t": o.t, "abar_t": ab,
                "noise_seed": o.noise_seed, "network_calls": 1,
                "noise": "torch.randn(shape, generator=torch.Generator().manual_seed(noise_seed))"}
    if recipe == "dte":
        n = record["network"]
        return {"T": record["T"], "t_max": n["t_max"], "bins": n["bins"], "variant": "patch-wise",
                "cell": 2 ** len(n["widths"]), "network_calls": 1,
                "map": "E[t] / t_max of each cell, bilinear to the image"}
    return {"network_calls": "sampler.steps"}


def manifest_for(record: dict[str, Any], net: nn.Module, o: RecipeExportOptions
                 ) -> dict[str, Any]:
    n = record["network"]
    m: dict[str, Any] = {
        "schema_version": 1,
        "method": record["recipe"],
        "name": o.name,
        "input": {"name": "image", "batch": o.batch, "channels": n["in_channels"],
                  "height": n["image_size"], "width": n["image_size"],
                  "range": list(RANGE), "resize": "bilinear"},
        "outputs": {"map": "anomaly_map", "score": "score"},
        "recipe": recipe_section(record, o),
        "score": {"reduction": "topk_mean", "top_k": o.score.top_k, "range": [0.0, 1.0],
                  "blur_sigma": o.score.sigma,
                  "map": ("expected diffusion time" if record["recipe"] == "dte" else
                          "mean over channels of |x0 - x0_hat| / 2, Gaussian-blurred")},
        "threshold": None,
        "normal_scores": None,
        "architecture": {"arch": "edge", "network": n,
                         "parameters": sum(p.numel() for p in net.parameters()),
                         "precision": "fp32"},
        "flops_per_frame": 0,
        "training": record["training"],
        "checkpoint_sha256": "",
        "exporter_version": __version__,
    }
    if record["recipe"] == "anoddpm":
        m["sampler"] = o.sampler.manifest_section()
    return m


def _onnx(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str],
          opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=inputs, output_names=outputs,
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def export_recipe(checkpoint: Path, out: Path, o: RecipeExportOptions) -> dict[str, Any]:
    """Exports, compares ORT with PyTorch, writes model + goldens; returns a report."""
    if out.suffix != ".onnx":
        raise ExporterError(f"output must end in .onnx: {out}")
    if not o.force:
        for p in (out, *golden_paths(out)):
            if p.exists():
                raise ExporterError(f"{p} exists (use --force to overwrite)")
    record, net = load_recipe_checkpoint(checkpoint)
    det = detector(record, net, o).eval()
    manifest = manifest_for(record, net, o)
    nc = record["network"]
    size, ch = nc["image_size"], nc["in_channels"]
    x = torch.zeros(o.batch, ch, size, size)
    if record["recipe"] == "anoddpm":
        model = _onnx(EpsGraph(net).eval(), (x, torch.zeros(o.batch)), ["x_t", "t"], ["eps"],
                      o.opset)
    else:
        model = _onnx(det, (x,), ["image"], ["anomaly_map", "score"], o.opset)
    seal(model, manifest, o.batch)
    sess = ort_session(model.SerializeToString())
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as td, torch.no_grad():
        gfiles, allin = golden_inputs(Path(td), size, ch, RANGE, None)
        ref_map, ref_score = run_torch(det, allin, o.batch)
        ort_map, ort_score = run_batched(sess, allin, o.batch)
        err = float(np.abs(ref_map - ort_map).max())
        report["map_max_abs_err"] = err
        if err > PARITY_TOL_FP32:
            raise ExporterError(f"parity failed: max |map ORT - PyTorch| = {err:.3g} > "
                                f"{PARITY_TOL_FP32:g}")
        golden: dict[str, Any] = {"model_sha256": graph_sha256(model)}
        if record["recipe"] == "anoddpm":
            # the PyTorch sampler is the reference the runtime's sampler is held to
            golden["sampler_steps"] = o.sampler.steps
            golden["cases"] = golden_cases(out, gfiles, ref_map, ref_score)
            golden["more_steps"] = []
            for s in o.parity_steps:
                m, sc = run_torch(det, allin[: len(gfiles)], o.batch, steps=s)
                golden["more_steps"].append(
                    {"steps": s, "cases": golden_cases(out, gfiles, m, sc)})
        else:
            golden["cases"] = golden_cases(out, gfiles, ort_map, ort_score)
        write_model_and_goldens(model, out, Path(td), golden)
    report.update(model_sha256=golden["model_sha256"], flops_per_frame=manifest["flops_per_frame"],
                  size_bytes=out.stat().st_size, manifest=manifest)
    return report
