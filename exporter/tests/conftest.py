from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import torch
except ImportError:  # ORT-only environment: only the committed-model checks run
    collect_ignore = [f.name for f in Path(__file__).parent.glob("test_*.py")
                      if f.name != "test_committed_models.py"]
    torch = None
else:
    from exporter.seg import SegConfig, SegmentationSubNetwork
    from exporter.unet import UNetConfig, UNetModel

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tile dataset as `make-tiles --seed 0` writes it (shared: tests only read it)."""
    from exporter.tiles import make_tiles

    out = tmp_path_factory.mktemp("tiles")
    make_tiles(out, seed=0)
    return out


def tiny_unet_cfg(channels: int = 1) -> UNetConfig:
    return UNetConfig(image_size=32, in_channels=channels, base_channels=16,
                      channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(16,),
                      n_heads=2, norm_groups=8)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace zero-initialised weights so the networks compute something non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and float(p.abs().sum()) == 0.0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def tiny_models(channels: int = 1, seed: int = 0) -> tuple[UNetModel, SegmentationSubNetwork]:
    torch.manual_seed(seed)
    unet = randomized(UNetModel(tiny_unet_cfg(channels)), seed)
    seg = randomized(SegmentationSubNetwork(SegConfig(2 * channels, 4)), seed + 1)
    return unet, seg


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0, mode: str = "L") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        a = rng.integers(60, 200, shape, dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{i:03d}.png")


def write_blot_validation(folder: Path, n: int) -> Path:
    """A validation dataset of n good and n defective 32-px images: the defect is a bright
    square that its mask marks."""
    write_images(folder / "test" / "good", n, seed=1)
    write_images(folder / "test" / "blot", n, seed=2)
    (folder / "ground_truth" / "blot").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = folder / "test" / "blot" / f"{i:03d}.png"
        a = np.asarray(Image.open(p)).copy()
        a[8:16, 8:16] = 250
        Image.fromarray(a).save(p)
        m = np.zeros((32, 32), np.uint8)
        m[8:16, 8:16] = 255
        Image.fromarray(m).save(folder / "ground_truth" / "blot" / f"{i:03d}_mask.png")
    return folder


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported model (fp32, batch 1) shared by several tests."""
    from exporter.diffusion import DiffusionConfig
    from exporter.export import ExportOptions, export_model

    unet, seg = tiny_models()
    out = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_model(unet, seg, {"checkpoint_sha256": "x"}, out,
                 ExportOptions(name="tiny", diff=DiffusionConfig(top_k=10)))
    return out
