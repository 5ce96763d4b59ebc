"""Beta schedules and the norm-guided one-step reconstruction (ARCHITECTURE §1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCHEDULES = ("linear", "cosine")
# the official get_beta_schedule("cosine"): abar(t) ~ cos((t/T + s) / (1 + s) * pi/2)^2
COSINE_S = 0.008
COSINE_MAX_BETA = 0.999


@dataclass
class DiffusionConfig:
    T: int = 1000
    schedule: str = "linear"  # "linear" (beta_start..beta_end) or "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    t_s: int = 200
    t_b: int = 400
    w: float = 1.0
    top_k: int = 50
    score_sigma: float = 0.0  # Gaussian blur of the map before the top-k score (0: none)
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def betas(
    T: int = 1000, schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """beta_t for t = 0..T-1 (float64). linear: evenly from beta_start to beta_end; cosine:
    1 - f(t+1)/f(t) capped at 0.999, f(t) = cos((t/T + 0.008) / 1.008 * pi/2)^2 (the official
    get_beta_schedule; its linear one is beta_start = 0.1/T, beta_end = 20/T)."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if schedule == "cosine":
        t = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((t + COSINE_S) / (1 + COSINE_S) * np.pi / 2) ** 2
        return np.minimum(1 - f[1:] / f[:-1], COSINE_MAX_BETA)
    raise ValueError(f"unknown beta schedule {schedule!r} (known: {', '.join(SCHEDULES)})")


def alphas_cumprod(
    T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, schedule: str = "linear"
) -> np.ndarray:
    """abar_t for t = 0..T-1 (float64); linear betas by default, as in the official code."""
    return np.cumprod(1.0 - betas(T, schedule, beta_start, beta_end))


def config_alphas_cumprod(d: DiffusionConfig) -> np.ndarray:
    return alphas_cumprod(d.T, d.beta_start, d.beta_end, d.schedule)


NOISE_NAMES = ("n1", "n2")  # drawn in this order: n1 noises x_s (t_s), n2 noises x_b (t_b)


def draw_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """n1, n2: float32 standard normals from one CPU generator seeded with `seed`, n1 first.

    The official eval draws the same pair with `torch.manual_seed(seed)` before
    `norm_guided_one_step_denoising_eval` on CPU with batch 1 (randn_like at normal_t, then at
    noisier_t)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n1 = torch.randn(shape, generator=g, dtype=torch.float32)
    n2 = torch.randn(shape, generator=g, dtype=torch.float32)
    return n1, n2


def noise_recipe(seed: int, shape: tuple[int, ...]) -> dict:
    """How to redraw the graph's fixed noises, for the manifest (`diffusion.noise`)."""
    return {
        "generator": "torch.Generator(device='cpu').manual_seed(noise_seed)",
        "draw": "torch.randn(shape, generator=generator, dtype=torch.float32)",
        "order": list(NOISE_NAMES),
        "shape": list(shape),
        "n1": "x_s = sqrt(abar[t_s]) x0 + sqrt(1 - abar[t_s]) n1",
        "n2": "x_b = sqrt(abar[t_b]) x0 + sqrt(1 - abar[t_b]) n2",
        "batch": "every image of a batch gets the same n1 and n2",
        "official_eval": "torch.manual_seed(noise_seed), then norm_guided_one_step_denoising_eval "
                         "on CPU with batch 1: randn_like(x_0) at normal_t gives n1, "
                         "at noisier_t n2",
    }


def guided_x0(
    x_s: torch.Tensor,
    x_b: torch.Tensor,
    e_s: torch.Tensor,
    e_b: torch.Tensor,
    abar_s: torch.Tensor | float,
    abar_b: torch.Tensor | float,
    w: float,
) -> torch.Tensor:
    """Steps 3-6 of §1: norm-guided reconstruction x0_hat from the two eps estimates."""
    abar_s = torch.as_tensor(abar_s, dtype=x_s.dtype)
    abar_b = torch.as_tensor(abar_b, dtype=x_s.dtype)
    ss, sb = abar_s.sqrt(), abar_b.sqrt()
    ns, nb = (1 - abar_s).sqrt(), (1 - abar_b).sqrt()
    x0_b = ((x_b - nb * e_b) / sb).clamp(-1, 1)
    xs_from_b = ss * x0_b + ns * e_s
    e_hat = e_s - w * ns * (xs_from_b - x_s)
    return ((x_s - ns * e_hat) / ss).clamp(-1, 1)


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, 1, H, W] maps, radius 3 sigma, edges reflected."""
    r = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma * sigma))
    k = (k / k.sum()).to(m.dtype)
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def topk_mean(m: torch.Tensor, k: int) -> torch.Tensor:
    flat = m.reshape(m.shape[0], -1)
    return torch.topk(flat, min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def _to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Casts only when needed: the exporter traces `.to()` as a Cast node even when the dtype
    already matches."""
    return x if x.dtype == dtype else x.to(dtype)


class OneStepDetector(nn.Module):
    """image [B,C,H,W] -> (anomaly_map [B,1,H,W], score [B]); steps 1-7 of §1.

    Noises n1, n2 and the two timestep embeddings are fixed buffers (constants in
    the exported graph), so the same image always gets the same score.
    """

    def __init__(
        self,
        unet: nn.Module,
        seg: nn.Module,
        diff: DiffusionConfig,
        batch: int = 1,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.unet, self.seg, self.diff = unet, seg, diff
        self.batch = batch
        self.compute_dtype = compute_dtype
        cfg = unet.cfg
        ab = config_alphas_cumprod(diff)
        self.abar_s = float(ab[diff.t_s])
        self.abar_b = float(ab[diff.t_b])
        n1, n2 = draw_noise(diff.noise_seed, (1, cfg.in_channels, cfg.image_size, cfg.image_size))
        self.register_buffer("n1", n1)
        self.register_buffer("n2", n2)
        with torch.no_grad():
            t = torch.tensor([diff.t_s, diff.t_b], dtype=torch.float32)
            emb = unet.embed(t.to(next(unet.parameters()).device)).float()
        # [2B, E]: first B rows for t_s, next B rows for t_b
        self.register_buffer("emb", torch.cat([emb[:1].expand(batch, -1),
                                               emb[1:].expand(batch, -1)]).contiguous())
        if hasattr(unet, "bake"):
            unet.bake(self.emb)

    def reconstruct(self, x0: torch.Tensor) -> torch.Tensor:
        b = x0.shape[0]
        x_s = self.abar_s**0.5 * x0 + (1 - self.abar_s) ** 0.5 * self.n1
        x_b = self.abar_b**0.5 * x0 + (1 - self.abar_b) ** 0.5 * self.n2
        xin = _to(torch.cat([x_s, x_b], 0), self.compute_dtype)
        e = _to(self.unet.forward_emb(xin, _to(self.emb, self.compute_dtype)), torch.float32)
        e_s, e_b = e[:b], e[b:]
        return guided_x0(x_s, x_b, e_s, e_b, self.abar_s, self.abar_b, self.diff.w)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = _to(image, torch.float32)
        x0_hat = self.reconstruct(x0)
        seg_in = _to(torch.cat([x0, x0_hat], 1), self.compute_dtype)
        amap = _to(self.seg(seg_in), torch.float32)
        pooled = gaussian_blur(amap, self.diff.score_sigma) if self.diff.score_sigma > 0 else amap
        return amap, topk_mean(pooled, self.diff.top_k)
