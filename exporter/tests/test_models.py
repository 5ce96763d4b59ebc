from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from exporter.diffusion import alphas_cumprod
from exporter.seg import SegConfig, SegmentationSubNetwork
from exporter.unet import AttentionBlock, UNetModel, timestep_embedding

from .conftest import tiny_models, tiny_unet_cfg


@pytest.mark.parametrize("channels", [1, 3])
def test_unet_and_seg_shapes(channels: int) -> None:
    unet, seg = tiny_models(channels)
    x = torch.rand(2, channels, 32, 32)
    with torch.no_grad():
        e = unet(x, torch.tensor([3.0, 500.0]))
        m = seg(torch.cat([x, x], 1))
    assert e.shape == x.shape
    assert m.shape == (2, 1, 32, 32)
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


def test_fresh_unet_predicts_zero() -> None:
    # zero-initialised output conv, as in guided diffusion
    unet = UNetModel(tiny_unet_cfg()).eval()
    with torch.no_grad():
        assert float(unet(torch.rand(1, 1, 32, 32), torch.tensor([10.0])).abs().max()) == 0.0


def test_attention_matches_reference() -> None:
    torch.manual_seed(0)
    blk = AttentionBlock(16, n_heads=2, groups=8)
    torch.nn.init.normal_(blk.proj_out.weight, std=0.1)
    x = torch.randn(2, 16, 4, 4)
    got = blk(x)
    # direct per-head softmax(q^T k / sqrt(d)) v
    xf = x.reshape(2, 16, 16)
    qkv = blk.to_qkv(blk.norm(xf)).reshape(4, 24, 16)
    q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)
    a = (v @ w.transpose(1, 2)).reshape(2, 16, 16)
    ref = (xf + blk.proj_out(a)).reshape(x.shape)
    assert torch.allclose(got, ref, atol=1e-5)


def test_schedule_values_from_architecture() -> None:
    ab = alphas_cumprod()
    assert abs(ab[200] - 0.656347) < 1e-6
    assert abs(ab[400] - 0.193572) < 1e-6


def test_timestep_embedding_sin_cos() -> None:
    e = timestep_embedding(torch.tensor([0.0, 7.0]), 8)
    assert torch.allclose(e[0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]))
    assert abs(float(e[1, 0]) - np.sin(7.0)) < 1e-6


def test_seg_official_widths() -> None:
    seg = SegmentationSubNetwork(SegConfig(6, 64))
    n = sum(p.numel() for p in seg.parameters())
    assert abs(n / 1e6 - 28.4) < 0.2  # ARCHITECTURE §1: 28.4 M parameters
