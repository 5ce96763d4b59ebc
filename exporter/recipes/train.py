"""Training the recipes on good images only, resumable, with kept snapshots for selection.

- advrad / anoddpm: an eps-UNet with the DDPM loss |eps - eps_theta(x_t, t)|^2, t ~ U{0..T-1};
  anoddpm noises with simplex noise (AnoDDPM), advrad with white noise.
- dte: a patch-wise classifier of the diffusion time t ~ U{0..t_max-1} of x_t (white noise),
  cross-entropy over the time bins at every cell.

Images are scaled to [-1, 1]. `--max-minutes` counts wall time across resumes, as in
`exporter train`; SIGINT / SIGTERM write last.pt and exit.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import simplex
from ..diffusion import alphas_cumprod
from ..edge import EdgeUNetConfig
from ..errors import ExporterError
from ..feed import _augment, random_crop
from ..train import StopSignals, _save, load_good_images
from . import RECIPES
from .nets import DTEConfig, build_dte, build_eps

SIMPLEX_POOL = 512
# AnoDDPM's noise: 6 octaves, persistence 0.8; scale = simplex.unit_scale of it (std about 1)
ANODDPM_SIMPLEX = simplex.SimplexConfig(octaves=6, persistence=0.8, period=32.0, scale=1.343)


@dataclass
class RecipeTrainOptions:
    recipe: str
    data: Path
    out: Path
    steps: int = 20000
    batch: int = 16
    crop: int = 64
    lr: float = 2e-4
    seed: int = 0
    threads: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 128)
    image_size: int = 128
    channels: int = 1
    T: int = 1000
    dte_bins: int = 50
    dte_t_max: int = 200
    simplex: simplex.SimplexConfig = field(default_factory=lambda: ANODDPM_SIMPLEX)
    checkpoint_every: int = 50
    keep_every: int = 200
    max_minutes: float = 0.0
    command: str = field(default_factory=lambda: "python -m exporter " + shlex.join(sys.argv[1:]))


def network_config(o: RecipeTrainOptions) -> dict[str, Any]:
    if o.recipe == "dte":
        return DTEConfig(o.image_size, o.channels, o.widths, o.dte_bins, o.dte_t_max).to_dict()
    return EdgeUNetConfig(image_size=o.image_size, in_channels=o.channels,
                          widths=o.widths).to_dict()


def build_network(recipe: str, cfg: dict[str, Any]) -> torch.nn.Module:
    if recipe == "dte":
        return build_dte(DTEConfig(**cfg))
    return build_eps(EdgeUNetConfig.from_dict(cfg))


def simplex_pool(o: RecipeTrainOptions, rng: np.random.Generator) -> np.ndarray:
    """Unit-scale simplex fields [N, crop, crop] from random seeds (drawn once: fresh fields
    per sample would cost more than the step)."""
    seeds = rng.integers(0, 2**62, SIMPLEX_POOL)
    return np.stack([simplex.field(int(s), 0, o.crop, o.crop, o.simplex) for s in seeds])


def batch_images(images: np.ndarray, o: RecipeTrainOptions, rng: np.random.Generator):
    """A batch of augmented random crops, scaled to [-1, 1]."""
    out = [random_crop(images, o.crop, True, rng) for _ in range(o.batch)]
    return torch.from_numpy(np.stack(out)) * 2 - 1


def batch_noise(shape, pool: np.ndarray | None, rng: np.random.Generator,
                gen: torch.Generator) -> torch.Tensor:
    if pool is None:
        return torch.randn(shape, generator=gen)
    b, c = shape[0], shape[1]
    picks = [_augment(pool[rng.integers(len(pool)), None], rng)[0] * (1 if rng.random() < 0.5
             else -1) for _ in range(b * c)]
    return torch.from_numpy(np.ascontiguousarray(np.stack(picks), np.float32)).view(shape)


def loss_step(o: RecipeTrainOptions, net, x0, abar, pool, rng, gen) -> torch.Tensor:
    b = x0.shape[0]
    if o.recipe == "dte":
        t = torch.randint(0, o.dte_t_max, (b,), generator=gen)
        a = abar[t].view(b, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=gen)
        logits = net(xt)
        target = (t * o.dte_bins // o.dte_t_max).view(b, 1, 1).expand(b, *logits.shape[2:])
        return F.cross_entropy(logits, target)
    t = torch.randint(0, o.T, (b,), generator=gen)
    a = abar[t].view(b, 1, 1, 1)
    n = batch_noise(x0.shape, pool, rng, gen)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * n
    return F.mse_loss(net(xt, t.float()), n)


def record(o: RecipeTrainOptions, cfg: dict[str, Any], step: int, wall: float) -> dict[str, Any]:
    """What every saved file says about itself (read by export and select)."""
    return {"recipe": o.recipe, "network": cfg, "step": step, "wall_seconds": round(wall, 1),
            "T": o.T, "simplex": o.simplex.to_dict(),
            "training": {"data": str(o.data), "command": o.command, "seed": o.seed,
                         "steps": step, "batch": o.batch, "crop": o.crop, "lr": o.lr,
                         "wall_seconds": round(wall, 1)}}


def train_recipe(o: RecipeTrainOptions) -> Path:
    if o.recipe not in RECIPES:
        raise ExporterError(f"unknown recipe {o.recipe!r} (known: {', '.join(RECIPES)})")
    torch.set_num_threads(max(1, o.threads))
    rng = np.random.default_rng(o.seed)
    gen = torch.Generator().manual_seed(o.seed + 1)
    torch.manual_seed(o.seed)
    cfg = network_config(o)
    net = build_network(o.recipe, cfg)
    opt = torch.optim.Adam(net.parameters(), lr=o.lr)
    images = load_good_images(o.data, o.channels, o.image_size)
    abar = torch.tensor(alphas_cumprod(o.T), dtype=torch.float32)
    o.out.mkdir(parents=True, exist_ok=True)
    ck_path = o.out / "last.pt"
    step, wall0 = 0, 0.0
    if ck_path.exists():
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        if ck["recipe"] != o.recipe or ck["network"] != cfg:
            raise ExporterError(f"{ck_path} holds another recipe or network "
                                f"({ck['recipe']}); use another --out")
        net.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        rng.bit_generator.state = ck["rng"]["numpy"]
        gen.set_state(ck["rng"]["torch_gen"])
        step, wall0 = int(ck["step"]), float(ck["wall_seconds"])
        print(f"resuming from {ck_path} at step {step}", file=sys.stderr)
    pool = simplex_pool(o, np.random.default_rng(o.seed + 2)) if o.recipe == "anoddpm" else None
    params = sum(p.numel() for p in net.parameters())
    print(f"{o.recipe}: {len(images)} good images from {o.data}, {params / 1e6:.2f} M params, "
          f"steps {step}..{o.steps}", file=sys.stderr)
    net.train()
    log = (o.out / "loss.csv").open("a", buffering=1)
    t0, limit = time.time(), (o.max_minutes * 60 if o.max_minutes > 0 else None)

    def save(path: Path, resumable: bool, elapsed: float) -> None:
        ck = {**record(o, cfg, step, elapsed), "state_dict": net.state_dict()}
        if resumable:
            ck.update(optimizer=opt.state_dict(),
                      rng={"numpy": rng.bit_generator.state, "torch_gen": gen.get_state()})
        _save(path, ck)

    ema = None
    with StopSignals() as stop, log:
        while step < o.steps:
            loss = loss_step(o, net, batch_images(images, o, rng), abar, pool, rng, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed = wall0 + time.time() - t0
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            log.write(f"{step},{elapsed:.1f},{loss.item():.6g}\n")
            out_of_time = limit is not None and elapsed > limit
            if step % o.checkpoint_every == 0 or out_of_time or stop.received is not None:
                save(ck_path, True, elapsed)
            if o.keep_every and step % o.keep_every == 0:
                save(o.out / f"step-{step:06d}.pt", False, elapsed)
                print(f"step {step}: loss (EMA) {ema:.4f}, {elapsed / 60:.1f} min", flush=True)
            if stop.received is not None:
                raise SystemExit(128 + stop.received)
            if out_of_time:
                print(f"stopping at step {step}: --max-minutes reached", file=sys.stderr)
                break
    save(ck_path, True, wall0 + time.time() - t0)
    (o.out / "recipe.json").write_text(json.dumps(record(o, cfg, step, elapsed), indent=2) + "\n")
    return ck_path


def load_recipe_checkpoint(path: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    """(record, network in eval mode) from last.pt or a step snapshot."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        net = build_network(ck["recipe"], ck["network"])
        net.load_state_dict(ck["state_dict"])
    except (OSError, KeyError, RuntimeError) as e:
        raise ExporterError(f"{path} is not a recipe checkpoint: {e}") from None
    net.eval()
    return {k: v for k, v in ck.items() if k not in ("state_dict", "optimizer", "rng")}, net

