"""Image -> (anomaly_map, score) for each recipe, in PyTorch: the graphs that are exported
(AdvRAD, DTE) and the reference sampler the runtime's is held to (AnoDDPM).

Every recipe's map lies in [0, 1] and its score is the top-k mean of the map, so the runtime's
range checks and thresholds work unchanged. Images are in [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import simplex
from ..diffusion import alphas_cumprod, gaussian_blur, topk_mean
from .nets import DTENet

KINDS = ("ddpm", "ddim")


def error_map(x0: torch.Tensor, x0_hat: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean over channels of |x0 - x0_hat| / 2 (in [0, 1] for images in [-1, 1]), blurred."""
    err = (x0 - x0_hat).abs().mean(1, keepdim=True) * 0.5
    return gaussian_blur(err, sigma) if sigma > 0 else err


def reconstruction_score(x0: torch.Tensor, x0_hat: torch.Tensor, score: ScoreSpec
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(map, score) of a reconstruction: the blurred error map and its top-k mean."""
    amap = error_map(x0, x0_hat, score.sigma)
    return amap, topk_mean(amap, score.top_k)


@dataclass
class ScoreSpec:
    """How a map becomes a score."""

    top_k: int = 50
    sigma: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, score: dict) -> ScoreSpec:
        """From the manifest's `score` (`top_k`, `blur_sigma`)."""
        return cls(top_k=score["top_k"], sigma=score.get("blur_sigma", 0.0))


class OneShotDenoiser(nn.Module):
    """AdvRAD at test time: noise to t with a fixed Gaussian noise, one denoising step (the
    eps-UNet's x0 estimate), score the smoothed reconstruction error. One network call."""

    def __init__(self, unet: nn.Module, T: int, t: int, noise_seed: int, score: ScoreSpec,
                 batch: int = 1) -> None:
        super().__init__()
        self.unet, self.score = unet, score
        cfg = unet.cfg
        a = float(alphas_cumprod(T)[t])
        self.sa, self.sn = a**0.5, (1 - a) ** 0.5
        g = torch.Generator().manual_seed(noise_seed)
        shape = (1, cfg.in_channels, cfg.image_size, cfg.image_size)
        self.register_buffer("noise", torch.randn(shape, generator=g))
        with torch.no_grad():
            emb = unet.embed(torch.full((batch,), float(t)))
        self.register_buffer("emb", emb.contiguous())
        unet.bake(self.emb)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xt = self.sa * image + self.sn * self.noise
        eps = self.unet.forward_emb(xt, self.emb)
        x0_hat = ((xt - self.sn * eps) / self.sa).clamp(-1, 1)
        return reconstruction_score(image, x0_hat, self.score)


class TimeEstimator(nn.Module):
    """DTE, patch-wise: the expected diffusion time / t_max of every 16x16 cell, bilinearly
    upsampled to the image; score the top-k mean. One network call."""

    def __init__(self, net: DTENet, score: ScoreSpec) -> None:
        super().__init__()
        self.net, self.score = net, score

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.net.expected_time(image)
        amap = F.interpolate(e, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return amap, topk_mean(amap, self.score.top_k)


@dataclass
class SamplerSpec:
    """AnoDDPM's partial diffusion: noise x0 to t_start with simplex noise, then `steps`
    DDPM (or DDIM, eta 0) steps down to x0_hat on a sub-sequence of the T-step schedule."""

    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    t_start: int = 250
    steps: int = 10
    kind: str = "ddpm"
    seed: int = 0
    noise: simplex.SimplexConfig = simplex.SimplexConfig()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["noise"] = self.noise.to_dict()
        return d

    def abar(self) -> np.ndarray:
        return alphas_cumprod(self.T, self.beta_start, self.beta_end)

    def manifest_section(self) -> dict:
        """The manifest's `sampler`, which the runtime's sampler runs from."""
        return {"network": {"x_t": "x_t", "t": "t", "eps": "eps"},
                "T": self.T, "schedule": "linear", "beta_start": self.beta_start,
                "beta_end": self.beta_end, "t_start": self.t_start, "steps": self.steps,
                "kind": self.kind,
                "noise": {"kind": "simplex", "seed": self.seed, **self.noise.to_dict()}}

    @classmethod
    def from_manifest(cls, s: dict) -> SamplerSpec:
        """The spec a manifest's `sampler` describes (the inverse of `manifest_section`)."""
        noise = {k: v for k, v in s["noise"].items() if k not in ("kind", "seed")}
        return cls(T=s["T"], beta_start=s["beta_start"], beta_end=s["beta_end"],
                   t_start=s["t_start"], steps=s["steps"], kind=s["kind"],
                   seed=s["noise"]["seed"], noise=simplex.SimplexConfig(**noise))


def timesteps(t_start: int, steps: int) -> list[int]:
    """The eps-network's timesteps, first to last: t_start * i // steps for i = steps..1."""
    if not 1 <= steps <= t_start:
        raise ValueError(f"steps must lie in [1, t_start = {t_start}], got {steps}")
    return [t_start * i // steps for i in range(steps, 0, -1)]


@lru_cache(maxsize=64)
def _simplex(seed: int, draw: int, shape: tuple[int, int, int],
             cfg: simplex.SimplexConfig) -> np.ndarray:
    """The same draws serve every batch of an evaluation."""
    return simplex.noise(seed, draw, shape, cfg)


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def sample(eps_fn, x0: torch.Tensor, spec: SamplerSpec, steps: int) -> torch.Tensor:
    """x0_hat for images x0 [B, C, H, W]; every image gets the same noises. Coefficients are
    worked out in float64 and applied in float32, as the runtime does."""
    ab = spec.abar()
    _, c, h, w = x0.shape

    def draw(d: int) -> torch.Tensor:
        return torch.from_numpy(_simplex(spec.seed, d, (c, h, w), spec.noise))[None]

    a0 = float(ab[spec.t_start])
    x = _f32(a0**0.5) * x0 + _f32((1 - a0) ** 0.5) * draw(0)
    ts = timesteps(spec.t_start, steps)
    for n, t in enumerate(ts):
        a_t = float(ab[t])
        a_p = float(ab[ts[n + 1]]) if n + 1 < len(ts) else 1.0
        eps = eps_fn(x, t)
        x0_hat = ((x - _f32((1 - a_t) ** 0.5) * eps) / _f32(a_t**0.5)).clamp(-1, 1)
        if spec.kind == "ddim":
            x = _f32(a_p**0.5) * x0_hat + _f32((1 - a_p) ** 0.5) * eps
            continue
        beta = 1 - a_t / a_p
        c1 = a_p**0.5 * beta / (1 - a_t)
        c2 = (1 - beta) ** 0.5 * (1 - a_p) / (1 - a_t)
        x = _f32(c1) * x0_hat + _f32(c2) * x
        if n + 1 < len(ts):
            var = beta * (1 - a_p) / (1 - a_t)
            x = x + _f32(var**0.5) * draw(n + 1)
    return x


class PartialDiffusion(nn.Module):
    """AnoDDPM with the reference sampler around an eps-network: image -> (map, score)."""

    def __init__(self, unet: nn.Module, spec: SamplerSpec, score: ScoreSpec) -> None:
        super().__init__()
        self.unet, self.spec, self.score = unet, spec, score

    def forward(self, image: torch.Tensor, steps: int | None = None):
        def eps(x: torch.Tensor, t: int) -> torch.Tensor:
            return self.unet(x, torch.full((x.shape[0],), float(t)))

        x0_hat = sample(eps, image, self.spec, steps or self.spec.steps)
        return reconstruction_score(image, x0_hat, self.score)
