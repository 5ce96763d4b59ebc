from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from exporter.preprocess import load_pixels, preprocess_file, resize_bilinear, to_tensor


def test_luma_is_pillow_convert_L(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    p = tmp_path / "c.png"
    Image.fromarray(rgb).save(p)
    got = load_pixels(p, 1)[:, :, 0]
    assert np.array_equal(got, np.asarray(Image.fromarray(rgb).convert("L")))
    # ITU-R 601: L = R*299/1000 + G*587/1000 + B*114/1000 (Pillow rounds)
    rgb = rgb.astype(np.int64)
    ref = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
    assert np.abs(got.astype(int) - ref).max() <= 1


def test_range_scaling_and_identity_size() -> None:
    px = np.array([[0, 255], [51, 102]], np.uint8)[:, :, None]
    t = to_tensor(px, 2, 2, (-1.0, 1.0))
    assert t.shape == (1, 2, 2) and t.dtype == np.float32
    assert np.allclose(t[0], [[-1.0, 1.0], [-0.6, -0.2]], atol=1e-6)


def test_bilinear_half_pixel_no_antialias() -> None:
    a = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10
    # downscale by 2: half-pixel centres land exactly between pixels -> 2x2 mean
    d = resize_bilinear(a, 2, 2)[:, :, 0]
    assert np.allclose(d, [[25, 45], [105, 125]])
    # upscale 2 -> 4: cv2 INTER_LINEAR values (edge replicate)
    b = np.array([[0, 100]], np.uint8).reshape(1, 2, 1)
    u = resize_bilinear(b, 1, 4)[0, :, 0]
    assert np.allclose(u, [0, 25, 75, 100])
    # downscale by 4 without antialias samples between pixels 1,2 (not the 4x4 mean)
    row = np.array([0, 0, 100, 100, 0, 0, 0, 0], np.uint8).reshape(1, 8, 1)
    assert np.allclose(resize_bilinear(row, 1, 2)[0, :, 0], [50, 0])


def test_preprocess_file_resizes(tmp_path: Path) -> None:
    p = tmp_path / "g.png"
    Image.fromarray(np.full((40, 60), 200, np.uint8)).save(p)
    t = preprocess_file(p, 3, 32, 32)
    assert t.shape == (3, 32, 32) and np.allclose(t, 200 / 255)


def test_a_smaller_image_is_refused_naming_it_and_larger_ones_resize(tmp_path: Path) -> None:
    import pytest

    from exporter.errors import ExporterError
    from exporter.preprocess import allow_upscale

    p = tmp_path / "wide.png"
    Image.fromarray(np.zeros((20, 64), np.uint8)).save(p)
    # 64 wide is enough, 20 high is not: either side too small is refused.
    with pytest.raises(ExporterError, match=r"wide.png: 64x20 is smaller than the model's input"):
        preprocess_file(p, 1, 32, 32)
    assert preprocess_file(p, 1, 16, 16).shape == (1, 16, 16)
    allow_upscale(True)
    try:
        assert preprocess_file(p, 1, 32, 32).shape == (1, 32, 32)
    finally:
        allow_upscale(False)
