"""Training-time anomaly synthesis (DiffusionAD / DRAEM style).

Perlin-noise masks (scale 2^U{0..5} per axis, rotated, thresholded at 0.5) filled
with a foreign texture blended with factor beta ~ U(0.2, 0.8):
    aug = x (1 - m) + (1 - beta) tex m + beta x m
Foreign textures come from a local folder, or are procedural / other scikit-image
photos (never the target textures). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.transform import resize, rotate

from .preprocess import list_images, load_pixels

# scikit-image photos bundled with the package (no download); not brick/grass/gravel
SKIMAGE_SOURCES = ("camera", "coins", "moon", "text", "page", "astronaut", "coffee",
                   "chelsea", "rocket", "cell", "clock", "immunohistochemistry")


def perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2D gradient (Perlin) noise, ~[-0.7, 0.7], with res[0] x res[1] lattice cells."""
    h, w = shape
    ry, rx = res
    ys = np.linspace(0, ry, h, endpoint=False)
    xs = np.linspace(0, rx, w, endpoint=False)
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]
    ang = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    gy, gx = np.sin(ang), np.cos(ang)

    def dot(oy: int, ox: int) -> np.ndarray:
        gyy = gy[yi[:, None] + oy, xi[None, :] + ox]
        gxx = gx[yi[:, None] + oy, xi[None, :] + ox]
        return gyy * (yf - oy) + gxx * (xf - ox)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(xf), fade(yf)
    n0 = dot(0, 0) * (1 - u) + dot(0, 1) * u
    n1 = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return np.sqrt(2) * (n0 * (1 - v) + n1 * v)


def perlin_mask(size: int, rng: np.random.Generator, tries: int = 8, octaves: int = 6
                ) -> np.ndarray:
    """Binary float32 mask [size, size]; non-empty when possible. Lattice 2^U{0..octaves-1}
    cells per axis: fewer octaves, rounder blobs."""
    m = np.zeros((size, size), np.float32)
    for _ in range(tries):
        sy, sx = 2 ** rng.integers(0, octaves), 2 ** rng.integers(0, octaves)
        n = perlin((size, size), (int(sy), int(sx)), rng)
        n = rotate(n, rng.uniform(-90, 90), mode="reflect", preserve_range=True)
        m = (n > 0.5).astype(np.float32)
        if m.sum() >= 16:
            return m
    return m


def procedural_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random procedural texture in [0, 1], [size, size].

    Kinds 5 and 6 are near-flat fills: blended at beta they shift the local grey level
    without adding structure, the discolouration a texture-only pool never teaches.
    """
    kind = rng.integers(0, 7)
    if kind >= 5:
        level = rng.uniform(0, 1)
        if kind == 5:
            return np.full((size, size), level, np.float32)
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.mgrid[0:size, 0:size] / size
        ramp = ramp[0] * np.sin(a) + ramp[1] * np.cos(a)
        return np.clip(level + 0.2 * (ramp - ramp.mean()), 0, 1).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # fractal noise
        t = sum(perlin((size, size), (2**o, 2**o), rng) / 2**o for o in range(1, 6))
    elif kind == 1:  # stripes
        a, f = rng.uniform(0, np.pi), rng.uniform(4, 40)
        t = np.sin(2 * np.pi * f * (xx * np.cos(a) + yy * np.sin(a)))
    elif kind == 2:  # checker
        f = rng.integers(2, 16)
        t = ((np.floor(xx * f) + np.floor(yy * f)) % 2).astype(float)
    elif kind == 3:  # dots
        t = np.zeros((size, size))
        for _ in range(rng.integers(5, 60)):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.01, 0.08)
            t = np.maximum(t, ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * rng.uniform(0.3, 1))
    else:  # uniform noise, smoothed by upsampling
        s = int(rng.integers(4, 64))
        t = resize(rng.random((s, s)), (size, size), order=1)
    t = np.asarray(t, dtype=np.float64)
    return ((t - t.min()) / (np.ptp(t) + 1e-8)).astype(np.float32)


def _photo_pool() -> list[np.ndarray]:
    import skimage.data as skd

    pool = []
    for name in SKIMAGE_SOURCES:
        a = np.asarray(getattr(skd, name)())
        pool.append(a)
    return pool


class TexturePool:
    """Foreign textures as float32 [C, size, size] in [0, 1]."""

    def __init__(self, size: int, channels: int, source: Path | None, seed: int) -> None:
        self.size, self.channels = size, channels
        self.photos: list[np.ndarray] = []
        if source is not None:
            for p in list_images(source):
                self.photos.append(load_pixels(p, 3))
        else:
            self.photos = _photo_pool()

    def _crop_photo(self, rng: np.random.Generator) -> np.ndarray:
        a = self.photos[rng.integers(len(self.photos))]
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=2)
        a = a[:, :, :3].astype(np.float32) / 255.0
        h, w = a.shape[:2]
        c = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        return resize(a[y : y + c, x : x + c], (self.size, self.size), order=1).astype(np.float32)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.photos and rng.random() < 0.6:
            rgb = self._crop_photo(rng)
        else:
            g = procedural_texture(self.size, rng)
            tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
            rgb = g[:, :, None] * tint[None, None, :]
        # photometric jitter: contrast, brightness, optional inversion
        rgb = np.clip((rgb - 0.5) * rng.uniform(0.6, 1.6) + 0.5 + rng.uniform(-0.3, 0.3), 0, 1)
        if rng.random() < 0.3:
            rgb = 1.0 - rgb
        if self.channels == 1:
            g = 0.299 * rgb[:, :, 0] + 0.587 * rgb[:, :, 1] + 0.114 * rgb[:, :, 2]
            return g[None].astype(np.float32)
        return rgb.transpose(2, 0, 1).astype(np.float32).copy()


def discolour(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged Perlin region brightened or darkened by 0.15-0.45, texture kept.

    The paper's blend always trades texture for foreign content; a surface stain or
    burn keeps the texture and moves only its grey level, which the blend never shows.
    """
    size = x.shape[-1]
    alpha = ndimage.gaussian_filter(perlin_mask(size, rng), rng.uniform(1.0, 4.0))
    alpha = alpha / max(float(alpha.max()), 1e-6)
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.45)
    aug = np.clip(x + delta * alpha[None], 0.0, 1.0)
    return aug.astype(np.float32), (alpha > 0.5).astype(np.float32)[None]


def self_texture(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A Perlin region refilled with the part's own texture, displaced, turned and rescaled.

    Foreign blends and stains teach "this is not the texture"; a stochastic texture (grass)
    fails differently: the right material, wrongly arranged. Here the fill is the same crop
    rolled by a random offset, flipped or turned, and zoomed by 0.6-1.6, so only the
    arrangement (continuity, orientation, grain size) gives it away.
    """
    c, size = x.shape[0], x.shape[-1]
    m = perlin_mask(size, rng, octaves=3)  # blobs: a sliver of own texture shows nothing
    src = np.roll(x, tuple(int(v) for v in rng.integers(size // 4, size, 2)), axis=(1, 2))
    src = np.rot90(src, int(rng.integers(1, 4)), axes=(1, 2))
    if rng.random() < 0.5:
        src = src[:, :, ::-1]
    zoom = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    if abs(zoom - 1.0) > 0.1:
        big = int(round(size * zoom))
        z = np.stack([resize(src[i], (big, big), order=1) for i in range(c)])
        if big >= size:
            o = (big - size) // 2
            src = z[:, o : o + size, o : o + size]
        else:
            src = np.concatenate([z, z[:, :, : size - big]], 2)
            src = np.concatenate([src, src[:, : size - big]], 1)
    src = np.clip(src * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0.0, 1.0)
    beta = rng.uniform(0.0, 0.3)  # mostly replaced: the point is the arrangement
    aug = x * (1 - m) + ((1 - beta) * src + beta * x) * m
    return aug.astype(np.float32), m[None].astype(np.float32)


def synthesize(
    x: np.ndarray, pool: TexturePool, rng: np.random.Generator, discolour_prob: float = 0.0,
    self_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [C, H, W] in [0, 1] -> (augmented image, mask [1, H, W]).

    Shares: `discolour_prob` stains, `self_prob` own-texture refills, the rest foreign blends.
    """
    u = rng.random() if discolour_prob > 0 or self_prob > 0 else 1.0
    if u < discolour_prob:
        return discolour(x, rng)
    if u < discolour_prob + self_prob:
        return self_texture(x, rng)
    size = x.shape[-1]
    m = perlin_mask(size, rng)[None]
    tex = pool.sample(rng)
    beta = rng.uniform(0.2, 0.8)
    aug = x * (1 - m) + (1 - beta) * tex * m + beta * x * m
    return aug.astype(np.float32), m.astype(np.float32)
