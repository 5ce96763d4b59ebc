"""Validation-only defect synthesis (make-tiles `validation/test/`).

A third family of defects, unlike both the training synthesis (`synth.py`: Perlin masks
filled with foreign textures, Perlin discolouration) and the evaluation synthesis
(`tiles.py`: scratch, crack, stain, hole, contamination):

- warp:    local geometric distortion (swirl, bulge/pinch or smooth random field) of a blob;
           the texture is kept, only displaced
- smear:   motion-blurred patch (a line kernel at a random angle)
- smooth:  missing texture: a worn patch replaced by the local mean level
- speckle: fine per-pixel noise (grain) inside a blob
- shift:   a rectangle cut out and put back misaligned by a few pixels (sharp edges)
- dent:    soft dent: the shading of a shallow bump lit from one side (dark / bright lobes)

Every kind changes pixels only inside a compactly supported region (exactly zero weight
outside), and the ground-truth mask is derived from the result: a pixel is marked only
where the uint8 image differs from the clean crop by at least CHANGE grey levels, and
everywhere that it does. The same rule marks the validation defects made with the
training synthesis (`synth_blend`, `synth_stain`), whose own masks miss the soft tails of
a stain and include blended pixels that did not visibly change.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

KINDS = ("warp", "smear", "smooth", "speckle", "shift", "dent")
SYNTH_KINDS = ("synth_blend", "synth_stain")  # the training synthesis, on validation crops
CHANGE = 10  # grey levels: a pixel counts as changed at |defect - clean| >= CHANGE
MIN_AREA = 100  # a defect must mark at least this many pixels (else it is redrawn)
TRIES = 12


def _blob(n: int, rng: np.random.Generator, r_lo: float, r_hi: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Irregular blob: (bump weight in [0, 1], exactly 0 outside; dy; dx; cy; cx).

    The radius is an ellipse modulated by low angular harmonics; the weight is
    (1 - r^2)^2 of the normalised radius r, so it is smooth and compactly supported.
    """
    cy, cx = rng.uniform(0.2, 0.8, 2) * n
    ry, rx = rng.uniform(r_lo, r_hi, 2)
    rot = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dy * np.cos(rot) + dx * np.sin(rot)
    v = -dy * np.sin(rot) + dx * np.cos(rot)
    theta = np.arctan2(u, v)
    wobble = 1.0
    for h in (2, 3, 5):
        wobble = wobble + rng.uniform(0.0, 0.25 / h * 2) * np.cos(h * theta + rng.uniform(0, 6.3))
    r = np.sqrt((u / ry) ** 2 + (v / rx) ** 2) / np.maximum(wobble, 0.3)
    w = np.where(r < 1.0, (1.0 - np.minimum(r, 1.0) ** 2) ** 2, 0.0)
    return w, dy, dx, cy, cx


def _warp(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = t.shape[0]
    w, dy, dx, _, _ = _blob(n, rng, 12, 26)
    mode = int(rng.integers(3))
    if mode == 0:  # swirl
        a = rng.choice([-1, 1]) * rng.uniform(0.6, 1.4) * w
        sy = dy * np.cos(a) - dx * np.sin(a) - dy
        sx = dy * np.sin(a) + dx * np.cos(a) - dx
    elif mode == 1:  # bulge (s > 0) or pinch (s < 0)
        s = rng.choice([-1, 1]) * rng.uniform(0.35, 0.6) * w
        sy, sx = -s * dy, -s * dx
    else:  # smooth random displacement field
        amp = rng.uniform(4.0, 8.0)
        f = [ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), 6.0) for _ in range(2)]
        f = [g / max(np.abs(g).max(), 1e-6) for g in f]
        sy, sx = amp * f[0] * w, amp * f[1] * w
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    coords = np.stack([yy + sy, xx + sx])
    return ndimage.map_coordinates(t, coords, order=1, mode="reflect")


def _smear(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = t.shape[0]
    w, *_ = _blob(n, rng, 12, 24)
    length = int(rng.integers(9, 22)) | 1
    ang = rng.uniform(0, np.pi)
    k = np.zeros((length, length))
    c = length // 2
    for s in np.linspace(-c, c, 4 * length):
        k[int(round(c + s * np.sin(ang))), int(round(c + s * np.cos(ang)))] = 1.0
    k /= k.sum()
    blurred = ndimage.convolve(t, k, mode="reflect")
    a = np.minimum(1.0, 2.5 * w)
    return t * (1 - a) + blurred * a


def _smooth(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = t.shape[0]
    w, dy, dx, _, _ = _blob(n, rng, 10, 22)
    fill = ndimage.gaussian_filter(t, rng.uniform(8.0, 14.0), mode="reflect")
    ang = rng.uniform(0, 2 * np.pi)
    fill = fill + rng.uniform(0, 0.4) * (dy * np.sin(ang) + dx * np.cos(ang))  # worn slope
    a = np.minimum(1.0, 3.0 * w)
    return t * (1 - a) + fill * a


def _speckle(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = t.shape[0]
    w, *_ = _blob(n, rng, 10, 22)
    grain = rng.normal(0.0, rng.uniform(30, 55), (n, n))
    if rng.random() < 0.5:  # salt-and-pepper flavour
        sp = rng.random((n, n))
        grain = np.where(sp < 0.08, -120.0, np.where(sp > 0.92, 120.0, grain * 0.5))
    a = np.minimum(1.0, 2.0 * w)
    return t + a * grain


def _shift(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = t.shape[0]
    h, wd = int(rng.integers(14, 45)), int(rng.integers(14, 45))
    y0, x0 = int(rng.integers(8, n - h - 8)), int(rng.integers(8, n - wd - 8))
    d = rng.uniform(3.0, 10.0)
    ang = rng.uniform(0, 2 * np.pi)
    oy, ox = int(round(d * np.sin(ang))), int(round(d * np.cos(ang)))
    if oy == 0 and ox == 0:
        ox = 3
    src = np.pad(t, 16, mode="reflect")
    out = t.copy()
    out[y0 : y0 + h, x0 : x0 + wd] = src[16 + y0 + oy : 16 + y0 + oy + h,
                                         16 + x0 + ox : 16 + x0 + ox + wd]
    return out


def _dent(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = t.shape[0]
    w, *_ = _blob(n, rng, 14, 30)
    gy, gx = np.gradient(w)
    ang = rng.uniform(0, 2 * np.pi)  # light direction
    shade = gy * np.sin(ang) + gx * np.cos(ang)
    shade = shade / max(np.abs(shade).max(), 1e-6)
    depth = rng.uniform(40, 75)
    return t + depth * shade - rng.uniform(0, 15) * w  # lit lobes + a slightly darker floor


DEFECT_FNS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "warp": _warp, "smear": _smear, "smooth": _smooth, "speckle": _speckle,
    "shift": _shift, "dent": _dent,
}


def changed_mask(clean: np.ndarray, defect: np.ndarray) -> np.ndarray:
    """bool mask of the visibly changed pixels: |defect - clean| >= CHANGE (uint8 images)."""
    return np.abs(defect.astype(np.int16) - clean.astype(np.int16)) >= CHANGE


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _training_synth(kind: str, tile: np.ndarray, rng: np.random.Generator, pool) -> np.ndarray:
    from .synth import synthesize

    x = (tile.astype(np.float32) / 255.0)[None]
    aug, _ = synthesize(x, pool, rng, discolour_prob=1.0 if kind == "synth_stain" else 0.0)
    return aug[0].astype(np.float64) * 255.0


def make_val_defect(kind: str, tile: np.ndarray, rng: np.random.Generator, pool=None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """tile uint8 [n, n] -> (defective uint8 image, mask uint8 0/255).

    `kind` is one of KINDS (this module's synthesis) or SYNTH_KINDS (the training
    synthesis, `synth.synthesize`, which needs `pool`, a `synth.TexturePool`). Redrawn
    until at least MIN_AREA pixels changed.
    """
    base = tile.astype(np.float64)
    for _ in range(TRIES):
        if kind in SYNTH_KINDS:
            out = _to_u8(_training_synth(kind, tile, rng, pool))
        else:
            out = _to_u8(DEFECT_FNS[kind](base, rng))
        m = changed_mask(tile, out)
        if m.sum() >= MIN_AREA:
            break
    return out, m.astype(np.uint8) * 255
