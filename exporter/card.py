"""Model card (MODEL.md) from the manifest, an ORT CPU timing and `evaluate`."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import evaluate, format_table
from .onnxio import get_manifest, graph_sha256, load_model, ort_session
from .preprocess import IMAGE_EXTS
from .verify import golden_paths


def tiles_texture(dataset: Path) -> str | None:
    """The scikit-image texture when `dataset` is a make-tiles texture dir (its tiles.json
    says so), else None: the card then describes the folder as it is."""
    try:
        meta = json.loads((dataset / "tiles.json").read_text())
    except (OSError, ValueError):
        return None
    tex = meta.get("texture") if isinstance(meta, dict) else None
    return tex if isinstance(tex, str) and "tiles" in meta else None


def image_counts(dataset: Path) -> dict[str, int]:
    """Images per folder under `dataset` (relative path -> count), masks excluded."""
    counts: dict[str, int] = {}
    if not dataset.is_dir():
        return counts
    for d in sorted(p for p in [dataset, *dataset.rglob("*")] if p.is_dir()):
        rel = d.relative_to(dataset)
        if "ground_truth" in rel.parts:
            continue
        n = sum(1 for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if n:
            counts[rel.as_posix() or "."] = n
    return counts


def data_lines(dataset: Path) -> list[str]:
    """The user's data folder: path and images per split / kind."""
    counts = image_counts(dataset)
    lines = ["## Data", "", f"`{dataset}` (images per folder; masks under ground_truth/ not "
             "counted):", ""]
    lines += [f"- `{k}`: {v}" for k, v in counts.items()] or ["- (no images found)"]
    return lines + [""]


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


def averaged_lines(averaged: dict[str, Any] | None) -> list[str]:
    """The weights' origin when they are the average of several snapshots (`average.py`)."""
    if not averaged:
        return []
    steps = averaged["steps"]
    return [f"- weights: the uniform average of {len(steps)} snapshots, steps "
            f"{averaged['from']}-{averaged['to']} (`select --average-from {averaged['from']}`)"]


def validation_lines(selection: dict[str, Any] | None, val: dict[str, Any] | None,
                     tiles: bool = False) -> list[str]:
    """How the stopping point was chosen (validation split only) and the chosen model there."""
    if selection is None and val is None:
        return []
    lines = ["## Validation (stopping point and threshold; never the test set)", ""]
    if selection is not None:
        from .select import format_selection

        lines += [format_selection(selection), ""]
    if val is not None:
        # Only make-tiles builds the two from disjoint crops; of a user's folders it is not known.
        disjoint = " (validation crops, disjoint from the calibration crops)" if tiles else ""
        lines += [f"The shipped model on `{val['dataset']}` at its calibrated threshold"
                  f"{disjoint}:", "",
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
    texture = tiles_texture(dataset)
    inp = m["input"]
    gjson, gdir = golden_paths(path)
    if texture is not None:
        subject = (f"{inp['height']}x{inp['width']} grey tiles of scikit-image `{texture}()`")
        made_by = (f"; made by `python -m exporter make-tiles --out {dataset.parent}` "
                   "(deterministic, seed 0)")
        test_note = ("Test tiles come from x >= 384 of the photograph only (never seen in "
                     "training or calibration); defects are made by `exporter/tiles.py`, a "
                     "synthesis unlike the training one.")
    else:
        colour = "grey" if inp["channels"] == 1 else "RGB"
        trained = m.get("training", {}).get("data") or ""
        subject = (f"{inp['height']}x{inp['width']} {colour} images"
                   + (f", trained on `{trained}`" if trained else "")
                   + f"; evaluated on `{dataset}`")
        made_by = ""
        test_note = (f"Test images: `{dataset / 'test'}` ({ev['n_good']} good, "
                     f"{ev['n_defective']} defective in "
                     f"{', '.join(k for k in ev['per_kind'] if k != 'good')}).")
    lines = [
        f"# {name}",
        "",
        f"DiffusionAD one-step anomaly detector (ARCHITECTURE §1) for {subject}, exported as "
        "one static ONNX graph.",
        "",
        "## Files",
        f"- `{path.name}` ({path.stat().st_size / 1e6:.2f} MB, {a.get('precision', 'fp32')}), "
        f"manifest in metadata key `diffad.manifest`",
        f"- `{gjson.name}` + `{gdir.name}/`: golden cases (ORT CPU)",
        f"- model id (graph sha256, unchanged by calibrate) `{graph_sha256(load_model(path))}`",
        "",
        "## Graph",
        f"- input `image` float32 [{inp['batch']}, {inp['channels']}, "
        f"{inp['height']}, {inp['width']}], range {inp['range']}",
        "- outputs `anomaly_map` [B,1,H,W] in [0,1], `score` [B] = mean of top-"
        f"{m['score']['top_k']} map values"
        + (f" of the map blurred with a Gaussian of sigma {m['score']['blur_sigma']} px"
           if m["score"].get("blur_sigma") else ""),
        f"- t_s {m['diffusion']['t_s']}, t_b {m['diffusion']['t_b']}, w {m['diffusion']['w']}, "
        f"noise seed {m['diffusion']['noise_seed']} (noises fixed at export)",
        *arch_lines(a),
        f"- {m['flops_per_frame'] / 1e9:.3f} GFLOP per frame (2 x MACs of Conv/ConvTranspose/"
        "MatMul/Gemm, counted from the graph's real shapes)",
        f"- speed: {ms:.1f} ms/frame median, ONNX Runtime {ort_version()} CPU, {threads} "
        f"thread{'s' if threads != 1 else ''} on this 2-core dev VM (shared; see "
        "`scripts/bench-model`)",
        "",
        *([] if texture is not None else data_lines(dataset)),
        "## Training",
        f"- data: {tr.get('data', '')}{made_by}",
        f"- command: `{tr.get('command', '')}`",
        f"- seed {tr.get('seed')}, steps {tr.get('steps')}, batch {tr.get('batch')}, "
        f"crop {tr.get('crop') or 'none'}, lr UNet {tr.get('lr_unet')}, lr seg {tr.get('lr_seg')}",
        *averaged_lines(tr.get("averaged")),
        f"- wall time: {tr.get('wall_seconds', 0) / 60:.1f} min on CPU",
        f"- checkpoint sha256 `{m.get('checkpoint_sha256', '')}`",
        "",
        "## Calibration",
        f"- threshold {thr.get('value')} ({threshold_rule(thr)}, {thr.get('n_images')} images "
        f"of `{thr.get('data')}`)",
        *calibrated_rates(thr),
        f"- normal scores: mean {ns.get('mean', 0):.4f}, std {ns.get('std', 0):.4f}, "
        f"max {ns.get('max', 0):.4f}",
        "",
        f"## Evaluation (`python -m exporter evaluate {path} --dataset {dataset}`)",
        "",
        test_note,
        "",
        format_table(ev),
        "",
    ]
    val = evaluate(path, validation, threads=threads) if validation is not None else None
    lines += validation_lines(selection, val, tiles=texture is not None)
    if report is not None:
        lines += report_lines(report, out.parent)
    if notes:
        lines += ["## Notes", "", notes, ""]
    out.write_text("\n".join(lines))
    return {"eval": ev, "ms": ms}


def calibrated_rates(thr: dict[str, Any]) -> list[str]:
    """The rates the threshold costs on its calibration images (older manifests lack them)."""
    if "false_reject_rate" not in thr:
        return []
    line = f"- on them: {100 * thr['false_reject_rate']:.1f} % of the good images rejected"
    if "escape_rate" in thr:
        line += f", {100 * thr['escape_rate']:.1f} % of the defective ones let through"
    if "check_false_reject_rate" in thr:
        line += f"; {100 * thr['check_false_reject_rate']:.1f} % of the other good images rejected"
    return [line + f" (ceiling {100 * thr.get('max_frr', 0.1):g} %)"]


def threshold_rule(thr: dict[str, Any]) -> str:
    if thr.get("method") == "max_escapes":
        return (f"max_escapes: escapes <= {thr.get('max_escapes')} of {thr.get('n_defects')} "
                f"defective images of `{thr.get('defects')}`, fewest false rejects")
    return f"{thr.get('method')}, target FRR {thr.get('target_frr')}"


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def dumps(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=2)
