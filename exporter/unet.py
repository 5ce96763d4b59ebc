"""Guided-diffusion style eps UNet.

Module and parameter names follow the official DiffusionAD `UNetModel`
(time_embedding / down / middle / up / out, ResBlock in_layers / embed_layers /
out_layers / skip_connection, AttentionBlock norm / to_qkv / proj_out) so that an
official state dict loads by name. The implementation is our own; attention is
written with matmul (no einsum) and norms / softmax run in fp32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    image_size: int = 128
    in_channels: int = 1
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16, 8)
    n_heads: int = 1
    n_head_channels: int = -1
    norm_groups: int = 8
    dropout: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        d["channel_mults"] = tuple(d["channel_mults"])
        d["attention_resolutions"] = tuple(d["attention_resolutions"])
        return cls(**d)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the parameter dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


def _norm(groups: int, ch: int) -> GroupNorm32:
    g = math.gcd(groups, ch)
    return GroupNorm32(g, ch)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of float timesteps: [sin(t f), cos(t f)], f = 10000^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / half))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class PositionalEmbedding(nn.Module):
    """Parameter-free slot 0 of `time_embedding` (keeps official indices 1 and 3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


class ResBlock(nn.Module):
    def __init__(
        self,
        in_ch: int,
        emb_dim: int,
        out_ch: int | None = None,
        groups: int = 32,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            _norm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.embed_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            _norm(groups, out_ch),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection: nn.Module = (
            nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        h = h + self.embed_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions; qkv laid out per head as [q, k, v]."""

    def __init__(self, ch: int, n_heads: int = 1, n_head_channels: int = -1, groups: int = 32):
        super().__init__()
        self.num_heads = n_heads if n_head_channels == -1 else ch // n_head_channels
        if ch % self.num_heads:
            raise ValueError(f"attention channels {ch} not divisible by {self.num_heads} heads")
        self.norm = _norm(groups, ch)
        self.to_qkv = nn.Conv1d(ch, ch * 3, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        n = hh * ww
        xf = x.reshape(b, c, n)
        qkv = self.to_qkv(self.norm(xf))
        ch = c // self.num_heads
        qkv = qkv.reshape(b * self.num_heads, 3 * ch, n)
        q, k, v = qkv[:, :ch], qkv[:, ch : 2 * ch], qkv[:, 2 * ch :]
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        w = torch.matmul((q * scale).transpose(1, 2), k * scale)  # [B*h, n, n]
        w = torch.softmax(w.float(), dim=-1).to(v.dtype)
        a = torch.matmul(v, w.transpose(1, 2))  # [B*h, ch, n]
        h = self.proj_out(a.reshape(b, c, n))
        return (xf + h).reshape(b, c, hh, ww)


class TimestepSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, (ResBlock, AttentionBlock)):
                x = layer(x, emb)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """eps-prediction UNet. `forward(x, t)` for training; `forward_emb(x, emb)` at export."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base, g = cfg.base_channels, cfg.norm_groups
        emb_dim = base * 4
        attn_ds = {cfg.image_size // r for r in cfg.attention_resolutions}

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, cfg.n_heads, cfg.n_head_channels, g)

        self.time_embedding = nn.Sequential(
            PositionalEmbedding(base), nn.Linear(base, emb_dim), nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        ch = int(cfg.channel_mults[0] * base)
        self.down = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(cfg.in_channels, base, 3, padding=1))]
        )
        skip_chs = [ch]
        ds = 1
        for i, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, base * mult, g, cfg.dropout)]
                ch = base * mult
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.down.append(TimestepSequential(*layers))
                skip_chs.append(ch)
            if i != len(cfg.channel_mults) - 1:
                self.down.append(
                    TimestepSequential(ResBlock(ch, emb_dim, ch, g, cfg.dropout, down=True))
                )
                ds *= 2
                skip_chs.append(ch)
        self.middle = TimestepSequential(
            ResBlock(ch, emb_dim, ch, g, cfg.dropout), attn(ch),
            ResBlock(ch, emb_dim, ch, g, cfg.dropout),
        )
        self.up = nn.ModuleList([])
        for i, mult in reversed(list(enumerate(cfg.channel_mults))):
            for j in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chs.pop(), emb_dim, base * mult, g, cfg.dropout)]
                ch = base * mult
                if ds in attn_ds:
                    layers.append(attn(ch))
                if i and j == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, ch, g, cfg.dropout, up=True))
                    ds //= 2
                self.up.append(TimestepSequential(*layers))
        self.out = nn.Sequential(
            _norm(g, ch), nn.SiLU(),
            nn.Conv2d(base * cfg.channel_mults[0], cfg.in_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embedding(t)

    def forward_emb(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        emb = emb.to(x.dtype)
        skips = []
        h = x
        for m in self.down:
            h = m(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for m in self.up:
            h = m(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward_emb(x, self.embed(t))
