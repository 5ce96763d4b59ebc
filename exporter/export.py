"""One static ONNX graph image -> (anomaly_map, score), with manifest and goldens."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from . import __version__
from .arch import arch_of, prepare_for_export
from .diffusion import (
    COSINE_MAX_BETA,
    COSINE_S,
    SCHEDULES,
    DiffusionConfig,
    OneStepDetector,
    config_alphas_cumprod,
    noise_recipe,
)
from .errors import ExporterError
from .onnxio import (
    count_flops,
    graph_sha256,
    ort_session,
    padded_batches,
    run_batched,
    save_model_atomic,
    set_manifest,
    write_text_atomic,
)
from .preprocess import list_images, preprocess_file
from .verify import golden_paths, verify_model  # noqa: F401 (re-export)

PARITY_TOL_FP32 = 1e-4
PARITY_TOL_FP16 = 2e-2


@dataclass
class ExportOptions:
    name: str
    diff: DiffusionConfig
    batch: int = 1
    opset: int = 17
    fp16: bool = False
    value_range: tuple[float, float] = (0.0, 1.0)
    force: bool = False
    golden_from: Path | None = None  # up to 2 real images added to the golden cases


def golden_pixels(size: int, channels: int, n: int = 4) -> list[np.ndarray]:
    """Fixed deterministic uint8 inputs [H, W, C]: flat grey, gradient, checker, noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    flat = np.full((size, size), 128, np.uint8)
    grad = ((xx + yy) * 255 // max(1, 2 * size - 2)).astype(np.uint8)
    checker = np.where(((xx // 8) + (yy // 8)) % 2 == 0, 60, 190).astype(np.uint8)
    rng = np.random.default_rng(12345)
    noise = rng.integers(0, 256, (size, size), dtype=np.uint8)
    out = []
    for i, g in enumerate([flat, grad, checker, noise][:n]):
        if channels == 1:
            out.append(g[:, :, None])
        else:
            out.append(np.stack([g, np.roll(g, 5 * i + 3, 1), 255 - g], axis=2))
    return out


def diffusion_manifest(d: DiffusionConfig, channels: int, size: int) -> dict[str, Any]:
    """`diffusion`: the schedule, both timesteps with their abar, w, and the noise recipe."""
    ab = config_alphas_cumprod(d)
    sched: dict[str, Any] = (
        {"beta_start": d.beta_start, "beta_end": d.beta_end} if d.schedule == "linear"
        else {"cosine_s": COSINE_S, "max_beta": COSINE_MAX_BETA}
    )
    return {"T": d.T, "schedule": d.schedule, **sched, "t_s": d.t_s, "t_b": d.t_b,
            "abar_s": float(ab[d.t_s]), "abar_b": float(ab[d.t_b]), "w": d.w,
            "noise_seed": d.noise_seed,
            "noise": noise_recipe(d.noise_seed, (1, channels, size, size))}


def manifest_for(
    opts: ExportOptions, unet: nn.Module, seg: nn.Module, info: dict[str, Any],
) -> dict[str, Any]:
    c = unet.cfg
    d = opts.diff
    return {
        "schema_version": 1,
        "method": "diffusionad",
        "name": opts.name,
        "input": {"name": "image", "batch": opts.batch, "channels": c.in_channels,
                  "height": c.image_size, "width": c.image_size,
                  "range": [float(opts.value_range[0]), float(opts.value_range[1])],
                  "resize": "bilinear"},
        "outputs": {"map": "anomaly_map", "score": "score"},
        "diffusion": diffusion_manifest(d, c.in_channels, c.image_size),
        # The map is a sigmoid and the score a (blurred) top-k mean of it: both lie in [0, 1].
        # The runtime refuses thresholds outside this range and scores that leave it.
        "score": {"reduction": "topk_mean", "top_k": d.top_k, "range": [0.0, 1.0],
                  **({"blur_sigma": d.score_sigma} if d.score_sigma > 0 else {})},
        "threshold": None,
        "normal_scores": None,
        "architecture": {
            "arch": arch_of(c),
            "unet": {**c.to_dict(),
                     "parameters": sum(p.numel() for p in unet.parameters())},
            "seg": {**seg.cfg.to_dict(),
                    "parameters": sum(p.numel() for p in seg.parameters())},
            "precision": "fp16" if opts.fp16 else "fp32",
        },
        "flops_per_frame": 0,
        "training": info.get("training", {"data": "", "command": "", "seed": 0}),
        "checkpoint_sha256": info.get("checkpoint_sha256", ""),
        "exporter_version": __version__,
    }


def golden_inputs(folder: Path, size: int, ch: int, value_range: tuple[float, float],
                  golden_from: Path | None) -> tuple[list[Path], np.ndarray]:
    """The golden PNGs written into `folder`, and every parity input [N, C, H, W]: the golden
    images first, then two seeded random ones."""
    lo, hi = value_range
    gpix = golden_pixels(size, ch)
    if golden_from is not None:
        for p in list_images(golden_from)[:2]:
            t = preprocess_file(p, ch, size, size)  # [C, H, W] in [0, 1]
            gpix.append(np.clip(np.rint(t * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    gfiles = []
    for i, g in enumerate(gpix):
        p = folder / f"{i:02d}.png"
        Image.fromarray(g[:, :, 0] if ch == 1 else g).save(p)
        gfiles.append(p)
    gin = np.stack([preprocess_file(p, ch, size, size, (lo, hi)) for p in gfiles])
    rng = np.random.default_rng(7)
    rin = (lo + (hi - lo) * rng.random((2, ch, size, size))).astype(np.float32)
    return gfiles, np.concatenate([gin, rin])


def run_torch(det: nn.Module, images: np.ndarray, batch: int, **kw) -> tuple[np.ndarray, ...]:
    """(maps, scores) of a PyTorch detector over [N, C, H, W], padding the last batch."""
    tm, ts = [], []
    for chunk, n in padded_batches(images, batch):
        m, s = det(torch.from_numpy(chunk), **kw)
        tm.append(m[:n].numpy())
        ts.append(s[:n].numpy())
    return np.concatenate(tm), np.concatenate(ts)


def golden_cases(out: Path, gfiles: list[Path], maps: np.ndarray, scores: np.ndarray
                 ) -> list[dict]:
    """One case per golden image of the model `out`: its expected score and map statistics."""
    gdir = golden_paths(out)[1].name
    return [{"image": f"{gdir}/{p.name}", "score": float(scores[i]),
             "map_sum": float(maps[i].astype(np.float64).sum()), "map_max": float(maps[i].max()),
             "map_mean": float(maps[i].astype(np.float64).mean())}
            for i, p in enumerate(gfiles)]


def write_model_and_goldens(model: onnx.ModelProto, out: Path, images: Path,
                            golden: dict[str, Any]) -> None:
    """Writes the golden images, then the model, then the golden JSON, each atomically, so a
    crash never leaves goldens that name another graph beside the model."""
    gjson, gdir = golden_paths(out)
    text = json.dumps(golden, indent=2) + "\n"
    tmp_gdir = gdir.with_name(f".{gdir.name}.tmp")
    if tmp_gdir.exists():
        shutil.rmtree(tmp_gdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(images, tmp_gdir)
        tmp_gdir.chmod(0o755)
        save_model_atomic(model, out)
        if gdir.exists():
            shutil.rmtree(gdir)
        tmp_gdir.rename(gdir)
        write_text_atomic(gjson, text)
    finally:
        if tmp_gdir.exists():
            shutil.rmtree(tmp_gdir)


def seal(model: onnx.ModelProto, manifest: dict[str, Any], batch: int) -> None:
    """Counts the graph's FLOPs per image into the manifest, stores the manifest and the
    producer in the model, and runs `onnx.checker`."""
    manifest["flops_per_frame"] = int(count_flops(model) // batch)
    model.producer_name = "diffad-edge-exporter"
    model.producer_version = __version__
    set_manifest(model, manifest)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ExporterError(f"onnx.checker rejected the graph: {e}") from None


def _torch_export(det: OneStepDetector, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            det, (example,), buf, input_names=["image"],
            output_names=["anomaly_map", "score"], opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


def export_model(
    unet: nn.Module, seg: nn.Module, info: dict[str, Any], out: Path,
    opts: ExportOptions,
) -> dict[str, Any]:
    """Exports, checks, compares ORT with PyTorch, writes model + goldens. Returns a report."""
    if opts.opset < 17:
        raise ExporterError(f"opset {opts.opset} < 17 is not supported")
    if opts.batch < 1:
        raise ExporterError("batch must be >= 1")
    if out.suffix != ".onnx":
        raise ExporterError(f"output must end in .onnx: {out}")
    gjson, gdir = golden_paths(out)
    if not opts.force:
        for p in (out, gjson, gdir):
            if p.exists():
                raise ExporterError(f"{p} exists (use --force to overwrite)")
    d = opts.diff
    if not (0 <= d.t_s < d.T and 0 <= d.t_b < d.T):
        raise ExporterError(f"t_s={d.t_s}, t_b={d.t_b} must lie in [0, {d.T})")
    if d.schedule not in SCHEDULES:
        raise ExporterError(f"beta schedule {d.schedule!r} is not one the exporter knows "
                            f"({', '.join(SCHEDULES)})")
    if not d.score_sigma >= 0:  # also refuses NaN
        raise ExporterError(f"--score-sigma {d.score_sigma} must be a number >= 0 (0: no blur)")
    prepare_for_export(unet, seg)
    dtype = torch.float16 if opts.fp16 else torch.float32
    det = OneStepDetector(unet, seg, d, batch=opts.batch, compute_dtype=dtype)
    if opts.fp16:
        det.unet.half()
        det.seg.half()
    det.eval()
    c = unet.cfg
    size, ch = c.image_size, c.in_channels

    manifest = manifest_for(opts, unet, seg, info)
    model = _torch_export(det, torch.zeros(opts.batch, ch, size, size), opts.opset)
    seal(model, manifest, opts.batch)

    sess = ort_session(model.SerializeToString())
    # parity: golden patterns plus seeded random inputs, ORT vs PyTorch
    with tempfile.TemporaryDirectory() as td:
        gfiles, allin = golden_inputs(Path(td), size, ch, opts.value_range, opts.golden_from)
        ort_map, ort_score = run_batched(sess, allin, opts.batch)
        with torch.no_grad():
            tm, ts = run_torch(det, allin, opts.batch)
        map_err = float(np.abs(tm - ort_map).max())
        score_err = float(np.abs(ts - ort_score).max())
        tol = PARITY_TOL_FP16 if opts.fp16 else PARITY_TOL_FP32
        if map_err > tol:
            raise ExporterError(
                f"parity failed: max |map ORT - PyTorch| = {map_err:.3g} > {tol:g}"
            )
        sha = graph_sha256(model)
        golden = {"model_sha256": sha,
                  "cases": golden_cases(out, gfiles, ort_map, ort_score)}
        write_model_and_goldens(model, out, Path(td), golden)
    return {"map_max_abs_err": map_err, "score_max_abs_err": score_err,
            "flops_per_frame": manifest["flops_per_frame"], "model_sha256": sha,
            "size_bytes": out.stat().st_size, "manifest": manifest}
