"""Seeded multi-octave 2-D simplex noise, bit-exact with the runtime's
`runtime/src/stages/engine/simplex.rs`.

AnoDDPM noises with simplex noise instead of white noise, and the runtime redraws the same noise
from the manifest's seed, so both sides must compute the same float64 values in the same order.
Only IEEE-exact operations are used (+, -, *, floor, comparisons; no exp, sin or pow), each
rounded on its own (numpy runs one ufunc per operation; Rust does not contract to FMA), and the
permutation comes from an integer generator (SplitMix64), so the result is bit-identical.

A field is `sum_o persistence^o * simplex(x * 2^o / period + ox_o, y * 2^o / period + oy_o)`
over `octaves`, each octave with its own permutation and offset, times `scale`; float32 at the
end. `draw` picks an independent field for the same seed (the initial noise, each sampler step,
each channel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MASK = (1 << 64) - 1
# 0.5 * (sqrt(3) - 1) and (3 - sqrt(3)) / 6, written out so that both languages read the same
# double (Python's repr round-trips; Rust parses decimal literals correctly rounded).
F2 = 0.36602540378443865
G2 = 0.21132486540518713
G2X2 = 2.0 * G2  # exact: a power-of-two multiple
# eight gradient directions; a corner's gradient is perm[...] % 8
GRAD_X = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0])
GRAD_Y = np.array([1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 1.0, -1.0])
DRAW_MIX = 0x9E3779B97F4A7C15
OCTAVE_MIX = 0xBF58476D1CE4E5B9
# offsets lie in [0, 256): a u64's top 53 bits times 2^-45, exact in both languages
OFFSET_SCALE = 2.0 ** -45


@dataclass(frozen=True)
class SimplexConfig:
    """How a field is built; stored in the manifest so the runtime builds the same."""

    octaves: int = 6
    persistence: float = 0.8
    period: float = 32.0  # pixels per lattice cell at octave 0
    scale: float = 1.0  # multiplies the octave sum (set so that the std is about 1)

    def to_dict(self) -> dict:
        return asdict(self)


def splitmix64(state: int) -> tuple[int, int]:
    """(next state, output) of SplitMix64."""
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def octave_seed(seed: int, draw: int, octave: int) -> int:
    return (seed ^ ((draw * DRAW_MIX) & MASK) ^ ((octave * OCTAVE_MIX) & MASK)) & MASK


def permutation(seed: int) -> tuple[np.ndarray, float, float]:
    """Fisher-Yates shuffle of 0..255 from SplitMix64(seed), doubled to 512 entries, and the
    octave's (x, y) offset drawn after it."""
    state = seed & MASK
    p = list(range(256))
    for i in range(255, 0, -1):
        state, r = splitmix64(state)
        j = r % (i + 1)
        p[i], p[j] = p[j], p[i]
    state, rx = splitmix64(state)
    state, ry = splitmix64(state)
    return (np.array(p + p, dtype=np.int64), float(rx >> 11) * OFFSET_SCALE,
            float(ry >> 11) * OFFSET_SCALE)


def _corner(dx: np.ndarray, dy: np.ndarray, g: np.ndarray) -> np.ndarray:
    t = 0.5 - dx * dx - dy * dy
    t2 = t * t
    n = t2 * t2 * (GRAD_X[g] * dx + GRAD_Y[g] * dy)
    return np.where(t < 0.0, 0.0, n)


def simplex2(x: np.ndarray, y: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Classic 2-D simplex noise (Gustavson) at float64 points, in about [-1, 1]."""
    s = (x + y) * F2
    i = np.floor(x + s)
    j = np.floor(y + s)
    t = (i + j) * G2
    x0 = x - (i - t)
    y0 = y - (j - t)
    upper = x0 > y0
    i1 = np.where(upper, 1.0, 0.0)
    j1 = np.where(upper, 0.0, 1.0)
    x1 = x0 - i1 + G2
    y1 = y0 - j1 + G2
    x2 = x0 - 1.0 + G2X2
    y2 = y0 - 1.0 + G2X2
    ii = i.astype(np.int64) & 255
    jj = j.astype(np.int64) & 255
    i1i, j1i = i1.astype(np.int64), j1.astype(np.int64)
    g0 = perm[ii + perm[jj]] % 8
    g1 = perm[ii + i1i + perm[jj + j1i]] % 8
    g2 = perm[ii + 1 + perm[jj + 1]] % 8
    n = _corner(x0, y0, g0) + _corner(x1, y1, g1)
    n = n + _corner(x2, y2, g2)
    return 70.0 * n


def field64(seed: int, draw: int, height: int, width: int, cfg: SimplexConfig) -> np.ndarray:
    """The float64 field [height, width] before the final cast."""
    if cfg.octaves < 1 or not cfg.period > 0:
        raise ValueError(f"simplex noise needs octaves >= 1 and period > 0, got {cfg}")
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                         indexing="ij")
    out = np.zeros((height, width), np.float64)
    amp = 1.0
    freq = 1.0 / cfg.period
    for o in range(cfg.octaves):
        perm, ox, oy = permutation(octave_seed(seed, draw, o))
        out = out + amp * simplex2(xs * freq + ox, ys * freq + oy, perm)
        amp = amp * cfg.persistence
        freq = freq * 2.0
    return out * cfg.scale


def field(seed: int, draw: int, height: int, width: int, cfg: SimplexConfig) -> np.ndarray:
    """float32 field [height, width]: what the runtime draws for (seed, draw)."""
    return field64(seed, draw, height, width, cfg).astype(np.float32)


def noise(seed: int, draw: int, shape: tuple[int, int, int], cfg: SimplexConfig) -> np.ndarray:
    """float32 [C, H, W]: channel c is draw `draw * C + c`."""
    c, h, w = shape
    return np.stack([field(seed, draw * c + k, h, w, cfg) for k in range(c)])


def unit_scale(cfg: SimplexConfig, size: int = 128, draws: int = 32) -> float:
    """A `scale` that gives the field about unit standard deviation (rounded to 4 significant
    digits, so that the manifest states it exactly)."""
    raw = SimplexConfig(cfg.octaves, cfg.persistence, cfg.period, 1.0)
    std = float(np.std(np.stack([field64(1, d, size, size, raw) for d in range(draws)])))
    return float(f"{1.0 / std:.4g}")


# Fields the runtime's tests compare bit for bit (tests/fixtures/simplex/), written by
# `write_fixtures`; exporter/tests/test_simplex.py checks that this module still writes them.
FIXTURES = (
    (0, 0, 32, 48, SimplexConfig()),
    (7, 3, 40, 40, SimplexConfig(6, 0.8, 32.0, 1.343)),
    (2**63 + 5, 1, 16, 24, SimplexConfig(3, 0.5, 7.0, 1.0)),
    (123456789, 11, 128, 128, SimplexConfig(6, 0.8, 32.0, 1.343)),
)


def write_fixtures(folder) -> list[dict]:
    """Writes cases.json and one little-endian float64 file per case into `folder`."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed, draw, h, w, cfg in FIXTURES:
        name = f"seed{seed}-draw{draw}-{h}x{w}.f64"
        field64(seed, draw, h, w, cfg).astype("<f8").tofile(folder / name)
        cases.append({"seed": seed, "draw": draw, "height": h, "width": w,
                      "config": cfg.to_dict(), "file": name})
    (folder / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    return cases
