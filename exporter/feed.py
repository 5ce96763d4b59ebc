"""The training batch stream: random crops of the good images, half of them given a synthetic
anomaly (ARCHITECTURE §1, "Training").

With no workers, batches come from one random stream in this process, in step order (the
stream every shipped model was trained on). With workers, each batch is drawn in a worker
process from a stream seeded by (seed, step, slot) alone, so the batches do not depend on the
number of workers or on where a run was resumed, and a GPU is not left waiting on the
numpy synthesis.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ExporterError
from .synth import TexturePool, synthesize

if TYPE_CHECKING:
    from .train import TrainOptions

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    if rng.random() < 0.5:
        x = x[:, ::-1, :]
    return np.rot90(x, int(rng.integers(4)), axes=(1, 2))


def random_crop(images: np.ndarray, crop: int, augment: bool, rng: np.random.Generator
                ) -> np.ndarray:
    """One image [C, crop, crop] (float32, contiguous): a random image of `images`, a random
    crop of it, flipped and turned when `augment`."""
    x = images[rng.integers(len(images))]
    size = images.shape[-1]
    if crop < size:
        y0, x0 = rng.integers(0, size - crop + 1, 2)
        x = x[:, y0 : y0 + crop, x0 : x0 + crop]
    if augment:
        x = _augment(x, rng)
    return np.ascontiguousarray(x, dtype=np.float32)


# Jitter ranges: small enough that a jittered good part still looks like one from the line
# (the camera's distance and lighting drift by about this much), large enough to keep the seg
# head from learning the training rows' own blades and lighting.
JITTER_SCALE = (0.85, 1.15)
JITTER_CONTRAST = (0.85, 1.15)
JITTER_BRIGHTNESS = 0.05


def jitter_fits(crop: int, size: int) -> bool:
    """Whether a crop turned by any angle at the largest scale stays inside the image."""
    return crop / 2 * JITTER_SCALE[1] * np.sqrt(2) <= size / 2


def jittered_crop(images: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """One image [C, crop, crop]: a crop of a random image turned by any angle and rescaled,
    then its contrast and brightness shifted; the sampled footprint stays inside the image,
    so no padding or mirrored seam (which would look like a defect) enters it."""
    from scipy.ndimage import affine_transform

    size = images.shape[-1]
    if not jitter_fits(crop, size):
        raise ExporterError(f"--jitter: a {crop} px crop turned by any angle does not fit a "
                            f"{size} px image; use a smaller --crop")
    x = images[rng.integers(len(images))]
    scale = rng.uniform(*JITTER_SCALE)
    theta = rng.uniform(0, 2 * np.pi)
    reach = crop / 2 * scale * np.sqrt(2)
    cy, cx = rng.uniform(reach, size - reach, 2)
    c, s = np.cos(theta) * scale, np.sin(theta) * scale
    m = np.array([[c, -s], [s, c]])
    offset = np.array([cy, cx]) - m @ np.array([crop / 2, crop / 2])
    out = np.stack([affine_transform(ch, m, offset, output_shape=(crop, crop), order=1)
                    for ch in x])
    mean = out.mean()
    out = (out - mean) * rng.uniform(*JITTER_CONTRAST) + mean
    out += rng.uniform(-JITTER_BRIGHTNESS, JITTER_BRIGHTNESS)
    return np.ascontiguousarray(np.clip(out, 0, 1), dtype=np.float32)


def make_batch(
    images: np.ndarray, opts: TrainOptions, pool: TexturePool, rng: np.random.Generator
) -> Batch:
    """(images [B, C, crop, crop], masks [B, 1, crop, crop], labels [B]) for one update."""
    xs, ms, labels = [], [], []
    crop = opts.crop or images.shape[-1]
    for _ in range(opts.batch):
        if opts.jitter > 0 and rng.random() < opts.jitter:
            x = jittered_crop(images, crop, rng)
        else:
            x = random_crop(images, crop, opts.augment, rng)
        if rng.random() < opts.anomaly_prob:
            x, m = synthesize(x, pool, rng, opts.discolour, opts.self_texture)
            label = float(m.sum() > 0)
        else:
            m, label = np.zeros((1, crop, crop), np.float32), 0.0
        xs.append(x)
        ms.append(m)
        labels.append(label)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ms)), torch.tensor(labels)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

# Worker processes keep what every batch needs here, sent once at start-up.
_WORKER: dict[str, object] = {}


def _worker_init(images: np.ndarray, opts: TrainOptions) -> None:
    # Ctrl-C reaches the whole process group, systemd's stop the whole unit: the trainer
    # finishes its step, writes the checkpoint and then shuts the workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    _WORKER.update(images=images, opts=opts,
                   pool=TexturePool(opts.crop or images.shape[-1], images.shape[1],
                                    opts.anomaly_source, opts.seed))


def _worker_batch(step: int, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    opts: TrainOptions = _WORKER["opts"]  # type: ignore[assignment]
    rng = np.random.default_rng([opts.seed, step, slot])
    x, m, y = make_batch(_WORKER["images"], opts, _WORKER["pool"], rng)  # type: ignore[arg-type]
    return x.numpy(), m.numpy(), y.numpy()


class BatchFeed:
    """The batches of each training step: the joint update's, then `seg_extra` seg-only ones."""

    def __init__(self, images: np.ndarray, opts: TrainOptions, pool: TexturePool,
                 rng: np.random.Generator) -> None:
        self.images, self.opts, self.pool, self.rng = images, opts, pool, rng
        self.per_step = 1 + opts.seg_extra
        self.ahead: deque[list[Future]] = deque()
        self.next_step = 0
        self.exec: ProcessPoolExecutor | None = None
        if opts.workers < 0:
            raise ExporterError(f"--workers {opts.workers}: give 0 (batches drawn in this "
                                "process) or a number of worker processes")
        if opts.workers:
            # spawn, not fork: the parent may already hold a CUDA context, which a forked
            # child must not inherit.
            self.exec = ProcessPoolExecutor(opts.workers, multiprocessing.get_context("spawn"),
                                            initializer=_worker_init, initargs=(images, opts))

    def _submit(self, step: int) -> None:
        assert self.exec is not None
        # The pool starts its worker processes inside submit. A worker is born with this
        # thread's signal mask, so with SIGINT / SIGTERM blocked here it cannot die of a Ctrl-C
        # while it is still importing, before _worker_init ignores them; the trainer gets any
        # signal that came meanwhile as soon as the mask is restored.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.ahead.append([self.exec.submit(_worker_batch, step, slot)
                               for slot in range(self.per_step)])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def batches(self, step: int) -> list[Batch]:
        """Step `step`'s batches (steps counted from 1), in the order they are used."""
        if self.exec is None:
            return [make_batch(self.images, self.opts, self.pool, self.rng)
                    for _ in range(self.per_step)]
        if self.next_step != step:
            # a jump (the first call, or a caller that skipped steps): the prefetched batches
            # belong to other steps, so the ones not yet started are dropped unrun
            for pending in self.ahead:
                for f in pending:
                    f.cancel()
            self.ahead.clear()
            self.next_step = step
        # Two steps' worth per worker in flight keeps every worker busy while the GPU steps.
        while len(self.ahead) < 2 * self.opts.workers:
            self._submit(self.next_step + len(self.ahead))
        out = [tuple(torch.from_numpy(a) for a in f.result()) for f in self.ahead.popleft()]
        self.next_step += 1
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self.exec is not None:
            self.exec.shutdown(cancel_futures=True)
            self.exec = None

    def __enter__(self) -> BatchFeed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
