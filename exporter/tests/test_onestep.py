from __future__ import annotations

import torch

from exporter.diffusion import DiffusionConfig, OneStepDetector, alphas_cumprod, guided_x0

from .conftest import tiny_models


def test_one_step_matches_direct_computation() -> None:
    unet, seg = tiny_models()
    d = DiffusionConfig(top_k=10, noise_seed=3)
    det = OneStepDetector(unet, seg, d).eval()
    x0 = torch.rand(1, 1, 32, 32)
    ab = alphas_cumprod()
    a_s, a_b = float(ab[200]), float(ab[400])
    g = torch.Generator().manual_seed(3)
    n1 = torch.randn(1, 1, 32, 32, generator=g)
    n2 = torch.randn(1, 1, 32, 32, generator=g)
    with torch.no_grad():
        x_s = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * n1
        x_b = a_b**0.5 * x0 + (1 - a_b) ** 0.5 * n2
        e_s = unet(x_s, torch.tensor([200.0]))
        e_b = unet(x_b, torch.tensor([400.0]))
        x0_b = ((x_b - (1 - a_b) ** 0.5 * e_b) / a_b**0.5).clamp(-1, 1)
        xs_from_b = a_s**0.5 * x0_b + (1 - a_s) ** 0.5 * e_s
        e_hat = e_s - 1.0 * (1 - a_s) ** 0.5 * (xs_from_b - x_s)
        x0_hat = ((x_s - (1 - a_s) ** 0.5 * e_hat) / a_s**0.5).clamp(-1, 1)
        ref_map = seg(torch.cat([x0, x0_hat], 1))
        ref_score = ref_map.flatten().topk(10).values.mean()
        got_rec = det.reconstruct(x0)
        amap, score = det(x0)
    assert torch.allclose(got_rec, x0_hat, atol=1e-5)
    assert torch.allclose(amap, ref_map, atol=1e-5)
    assert abs(float(score[0]) - float(ref_score)) < 1e-5


def test_blend_identity() -> None:
    torch.manual_seed(0)
    ab = alphas_cumprod()
    for w in (0.0, 0.5, 1.0, 2.0):
        a_s, a_b = float(ab[200]), float(ab[400])
        x_s, x_b = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
        e_s, e_b = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
        got = guided_x0(x_s, x_b, e_s, e_b, a_s, a_b, w)
        x0_s = (x_s - (1 - a_s) ** 0.5 * e_s) / a_s**0.5  # unclipped
        x0_b = ((x_b - (1 - a_b) ** 0.5 * e_b) / a_b**0.5).clamp(-1, 1)
        lam = w * (1 - a_s)
        blend = ((1 - lam) * x0_s + lam * x0_b).clamp(-1, 1)
        assert torch.allclose(got, blend, atol=1e-5), w


def test_fixed_noise_is_deterministic() -> None:
    unet, seg = tiny_models()
    a = OneStepDetector(unet, seg, DiffusionConfig(noise_seed=5))
    b = OneStepDetector(unet, seg, DiffusionConfig(noise_seed=5))
    c = OneStepDetector(unet, seg, DiffusionConfig(noise_seed=6))
    assert torch.equal(a.n1, b.n1) and torch.equal(a.n2, b.n2)
    assert not torch.equal(a.n1, c.n1)
    assert not torch.equal(a.n1, a.n2)
