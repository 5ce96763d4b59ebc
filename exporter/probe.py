"""Feature probe: how far a denoiser's own features separate good parts from defective ones.

A diffusion eps-UNet (a recipe checkpoint) encodes x_t; on a stationary texture the encoder
features of good parts follow one distribution wherever they sit, so a single Gaussian fitted
on every position of the training tiles is the whole model of "normal". A tile's map is the
Mahalanobis distance of each position's features, resized to the image; its score the mean of
the map's top-k. No head is trained: the probe shows what a head given these features would
have to work with. Validation split only, like every other choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .diffusion import alphas_cumprod
from .edge import EdgeUNet
from .errors import ExporterError
from .evaluate import load_dataset, metrics, per_kind_auroc
from .preprocess import list_images, preprocess_file
from .recipes.export import RANGE
from .select import check_validation_split

T = 1000
# Shrinkage of the covariance towards its mean variance: the train tiles give ~10^4 positions
# for up to 192 feature channels; a little keeps the inverse stable.
SHRINK = 1e-3


def encoder_features(net: EdgeUNet, x: torch.Tensor, t: int, levels: tuple[int, ...],
                     noise_seed: int = 0) -> torch.Tensor:
    """[B, C, h, w]: the encoder outputs at `levels` (0 = the stem's), noised to `t` with a
    fixed noise (t = 0: the clean image), resized to the finest of them and stacked."""
    if not levels or min(levels) < 0 or max(levels) >= len(net.enc):
        raise ExporterError(f"feature levels {levels} outside 0..{len(net.enc) - 1}")
    if t > 0:
        a = float(alphas_cumprod(T)[t])
        g = torch.Generator().manual_seed(noise_seed)
        x = a**0.5 * x + (1 - a) ** 0.5 * torch.randn(x.shape, generator=g)
    levels_out = net.encode(x, net.embed(torch.full((x.shape[0],), float(t))))
    out = [levels_out[i] for i in sorted(set(levels))]
    size = out[0].shape[-2:]
    return torch.cat([o if o.shape[-2:] == size else
                      F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                      for o in out], 1)


def _features(net: EdgeUNet, images: np.ndarray, t: int, levels: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encoder_features(net, torch.from_numpy(images[i:i + 16]), t, levels)
                          for i in range(0, len(images), 16)])


def fit_gaussian(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [C], precision [C, C]) over every position of `feats` [N, C, h, w], in float64."""
    c = feats.shape[1]
    z = feats.permute(0, 2, 3, 1).reshape(-1, c).double()
    if z.shape[0] <= c:
        raise ExporterError(f"feature probe: {z.shape[0]} positions cannot fit a Gaussian "
                            f"over {c} channels; give it more training tiles")
    cov = torch.cov(z.T)
    cov += SHRINK * float(cov.diagonal().mean()) * torch.eye(c, dtype=torch.float64)
    return z.mean(0), torch.linalg.inv(cov)


def mahalanobis_maps(feats: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor,
                     size: int) -> np.ndarray:
    """[N, size, size]: each position's Mahalanobis distance, resized bilinearly."""
    d = feats.permute(0, 2, 3, 1).double() - mean
    m = torch.einsum("bhwc,cd,bhwd->bhw", d, precision, d).clamp_min(0).sqrt()
    m = F.interpolate(m[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return m[:, 0].numpy()


def probe(net: EdgeUNet, train: Path, dataset: Path, levels: list[tuple[int, ...]],
          ts: list[int], top_ks: list[int]) -> dict[str, Any]:
    """Every (levels, t, top-k) on the validation split `dataset`, the Gaussian fitted on the
    images in `train`; rows and the best by image AUROC."""
    check_validation_split(dataset)
    size, ch = net.cfg.image_size, net.cfg.in_channels
    train_files = list_images(train)
    if not train_files:
        raise ExporterError(f"feature probe: no images in {train}")
    fit = np.stack([preprocess_file(p, ch, size, size, RANGE) for p in train_files])
    files, y, kinds, gt = load_dataset(dataset, size, size)
    val = np.stack([preprocess_file(p, ch, size, size, RANGE) for p in files])
    rows = []
    for lv in levels:
        for t in ts:
            mean, precision = fit_gaussian(_features(net, fit, t, lv))
            maps = mahalanobis_maps(_features(net, val, t, lv), mean, precision, size)
            flat = np.sort(maps.reshape(len(maps), -1), 1)
            for k in top_ks:
                scores = flat[:, -k:].mean(1)
                m = metrics(dataset, maps, scores, y, gt)
                rows.append({"levels": list(lv), "t": t, "top_k": k,
                             "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                             "per_kind_auroc": per_kind_auroc(scores, y, kinds)})
                print(f"levels {list(lv)} t {t} top-{k}: image AUROC {m['image_auroc']:.4f}, "
                      f"pixel AUROC {m['pixel_auroc']:.4f}", flush=True)
    best = max(rows, key=lambda r: (r["image_auroc"], r["pixel_auroc"]))
    return {"train": str(train), "dataset": str(dataset), "train_images": len(train_files),
            "rows": rows, "best": best}
