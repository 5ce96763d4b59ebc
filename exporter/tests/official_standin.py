"""A stand-in for a checkout of the official DiffusionAD code, so CI needs no download.

`write_standin(dir)` writes models/Recon_subnetwork.py, models/Seg_subnetwork.py and
models/DDPM.py with the official module names, class names, constructor signatures and state
dict layout, and the official behaviour that matters to the export (defaults by img_size,
attention_resolutions as a string, noise drawn with randn_like at normal_t then noisier_t,
linear and cosine schedules). The code is written for this test, independently of exporter/.
"""

from __future__ import annotations

from pathlib import Path

RECON = '''
import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULTS = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
            64: (1, 2, 3, 4), 32: (1, 2, 3, 4)}


class GN(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class Sin(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        f = torch.exp(torch.arange(half) * -(math.log(10000) / half))
        a = t[:, None] * f[None, :]
        return torch.cat([a.sin(), a.cos()], -1)


def same(x):
    return x


def up2(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def down2(x):
    return F.avg_pool2d(x, 2)


class Res(nn.Module):
    def __init__(self, cin, emb, cout=None, resample=same):
        super().__init__()
        cout = cout or cin
        self.resample = resample
        self.in_layers = nn.Sequential(GN(32, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.embed_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(GN(32, cout), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self.resample(h))
        h = h + self.embed_layers(emb)[:, :, None, None]
        return self.skip_connection(self.resample(x)) + self.out_layers(h)


class Attn(nn.Module):
    def __init__(self, c, n_heads, n_head_channels):
        super().__init__()
        self.heads = n_heads if n_head_channels == -1 else c // n_head_channels
        self.norm = GN(32, c)
        self.to_qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)

    def forward(self, x, emb=None):
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, hh * ww)
        qkv = self.to_qkv(self.norm(flat)).reshape(b * self.heads, 3 * c // self.heads, -1)
        q, k, v = qkv.chunk(3, dim=1)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(q.shape[1]), dim=-1)
        out = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, -1)
        return (flat + self.proj_out(out)).reshape(b, c, hh, ww)


class Seq(nn.Sequential):
    def forward(self, x, emb):
        for m in self:
            x = m(x, emb) if isinstance(m, (Res, Attn)) else m(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, img_size, base_channels, conv_resample=True, n_heads=1,
                 n_head_channels=-1, channel_mults="", num_res_blocks=2, dropout=0,
                 attention_resolutions="32,16,8", biggan_updown=True, in_channels=1):
        super().__init__()
        mults = DEFAULTS[img_size] if channel_mults == "" else channel_mults
        att = [img_size // int(r) for r in attention_resolutions.split(",")]
        base, emb = base_channels, 4 * base_channels

        def attn(c):
            return Attn(c, n_heads, n_head_channels)

        self.time_embedding = nn.Sequential(Sin(base), nn.Linear(base, emb), nn.SiLU(),
                                            nn.Linear(emb, emb))
        ch = int(mults[0] * base)
        self.down = nn.ModuleList([Seq(nn.Conv2d(in_channels, base, 3, padding=1))])
        skips, ds = [ch], 1
        for i, m in enumerate(mults):
            for _ in range(num_res_blocks):
                layers = [Res(ch, emb, int(base * m))]
                ch = int(base * m)
                if ds in att:
                    layers.append(attn(ch))
                self.down.append(Seq(*layers))
                skips.append(ch)
            if i < len(mults) - 1:
                self.down.append(Seq(Res(ch, emb, ch, down2)))
                skips.append(ch)
                ds *= 2
        self.middle = Seq(Res(ch, emb), attn(ch), Res(ch, emb))
        self.up = nn.ModuleList()
        for i in reversed(range(len(mults))):
            for j in range(num_res_blocks + 1):
                layers = [Res(ch + skips.pop(), emb, int(base * mults[i]))]
                ch = int(base * mults[i])
                if ds in att:
                    layers.append(attn(ch))
                if i and j == num_res_blocks:
                    layers.append(Res(ch, emb, ch, up2))
                    ds //= 2
                self.up.append(Seq(*layers))
        self.out = nn.Sequential(GN(32, ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x, time):
        emb = self.time_embedding(time)
        hs, h = [], x
        for m in self.down:
            h = m(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], 1), emb)
        return self.out(h)
'''

SEG = '''
import torch
import torch.nn.functional as F
from torch import nn


def twice(ci, co):
    return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU(),
                         nn.Conv2d(co, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU())


def upconv(ci, co):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU())


class Encoder(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        widths = [cin, w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        for i in range(1, 7):
            setattr(self, f"block{i}", twice(widths[i - 1], widths[i]))

    def forward(self, x):
        out = []
        for i in range(1, 7):
            x = getattr(self, f"block{i}")(x if i == 1 else F.max_pool2d(x, 2))
            out.append(x)
        return out


class Decoder(nn.Module):
    def __init__(self, w, cout):
        super().__init__()
        self.up_b, self.db_b = upconv(8 * w, 8 * w), twice(16 * w, 8 * w)
        self.up1, self.db1 = upconv(8 * w, 4 * w), twice(12 * w, 4 * w)
        self.up2, self.db2 = upconv(4 * w, 2 * w), twice(6 * w, 2 * w)
        self.up3, self.db3 = upconv(2 * w, w), twice(3 * w, w)
        self.up4, self.db4 = upconv(w, w), twice(2 * w, w)
        self.fin_out = nn.Sequential(nn.Conv2d(w, cout, 3, padding=1), nn.Sigmoid())

    def forward(self, feats):
        h = feats[5]
        for (up, db), skip in zip([(self.up_b, self.db_b), (self.up1, self.db1),
                                   (self.up2, self.db2), (self.up3, self.db3),
                                   (self.up4, self.db4)], feats[4::-1]):
            h = db(torch.cat((up(h), skip), dim=1))
        return self.fin_out(h)


class SegmentationSubNetwork(nn.Module):
    def __init__(self, in_channels=3, out_channels=3, use_fp16=False, base_channels=64,
                 out_features=False):
        super().__init__()
        self.encoder_segment = Encoder(in_channels, base_channels)
        self.decoder_segment = Decoder(base_channels, out_channels)

    def forward(self, x):
        return self.decoder_segment(self.encoder_segment(x))
'''

DDPM = '''
import numpy as np
import torch


def get_beta_schedule(num_diffusion_steps, name="cosine"):
    n = num_diffusion_steps
    if name == "linear":
        return np.linspace(1000 / n * 1e-4, 1000 / n * 0.02, n, dtype=np.float64)
    if name == "cosine":
        def f(t):
            return np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    raise NotImplementedError(name)


class GaussianDiffusionModel:
    def __init__(self, img_size, betas, img_channels=1, loss_type="l2", loss_weight="none",
                 noise="gauss"):
        if noise == "gauss":
            self.noise_fn = lambda x, t: torch.randn_like(x)
        self.abar = np.cumprod(1 - betas)

    def _ab(self, t):
        return torch.from_numpy(self.abar)[t].float().view(-1, 1, 1, 1)

    def _noised(self, model, x0, t):
        a = self._ab(t)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * self.noise_fn(x0, t).float()
        return x_t, model(x_t, t)

    def norm_guided_one_step_denoising_eval(self, model, x_0, normal_t, noisier_t, args):
        xs, es = self._noised(model, x_0, normal_t)  # NOISE_ORDER
        xb, eb = self._noised(model, x_0, noisier_t)
        a_s, a_b = self._ab(normal_t), self._ab(noisier_t)
        x0_b = ((xb - (1 - a_b).sqrt() * eb) / a_b.sqrt()).clamp(-1, 1)
        xs_from_b = a_s.sqrt() * x0_b + (1 - a_s).sqrt() * es
        e_hat = es - (1 - a_s).sqrt() * args["condition_w"] * (xs_from_b - xs)
        x0_s = ((xs - (1 - a_s).sqrt() * es) / a_s.sqrt()).clamp(-1, 1)
        x0_hat = ((xs - (1 - a_s).sqrt() * e_hat) / a_s.sqrt()).clamp(-1, 1)
        return torch.zeros(()), x0_hat, x0_s, x0_b, xs, xb, xs_from_b
'''

# the same model, but drawing the noisier step's noise first: parity must fail on it
SWAPPED_ORDER = (
    "        xs, es = self._noised(model, x_0, normal_t)  # NOISE_ORDER\n"
    "        xb, eb = self._noised(model, x_0, noisier_t)\n",
    "        xb, eb = self._noised(model, x_0, noisier_t)\n"
    "        xs, es = self._noised(model, x_0, normal_t)\n",
)


def write_standin(root: Path, ddpm: str = DDPM, extra_import: str = "") -> Path:
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / "Recon_subnetwork.py").write_text(RECON)
    (models / "Seg_subnetwork.py").write_text(SEG)
    (models / "DDPM.py").write_text(extra_import + ddpm)
    return root
