"""Which images look unlike the training set, by the model's own judgement.

A model scores the images it was trained on lower than anything else (it learned to
reconstruct them). Good images that score far above every training image show the model
something training never did: another font, another lighting, a region of the part that the
training crops missed. A threshold calibrated on them is set by that novelty, and a line fed
with them rejects good parts. This module makes that visible before the line does.

Rule, per folder checked against `train` (both scored by the ONNX model as the runtime scores
them): with the training scores' median m and robust spread r = 1.4826 x MAD, an image is
*unlike training* when its score is above the highest training score and more than `Z_LIMIT`
spreads above m. The folder as a whole is *shifted* when its median is more than
`SHIFT_LIMIT` spreads above m (most of it unlike training: often the whole set comes from
another part of the product or another camera setup).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import score_files
from .errors import ExporterError
from .preprocess import list_images

Z_LIMIT = 3.0
SHIFT_LIMIT = 2.0
MIN_TRAIN = 10
# Training images scored at most: the spread of a few hundred is as good as that of thousands.
MAX_TRAIN = 400
SHEET_MAX = 24
THUMB = 112


@dataclass
class Finding:
    """One checked folder: its images unlike training (highest score first) and its shift."""

    folder: Path
    n_images: int
    median: float
    shift: float
    shifted: bool
    unlike: list[tuple[Path, float, float]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "n_images": self.n_images, "median": self.median,
                "shift": self.shift, "shifted": self.shifted,
                "unlike": [{"image": str(p), "score": s, "z": z} for p, s, z in self.unlike]}


@dataclass
class Reference:
    """The training images' scores, summarized."""

    train: Path
    n_images: int
    median: float
    spread: float
    max: float

    def z(self, score: float) -> float:
        return (score - self.median) / self.spread


def reference(model: Path, train: Path, threads: int = 2, steps: int | None = None) -> Reference:
    files = list_images(train)
    if len(files) < MIN_TRAIN:
        raise ExporterError(f"--train {train}: {len(files)} images; comparing against the "
                            f"training set needs at least {MIN_TRAIN} of its images")
    if len(files) > MAX_TRAIN:
        # evenly spaced, so a sorted folder's every region is represented
        files = [files[i] for i in np.linspace(0, len(files) - 1, MAX_TRAIN).astype(int)]
    scores, _ = score_files(model, files, threads, steps)
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med)))
    spread = 1.4826 * mad
    if not math.isfinite(spread) or spread <= 0:
        # identical scores (a constant folder, a broken model): nothing can be "far" from them
        raise ExporterError(f"--train {train}: the model scores its {len(files)} images all "
                            f"alike ({med:.6f}); check that these are the training images and "
                            "that the model is the one trained on them")
    return Reference(train, len(files), med, spread, float(scores.max()))


def check(model: Path, ref: Reference, folder: Path, threads: int = 2,
          steps: int | None = None) -> Finding:
    files = list_images(folder)
    if not files:
        raise ExporterError(f"no images in {folder}")
    scores, files = score_files(model, files, threads, steps)
    if not np.isfinite(scores).all():
        bad = [str(f) for f, s in zip(files, scores, strict=True) if not math.isfinite(s)]
        raise ExporterError(f"the model gave non-finite scores for {bad[:3]}")
    med = float(np.median(scores))
    shift = ref.z(med)
    unlike = sorted(((f, float(s), ref.z(float(s))) for f, s in zip(files, scores, strict=True)
                     if s > ref.max and ref.z(float(s)) > Z_LIMIT), key=lambda t: -t[1])
    return Finding(folder, len(files), med, shift, shift > SHIFT_LIMIT, unlike)


def format_findings(ref: Reference, findings: list[Finding]) -> str:
    lines = [f"training set {ref.train}: {ref.n_images} images scored, median {ref.median:.4f}, "
             f"spread {ref.spread:.4f}, highest {ref.max:.4f}"]
    for f in findings:
        head = (f"{f.folder}: {len(f.unlike)} of {f.n_images} images unlike training (score above "
                f"every training image and > {Z_LIMIT:g} spreads above its median); median "
                f"{f.median:.4f} = {f.shift:+.1f} spreads")
        lines.append(head)
        if f.shifted:
            lines.append(f"  WARNING: {f.folder} as a whole scores {f.shift:.1f} spreads above the "
                         "training set: it shows the model something training never did (another "
                         "region of the part, lighting, camera or product). A threshold set on "
                         "it, or a line fed with it, will not behave as on the training images: "
                         "train on images like these.")
        for p, s, z in f.unlike[:10]:
            lines.append(f"  {s:.4f}  {z:+6.1f}  {p}")
        if len(f.unlike) > 10:
            lines.append(f"  ... and {len(f.unlike) - 10} more (all in the JSON)")
    return "\n".join(lines)


def write_sheet(findings: list[Finding], dest: Path) -> int:
    """Thumbnails of the images unlike training, highest score first, each labelled with its
    file, score and distance; returns how many were drawn (0: nothing written)."""
    from PIL import Image, ImageDraw

    items = sorted(((p, s, z) for f in findings for p, s, z in f.unlike), key=lambda t: -t[1])
    items = items[:SHEET_MAX]
    if not items:
        return 0
    cols = min(6, len(items))
    rows = math.ceil(len(items) / cols)
    label_h, gap = 30, 8
    sheet = Image.new("RGB", (cols * (THUMB + gap) + gap, rows * (THUMB + label_h + gap) + gap),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for i, (p, s, z) in enumerate(items):
        x = gap + (i % cols) * (THUMB + gap)
        y = gap + (i // cols) * (THUMB + label_h + gap)
        with Image.open(p) as im:
            thumb = im.convert("RGB")
            # Fit the cell both ways: a 64-px image is enlarged (nearest, so pixels stay
            # pixels), a large one reduced.
            scale = THUMB / max(thumb.size)
            size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
            thumb = thumb.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
        sheet.paste(thumb, (x, y))
        draw.rectangle([x - 1, y - 1, x + THUMB, y + THUMB], outline=(200, 40, 40))
        draw.text((x, y + THUMB + 2), p.name[:18], fill=(60, 60, 60))
        draw.text((x, y + THUMB + 15), f"{s:.3f}  {z:+.1f}", fill=(200, 40, 40))
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)
    return len(items)
