"""CLI: python -m exporter {train,export,calibrate,verify,evaluate,card,make-tiles,feature-probe,
recipe-*}."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import ExporterError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (not for flags, nor for options without one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) \
                or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {s!r}") from None


def _add_arch(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("architecture")
    g.add_argument("--arch", choices=("official", "edge"), default="official",
                   help="official: the paper's networks (loads official checkpoints); edge: the "
                        "light graph for the line (ARCHITECTURE §7)")
    g.add_argument("--image-size", type=int, default=128,
                  help="input size in pixels (square; a multiple of 32)")
    g.add_argument("--channels", type=int, default=1, choices=(1, 3),
                  help="image channels: 1 grey, 3 RGB")
    g.add_argument("--base-channels", type=int, default=16,
                  help="official UNet: channels of the first level (widths are multiples of it)")
    g.add_argument("--channel-mults", type=_ints, default=(1, 2, 2, 4),
                  help="official UNet: width multiplier per level, comma-separated")
    g.add_argument("--num-res-blocks", type=int, default=1,
                  help="official UNet: residual blocks per level")
    g.add_argument("--attention-resolutions", type=_ints, default=(16, 8),
                   help="pixel sizes (of the feature map) that get self-attention")
    g.add_argument("--heads", type=int, default=1,
                  help="attention heads (official UNet)")
    g.add_argument("--head-channels", type=int, default=-1,
                  help="channels per attention head; -1: given by --heads")
    g.add_argument("--norm-groups", type=int, default=8,
                  help="GroupNorm groups (official UNet; official code: 32)")
    g.add_argument("--seg-width", type=int, default=0,
                   help="seg head base width (default: 8 official, 16 edge)")
    e = p.add_argument_group("edge architecture (with --arch edge)")
    e.add_argument("--stem", type=int, default=2, choices=(2, 4),
                   help="stem stride: the UNet and seg head run at image/stem resolution")
    e.add_argument("--widths", type=_ints, default=(32, 64, 128, 128),
                   help="UNet channels per level (multiples of 16)")
    e.add_argument("--enc-blocks", type=_ints, default=(0, 1, 1, 1),
                   help="residual blocks per encoder level")
    e.add_argument("--dec-blocks", type=_ints, default=(1, 1, 1),
                   help="residual blocks per decoder level (one fewer than levels)")
    e.add_argument("--no-attention", action="store_true", help="no attention at the bottom")
    e.add_argument("--emb-channels", type=int, default=64,
                  help="edge UNet: timestep embedding channels")
    e.add_argument("--no-diff-input", action="store_true",
                   help="seg head sees (x0, x0_hat) only, not also |x0 - x0_hat|")
    e.add_argument("--seg-dilations", type=_ints, default=(),
                   help="seg head context stack: one residual 3x3 conv per dilation, "
                        "comma-separated (e.g. 1,2,4,8); empty: none")
    e.add_argument("--seg-context-level", type=int, default=1,
                   help="seg encoder level of the --seg-dilations stack (0: stem resolution, "
                        "each level halves it)")


def _unet_cfg(a: argparse.Namespace):
    from .edge import EdgeUNetConfig
    from .unet import UNetConfig

    if a.image_size % 32:
        raise ExporterError(f"--image-size must be a multiple of 32, got {a.image_size}")
    if a.arch == "edge":
        try:
            return EdgeUNetConfig(
                image_size=a.image_size, in_channels=a.channels, stem=a.stem, widths=a.widths,
                enc_blocks=a.enc_blocks, dec_blocks=a.dec_blocks, attention=not a.no_attention,
                emb_channels=a.emb_channels,
            )
        except ValueError as e:
            raise ExporterError(str(e)) from None
    return UNetConfig(
        image_size=a.image_size, in_channels=a.channels, base_channels=a.base_channels,
        channel_mults=a.channel_mults, num_res_blocks=a.num_res_blocks,
        attention_resolutions=a.attention_resolutions, n_heads=a.heads,
        n_head_channels=a.head_channels, norm_groups=a.norm_groups,
    )


def cmd_train(a: argparse.Namespace) -> None:
    from .train import TrainOptions, train

    opts = TrainOptions(
        data=a.data, out=a.out, unet=_unet_cfg(a),
        seg_width=a.seg_width or (16 if a.arch == "edge" else 8),
        seg_diff_input=not a.no_diff_input, seg_dilations=a.seg_dilations,
        seg_context_level=a.seg_context_level, steps=a.steps,
        batch=a.batch, lr_unet=a.lr_unet, lr_seg=a.lr_seg, seed=a.seed, threads=a.threads,
        crop=a.crop, augment=not a.no_augment, anomaly_source=a.anomaly_source,
        checkpoint_every=a.checkpoint_every, keep_every=a.keep_every,
        max_minutes=a.max_minutes, resume=not a.no_resume,
        seg_extra=a.seg_extra, focal_gamma=a.focal_gamma, discolour=a.discolour,
        self_texture=a.self_texture, jitter=a.jitter, device=a.device, workers=a.workers,
    )
    train(opts)


def _key_value(s: str) -> tuple[str, object]:
    from .official_args import parse_value

    key, sep, value = s.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    return key.strip(), parse_value(value)


def _official_flags(a: argparse.Namespace):
    from .official_args import OfficialFlags

    return OfficialFlags(
        args_file=a.official_args, set_args=dict(a.official_set or []), t_s=a.t_s, t_b=a.t_b,
        w=a.w, attention_resolutions=a.attention_resolutions, num_res_blocks=a.num_res_blocks,
    )


def cmd_export(a: argparse.Namespace) -> None:
    import torch

    from .diffusion import DiffusionConfig
    from .export import ExportOptions, export_model
    from .official import build_from_checkpoint

    torch.set_num_threads(max(1, a.threads))
    if (a.checkpoint is None) == (a.official_checkpoint is None):
        raise ExporterError("give exactly one of --checkpoint or --official-checkpoint")
    src = a.checkpoint or a.official_checkpoint
    if a.out.exists() and not a.force:
        raise ExporterError(f"{a.out} exists (use --force to overwrite)")
    unet, seg, info = build_from_checkpoint(src, a.official_checkpoint is not None,
                                            _official_flags(a))
    for line in info.get("log", []):
        print(f"official: {line}")
    if a.training_data:
        info["training"]["data"] = a.training_data
    name = a.name or a.out.stem
    lo, hi = a.range if a.range else (0.0, 1.0)
    # official: the args' eval_normal_t / eval_noisier_t / condition_w / T / beta_schedule,
    # already overridden by --t-s / --t-b / --w; ours: the flags or the defaults
    diff = info.get("diffusion") or {
        "t_s": 200 if a.t_s is None else a.t_s, "t_b": 400 if a.t_b is None else a.t_b,
        "w": 1.0 if a.w is None else a.w}
    opts = ExportOptions(
        name=name, diff=DiffusionConfig(**diff, top_k=a.top_k, score_sigma=a.score_sigma,
                                        noise_seed=a.noise_seed),
        batch=a.batch, opset=a.opset, fp16=a.fp16, value_range=(lo, hi), force=a.force,
        golden_from=a.golden_from,
    )
    r = export_model(unet, seg, info, a.out, opts)
    print(f"wrote {a.out} ({r['size_bytes'] / 1e6:.2f} MB), "
          f"model id (graph sha256) {r['model_sha256'][:12]}")
    print(f"flops_per_frame: {r['flops_per_frame'] / 1e9:.3f} GFLOP")
    print(f"parity ORT vs PyTorch: max abs error map {r['map_max_abs_err']:.3g}, "
          f"score {r['score_max_abs_err']:.3g}")


def _calibration_plot(a: argparse.Namespace, r: dict) -> None:
    from .plot import line_plot
    from .sweep import curve

    path = a.plot or a.model.with_suffix(".calibration.png")
    c = curve(r["good_scores"], r["defect_scores"])
    series = [("false-reject rate (good)", c["threshold"], c["frr"])]
    if len(r["defect_scores"]):
        series.append(("escape rate (defects)", c["threshold"], c["escape"]))
    if line_plot(path, series, f"{a.model.name}: rejected at score >= threshold", "threshold",
                 "rate", vline=("chosen", r["threshold"]["value"]), steps=True,
                 y_range=(0.0, 1.0)):
        print(f"plot: {path}", file=sys.stderr)
    else:
        print("note: no plot written (Pillow is not importable)", file=sys.stderr)


def _unlike_training(model: Path, train: Path, folders: list[Path], sheet: Path | None,
                     threads: int, steps: int | None) -> dict:
    """Check `folders` against the training images (`novelty`), print what is unlike them,
    draw the sheet; returns the JSON."""
    from .novelty import check, format_findings, reference, write_sheet

    ref = reference(model, train, threads, steps)
    findings = [check(model, ref, f, threads, steps) for f in folders]
    print(format_findings(ref, findings), file=sys.stderr)
    out = {"train": {"folder": str(train), "n_images": ref.n_images, "median": ref.median,
                     "spread": ref.spread, "max": ref.max},
           "checked": [f.as_json() for f in findings], "sheet": None}
    if sheet is not None and write_sheet(findings, sheet):
        print(f"thumbnails of the images unlike training: {sheet}", file=sys.stderr)
        out["sheet"] = str(sheet)
    return out


def cmd_unlike_training(a: argparse.Namespace) -> None:
    sheet = a.sheet or a.model.with_suffix(".unlike-training.png")
    print(json.dumps(_unlike_training(a.model, a.train, a.folders, sheet, a.threads, a.steps),
                     indent=2))


def cmd_calibrate(a: argparse.Namespace) -> None:
    from .calibrate import (
        CALIBRATION_SUBDIRS,
        CHECK_SUBDIRS,
        DRIFT_P,
        DRIFT_STD,
        calibrate,
        good_folder,
        quantile_rank,
    )
    from .sweep import format_sweep

    if a.train is not None:
        # Before calibrating: a refusal below is often explained by what this finds.
        folders = [good_folder(a.good, CALIBRATION_SUBDIRS)]
        if a.check_good is not None:
            folders.append(good_folder(a.check_good, CHECK_SUBDIRS))
        _unlike_training(a.model, a.train, folders, a.model.with_suffix(".unlike-training.png"),
                         a.threads, a.steps)
    r = calibrate(a.model, a.good, a.target_frr, threads=a.threads, check_good=a.check_good,
                  defects=a.defects, max_escapes=a.max_escapes, steps=a.steps,
                  max_frr=a.max_frr)
    out = {k: r[k] for k in ("threshold", "normal_scores", "calibration", "defects", "check",
                             "sweep") if k in r}
    print(json.dumps(out, indent=2))
    err = sys.stderr
    print("trade-off on the calibration images (rejected at score >= threshold):", file=err)
    print(format_sweep(r["sweep"]), file=err)
    n = r["threshold"]["n_images"]
    thr = r["threshold"]["value"]
    cal = r["calibration"]
    if a.max_escapes is not None:
        d = r["defects"]
        print(f"recommended threshold {thr:.6f}: escapes <= {a.max_escapes * 100:g}% at the "
              f"fewest false rejects: escapes {d['escapes']}/{d['n_images']} = "
              f"{d['escape_rate'] * 100:.1f} %, false rejects {cal['false_rejects']}/{n} = "
              f"{cal['false_reject_rate'] * 100:.1f} % (written to the model)", file=err)
        if cal["false_reject_rate"] > a.target_frr:
            print(f"warning: meeting escapes <= {a.max_escapes:g} costs a false-reject rate of "
                  f"{cal['false_reject_rate']:.3f} on the calibration images, above "
                  f"--target-frr {a.target_frr:g}", file=err)
    else:
        tail = ""
        if "defects" in r:
            d = r["defects"]
            tail = (f"; escapes {d['escapes']}/{d['n_images']} = "
                    f"{d['escape_rate'] * 100:.1f} % of {d['data']}")
        print(f"recommended threshold {thr:.6f}: good-score quantile for false rejects <= "
              f"{a.target_frr * 100:g}% (written to the model){tail}", file=err)
        above = n - quantile_rank(n, a.target_frr)  # calibration images above the threshold
        if above == 0:
            # the empirical quantile cannot see a tail thinner than 1/n: it is the sample max
            print(f"warning: {n} good images cannot resolve a false-reject rate of "
                  f"{a.target_frr:g}; the threshold is their maximum, so expect about "
                  f"1/{n + 1} = {1 / (n + 1):.3f} on new good parts. Calibrate on at least "
                  f"{math.ceil(10 / a.target_frr)} good images for a trustworthy rate.",
                  file=err)
        elif above < 10:
            print(f"note: only {above} of {n} good scores lie above the threshold, so the "
                  f"false-reject rate on new good parts is only roughly {a.target_frr:g}"
                  + ("" if "check" in r else "; measure it with --check-good DIR") + ".",
                  file=err)
    if "check" in r:
        c = r["check"]
        print(f"false-reject rate on {c['data']}: {c['rejected']}/{c['n_images']} = "
              f"{c['false_reject_rate']:.4f} (target {a.target_frr:g})", file=err)
        dr = c["drift"]
        if dr["differ"]:
            print(f"warning: the calibration good images score differently from {c['data']}: "
                  f"mean {dr['calibration_mean']:.6f} vs {dr['check_mean']:.6f} "
                  f"({dr['shift_std']:.2f} pooled std apart, limit {DRIFT_STD:g}), KS "
                  f"{dr['ks']:.3f}, p {dr['ks_p']:.2g} (limit {DRIFT_P:g}). The threshold may "
                  "not hold on those parts: calibrate on good images like the line's.",
                  file=err)
    _calibration_plot(a, r)


def cmd_keygen(a: argparse.Namespace) -> None:
    from .sign import keygen

    pub, key = keygen(a.prefix, a.comment, a.force)
    print(f"public key {pub} (give it to the line: engine.trusted_keys), secret key {key} "
          "(mode 0600: keep it off the line's units)")


def cmd_sign(a: argparse.Namespace) -> None:
    from .sign import sign

    for model in a.models:
        out = sign(model, a.key, a.comment)
        print(f"signed {model}: {out}")


def cmd_verify(a: argparse.Namespace) -> None:
    from .verify import verify_model

    if (a.official_code is None) != (a.official_checkpoint is None):
        raise ExporterError("--official-code and --official-checkpoint go together")
    if a.images is not None and a.official_code is None:
        raise ExporterError("--images needs --official-code")
    r = verify_model(a.model, tol=a.tol)
    print(json.dumps(r["manifest"], indent=2))
    print(f"golden check OK: {r['cases']} cases, max error {r['max_err']:.3g}")
    if a.official_code is not None:
        import torch

        from .official_parity import format_parity, verify_official

        torch.set_num_threads(max(1, a.threads))
        print(format_parity(verify_official(a.model, a.official_code, a.official_checkpoint,
                                            images=a.images, tol=a.official_tol)))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate, format_table

    r = evaluate(a.model, a.dataset, threads=a.threads, threshold=a.threshold, sweep=a.sweep)
    print(json.dumps(r, indent=2) if a.json else format_table(r))


def cmd_select(a: argparse.Namespace) -> None:
    from .diffusion import DiffusionConfig
    from .select import format_selection, select, write_selection

    r = select(a.checkpoints, a.dataset, every=a.every, threads=a.threads,
               diff=DiffusionConfig(t_s=a.t_s, t_b=a.t_b, top_k=a.top_k,
                                    score_sigma=a.score_sigma), average_from=a.average_from)
    print(format_selection(r))
    print(f"chosen: {r['chosen']['checkpoint']}")
    if a.out:
        write_selection(r, a.out)


def cmd_card(a: argparse.Namespace) -> None:
    from .card import write_card

    notes = a.notes.read_text() if a.notes else ""
    out = a.out or a.model.with_name("MODEL.md")
    selection = json.loads(a.selection.read_text()) if a.selection else None
    r = write_card(a.model, a.dataset, out, threads=a.threads, notes=notes, selection=selection,
                   validation=a.validation, report=a.report)
    print(f"wrote {out}: {r['ms']:.1f} ms/frame, image AUROC {r['eval']['image_auroc']:.4f}")


def cmd_make_tiles(a: argparse.Namespace) -> None:
    from .tiles import make_tiles

    summary = make_tiles(a.out, force=a.force, seed=a.seed)
    for tex, counts in summary.items():
        good = {k: v for k, v in counts.items() if k.endswith("good")}
        n_def = {s: sum(v for k, v in counts.items() if k.startswith(s) and
                        not k.endswith("good")) for s in ("validation/test/", "test/")}
        print(f"{tex}: " + ", ".join(f"{k} {v}" for k, v in good.items())
              + f", validation/test defects {n_def['validation/test/']}"
              + f", test defects {n_def['test/']}")
    print(f"wrote tiles under {a.out} (layout and split manifest: <texture>/tiles.json)")


def cmd_feature_probe(a: argparse.Namespace) -> None:
    import torch

    from .edge import EdgeUNet
    from .probe import probe
    from .recipes.train import load_recipe_checkpoint

    torch.set_num_threads(a.threads)
    record, net = load_recipe_checkpoint(a.checkpoint)
    if not isinstance(net, EdgeUNet):
        raise ExporterError(f"{a.checkpoint}: a {record['recipe']} checkpoint has no denoiser "
                            "encoder; the probe takes an advrad or anoddpm checkpoint")
    levels = [tuple(int(v) for v in s.split("+")) for s in a.levels.split(",")]
    r = probe(net, a.train, a.dataset, levels, list(a.t), list(a.top_k))
    b = r["best"]
    print(f"best: levels {b['levels']} t {b['t']} top-{b['top_k']}: image AUROC "
          f"{b['image_auroc']:.4f}, pixel AUROC {b['pixel_auroc']:.4f} of {len(r['rows'])}")
    if a.out:
        a.out.write_text(json.dumps(r, indent=2) + "\n")


def _command(sub, name: str, text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m exporter", description=__doc__,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = _command(sub, "train", "train UNet + seg on good images")
    t.add_argument("--data", type=Path, required=True,
                   help="folder of good images, or an MVTec-style dir with train/good")
    t.add_argument("--out", type=Path, required=True,
                   help="checkpoint dir (last.pt, loss.csv, loss.png)")
    _add_arch(t)
    t.add_argument("--steps", type=int, default=1000,
                  help="training steps (optimiser updates) in all, counted across resumes")
    t.add_argument("--batch", type=int, default=8,
                  help="images per step")
    t.add_argument("--lr-unet", type=float, default=2e-4,
                  help="Adam learning rate of the UNet")
    t.add_argument("--lr-seg", type=float, default=1e-3,
                  help="Adam learning rate of the segmentation network")
    t.add_argument("--seed", type=int, default=0,
                  help="seed of every random stream (data, synthesis, noise, weights)")
    t.add_argument("--threads", type=int, default=2,
                  help="CPU threads for PyTorch / ONNX Runtime")
    t.add_argument("--crop", type=int, default=0, help="train on random crops (multiple of 32)")
    t.add_argument("--no-augment", action="store_true", help="no flips / rot90")
    t.add_argument("--anomaly-source", type=Path, default=None,
                   help="folder of foreign-texture images (default: procedural + skimage)")
    t.add_argument("--checkpoint-every", type=int, default=100,
                  help="write the resumable last.pt (and loss.png) every N steps")
    t.add_argument("--keep-every", type=int, default=0,
                   help="also keep the weights every N steps (step-NNNNNN.pt), to choose the "
                        "stopping point on validation data afterwards")
    t.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after this much training wall time, counted across resumes (each "
                        "checkpoint stores the time so far; start-up and time lost after the "
                        "last checkpoint of a killed run are not counted); checked after each "
                        "step; 0: no limit")
    t.add_argument("--no-resume", action="store_true",
                  help="start afresh even if the --out dir holds a last.pt")
    t.add_argument("--focal-gamma", type=float, default=4.0,
                   help="focal loss gamma (paper: 4; lower trains the seg head faster)")
    t.add_argument("--discolour", type=float, default=0.0,
                   help="share of synthetic anomalies that are soft brightness shifts "
                        "(stains) instead of foreign-texture blends")
    t.add_argument("--self-texture", type=float, default=0.0,
                   help="share of synthetic anomalies that refill a region with the part's own "
                        "texture, displaced, turned and rescaled (for stochastic textures)")
    t.add_argument("--jitter", type=float, default=0.0,
                   help="share of training crops turned by any angle, rescaled by 0.85-1.15 "
                        "and shifted in contrast and brightness (for stochastic textures)")
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where the networks train (auto: cuda when PyTorch sees a GPU)")
    t.add_argument("--workers", type=int, default=0,
                   help="processes that draw the batches (0: this one, in the stream the shipped "
                        "models were trained on; N: each batch seeded by seed, step and slot, "
                        "so a GPU is not left waiting on the synthesis)")
    t.add_argument("--seg-extra", type=int, default=0,
                   help="extra seg-only updates per step (UNet under no_grad)")
    t.set_defaults(fn=cmd_train)

    e = _command(sub, "export", "export the one-step graph to ONNX")
    e.add_argument("--checkpoint", type=Path, help="our training checkpoint (file or dir)")
    e.add_argument("--official-checkpoint", type=Path,
                   help="official DiffusionAD checkpoint (params-best.pt or its dir)")
    e.add_argument("--official-args", type=Path,
                   help="the official args JSON (e.g. the official repository's "
                        "args/args1.json), read as its eval.py reads it; default: the args "
                        "saved in the checkpoint")
    e.add_argument("--official-set", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="override one key of the official args (VALUE as JSON: "
                        "img_size=[64,64], beta_schedule=cosine); repeatable")
    e.add_argument("--attention-resolutions", type=_ints, default=None,
                   help="official checkpoints from code that honours attention_resolutions "
                        "(the official train.py/eval.py always build 32,16,8)")
    e.add_argument("--num-res-blocks", type=int, default=None,
                   help="official checkpoints from code that honours num_res_blocks (the "
                        "official code always builds 2)")
    e.add_argument("--out", type=Path, required=True,
                  help="ONNX file to write (manifest and goldens beside it)")
    e.add_argument("--name", default="",
                  help="model name in the manifest (default: the file name without .onnx)")
    e.add_argument("--t-s", type=int, default=None,
                   help="small timestep (default: the official args' eval_normal_t; ours: 200)")
    e.add_argument("--t-b", type=int, default=None,
                   help="big timestep (default: eval_noisier_t; ours: 400)")
    e.add_argument("--w", type=float, default=None,
                   help="norm-guidance weight (default: condition_w; ours: 1)")
    e.add_argument("--top-k", type=int, default=50,
                  help="score = mean of the top-k anomaly-map values")
    e.add_argument("--score-sigma", type=float, default=0.0,
                   help="Gaussian blur (sigma, px) of the map before the top-k score; the "
                        "anomaly_map output stays unblurred")
    e.add_argument("--noise-seed", type=int, default=0,
                  help="seed of the two Gaussian noises fixed in the graph")
    e.add_argument("--opset", type=int, default=17,
                  help="ONNX opset version")
    e.add_argument("--batch", type=int, default=1,
                  help="batch size of the static graph")
    e.add_argument("--fp16", action="store_true", help="fp16 weights/compute, fp32 norms")
    e.add_argument("--range", type=float, nargs=2, metavar=("LO", "HI"),
                  help="pixel value range LO HI the 0..255 image is mapped to (default: 0 1)")
    e.add_argument("--training-data", default="", help="recorded in the manifest")
    e.add_argument("--golden-from", type=Path, default=None,
                   help="folder: its first 2 images join the fixed golden patterns")
    e.add_argument("--threads", type=int, default=2,
                  help="CPU threads for PyTorch / ONNX Runtime")
    e.add_argument("--force", action="store_true", help="overwrite existing outputs")
    e.set_defaults(fn=cmd_export)

    c = _command(sub, "calibrate", "set the threshold from good validation images")
    c.add_argument("model", type=Path,
                  help="the ONNX model to calibrate (its manifest's threshold is rewritten)")
    c.add_argument("--good", type=Path, required=True,
                   help="good images; a make-tiles texture dir means its validation/good")
    c.add_argument("--target-frr", type=float, default=0.005,
                   help="false-reject rate aimed for on good parts: the threshold is that "
                        "quantile of the good scores")
    c.add_argument("--check-good", type=Path, default=None,
                   help="other good images: print the new threshold's false-reject rate on "
                        "them (a texture dir or validation/ root means validation/test/good)")
    c.add_argument("--defects", type=Path, default=None,
                   help="known defective images: a folder of them, or a root whose non-good "
                        "subfolders hold them (a make-tiles texture dir means validation/test)")
    c.add_argument("--max-escapes", type=float, default=None,
                   help="with --defects: the threshold lets at most this fraction of them "
                        "escape, at the fewest false rejects (instead of the --target-frr "
                        "quantile)")
    c.add_argument("--max-frr", type=float, default=0.10,
                   help="the false-reject ceiling: a threshold rejecting more good images than "
                        "this (on --good, and on --check-good when given) is refused, with the "
                        "trade-offs the model can offer, and nothing is written; raise it to "
                        "accept such an operating point")
    c.add_argument("--steps", type=int, default=None,
                   help="sampler models (anoddpm): calibrate at this step count, which becomes "
                        "the model's default (default: the model's)")
    c.add_argument("--plot", type=Path, default=None,
                   help="PNG of false-reject and escape rate against threshold (default: "
                        "MODEL.calibration.png beside the model)")
    c.add_argument("--train", type=Path, default=None,
                   help="the model's training images: first list the --good (and --check-good) "
                        "images that score unlike any of them, with thumbnails in "
                        "MODEL.unlike-training.png (see unlike-training)")
    c.add_argument("--threads", type=int, default=2,
                  help="CPU threads for PyTorch / ONNX Runtime")
    c.set_defaults(fn=cmd_calibrate)

    u = _command(sub, "unlike-training",
                 "list the images that score unlike any training image (novel content)")
    u.add_argument("model", type=Path, help="the ONNX model")
    u.add_argument("--train", type=Path, required=True,
                   help="the images the model was trained on (up to 400 of them are scored)")
    u.add_argument("folders", type=Path, nargs="+",
                   help="folders of good images to check: calibration, --check-good, test")
    u.add_argument("--sheet", type=Path, default=None,
                   help="thumbnails of the images unlike training (default: "
                        "MODEL.unlike-training.png beside the model)")
    u.add_argument("--steps", type=int, default=None,
                   help="sampler models: score at this step count (default: the model's)")
    u.add_argument("--threads", type=int, default=2, help="CPU threads for ONNX Runtime")
    u.set_defaults(fn=cmd_unlike_training)

    v = _command(sub, "verify", "re-run the golden cases and print the manifest")
    v.add_argument("model", type=Path,
                  help="the ONNX model to check")
    v.add_argument("--tol", type=float, default=1e-4,
                  help="max |map| / |score| difference to the golden outputs")
    v.add_argument("--official-code", type=Path, default=None,
                   help="a checkout of the official DiffusionAD repository: also compare the "
                        "model with its modules on the golden inputs, with the same noise")
    v.add_argument("--official-checkpoint", type=Path, default=None,
                   help="the official checkpoint the model was exported from")
    v.add_argument("--images", type=Path, default=None,
                   help="with --official-code: real images too (first 4), and the effect of "
                        "the official 8-bit resize on them")
    v.add_argument("--official-tol", type=float, default=None,
                   help="max |map| / |score| difference to the official code (default 1e-4, "
                        "fp16 models 2e-2)")
    v.add_argument("--threads", type=int, default=2,
                  help="CPU threads for PyTorch / ONNX Runtime")
    v.set_defaults(fn=cmd_verify)

    kg = _command(sub, "keygen", "make a model-signing key pair (minisign format, unencrypted)")
    kg.add_argument("prefix", type=Path, help="writes PREFIX.pub and PREFIX.key (mode 0600)")
    kg.add_argument("--comment", default="", help="said in both files' untrusted comment")
    kg.add_argument("--force", action="store_true", help="replace an existing key pair")
    kg.set_defaults(fn=cmd_keygen)

    sg = _command(sub, "sign", "sign models: MODEL.minisig beside each (minisign format, Ed25519), "
                  "which `diffad model verify` and a line with engine.require_signature check")
    sg.add_argument("models", type=Path, nargs="+", help="the ONNX models to sign")
    sg.add_argument("--key", type=Path, required=True,
                    help="unencrypted minisign secret key (`python -m exporter keygen`, "
                         "`minisign -G -W`)")
    sg.add_argument("--comment", default=None,
                    help="trusted comment (default: timestamp, file name, its SHA-256)")
    sg.set_defaults(fn=cmd_sign)

    ev = _command(sub, "evaluate", "AUROC / PRO / escapes on an MVTec-style dataset")
    ev.add_argument("model", type=Path,
                   help="the ONNX model to evaluate")
    ev.add_argument("--dataset", type=Path, required=True,
                   help="MVTec-style dataset: test/good, test/<defect>, ground_truth/<defect>")
    ev.add_argument("--json", action="store_true",
                   help="print the results as JSON instead of tables")
    ev.add_argument("--threshold", type=float, default=None,
                    help="evaluate FRR and escapes at this threshold instead of the model's "
                         "calibrated one (the model is not changed)")
    ev.add_argument("--sweep", action="store_true",
                    help="also print the false-reject / escape trade-off table (operating "
                         "points of escape and false-reject targets); JSON: key \"sweep\"")
    ev.add_argument("--threads", type=int, default=2,
                   help="CPU threads for PyTorch / ONNX Runtime")
    ev.set_defaults(fn=cmd_evaluate)

    se = _command(sub, "select", "choose the stopping point on the validation split")
    se.add_argument("--checkpoints", type=Path, required=True,
                    help="training dir with step-NNNNNN.pt snapshots (train --keep-every)")
    se.add_argument("--dataset", type=Path, required=True,
                    help="validation split in the MVTec layout (test/good, test/<kind>): "
                        "make-tiles' TILES/<texture>/validation or your own val/; never the "
                        "test set")
    se.add_argument("--every", type=int, default=0, help="only snapshots at multiples of N")
    se.add_argument("--t-s", type=int, default=200,
                   help="small timestep of the graphs the snapshots are scored with")
    se.add_argument("--t-b", type=int, default=400,
                   help="big timestep of the graphs the snapshots are scored with")
    se.add_argument("--top-k", type=int, default=50,
                   help="score = mean of the top-k anomaly-map values")
    se.add_argument("--score-sigma", type=float, default=0.0,
                   help="Gaussian blur (sigma, px) of the map before the top-k score")
    se.add_argument("--average-from", type=int, default=None, metavar="STEP",
                    help="also average the kept snapshots from STEP on, and ship the average "
                         "if it holds up at least as well as the best single snapshot on "
                         "held-out halves of the split")
    se.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    se.add_argument("--threads", type=int, default=2,
                   help="CPU threads for PyTorch / ONNX Runtime")
    se.set_defaults(fn=cmd_select)

    cd = _command(sub, "card", "write MODEL.md (manifest, timing, evaluation)")
    cd.add_argument("model", type=Path,
                   help="the ONNX model the card describes")
    cd.add_argument("--dataset", type=Path, required=True,
                   help="MVTec-style dataset it is evaluated on (test split)")
    cd.add_argument("--out", type=Path, default=None,
                   help="card to write (default: MODEL.md beside the model)")
    cd.add_argument("--notes", type=Path, default=None, help="markdown file appended")
    cd.add_argument("--selection", type=Path, default=None,
                    help="JSON written by `select --out`: how the stopping point was chosen")
    cd.add_argument("--validation", type=Path, default=None,
                    help="validation dataset: the card also reports the model there")
    cd.add_argument("--report", type=Path, default=None,
                    help="folder written by `diffad eval --report`: figures embedded")
    cd.add_argument("--threads", type=int, default=2,
                   help="CPU threads for PyTorch / ONNX Runtime")
    cd.set_defaults(fn=cmd_card)

    m = _command(sub, "make-tiles", "tile dataset from skimage brick/grass/gravel")
    m.add_argument("--out", type=Path, required=True,
                  help="output root: one folder per texture")
    m.add_argument("--seed", type=int, default=0,
                  help="seed of the crops and synthetic defects")
    m.add_argument("--force", action="store_true",
                  help="overwrite an existing output")
    m.set_defaults(fn=cmd_make_tiles)

    fp = _command(sub, "feature-probe", "how far a denoiser's encoder features alone separate "
                  "the validation split (a Gaussian on the train tiles' features)")
    fp.add_argument("--checkpoint", type=Path, required=True,
                    help="advrad or anoddpm recipe checkpoint (last.pt or step-NNNNNN.pt)")
    fp.add_argument("--train", type=Path, required=True,
                    help="good images the Gaussian is fitted on (TILES/<texture>/train/good)")
    fp.add_argument("--dataset", type=Path, required=True,
                    help="validation split in the MVTec layout (test/good, test/<kind>): "
                        "make-tiles' TILES/<texture>/validation or your own val/; never the "
                        "test set")
    fp.add_argument("--levels", default="1,2,1+2,0+1",
                    help="encoder levels to read, comma-separated; '+' stacks levels")
    fp.add_argument("--t", type=_ints, default=(0, 25, 100),
                    help="noise levels the encoder sees (0: the clean image)")
    fp.add_argument("--top-k", type=_ints, default=(50, 1000),
                    help="score = mean of the top-k map values; each is tried")
    fp.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    fp.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch")
    fp.set_defaults(fn=cmd_feature_probe)

    from .recipes.cli import add_commands

    add_commands(sub, _command, _ints)
    for name in IMAGE_COMMANDS:
        sub.choices[name].add_argument(
            "--allow-upscale", action="store_true",
            help="enlarge images smaller than the model's input (with a warning) instead of "
                 "refusing them; upscaling invents the detail the model judges")
    return p


# The commands that read images into the model's input, each under the one size rule.
IMAGE_COMMANDS = ("train", "export", "calibrate", "evaluate", "select", "feature-probe",
                  "recipe-train", "recipe-export", "recipe-select", "robustness",
                  "unlike-training")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .preprocess import allow_upscale

    allow_upscale(getattr(args, "allow_upscale", False))
    try:
        args.fn(args)
    except ExporterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
