"""What an official checkpoint's tensor shapes say about its networks, against the args.

A list of missing and unexpected keys does not say why a checkpoint fails to load. The shapes
do: `down.0.0.weight` gives the input channels and base width, the `up.*` blocks the levels,
their widths and ResBlocks per level, and the `to_qkv` weights where attention sits. Comparing
that with what the args imply names the setting that is wrong (img_size, channels,
base_channels, channel_mults, attention_resolutions, num_res_blocks). The number of heads
leaves no trace in the shapes: a head count that cannot split a block is caught here, and one
that disagrees with the args saved in the checkpoint by official_args.resolve_official.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ExporterError
from .official_args import (
    OFFICIAL_ATTENTION,
    OFFICIAL_DEFAULT_MULTS,
    OFFICIAL_RES_BLOCKS,
    OFFICIAL_SEG_IN,
    OFFICIAL_SEG_WIDTH,
    OfficialSettings,
)
from .seg import SegConfig
from .unet import UNetConfig

CANDIDATE_SIZES = (32, 64, 128, 256, 512, 1024)


def _num(x: float) -> float:
    return int(x) if float(x).is_integer() else x


def _csv(xs) -> str:
    return ",".join(str(_num(x)) for x in xs)


@dataclass(frozen=True)
class UNetLayout:
    in_channels: int
    base_channels: int
    level_channels: tuple[int, ...]  # width of each level, full size first
    num_res_blocks: int
    attention_levels: frozenset[int]  # levels (0: full size) whose blocks have attention

    @property
    def mults(self) -> tuple[float, ...]:
        return tuple(_num(c / self.base_channels) for c in self.level_channels)

    def attention_px(self, image_size: int) -> list[int]:
        return sorted((image_size >> lv for lv in self.attention_levels), reverse=True)


def attention_levels(size: int, resolutions: tuple[int, ...], n_levels: int) -> frozenset[int]:
    """Levels with attention as the official UNetModel picks them: ds = img_size // res."""
    ds = {size // r for r in resolutions if r > 0}
    return frozenset(lv for lv in range(n_levels) if 2**lv in ds)


def expected_layout(cfg: UNetConfig) -> UNetLayout:
    n = len(cfg.channel_mults)
    return UNetLayout(cfg.in_channels, cfg.base_channels,
                      tuple(int(cfg.base_channels * m) for m in cfg.channel_mults),
                      cfg.num_res_blocks,
                      attention_levels(cfg.image_size, tuple(cfg.attention_resolutions), n))


def read_unet_layout(state: dict[str, torch.Tensor]) -> UNetLayout | None:
    """The layout of an official-format UNet state dict; None if it is not one."""
    first = state.get("down.0.0.weight")
    if first is None or first.dim() != 4:
        return None
    ups = sorted({int(k.split(".")[1]) for k in state
                  if k.startswith("up.") and k.split(".")[1].isdigit()})
    if not ups or ups != list(range(len(ups))):
        return None

    def resblock(prefix: str) -> bool:
        return f"{prefix}.in_layers.2.weight" in state

    # each level's last up block ends in an upsampling ResBlock, except the full-size level's
    upsampling = [i for i in ups if resblock(f"up.{i}.1") or resblock(f"up.{i}.2")]
    nrb = upsampling[0] if upsampling else len(ups) - 1
    if len(ups) % (nrb + 1):
        return None
    n = len(ups) // (nrb + 1)
    widths, att = [], set()
    for lv in range(n):
        pos = (n - 1 - lv) * (nrb + 1)
        w = state.get(f"up.{pos}.0.in_layers.2.weight")
        if w is None:
            return None
        widths.append(int(w.shape[0]))
        if f"up.{pos}.1.to_qkv.weight" in state:
            att.add(lv)
    return UNetLayout(int(first.shape[1]), int(first.shape[0]), tuple(widths), nrb,
                      frozenset(att))


def _fits(ck: UNetLayout, s: OfficialSettings, size: int) -> bool:
    mults = OFFICIAL_DEFAULT_MULTS.get(size) if s.mults_default else s.unet.channel_mults
    if mults is None or tuple(_num(m) for m in mults) != ck.mults:
        return False
    return attention_levels(size, tuple(s.unet.attention_resolutions),
                            len(mults)) == ck.attention_levels


def _args_attention_fits(ck: UNetLayout, s: OfficialSettings) -> bool:
    """Would the args' own attention_resolutions (which the official code ignores) explain the
    checkpoint? Then its code honoured them, rather than its img_size being wrong."""
    v = s.args.get("attention_resolutions")
    try:
        res = tuple(int(r) for r in str(v).split(",") if r.strip())
    except ValueError:
        return False
    return bool(res) and attention_levels(s.unet.image_size, res,
                                          len(ck.level_channels)) == ck.attention_levels


def _img_size_problem(ck: UNetLayout, s: OfficialSettings, sizes: list[int]) -> str:
    cfg, exp = s.unet, expected_layout(s.unet)
    fit = " or ".join(str(z) for z in sizes)
    own = (s.checkpoint_args or {}).get("img_size")
    hint = (f"; the args saved in the checkpoint say {own}: export without --official-args to "
            "use them" if s.source != "checkpoint" and own and own != s.args.get("img_size")
            else "")
    return (f"img_size: the args ({s.source}) say {cfg.image_size}, which builds channel_mults "
            f"{_csv(exp.mults)} with attention at {_csv(exp.attention_px(cfg.image_size))} px; "
            f"the checkpoint has channel_mults {_csv(ck.mults)} with attention at "
            f"{_csv(ck.attention_px(sizes[0]))} px, which is what img_size {fit} builds{hint}; "
            f"give the args it was trained with, or --official-set img_size=[{sizes[0]},"
            f"{sizes[0]}]")


def _fixed_problem(s: OfficialSettings, key: str, have: str, want: str) -> str:
    flag = "--" + key.replace("_", "-")
    if key in s.flagged:
        return f"{key}: {flag} gives {want}, the checkpoint has {have}; pass {flag} {have}"
    fixed = {"attention_resolutions": _csv(OFFICIAL_ATTENTION),
             "num_res_blocks": str(OFFICIAL_RES_BLOCKS)}[key]
    said = f", so the args' {s.args[key]!r} is ignored" if key in s.args else ""
    return (f"{key}: the checkpoint has {have}, the official code always builds {fixed} "
            f"(train.py and eval.py never pass {key}{said}); if the code this checkpoint came "
            f"from honoured {key}, export with {flag} {have}")


def diagnose_unet(ck: UNetLayout, s: OfficialSettings) -> list[str]:
    """Each setting whose value in the args contradicts the checkpoint, with what to do."""
    cfg, exp = s.unet, expected_layout(s.unet)
    out = []
    if ck.in_channels != exp.in_channels:
        out.append(f"channels: the args say {exp.in_channels}, the checkpoint's UNet takes "
                   f"{ck.in_channels} (down.0.0.weight); set \"channels\": {ck.in_channels}")
    if ck.base_channels != exp.base_channels:
        out.append(f"base_channels: the args say {exp.base_channels}, the checkpoint has "
                   f"{ck.base_channels} (down.0.0.weight); set \"base_channels\": "
                   f"{ck.base_channels}")
    mults_ok = ck.mults == exp.mults
    att_ok = ck.attention_levels == exp.attention_levels
    if not (mults_ok and att_ok):
        sizes = [z for z in CANDIDATE_SIZES if _fits(ck, s, z)]
        other_size = bool(sizes) and cfg.image_size not in sizes
        if other_size and not (mults_ok and _args_attention_fits(ck, s)):
            out.append(_img_size_problem(ck, s, sizes))
        elif not mults_ok:
            why = (f"empty in the args, so the official default for img_size "
                   f"{cfg.image_size}, {_csv(exp.mults)}" if s.mults_default
                   else f"{_csv(exp.mults)} in the args")
            out.append(f"channel_mults: {why}; the checkpoint has {_csv(ck.mults)}; set "
                       f"\"channel_mults\": [{', '.join(str(m) for m in ck.mults)}]")
        else:
            alt = (f" (or it is an img_size {' or '.join(map(str, sizes))} checkpoint: those "
                   "build the same with 32,16,8)" if other_size else "")
            out.append(_fixed_problem(s, "attention_resolutions",
                                      _csv(ck.attention_px(cfg.image_size)) or "none",
                                      _csv(exp.attention_px(cfg.image_size))) + alt)
    if ck.num_res_blocks != exp.num_res_blocks:
        out.append(_fixed_problem(s, "num_res_blocks", str(ck.num_res_blocks),
                                  str(exp.num_res_blocks)))
    return out


def check_heads(cfg: UNetConfig) -> None:
    """num_heads / num_head_channels must split every attention block, as the official
    QKVAttention asserts. (A wrong count that splits them loads fine: see NOT_IN_WEIGHTS.)"""
    exp = expected_layout(cfg)
    chans = {exp.level_channels[lv] for lv in exp.attention_levels} | {exp.level_channels[-1]}
    for c in sorted(chans):
        if cfg.n_head_channels == -1 and c % cfg.n_heads:
            raise ExporterError(f"num_heads {cfg.n_heads} does not divide the {c} channels of an "
                                "attention block (the official QKVAttention asserts that it "
                                "does); fix num_heads in the args")
        if cfg.n_head_channels > 0 and c % cfg.n_head_channels:
            raise ExporterError(f"num_head_channels {cfg.n_head_channels} does not divide the {c} "
                                "channels of an attention block (the official AttentionBlock "
                                "asserts that it does); fix num_head_channels in the args")


GREY_SEG = (
    "seg: the UNet is grey (channels 1) but the seg network's first convolution takes 6 "
    "channels. The official train.py hard-codes SegmentationSubNetwork(in_channels=6), which fits "
    "RGB only (image + reconstruction = 2 x 3 channels): a grey run of the stock code cannot "
    "feed its seg network, and its test loader makes RGB images anyway. Retrain with channels 3, "
    "or grey with the seg network built with in_channels=2 (edit train.py and eval.py)"
)


def seg_config_for(state: dict[str, torch.Tensor], channels: int) -> tuple[SegConfig, list[str]]:
    """The seg network's config from its first convolution, checked against the UNet."""
    w = state.get("encoder_segment.block1.0.weight")
    if w is None or w.dim() != 4:
        raise ExporterError("seg: no encoder_segment.block1.0.weight of 4 dimensions; not an "
                            "official SegmentationSubNetwork state dict")
    width, cin = int(w.shape[0]), int(w.shape[1])
    if cin != 2 * channels:
        if channels == 1 and cin == OFFICIAL_SEG_IN:
            raise ExporterError(GREY_SEG)
        raise ExporterError(f"seg: its first convolution takes {cin} channels, but the graph "
                            f"feeds it the image and its reconstruction, 2 x {channels}; check "
                            f"\"channels\" in the args")
    notes = []
    if channels == 1:
        notes.append("grey checkpoint: the stock official train.py hard-codes the seg network's "
                     "in_channels=6 (RGB only); this one takes 2, so it came from modified code")
    if width != OFFICIAL_SEG_WIDTH:
        notes.append(f"seg base width {width}, read from the checkpoint (the stock official code "
                     f"builds {OFFICIAL_SEG_WIDTH})")
    return SegConfig(in_channels=cin, base_width=width), notes
