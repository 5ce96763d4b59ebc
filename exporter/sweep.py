"""Threshold sweep: the false-reject / escape trade-off and its operating points.

Shared spec with the Rust side (`diffad eval --sweep`):
- good scores G, defective scores D; a part is rejected when score >= threshold.
- candidates: every distinct score of G and D, ascending; frr(t) = #{g >= t} / |G|,
  escape(t) = #{d < t} / |D|.
- operating points, in this order: for each escape target x in ESCAPE_TARGETS the largest
  candidate with escape(t) <= x; then for each false-reject target y in FRR_TARGETS the
  smallest candidate with frr(t) <= y. A target no candidate meets is skipped.
- the threshold of a point with candidate t is the midpoint between t and the largest score
  below t (t itself if none is below); frr and escape are recomputed there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ESCAPE_TARGETS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)
FRR_TARGETS = (0.005, 0.01, 0.02, 0.05, 0.10)


@dataclass
class OperatingPoint:
    target: str  # "escapes<=0.05" or "false_rejects<=0.01"
    threshold: float
    frr: float
    escape: float
    false_rejects: int
    escapes: int

    def label(self) -> str:
        kind, value = self.target.split("<=")
        name = "escapes" if kind == "escapes" else "false rejects"
        return f"{name} <= {float(value) * 100:g}%"


def _counts(good: np.ndarray, bad: np.ndarray, t: float) -> tuple[int, int]:
    return int((good >= t).sum()), int((bad < t).sum())


def _point(target: str, t: float, allv: np.ndarray, good: np.ndarray,
           bad: np.ndarray) -> OperatingPoint:
    below = allv[allv < t]
    thr = float((t + below.max()) / 2) if len(below) else float(t)
    fr, es = _counts(good, bad, thr)
    return OperatingPoint(target, thr, fr / len(good) if len(good) else 0.0,
                          es / len(bad) if len(bad) else 0.0, fr, es)


def _rates(g: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates (distinct scores, ascending) and frr, escape at each."""
    allv = np.unique(np.concatenate([g, d]))
    gs, ds = np.sort(g), np.sort(d)
    # g >= t: len(g) - #{g < t}; d < t: #{d < t}
    frr = (len(g) - np.searchsorted(gs, allv, "left")) / max(len(g), 1)
    esc = np.searchsorted(ds, allv, "left") / max(len(d), 1)
    return allv, frr, esc


def _arrays(good: Any, defective: Any) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(good, dtype=np.float64).ravel(),
            np.asarray(defective, dtype=np.float64).ravel())


def escape_point(good: Any, defective: Any, x: float) -> OperatingPoint | None:
    """Escapes <= x at the fewest false rejects: the largest candidate with escape(t) <= x
    (None without defective scores, or when no candidate meets x)."""
    g, d = _arrays(good, defective)
    if not len(d):
        return None
    allv, _, esc = _rates(g, d)
    ok = np.nonzero(esc <= x)[0]
    return _point(f"escapes<={x:g}", allv[ok[-1]], allv, g, d) if len(ok) else None


def frr_point(good: Any, defective: Any, y: float) -> OperatingPoint | None:
    """False rejects <= y at the fewest escapes: the smallest candidate with frr(t) <= y."""
    g, d = _arrays(good, defective)
    if not len(g):
        return None
    allv, frr, _ = _rates(g, d)
    ok = np.nonzero(frr <= y)[0]
    return _point(f"false_rejects<={y:g}", allv[ok[0]], allv, g, d) if len(ok) else None


def sweep(good: Any, defective: Any) -> dict[str, Any]:
    """The operating points of the spec for good scores `good` and defective `defective`."""
    g, d = _arrays(good, defective)
    points = [escape_point(g, d, x) for x in ESCAPE_TARGETS]
    points += [frr_point(g, d, y) for y in FRR_TARGETS]
    return {"good": int(len(g)), "defective": int(len(d)),
            "points": [asdict(p) for p in points if p is not None]}


def curve(good: Any, defective: Any) -> dict[str, np.ndarray]:
    """frr and escape at every candidate (for plots)."""
    allv, frr, esc = _rates(*_arrays(good, defective))
    return {"threshold": allv, "frr": frr, "escape": esc}


def _cell(text: str, width: int) -> str:
    return f"{text:<{width - 1}} "  # always one space, even when the text is wider


def format_sweep(s: dict[str, Any]) -> str:
    """One row per operating point: target, threshold (6 decimals), rates with counts."""
    rows = [_cell("target", 23) + _cell("threshold", 12) + _cell("false rejects", 21)
            + "escapes"]
    for p in (OperatingPoint(**q) for q in s["points"]):
        fr = f"{p.frr * 100:.1f} % ({p.false_rejects}/{s['good']})"
        es = f"{p.escape * 100:.1f} % ({p.escapes}/{s['defective']})"
        rows.append(_cell(p.label(), 23) + _cell(f"{p.threshold:.6f}", 12) + _cell(fr, 21) + es)
    return "\n".join(rows)
