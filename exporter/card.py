"""Model card (MODEL.md) from the manifest, an ORT CPU timing and `evaluate`."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import evaluate, format_table
from .onnxio import get_manifest, load_model, ort_session


def time_model(path: Path, threads: int = 2, runs: int = 30) -> float:
    """Median ms per frame, ORT CPU (spinning allowed, as a runtime would)."""
    manifest = get_manifest(load_model(path))
    inp = manifest["input"]
    sess = ort_session(path, threads, spin=True)
    x = np.random.default_rng(0).random(
        (inp["batch"], inp["channels"], inp["height"], inp["width"])).astype(np.float32)
    for _ in range(5):
        sess.run(None, {"image": x})
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        ts.append((time.perf_counter() - t) * 1000 / inp["batch"])
    return statistics.median(ts)


def arch_lines(a: dict[str, Any]) -> list[str]:
    u, s = a["unet"], a["seg"]
    if a.get("arch", u.get("arch", "official")) == "edge":
        return [
            f"- architecture: edge (ARCHITECTURE §7), stem stride {u['stem']}",
            f"- UNet: widths {u['widths']}, residual blocks encoder {u['enc_blocks']} / decoder "
            f"{u['dec_blocks']}, attention {'at the bottom' if u['attention'] else 'none'}, no "
            f"norm; {u['parameters'] / 1e6:.2f} M params",
            f"- seg: widths {s['widths']}, conv-BN(folded)-ReLU, input x0, x0_hat"
            f"{', |x0 - x0_hat|' if s.get('diff_input') else ''}; "
            f"{s['parameters'] / 1e6:.2f} M params",
        ]
    return [
        "- architecture: official-compatible (ARCHITECTURE §1)",
        f"- UNet: base {u['base_channels']}, mults {u['channel_mults']}, "
        f"{u['num_res_blocks']} res block(s)/level, attention at {u['attention_resolutions']} px"
        f" + middle, GroupNorm groups {u['norm_groups']}; {u['parameters'] / 1e6:.2f} M params",
        f"- seg: base width {s['base_width']}; {s['parameters'] / 1e6:.2f} M params",
    ]


def validation_lines(selection: dict[str, Any] | None, val: dict[str, Any] | None) -> list[str]:
    """How the stopping point was chosen (validation split only) and the chosen model there."""
    if selection is None and val is None:
        return []
    lines = ["## Validation (stopping point and threshold; never the test set)", ""]
    if selection is not None:
        from .select import format_selection

        lines += [format_selection(selection), ""]
    if val is not None:
        lines += [f"The shipped model on `{val['dataset']}` at its calibrated threshold "
                  "(validation crops, disjoint from the calibration crops):", "",
                  "Validation: " + format_table(val), ""]
    return lines


def report_lines(report_dir: Path, card_dir: Path) -> list[str]:
    """Embeds the figures of `diffad eval --report` (test set), if they were written."""
    if not (report_dir / "index.md").is_file():
        return []
    rel = report_dir.relative_to(card_dir) if report_dir.is_relative_to(card_dir) else report_dir
    pngs = sorted(report_dir.glob("*.png"))
    lines = ["## Report (test set, `diffad eval --report`)", "",
             f"Figures and their numbers: [`{rel}/index.md`]({rel}/index.md).", ""]
    for p in pngs:
        lines.append(f"![{p.stem}]({rel}/{p.name})")
    return lines + [""]


def write_card(path: Path, dataset: Path, out: Path, threads: int = 2,
               notes: str = "", selection: dict[str, Any] | None = None,
               validation: Path | None = None,
               report: Path | None = None) -> dict[str, Any]:
    m = get_manifest(load_model(path))
    ev = evaluate(path, dataset, threads=threads)
    ms = time_model(path, threads)
    a, tr = m["architecture"], m["training"]
    thr = m["threshold"] or {}
    ns = m["normal_scores"] or {}
    name = m["name"]
    lines = [
        f"# {name}",
        "",
        "DiffusionAD one-step anomaly detector (ARCHITECTURE §1) for 128x128 grey tiles of "
        f"scikit-image `{name.removeprefix('tiles-')}()`, exported as one static ONNX graph.",
        "",
        "## Files",
        f"- `model.onnx` ({path.stat().st_size / 1e6:.2f} MB, {a.get('precision', 'fp32')}), "
        f"manifest in metadata key `diffad.manifest`",
        "- `model.golden.json` + `model.golden/`: golden cases (ORT CPU)",
        "",
        "## Graph",
        f"- input `image` float32 [{m['input']['batch']}, {m['input']['channels']}, "
        f"{m['input']['height']}, {m['input']['width']}], range {m['input']['range']}",
        "- outputs `anomaly_map` [B,1,H,W] in [0,1], `score` [B] = mean of top-"
        f"{m['score']['top_k']} map values"
        + (f" of the map blurred with a Gaussian of sigma {m['score']['blur_sigma']} px"
           if m["score"].get("blur_sigma") else ""),
        f"- t_s {m['diffusion']['t_s']}, t_b {m['diffusion']['t_b']}, w {m['diffusion']['w']}, "
        f"noise seed {m['diffusion']['noise_seed']} (noises fixed at export)",
        *arch_lines(a),
        f"- {m['flops_per_frame'] / 1e9:.3f} GFLOP per frame (2 x MACs of Conv/ConvTranspose/"
        "MatMul/Gemm, counted from the graph's real shapes)",
        f"- speed: {ms:.1f} ms/frame median, ONNX Runtime {ort_version()} CPU, {threads} threads "
        "on this 2-core dev VM (shared; see `scripts/bench-model`)",
        "",
        "## Training",
        f"- data: {tr.get('data', '')}; made by `python -m exporter make-tiles --out "
        f"{dataset.parent}` (deterministic, seed 0)",
        f"- command: `{tr.get('command', '')}`",
        f"- seed {tr.get('seed')}, steps {tr.get('steps')}, batch {tr.get('batch')}, "
        f"crop {tr.get('crop') or 'none'}, lr UNet {tr.get('lr_unet')}, lr seg {tr.get('lr_seg')}",
        f"- wall time: {tr.get('wall_seconds', 0) / 60:.1f} min on CPU",
        f"- checkpoint sha256 `{m.get('checkpoint_sha256', '')}`",
        "",
        "## Calibration",
        f"- threshold {thr.get('value')} ({thr.get('method')}, target FRR "
        f"{thr.get('target_frr')}, {thr.get('n_images')} images of `{thr.get('data')}`)",
        f"- normal scores: mean {ns.get('mean', 0):.4f}, std {ns.get('std', 0):.4f}, "
        f"max {ns.get('max', 0):.4f}",
        "",
        f"## Evaluation (`python -m exporter evaluate {path} --dataset {dataset}`)",
        "",
        "Test tiles come from x >= 384 of the photograph only (never seen in training or "
        "calibration); defects are made by `exporter/tiles.py`, a synthesis unlike the "
        "training one.",
        "",
        format_table(ev),
        "",
    ]
    val = evaluate(path, validation, threads=threads) if validation is not None else None
    lines += validation_lines(selection, val)
    if report is not None:
        lines += report_lines(report, out.parent)
    if notes:
        lines += ["## Notes", "", notes, ""]
    out.write_text("\n".join(lines))
    return {"eval": ev, "ms": ms}


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def dumps(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=2)
