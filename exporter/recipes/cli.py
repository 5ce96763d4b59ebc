"""`python -m exporter recipe-train | recipe-select | recipe-export`: the survey recipes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from . import RECIPES


def cmd_recipe_train(a: argparse.Namespace) -> None:
    from .train import RecipeTrainOptions, train_recipe

    o = RecipeTrainOptions(recipe=a.recipe, data=a.data, out=a.out, steps=a.steps,
                           batch=a.batch, crop=a.crop, lr=a.lr, seed=a.seed, threads=a.threads,
                           widths=a.widths, checkpoint_every=a.checkpoint_every,
                           keep_every=a.keep_every, max_minutes=a.max_minutes)
    path = train_recipe(o)
    print(f"checkpoint: {path}")


def cmd_recipe_export(a: argparse.Namespace) -> None:
    from .export import export_recipe

    o = export_options(a)
    o.name = a.name or a.out.stem
    r = export_recipe(a.checkpoint, a.out, o)
    print(f"wrote {a.out} ({r['manifest']['method']}, {r['size_bytes'] / 1e6:.2f} MB, "
          f"{r['flops_per_frame'] / 1e9:.3f} GFLOP per network call, model id "
          f"{r['model_sha256'][:12]}); max |map ORT - PyTorch| {r['map_max_abs_err']:.2g}")


def export_options(a: argparse.Namespace):
    from .detect import SamplerSpec, ScoreSpec
    from .export import RecipeExportOptions
    from .train import ANODDPM_SIMPLEX

    spec = SamplerSpec(t_start=a.t_start, steps=a.steps, kind=a.kind, seed=a.noise_seed,
                       noise=ANODDPM_SIMPLEX)
    return RecipeExportOptions(name=getattr(a, "name", "") or "", score=ScoreSpec(
        a.top_k, a.score_sigma), t=a.t, noise_seed=a.noise_seed, sampler=spec,
        parity_steps=getattr(a, "parity_steps", ()), batch=getattr(a, "batch", 1),
        force=getattr(a, "force", False))


def cmd_recipe_select(a: argparse.Namespace) -> None:
    from ..select import write_selection
    from .select import select_recipe

    r = select_recipe(a.checkpoints, a.dataset, export_options(a), every=a.every,
                      threads=a.threads)
    c = r["chosen"]
    print(f"chosen: step {c['step']} {c['setting']} (image AUROC {c['image_auroc']:.4f}, "
          f"pixel AUROC {c['pixel_auroc']:.4f}) of {len(r['rows'])} candidates")
    if a.out:
        write_selection(r, a.out)


def cmd_robustness(a: argparse.Namespace) -> None:
    import json

    import torch

    from .robust import attack

    torch.set_num_threads(a.threads)
    results = []
    for model, checkpoint in a.pair:
        r = attack(Path(model), Path(checkpoint), a.dataset, tuple(a.eps), a.steps)
        results.append(r)
        for row in r["rows"]:
            print(f"{r['method']} ({model}): eps {row['eps_px']:g}/255: "
                  f"{row['turned']} of {row['caught_before']} caught defective tiles turned "
                  f"into passes (mean score drop {row['mean_score_drop']:.4f})", flush=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")


def _settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=int, default=50, help="score = mean of the top-k map values")
    p.add_argument("--score-sigma", type=float, default=2.0,
                   help="Gaussian blur (sigma, px) of the reconstruction-error map")
    p.add_argument("--t", type=int, default=100, help="advrad: noise level of the one step")
    p.add_argument("--noise-seed", type=int, default=0,
                   help="advrad: seed of the fixed Gaussian noise; anoddpm: of the simplex noise")
    p.add_argument("--t-start", type=int, default=250,
                   help="anoddpm: noise to this t (of T = 1000), then denoise")
    p.add_argument("--steps", type=int, default=10,
                   help="anoddpm: sampler steps by default (the runtime's knob overrides it)")
    p.add_argument("--kind", choices=("ddpm", "ddim"), default="ddpm", help="anoddpm: step rule")


def add_commands(sub, command: Callable[..., argparse.ArgumentParser], ints) -> None:
    t = command(sub, "recipe-train", "train a survey recipe (advrad, anoddpm, dte) on good images")
    t.add_argument("--recipe", choices=RECIPES, required=True,
                   help="advrad: eps-UNet, white noise; anoddpm: eps-UNet, simplex noise; "
                        "dte: diffusion-time classifier")
    t.add_argument("--data", type=Path, required=True,
                   help="folder of good images, or an MVTec-style dir with train/good")
    t.add_argument("--out", type=Path, required=True,
                   help="checkpoint dir (last.pt, step-NNNNNN.pt, loss.csv)")
    t.add_argument("--steps", type=int, default=20000, help="training steps in all")
    t.add_argument("--batch", type=int, default=16, help="images per step")
    t.add_argument("--crop", type=int, default=64, help="random crop size (multiple of 16)")
    t.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate")
    t.add_argument("--seed", type=int, default=0, help="seed of every random stream")
    t.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch")
    t.add_argument("--widths", type=ints, default=(32, 64, 128, 128),
                   help="channels per level of the network")
    t.add_argument("--checkpoint-every", type=int, default=50,
                   help="write the resumable last.pt every N steps")
    t.add_argument("--keep-every", type=int, default=200,
                   help="keep the weights every N steps (step-NNNNNN.pt) for recipe-select")
    t.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after this much training wall time, counted across resumes")
    t.set_defaults(fn=cmd_recipe_train)

    e = command(sub, "recipe-export", "export a recipe checkpoint to ONNX (manifest, goldens)")
    e.add_argument("--checkpoint", type=Path, required=True,
                   help="last.pt or a step-NNNNNN.pt of recipe-train")
    e.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    e.add_argument("--name", default="", help="model name (default: the file name)")
    _settings(e)
    e.add_argument("--parity-steps", type=ints, default=(5, 25),
                   help="anoddpm: more step counts with PyTorch goldens for the parity tests")
    e.add_argument("--batch", type=int, default=1, help="batch size of the static graph")
    e.add_argument("--force", action="store_true", help="overwrite existing outputs")
    e.set_defaults(fn=cmd_recipe_export)

    se = command(sub, "recipe-select",
                 "choose a recipe's stopping point and setting on the validation split")
    se.add_argument("--checkpoints", type=Path, required=True,
                    help="recipe-train dir with step-NNNNNN.pt snapshots")
    se.add_argument("--dataset", type=Path, required=True,
                    help="validation dataset (TILES/<texture>/validation), never the test set")
    se.add_argument("--every", type=int, default=0, help="only snapshots at multiples of N")
    _settings(se)
    se.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    se.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch")
    se.set_defaults(fn=cmd_recipe_select)

    r = command(sub, "robustness",
                "L-inf PGD on models' PyTorch twins: defective tiles turned into passes")
    r.add_argument("--pair", nargs=2, action="append", required=True,
                   metavar=("MODEL", "CHECKPOINT"),
                   help="an exported one-graph model and the checkpoint it came from; "
                        "repeatable")
    r.add_argument("--dataset", type=Path, required=True,
                   help="MVTec-style dataset whose defective test tiles are attacked")
    r.add_argument("--eps", type=float, nargs="+", default=[2.0, 4.0],
                   help="attack budgets in 8-bit grey levels (x/255 of the input range)")
    r.add_argument("--steps", type=int, default=10, help="PGD steps (step size eps/4)")
    r.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    r.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch")
    r.set_defaults(fn=cmd_robustness)
