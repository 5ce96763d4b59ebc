"""Training on good images with synthetic anomalies (ARCHITECTURE §1, "Training").

Per sample t_s ~ U{0..299}, t_b ~ U{300..999}; half the batch gets a synthetic
anomaly; loss = noise MSE (both steps, normal samples only) + 5 x focal(alpha 0.5,
gamma 4) + smooth-L1 on the predicted mask; one backward through both networks.

Beside last.pt: `loss.csv` (one row per step: step, elapsed seconds, total loss and each
term; rows after the checkpoint a run resumes from are dropped, so it always matches the
weights) and `loss.png`, redrawn at every checkpoint. SIGINT / SIGTERM finish the current
step, write last.pt (the periodic format, so the run resumes from it) and exit 130 / 143.

`--max-minutes` counts training wall time across resumes: the elapsed time is stored in
every checkpoint (`wall_seconds`) and a resumed run starts from it. Time from start-up (data
loading, model building) to the first step is not counted, nor time lost after the last
checkpoint of a run that was killed without a chance to write one (SIGKILL, power loss).
The limit is checked after each step, so a run stops at the first step that ends past it.
"""

from __future__ import annotations

import csv
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .arch import (
    UNetCfg,
    build_seg,
    build_unet,
    default_seg_config,
    seg_config_from_dict,
    unet_config_from_dict,
)
from .diffusion import alphas_cumprod, guided_x0
from .edge import EdgeSegConfig
from .errors import ExporterError
from .feed import BatchFeed, jitter_fits
from .official import sha256_file
from .onnxio import atomic_path
from .preprocess import list_images, preprocess_file
from .synth import TexturePool


@dataclass
class TrainOptions:
    data: Path
    out: Path
    unet: UNetCfg
    seg_width: int = 8
    seg_diff_input: bool = True
    seg_dilations: tuple[int, ...] = ()
    seg_context_level: int = 1
    steps: int = 1000
    batch: int = 8
    lr_unet: float = 2e-4
    lr_seg: float = 1e-3
    anomaly_prob: float = 0.5
    seed: int = 0
    threads: int = 2
    crop: int = 0
    augment: bool = True
    anomaly_source: Path | None = None
    checkpoint_every: int = 200
    keep_every: int = 0
    max_minutes: float = 0.0
    resume: bool = True
    seg_extra: int = 0
    focal_gamma: float = 4.0
    discolour: float = 0.0
    self_texture: float = 0.0
    jitter: float = 0.0
    device: str = "cpu"
    workers: int = 0
    command: str = field(default_factory=lambda: "python -m exporter " + shlex.join(sys.argv[1:]))


def good_dir(data: Path) -> Path:
    if (data / "train" / "good").is_dir():
        return data / "train" / "good"
    return data


def load_good_images(data: Path, channels: int, size: int) -> np.ndarray:
    folder = good_dir(data)
    files = list_images(folder)
    if not files:
        raise ExporterError(f"no images in {folder}")
    return np.stack([preprocess_file(p, channels, size, size) for p in files])


def binary_focal(p: torch.Tensor, y: torch.Tensor, alpha: float = 0.5, gamma: float = 4.0):
    bce = F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), y, reduction="none")
    pt = torch.exp(-bce)
    return (alpha * (1 - pt) ** gamma * bce).mean()


def seg_only_step(
    unet: nn.Module, seg: nn.Module, x0: torch.Tensor, mask: torch.Tensor,
    abar: torch.Tensor, gen: torch.Generator, gamma: float = 4.0,
) -> torch.Tensor:
    """Mask loss with the reconstruction computed without gradient (UNet frozen)."""
    b = x0.shape[0]
    with torch.no_grad():
        t_s = torch.randint(0, 300, (b,), generator=gen, device=x0.device)
        t_b = torch.randint(300, len(abar), (b,), generator=gen, device=x0.device)
        a_s, a_b = abar[t_s].view(b, 1, 1, 1), abar[t_b].view(b, 1, 1, 1)
        n_s = torch.randn(x0.shape, generator=gen, device=x0.device)
        n_b = torch.randn(x0.shape, generator=gen, device=x0.device)
        x_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * n_s
        x_b = a_b.sqrt() * x0 + (1 - a_b).sqrt() * n_b
        e = unet(torch.cat([x_s, x_b]), torch.cat([t_s, t_b]).float())
        x0_hat = guided_x0(x_s, x_b, e[:b], e[b:], a_s, a_b, 1.0)
    pred = seg(torch.cat([x0, x0_hat], 1))
    return 5 * binary_focal(pred, mask, gamma=gamma) + F.smooth_l1_loss(pred, mask)


def train_step(
    unet: nn.Module, seg: nn.Module, x0: torch.Tensor, mask: torch.Tensor,
    label: torch.Tensor, abar: torch.Tensor, gen: torch.Generator, gamma: float = 4.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    b = x0.shape[0]
    t_s = torch.randint(0, 300, (b,), generator=gen, device=x0.device)
    t_b = torch.randint(300, len(abar), (b,), generator=gen, device=x0.device)
    n_s = torch.randn(x0.shape, generator=gen, device=x0.device)
    n_b = torch.randn(x0.shape, generator=gen, device=x0.device)
    a_s, a_b = abar[t_s].view(b, 1, 1, 1), abar[t_b].view(b, 1, 1, 1)
    x_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * n_s
    x_b = a_b.sqrt() * x0 + (1 - a_b).sqrt() * n_b
    e = unet(torch.cat([x_s, x_b]), torch.cat([t_s, t_b]).float())
    e_s, e_b = e[:b], e[b:]
    per = ((e_s - n_s) ** 2).mean((1, 2, 3)) + ((e_b - n_b) ** 2).mean((1, 2, 3))
    normal = label == 0
    noise_loss = per[normal].mean() if normal.any() else per.sum() * 0.0
    x0_hat = guided_x0(x_s, x_b, e_s, e_b, a_s, a_b, 1.0)
    pred = seg(torch.cat([x0, x0_hat], 1))
    focal = binary_focal(pred, mask, gamma=gamma)
    sl1 = F.smooth_l1_loss(pred, mask)
    loss = noise_loss + 5 * focal + sl1
    return loss, {"noise": noise_loss.item(), "focal": focal.item(), "sl1": sl1.item()}


def _rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch_gen": gen.get_state(),
            "torch_gen_device": str(gen.device),
            "torch": torch.get_rng_state(), "python": random.getstate()}


def _training_info(opts: TrainOptions, step: int, wall: float) -> dict[str, Any]:
    return {"data": str(opts.data), "command": opts.command, "seed": opts.seed, "steps": step,
            "batch": opts.batch, "lr_unet": opts.lr_unet, "lr_seg": opts.lr_seg,
            "crop": opts.crop, "seg_extra": opts.seg_extra, "focal_gamma": opts.focal_gamma,
            "discolour": opts.discolour, "self_texture": opts.self_texture,
            "jitter": opts.jitter, "device": opts.device, "wall_seconds": round(wall, 1)}


def _on_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Saved weights load anywhere, whatever device trained them."""
    return {k: v.detach().cpu() for k, v in state.items()}


def _weights(unet, seg, step: int, opts: TrainOptions, wall: float) -> dict[str, Any]:
    """What every saved file holds: both state dicts, configs and training record."""
    return {
        "unet_model_state_dict": _on_cpu(unet.state_dict()),
        "seg_model_state_dict": _on_cpu(seg.state_dict()),
        "n_epoch": step,
        "exporter": {
            "unet": opts.unet.to_dict(), "seg": seg.cfg.to_dict(), "step": step,
            "wall_seconds": wall, "training": _training_info(opts, step, wall),
        },
    }


def _save(path: Path, ck: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)


def save_checkpoint(path: Path, unet, seg, opt_u, opt_s, step: int, opts: TrainOptions,
                    rng, gen, wall: float) -> None:
    """Resumable: the weights plus the official `args`, optimiser and RNG states."""
    ck = _weights(unet, seg, step, opts, wall)
    ck["args"] = {"img_size": [opts.unet.image_size] * 2,
                  "base_channels": getattr(opts.unet, "base_channels", 0),
                  "channels": opts.unet.in_channels}
    ck["exporter"].update(opt_unet=opt_u.state_dict(), opt_seg=opt_s.state_dict(),
                          rng=_rng_state(rng, gen))
    _save(path, ck)


def save_snapshot(path: Path, unet, seg, step: int, opts: TrainOptions, wall: float) -> None:
    """Weights and configs only (exportable, not resumable): candidates for the stopping point,
    which is chosen later on the validation split."""
    _save(path, _weights(unet, seg, step, opts, wall))


LOSS_COLUMNS = ("step", "elapsed_s", "loss", "noise", "focal", "sl1")


def open_loss_log(path: Path, resume_step: int | None):
    """loss.csv for appending: rows up to `resume_step` kept (None: a fresh file)."""
    rows: list[list[str]] = []
    if resume_step is not None and path.exists():
        with path.open(newline="") as f:
            r = csv.reader(f)
            header = next(r, None)
            if header is not None and tuple(header) == LOSS_COLUMNS:
                rows = [row for row in r if row and int(row[0]) <= resume_step]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LOSS_COLUMNS)
        w.writerows(rows)
    return path.open("a", newline="", buffering=1)


def read_loss_log(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(row[k]) for row in rows] for k in LOSS_COLUMNS}


def plot_loss(csv_path: Path, png: Path) -> bool:
    """loss.png: every loss term against step (log scale; bins of the mean when long)."""
    from .plot import line_plot

    h = read_loss_log(csv_path)
    n = len(h["step"])
    if not n:
        return False
    b = max(1, n // 400)
    binned = {k: [sum(v[i:i + b]) / len(v[i:i + b]) for i in range(0, n, b)] for k, v in h.items()}
    series = [(k, binned["step"], binned[k]) for k in LOSS_COLUMNS[2:]]
    return line_plot(png, series, f"training loss ({csv_path.parent.name}, "
                     f"mean of {b} step{'s' if b > 1 else ''} per point)", "step", "loss",
                     log_y=True)


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class StopSignals:
    """SIGINT / SIGTERM set `received` (a second one acts as usual); handlers restored on
    exit. Only in the main thread, where Python delivers signals."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
        print(f"\n{signal.Signals(signum).name}: finishing this step, then writing the "
              "checkpoint (send it again to abort without one)", file=sys.stderr)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _fmt_s(sec: float) -> str:
    sec = max(0, int(sec))
    return f"{sec // 3600}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def time_left(steps_left: int, sec_per_step: float | None, limit_left: float | None) -> str:
    """The ETA of whichever stops the run first: the step count or --max-minutes."""
    by_steps = None if sec_per_step is None else steps_left * sec_per_step
    if limit_left is not None and (by_steps is None or limit_left < by_steps):
        return f"{_fmt_s(limit_left)} (max-minutes)"
    return "?" if by_steps is None else f"{_fmt_s(by_steps)} (steps)"


def print_summary(opts: TrainOptions, images: np.ndarray, unet, seg, start: int) -> None:
    folder = good_dir(opts.data)
    n_u, n_s = count_parameters(unet), count_parameters(seg)
    limit = f", or {opts.max_minutes:g} min of training time" if opts.max_minutes > 0 else ""
    lines = [
        f"data: {folder} ({len(images)} images, {images.shape[1]} channel(s)"
        f"{f', crops of {opts.crop} px' if opts.crop else ''})",
        f"model input: {images.shape[-2]}x{images.shape[-1]} px (--image-size); images are resized "
        "to it, and refused when smaller unless --allow-upscale",
        f"model: {type(unet).__name__} {n_u / 1e6:.3f} M + {type(seg).__name__} "
        f"{n_s / 1e6:.3f} M = {(n_u + n_s) / 1e6:.3f} M parameters; FLOPs per frame: "
        "counted on the graph by `export`",
        f"device: {opts.device}, {torch.get_num_threads()} thread(s)"
        + (f", {opts.workers} batch worker(s)" if opts.workers else ""),
        f"steps: {start} -> {opts.steps} (batch {opts.batch}, seg extra {opts.seg_extra}"
        f"){limit}",
        f"checkpoints: {opts.out}/last.pt every {opts.checkpoint_every} steps"
        + (f", step-NNNNNN.pt every {opts.keep_every}" if opts.keep_every else "")
        + "; loss.csv, loss.png beside it",
    ]
    print("\n".join(lines), file=sys.stderr)


def resolve_device(name: str) -> torch.device:
    """cpu, cuda (an error naming the fix when PyTorch sees no GPU) or auto (cuda if seen)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ExporterError("--device cuda: this PyTorch sees no CUDA GPU "
                            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                            "use --device cpu, or install a CUDA build of torch")
    if name not in ("cpu", "cuda"):
        raise ExporterError(f"--device {name}: give cpu, cuda or auto")
    if name == "cuda":
        # Convolutions of fixed shapes every step: let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


def train(opts: TrainOptions) -> Path:
    torch.set_num_threads(max(1, opts.threads))
    dev = resolve_device(opts.device)
    opts.device = dev.type
    random.seed(opts.seed)
    np_rng = np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)
    gen = torch.Generator(device=dev).manual_seed(opts.seed + 1)
    cfg = opts.unet
    if cfg.in_channels not in (1, 3):
        raise ExporterError(f"channels must be 1 or 3, got {cfg.in_channels}")
    crop = opts.crop or cfg.image_size
    if crop % 32 or crop > cfg.image_size:
        raise ExporterError(f"crop/image size {crop} must be a multiple of 32, <= image size")
    if not 0.0 <= opts.jitter <= 1.0:
        raise ExporterError(f"--jitter {opts.jitter}: give a share of the crops, 0 to 1")
    if opts.jitter > 0 and not jitter_fits(crop, cfg.image_size):
        largest = max((c for c in range(32, crop, 32) if jitter_fits(c, cfg.image_size)),
                      default=None)
        raise ExporterError(f"--jitter: a {crop} px crop turned by any angle does not fit a "
                            f"{cfg.image_size} px image; use "
                            + (f"--crop {largest} or smaller" if largest else
                               "a larger --image-size"))
    images = load_good_images(opts.data, cfg.in_channels, cfg.image_size)
    pool = TexturePool(crop, cfg.in_channels, opts.anomaly_source, opts.seed)
    seg_cfg = default_seg_config(cfg, opts.seg_width)
    if isinstance(seg_cfg, EdgeSegConfig):
        try:
            seg_cfg = EdgeSegConfig(**{**seg_cfg.to_dict(), "diff_input": opts.seg_diff_input,
                                       "dilations": opts.seg_dilations,
                                       "context_level": opts.seg_context_level})
        except ValueError as e:
            raise ExporterError(str(e)) from None
    elif opts.seg_dilations:
        raise ExporterError("--seg-dilations needs --arch edge")
    unet, seg = build_unet(cfg).to(dev), build_seg(seg_cfg).to(dev)
    opt_u = torch.optim.Adam(unet.parameters(), lr=opts.lr_unet)
    opt_s = torch.optim.Adam(seg.parameters(), lr=opts.lr_seg)
    abar = torch.tensor(alphas_cumprod(), dtype=torch.float32, device=dev)
    opts.out.mkdir(parents=True, exist_ok=True)
    ck_path = opts.out / "last.pt"
    step, wall0 = 0, 0.0
    if opts.resume and ck_path.exists():
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        meta = ck["exporter"]
        if unet_config_from_dict(meta["unet"]) != cfg:
            raise ExporterError(f"{ck_path}: UNet config differs from the requested one; "
                                "use another --out or --no-resume")
        if seg_config_from_dict(meta["seg"]) != seg_cfg:
            raise ExporterError(f"{ck_path}: seg config differs from the requested one; "
                                "use another --out or --no-resume")
        unet.load_state_dict(ck["unet_model_state_dict"])
        seg.load_state_dict(ck["seg_model_state_dict"])
        opt_u.load_state_dict(meta["opt_unet"])
        opt_s.load_state_dict(meta["opt_seg"])
        np_rng.bit_generator.state = meta["rng"]["numpy"]
        if meta["rng"].get("torch_gen_device", "cpu") == str(gen.device):
            gen.set_state(meta["rng"]["torch_gen"])
        else:
            # A CPU generator's state does not fit a CUDA one: the noise stream restarts from a
            # seed of its own, the weights and batches carry on.
            gen.manual_seed(opts.seed + 1 + int(meta["step"]))
            print(f"{ck_path} was trained on {meta['rng'].get('torch_gen_device', 'cpu')}: "
                  f"the noise stream restarts on {gen.device}", file=sys.stderr)
        torch.set_rng_state(meta["rng"]["torch"])
        random.setstate(meta["rng"]["python"])
        step, wall0 = int(meta["step"]), float(meta.get("wall_seconds", 0.0))
        print(f"resuming from {ck_path} at step {step}", file=sys.stderr)
    unet.train()
    seg.train()
    print_summary(opts, images, unet, seg, step)
    loss_csv = opts.out / "loss.csv"
    log = csv.writer(log_file := open_loss_log(loss_csv, step if opts.resume else None))
    t0 = time.time()
    start = step
    limit = opts.max_minutes * 60 if opts.max_minutes > 0 else None
    bar = tqdm(total=opts.steps, initial=step, desc="train", dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    ema: dict[str, float] = {}

    def checkpoint(elapsed: float) -> None:
        save_checkpoint(ck_path, unet, seg, opt_u, opt_s, step, opts, np_rng, gen, elapsed)
        plot_loss(loss_csv, opts.out / "loss.png")

    with StopSignals() as stop, log_file, BatchFeed(images, opts, pool, np_rng) as feed:
        while step < opts.steps:
            (x0, mask, label), *extra = [tuple(t.to(dev, non_blocking=True) for t in b)
                                         for b in feed.batches(step + 1)]
            loss, parts = train_step(unet, seg, x0, mask, label, abar, gen, opts.focal_gamma)
            opt_u.zero_grad(set_to_none=True)
            opt_s.zero_grad(set_to_none=True)
            loss.backward()
            opt_u.step()
            opt_s.step()
            for x0, mask, _ in extra:
                seg_loss = seg_only_step(unet, seg, x0, mask, abar, gen, opts.focal_gamma)
                opt_s.zero_grad(set_to_none=True)
                seg_loss.backward()
                opt_s.step()
            step += 1
            elapsed = wall0 + time.time() - t0
            log.writerow([step, f"{elapsed:.2f}", f"{loss.item():.6g}",
                          *(f"{parts[k]:.6g}" for k in LOSS_COLUMNS[3:])])
            for k, v in parts.items():
                ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
            left = time_left(opts.steps - step, (time.time() - t0) / (step - start),
                             None if limit is None else limit - elapsed)
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in ema.items()}, "left": left},
                            refresh=False)
            bar.update(1)
            out_of_time = limit is not None and elapsed > limit
            if step % opts.checkpoint_every == 0 or step == opts.steps or out_of_time:
                checkpoint(elapsed)
            if opts.keep_every and step % opts.keep_every == 0:
                save_snapshot(opts.out / f"step-{step:06d}.pt", unet, seg, step, opts, elapsed)
            if stop.received is not None:
                if step % opts.checkpoint_every and step != opts.steps and not out_of_time:
                    checkpoint(elapsed)
                bar.close()
                name = signal.Signals(stop.received).name
                print(f"{name}: checkpoint written: {ck_path} (step {step}, resumable; "
                      f"loss history {loss_csv})", file=sys.stderr)
                raise SystemExit(128 + stop.received)
            if out_of_time:
                print(f"\nstopping at step {step}: --max-minutes reached", file=sys.stderr)
                break
    bar.close()
    if not ck_path.exists():
        save_checkpoint(ck_path, unet, seg, opt_u, opt_s, step, opts, np_rng, gen,
                        wall0 + time.time() - t0)
    print(f"checkpoint: {ck_path} (sha256 {sha256_file(ck_path)[:12]}, step {step}, "
          f"wall {wall0 + time.time() - t0:.0f} s)")
    return ck_path
