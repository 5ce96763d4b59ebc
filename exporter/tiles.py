"""Tile dataset from scikit-image brick / grass / gravel (ARCHITECTURE §5 layout).

Each 512 x 512 photograph is cut into three disjoint regions (x, y = column, row):
- train      x < 384, y < 320: `train/good` (128-px grid, stride 32), for training only;
- validation x < 384, y >= 320 (a 384 x 192 band): `validation/good`, good crops at seeded
  random offsets for calibration, and `validation/test`, `validation/ground_truth`, an
  MVTec-style root for choosing stopping points and settings: good crops at other offsets,
  defects from the training synthesis (`synth_*`) and from `valsynth.py`;
- test       x >= 384 (the 128-px column): `test/*`, `ground_truth/*`, evaluated once, with
  defects made by *this* module's own synthesis (scratch, crack, stain, hole,
  contamination), which is deliberately unlike the training synthesis (Perlin masks +
  foreign textures) and the validation one.
`<texture>/tiles.json` records every tile's crop offset and flip (the split manifest).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import ellipse, line

from . import valsynth
from .errors import ExporterError

TEXTURES = ("brick", "grass", "gravel")
TILE = 128
SPLIT = 384  # test: x >= SPLIT
VAL_Y = 320  # train: x < SPLIT, y < VAL_Y; validation: x < SPLIT, y >= VAL_Y
DEFECTS = ("scratch", "crack", "stain", "hole", "contamination")
PER_DEFECT = 12
VAL_GOOD = 400  # validation/good: calibration crops
VAL_TEST_GOOD = 200  # validation/test/good: other offsets, for FRR and AUROC
VAL_DEFECTS = valsynth.SYNTH_KINDS + valsynth.KINDS
VAL_PER_DEFECT = 12
VARIANTS = ("identity", "mirror", "rot180")
# (x0, y0, x1, y1), half-open pixel boxes of each split's source region
REGIONS = {"train": (0, 0, SPLIT, VAL_Y), "validation": (0, VAL_Y, SPLIT, 512),
           "test": (SPLIT, 0, 512, 512)}


def photo(name: str) -> np.ndarray:
    import skimage.data as skd

    return np.asarray(getattr(skd, name)(), dtype=np.uint8)


def _save(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _variants(t: np.ndarray) -> list[np.ndarray]:
    return [t, t[:, ::-1], t[::-1, ::-1]]  # identity, mirror, rot180


# ---- defect synthesis (evaluation only) -------------------------------------------------

def _scratch(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = np.zeros(t.shape, bool)
    n = TILE
    for _ in range(rng.integers(1, 3)):
        p0 = rng.uniform(0.1, 0.9, 2) * n
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.3, 0.7) * n
        bend = rng.uniform(-0.15, 0.15) * n
        pts = []
        for s in np.linspace(0, 1, 24):
            d = (s - 0.5) * length
            off = bend * (1 - (2 * s - 1) ** 2)
            pts.append((p0[0] + d * np.sin(ang) + off * np.cos(ang),
                        p0[1] + d * np.cos(ang) - off * np.sin(ang)))
        for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
            rr, cc = line(int(y0), int(x0), int(y1), int(x1))
            ok = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n)
            m[rr[ok], cc[ok]] = True
    m = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 3)))
    bright = rng.random() < 0.5
    val = rng.uniform(215, 250) if bright else rng.uniform(5, 40)
    out = t.astype(np.float64)
    out[m] = 0.2 * out[m] + 0.8 * val
    return out, m


def _crack(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = np.zeros(t.shape, bool)
    n = TILE
    starts = [(rng.uniform(0.2, 0.8) * n, rng.uniform(0.2, 0.8) * n, rng.uniform(0, 2 * np.pi))]
    steps_left = int(rng.integers(50, 110))
    while starts and steps_left > 0:
        y, x, a = starts.pop()
        for _ in range(int(rng.integers(20, 60))):
            a += rng.normal(0, 0.35)
            y, x = y + 1.5 * np.sin(a), x + 1.5 * np.cos(a)
            if not (0 <= y < n and 0 <= x < n):
                break
            m[int(y), int(x)] = True
            steps_left -= 1
            if rng.random() < 0.04:
                starts.append((y, x, a + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)))
    m = ndimage.binary_dilation(m, iterations=1)
    out = t.astype(np.float64)
    out[m] = out[m] * rng.uniform(0.1, 0.3)
    return out, m


def _stain(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = TILE
    a = np.zeros(t.shape)
    cy, cx = rng.uniform(0.25, 0.75, 2) * n
    for _ in range(rng.integers(2, 5)):
        rr, cc = ellipse(cy + rng.normal(0, 6), cx + rng.normal(0, 6), rng.uniform(6, 16),
                         rng.uniform(6, 16), shape=t.shape, rotation=rng.uniform(0, np.pi))
        a[rr, cc] = 1.0
    a = ndimage.gaussian_filter(a, rng.uniform(1.5, 3.0))
    a = a / max(a.max(), 1e-6)
    delta = rng.choice([-1, 1]) * rng.uniform(60, 100)
    out = t.astype(np.float64) + a * delta
    return out, a > 0.3


def _hole(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = TILE
    cy, cx = rng.uniform(0.2, 0.8, 2) * n
    ry, rx = rng.uniform(5, 13, 2)
    rot = rng.uniform(0, np.pi)
    m = np.zeros(t.shape, bool)
    rr, cc = ellipse(cy, cx, ry, rx, shape=t.shape, rotation=rot)
    m[rr, cc] = True
    rim = ndimage.binary_dilation(m, iterations=2) & ~m
    out = t.astype(np.float64)
    out[m] = rng.uniform(0, 25) + rng.normal(0, 4, m.sum())
    out[rim] = 0.4 * out[rim] + 0.6 * rng.uniform(180, 230)
    return out, m | rim


def _contamination(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = TILE
    m = np.zeros(t.shape, bool)
    out = t.astype(np.float64)
    cy, cx = rng.uniform(0.25, 0.75, 2) * n
    for _ in range(rng.integers(4, 10)):
        y, x = cy + rng.normal(0, 10), cx + rng.normal(0, 10)
        r = rng.uniform(1.5, 4.5)
        rr, cc = ellipse(y, x, r, r * rng.uniform(0.6, 1.4), shape=t.shape)
        val = rng.choice([rng.uniform(0, 40), rng.uniform(210, 255)])
        out[rr, cc] = val
        m[rr, cc] = True
    return out, m


DEFECT_FNS: dict[str, Callable[[np.ndarray, np.random.Generator],
                                tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch, "crack": _crack, "stain": _stain, "hole": _hole,
    "contamination": _contamination,
}


def make_defect(kind: str, tile: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    for _ in range(10):
        out, m = DEFECT_FNS[kind](tile, rng)
        if m.sum() >= 12:
            break
    img = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return img, (m.astype(np.uint8) * 255)


# ---- dataset ----------------------------------------------------------------------------

def _write_validation(root: Path, img: np.ndarray, rng: np.random.Generator, pool,
                      seed: int, index: int, tiles: dict[str, dict]) -> dict[str, int]:
    """The validation band: crops at distinct seeded offsets, split between uses.

    `pool` is the training synthesis' synth.TexturePool (for the synth_* kinds)."""
    x0, y0, x1, y1 = REGIONS["validation"]
    ny, nx = y1 - y0 - TILE + 1, x1 - x0 - TILE + 1
    n_def = len(VAL_DEFECTS) * VAL_PER_DEFECT
    picks = rng.choice(ny * nx, size=VAL_GOOD + VAL_TEST_GOOD + n_def, replace=False)
    flips = rng.integers(0, len(VARIANTS), size=len(picks))
    crops = []
    for p, v in zip(picks, flips, strict=True):
        y, x = y0 + int(p) // nx, x0 + int(p) % nx
        crops.append((y, x, int(v), np.ascontiguousarray(
            _variants(img[y : y + TILE, x : x + TILE])[int(v)])))
    counts: dict[str, int] = {}

    def put(rel: str, crop: tuple, a: np.ndarray) -> None:
        _save(root / rel, a)
        tiles[rel] = {"x": crop[1], "y": crop[0], "variant": VARIANTS[crop[2]]}

    for k, c in enumerate(crops[:VAL_GOOD]):
        put(f"validation/good/{k:03d}.png", c, c[3])
    counts["validation/good"] = VAL_GOOD
    for k, c in enumerate(crops[VAL_GOOD : VAL_GOOD + VAL_TEST_GOOD]):
        put(f"validation/test/good/{k:03d}.png", c, c[3])
    counts["validation/test/good"] = VAL_TEST_GOOD
    bases = iter(crops[VAL_GOOD + VAL_TEST_GOOD :])
    for j, kind in enumerate(VAL_DEFECTS):
        krng = np.random.default_rng([seed, index, 2, j])  # one stream per kind
        for i in range(VAL_PER_DEFECT):
            c = next(bases)
            d, m = valsynth.make_val_defect(kind, c[3], krng, pool)
            put(f"validation/test/{kind}/{i:03d}.png", c, d)
            _save(root / "validation" / "ground_truth" / kind / f"{i:03d}_mask.png", m)
        counts[f"validation/test/{kind}"] = VAL_PER_DEFECT
    return counts


def _write_texture(root: Path, name: str, rng: np.random.Generator, seed: int, index: int,
                   pool) -> dict[str, int]:
    img = photo(name)
    h, w = img.shape
    counts: dict[str, int] = {}
    tiles: dict[str, dict] = {}
    k = 0
    x0, y0, x1, y1 = REGIONS["train"]
    for y in range(y0, y1 - TILE + 1, 32):
        for x in range(x0, x1 - TILE + 1, 32):
            rel = f"train/good/{k:03d}.png"
            _save(root / rel, img[y : y + TILE, x : x + TILE])
            tiles[rel] = {"x": x, "y": y, "variant": VARIANTS[0]}
            k += 1
    counts["train/good"] = k
    # own stream: the test split below keeps the stream (and bytes) it always had
    counts.update(_write_validation(root, img, np.random.default_rng([seed, index, 1]), pool,
                                    seed, index, tiles))
    col = img[:, SPLIT : SPLIT + TILE]  # x >= 384 only
    k = 0
    for y in range(0, h - TILE + 1, 48):
        for v, a in enumerate(_variants(col[y : y + TILE])):
            rel = f"test/good/{k:03d}.png"
            _save(root / rel, np.ascontiguousarray(a))
            tiles[rel] = {"x": SPLIT, "y": y, "variant": VARIANTS[v]}
            k += 1
    counts["test/good"] = k
    for kind in DEFECTS:
        for i in range(PER_DEFECT):
            y = int(rng.integers(0, h - TILE + 1))
            v = int(rng.integers(3))
            base = _variants(col[y : y + TILE])[v]
            d, m = make_defect(kind, np.ascontiguousarray(base), rng)
            rel = f"test/{kind}/{i:03d}.png"
            _save(root / rel, d)
            _save(root / "ground_truth" / kind / f"{i:03d}_mask.png", m)
            tiles[rel] = {"x": SPLIT, "y": y, "variant": VARIANTS[v]}
        counts[f"test/{kind}"] = PER_DEFECT
    manifest = {"texture": name, "seed": seed, "tile": TILE, "photo_shape": [h, w],
                "regions": {k: list(r) for k, r in REGIONS.items()}, "counts": counts,
                "tiles": tiles}
    (root / "tiles.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return counts


def make_tiles(out: Path, force: bool = False, seed: int = 0) -> dict[str, dict[str, int]]:
    targets = [out / t for t in TEXTURES] + [out / "photos"]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise ExporterError(f"{existing[0]} exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".make-tiles.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    summary = {}
    from .synth import TexturePool

    pool = TexturePool(TILE, 1, None, seed)  # the training synthesis' default pool
    try:
        for i, name in enumerate(TEXTURES):
            rng = np.random.default_rng([seed, i])
            summary[name] = _write_texture(tmp / name, name, rng, seed, i, pool)
            _save(tmp / "photos" / f"{name}.png", photo(name))
        for p in targets:
            if p.exists():
                shutil.rmtree(p)
            (tmp / p.name).rename(p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary
