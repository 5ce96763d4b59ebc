"""Edge architecture: the DiffusionAD UNet and segmentation head, shaped for ONNX Runtime CPU
and TensorRT (ARCHITECTURE §7).

Same contract as the official-compatible networks in unet.py / seg.py (`embed`, `forward_emb`,
`forward`; seg maps [B, C_in, H, W] -> [B, 1, H, W] in [0, 1]), so OneStepDetector, training and
export use either. What differs, and why:
- space-to-depth stem and depth-to-space head: no convolution runs at full resolution, where the
  official-style UNet spent most of its work;
- no GroupNorm in the UNet: residual branches start at zero (SkipInit), so training is stable
  without a norm and no Reshape/InstanceNormalization/layout-reorder chain is left in the graph;
- the seg head uses conv-BN-ReLU, and every BN is folded into its convolution at export;
- ReLU, which ONNX Runtime and TensorRT fuse into the convolution (SiLU they do not);
- widths multiples of 16 (AVX-512 NCHWc blocks, TensorRT fp16 tensor-core tiles);
- additive skips with a 1x1 conv + depth-to-space upsampler, not concatenation: half the input
  channels of every decoder convolution;
- attention only at the bottom (8x8 for a 128 input), where 64 tokens cost little; optional.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .unet import timestep_embedding

ARCH = "edge"


def _tuple(v) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


@dataclass
class EdgeUNetConfig:
    """Edge eps-UNet: levels at image/stem/2^i with `widths[i]` channels."""

    image_size: int = 128
    in_channels: int = 1
    stem: int = 2
    widths: tuple[int, ...] = (32, 64, 128, 128)
    enc_blocks: tuple[int, ...] = (0, 1, 1, 1)
    dec_blocks: tuple[int, ...] = (1, 1, 1)
    attention: bool = True
    emb_channels: int = 64
    arch: str = field(default=ARCH)

    def __post_init__(self) -> None:
        self.widths = _tuple(self.widths)
        self.enc_blocks = _tuple(self.enc_blocks)
        self.dec_blocks = _tuple(self.dec_blocks)
        n = len(self.widths)
        if len(self.enc_blocks) != n or len(self.dec_blocks) != n - 1:
            raise ValueError(f"edge UNet: {n} widths need {n} enc_blocks and {n - 1} dec_blocks, "
                             f"got {len(self.enc_blocks)} and {len(self.dec_blocks)}")
        if self.stem not in (2, 4):
            raise ValueError(f"edge UNet: stem must be 2 or 4, got {self.stem}")
        if self.image_size % (self.stem * 2 ** (n - 1)):
            raise ValueError(f"edge UNet: image size {self.image_size} must be a multiple of "
                             f"stem x 2^(levels-1) = {self.stem * 2 ** (n - 1)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("widths", "enc_blocks", "dec_blocks"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EdgeUNetConfig:
        return cls(**d)


@dataclass
class EdgeSegConfig:
    """Edge seg head. `in_channels` counts the image channels C; it sees x0, x0_hat and
    |x0 - x0_hat| when `diff_input` (3C channels), else x0 and x0_hat (2C).

    `dilations` (empty: none, the original head) adds a context stack at encoder level
    `context_level` (resolution image/(stem*2^level)): one residual conv-BN-ReLU per entry, a 3x3
    convolution with that dilation, so the head's receptive field grows by
    2 * sum(dilations) * stem * 2^level pixels without another downsampling step. Configs saved
    before these fields existed load as the original head."""

    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64, 64)
    stem: int = 2
    diff_input: bool = True
    dilations: tuple[int, ...] = ()
    context_level: int = 1
    arch: str = field(default=ARCH)

    def __post_init__(self) -> None:
        self.widths = _tuple(self.widths)
        self.dilations = _tuple(self.dilations)
        if any(d < 1 for d in self.dilations):
            raise ValueError(f"edge seg: dilations must be >= 1, got {list(self.dilations)}")
        if self.dilations and not 0 <= self.context_level < len(self.widths):
            raise ValueError(f"edge seg: context_level must be in 0..{len(self.widths) - 1}, "
                             f"got {self.context_level}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(d["widths"])
        d["dilations"] = list(d["dilations"])
        return d

    def context_gain(self) -> int:
        """Pixels (at input resolution) the context stack adds to the receptive field."""
        return 2 * sum(self.dilations) * self.stem * 2 ** self.context_level

    @classmethod
    def from_dict(cls, d: dict) -> EdgeSegConfig:
        return cls(**d)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class ResBlock(nn.Module):
    """x + conv(relu(conv(x + emb))); the second conv starts at zero (SkipInit)."""

    def __init__(self, ch: int, emb_dim: int) -> None:
        super().__init__()
        self.emb = nn.Linear(emb_dim, ch)
        self.conv1 = _conv(ch, ch)
        self.conv2 = _conv(ch, ch)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.baked: torch.Tensor | None
        self.register_buffer("baked", None, persistent=False)  # follows .half() / .to()

    def bias(self, emb: torch.Tensor) -> torch.Tensor:
        if self.baked is not None:
            return self.baked
        return self.emb(emb)[:, :, None, None]

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x + self.bias(emb)))
        return x + self.conv2(h)


class Attention(nn.Module):
    """Single-head self-attention over positions, no norm; output projection starts at zero."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, c, h * w).unbind(1)
        att = torch.softmax(torch.matmul(q.transpose(1, 2), k) / math.sqrt(c), dim=-1)
        a = torch.matmul(v, att.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj(a)


class Upsample(nn.Module):
    """1x1 conv at the coarse resolution, then nearest x2: the cheapest learned upsampler, and
    both ops stay in ONNX Runtime's blocked (NCHWc) layout, where depth-to-space does not."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")


def _stem(cin: int, cout: int, s: int) -> nn.Conv2d:
    """Strided stem: a (2s)x(2s) kernel at stride s sees the same pixels as space-to-depth by s
    followed by a 3x3-ish conv, with no reshape/transpose in the graph."""
    return nn.Conv2d(cin, cout, 2 * s, stride=s, padding=s // 2)


class EdgeUNet(nn.Module):
    """eps-prediction UNet for the edge graph; `forward(x, t)` in training."""

    def __init__(self, cfg: EdgeUNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, e = cfg.widths, cfg.emb_channels
        s2 = cfg.stem * cfg.stem
        self.time_embedding = nn.Sequential(nn.Linear(w[0], e), nn.ReLU(), nn.Linear(e, e))
        self.stem = _stem(cfg.in_channels, w[0], cfg.stem)
        self.down = nn.ModuleList(_conv(w[i], w[i + 1], stride=2) for i in range(len(w) - 1))
        self.enc = nn.ModuleList(
            nn.ModuleList(ResBlock(w[i], e) for _ in range(n)) for i, n in enumerate(cfg.enc_blocks)
        )
        self.attn = Attention(w[-1]) if cfg.attention else None
        self.up = nn.ModuleList(Upsample(w[i + 1], w[i]) for i in range(len(w) - 1))
        self.dec = nn.ModuleList(
            nn.ModuleList(ResBlock(w[i], e) for _ in range(n)) for i, n in enumerate(cfg.dec_blocks)
        )
        self.out = _conv(w[0], cfg.in_channels * s2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embedding(timestep_embedding(t, self.cfg.widths[0]))

    def encode(self, x: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's output at every level, finest first (the decoder's skips, then the
        bottom)."""
        h = F.relu(self.stem(x))
        levels = []
        for i, blocks in enumerate(self.enc):
            if i:
                h = F.relu(self.down[i - 1](h))
            for b in blocks:
                h = b(h, emb)
            levels.append(h)
        return levels

    def forward_emb(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if emb.dtype != x.dtype:
            emb = emb.to(x.dtype)
        *skips, h = self.encode(x, emb)
        last = len(self.cfg.widths) - 1
        if self.attn is not None:
            h = self.attn(h)
        for i in reversed(range(last)):
            h = self.up[i](h) + skips.pop()
            for b in self.dec[i]:
                h = b(h, emb)
        return F.pixel_shuffle(self.out(F.relu(h)), self.cfg.stem)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward_emb(x, self.embed(t))

    @torch.no_grad()
    def bake(self, emb: torch.Tensor) -> None:
        """Fixes every block's timestep bias for these embedding rows (export: the graph then
        adds a constant instead of running Linear -> Unsqueeze chains on constants)."""
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.baked = None
                m.baked = m.bias(emb.to(m.emb.weight.dtype)).detach().clone()


class ConvBNReLU(nn.Module):
    """conv -> BN -> ReLU; `fold()` moves the BN into the conv for export."""

    def __init__(self, cin: int, cout: int, stride: int = 1, conv: nn.Conv2d | None = None):
        super().__init__()
        self.conv = conv if conv is not None else _conv(cin, cout, stride=stride)
        self.bn: nn.Module = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def fold(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            from torch.nn.utils.fusion import fuse_conv_bn_eval

            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()


class DilatedContext(nn.Module):
    """h + relu(bn(conv3x3_dilated(h))) per dilation: more context at one resolution, same shape.
    Each BN folds into its (dilated) convolution at export like any other ConvBNReLU."""

    def __init__(self, ch: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvBNReLU(ch, ch, conv=nn.Conv2d(ch, ch, 3, padding=d, dilation=d))
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b(x)
        return x


class EdgeSeg(nn.Module):
    """Small UNet on (x0, x0_hat[, |x0 - x0_hat|]) at stem resolution; sigmoid map at full size;
    optionally a dilated context stack at one encoder level (`EdgeSegConfig.dilations`)."""

    def __init__(self, cfg: EdgeSegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        cin = cfg.in_channels * (3 if cfg.diff_input else 2)
        self.stem = ConvBNReLU(cin, w[0], conv=_stem(cin, w[0], cfg.stem))
        self.enc = nn.ModuleList(
            [ConvBNReLU(w[0], w[0])]
            + [nn.Sequential(ConvBNReLU(w[i - 1], w[i], 2), ConvBNReLU(w[i], w[i]))
               for i in range(1, len(w))]
        )
        self.up = nn.ModuleList(Upsample(w[i + 1], w[i]) for i in range(len(w) - 1))
        self.dec = nn.ModuleList(ConvBNReLU(w[i], w[i]) for i in range(len(w) - 1))
        self.out = _conv(w[0], cfg.stem * cfg.stem)
        # only built when asked for: the original head keeps its exact state-dict keys
        self.context = (DilatedContext(w[cfg.context_level], cfg.dilations)
                        if cfg.dilations else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.diff_input:
            c = self.cfg.in_channels
            x = torch.cat([x, (x[:, :c] - x[:, c:]).abs()], 1)
        h = self.stem(x)
        skips = []
        for i, m in enumerate(self.enc):
            h = m(h)
            if self.context is not None and i == self.cfg.context_level:
                h = self.context(h)
            skips.append(h)
        skips.pop()
        for i in reversed(range(len(self.up))):
            h = self.dec[i](self.up[i](h) + skips.pop())
        return torch.sigmoid(F.pixel_shuffle(self.out(h), self.cfg.stem))


def fold_batchnorms(model: nn.Module) -> int:
    """Folds every ConvBNReLU's BN into its conv (eval mode); returns how many were folded."""
    n = 0
    for m in model.modules():
        if isinstance(m, ConvBNReLU) and isinstance(m.bn, nn.BatchNorm2d):
            m.fold()
            n += 1
    return n
