"""Pixels -> tensor, the ARCHITECTURE §5 convention, in numpy.

grey = Pillow `convert("L")` (ITU-R 601 luma); resize (only if the size differs) is
bilinear with half-pixel centres, no antialiasing, edge replicate (cv2 INTER_LINEAR
semantics, computed in float: the resized values are NOT rounded back to 8 bit);
value = lo + (hi - lo) * p / 255.

The official DiffusionAD loader resizes with cv2 on uint8, so its resized pixels ARE rounded to
8 bit: up to 0.5 / 255 apart from ours per pixel (plus cv2's 11-bit fixed-point weights). The
runtime (runtime/src/stages/preprocess.rs) keeps the float convention, so the exporter does too;
`resize_uint8` reproduces the official rounding where it is wanted (`verify --official-code
--images` reports its effect on a model's map and score).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ExporterError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def load_pixels(path: Path, channels: int) -> np.ndarray:
    """uint8 array [H, W, C] with C = channels (1: Pillow luma, 3: RGB)."""
    try:
        with Image.open(path) as im:
            im.load()
            if channels == 1:
                arr = np.asarray(im.convert("L"))[:, :, None]
            elif channels == 3:
                arr = np.asarray(im.convert("RGB"))
            else:
                raise ExporterError(f"unsupported channel count {channels} (1 or 3)")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ExporterError(f"cannot read image {path}: {e}") from None
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ExporterError(f"image too small: {path} ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] -> float64 [height, width, C], half-pixel centres, no antialias."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.astype(np.float64)
    y0, y1, fy = _axis_weights(h, height)
    x0, x1, fx = _axis_weights(w, width)
    a = img.astype(np.float64)
    top = a[y0][:, x0] * (1 - fx)[None, :, None] + a[y0][:, x1] * fx[None, :, None]
    bot = a[y1][:, x0] * (1 - fx)[None, :, None] + a[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def resize_uint8(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """The official loader's resize: cv2.resize(INTER_LINEAR) on uint8, i.e. the bilinear
    result rounded to 8 bit. cv2 itself when installed; otherwise our bilinear rounded to
    nearest (within one grey level of cv2, whose weights are 11-bit fixed point)."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    try:
        import cv2  # optional: the official loader uses it
    except ImportError:
        return np.clip(np.floor(resize_bilinear(img, height, width) + 0.5), 0, 255).astype(
            np.uint8)
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(height, width, img.shape[2])


def to_tensor(
    pixels: np.ndarray, height: int, width: int, value_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [C, height, width] in value_range."""
    lo, hi = value_range
    p = resize_bilinear(pixels, height, width)
    return (lo + (hi - lo) * p / 255.0).astype(np.float32).transpose(2, 0, 1).copy()


class _Upscale:
    """The command line's `--allow-upscale` (one rule for every command, as in `diffad`)."""

    allowed = False
    warned: set[tuple[int, int, int, int]] = set()


def allow_upscale(allowed: bool) -> None:
    """Enlarge images smaller than the model's input (one warning per size) instead of
    refusing them."""
    _Upscale.allowed = allowed
    _Upscale.warned.clear()


def check_size(path: Path, w: int, h: int, width: int, height: int) -> None:
    """Refuse an image smaller than the model's input `width` x `height` on either side, unless
    `allow_upscale(True)`: upscaling invents the detail the model judges, and a model trained or
    calibrated on enlarged images is not the model the line runs on full-size frames."""
    if w >= width and h >= height:
        return
    if not _Upscale.allowed:
        raise ExporterError(
            f"{path}: {w}x{h} is smaller than the model's input {width}x{height}; upscaling "
            f"invents the detail the model judges. Use images of at least {width}x{height} "
            "(crop larger, or train with a smaller --image-size), or pass --allow-upscale"
        )
    if (w, h, width, height) not in _Upscale.warned:
        _Upscale.warned.add((w, h, width, height))
        print(f"warning: {path}: {w}x{h} upscaled to the model's {width}x{height} "
              "(--allow-upscale); more images of this size follow without a warning",
              file=sys.stderr)


def preprocess_file(
    path: Path, channels: int, height: int, width: int,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """The model's input from an image file: loaded, checked against the input size, resized."""
    pixels = load_pixels(path, channels)
    check_size(path, pixels.shape[1], pixels.shape[0], width, height)
    return to_tensor(pixels, height, width, value_range)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ExporterError(f"not a directory: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
