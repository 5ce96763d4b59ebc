"""Small line plots drawn with Pillow (no matplotlib in the venv): calibration trade-off
curves and the training loss history."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .onnxio import atomic_path

COLOURS = ((200, 30, 30), (30, 80, 200), (20, 150, 60), (200, 120, 0), (120, 40, 160))
W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 60


def pillow_available() -> bool:
    try:
        import PIL.ImageDraw  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def line_plot(path: Path, series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
              title: str, x_label: str, y_label: str, vline: tuple[str, float] | None = None,
              log_y: bool = False, steps: bool = False,
              y_range: tuple[float, float] | None = None) -> bool:
    """Writes a PNG with one line per (name, xs, ys); `vline` marks an x value; `steps` draws
    right-continuous step curves. Returns False (nothing written) without Pillow or data."""
    if not pillow_available():
        return False
    from PIL import Image, ImageDraw

    pts = [(n, list(map(float, xs)), list(map(float, ys))) for n, xs, ys in series if len(xs)]
    if log_y:
        pts = [(n, [x for x, y in zip(xs, ys, strict=True) if y > 0],
                [math.log10(y) for y in ys if y > 0]) for n, xs, ys in pts]
        pts = [p for p in pts if p[1]]
    if not pts:
        return False
    xs_all = [x for _, xs, _ in pts for x in xs] + ([vline[1]] if vline else [])
    ys_all = [y for _, _, ys in pts for y in ys]
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if y_range is not None:
        y0, y1 = y_range
    else:
        pad = (y1 - y0) * 0.05
        y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT),
                H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM))

    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.rectangle((LEFT, TOP, W - RIGHT, H - BOTTOM), outline="black")
    for i in range(5):  # ticks
        fx, fy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        ax, _ = px(fx, y0)
        _, ay = px(x0, fy)
        d.line((ax, H - BOTTOM, ax, H - BOTTOM + 4), fill="black")
        d.text((ax - 18, H - BOTTOM + 6), _fmt(fx), fill="black")
        d.line((LEFT - 4, ay, LEFT, ay), fill="black")
        d.text((4, ay - 6), _fmt(10 ** fy if log_y else fy), fill="black")
    d.text((LEFT, 10), title, fill="black")
    d.text(((W - len(x_label) * 6) / 2, H - 22), x_label, fill="black")
    d.text((4, TOP - 16), y_label + (" (log)" if log_y else ""), fill="black")
    for i, (name, xs, ys) in enumerate(pts):
        c = COLOURS[i % len(COLOURS)]
        line: list[tuple[float, float]] = []
        for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if steps and j:
                line.append(px(x, ys[j - 1]))
            line.append(px(x, y))
        if len(line) > 1:
            d.line(line, fill=c, width=2)
        else:
            cx, cy = line[0]
            d.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=c)
        d.text((W - RIGHT - 170, TOP + 6 + 14 * i), f"-- {name}", fill=c)
    if vline is not None:
        vx, _ = px(vline[1], y0)
        for yy in range(TOP, H - BOTTOM, 8):
            d.line((vx, yy, vx, min(yy + 4, H - BOTTOM)), fill=(0, 0, 0), width=1)
        d.text((vx + 4, TOP + 6 + 14 * len(pts)), f"{vline[0]} {vline[1]:.6g}", fill="black")
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return True
