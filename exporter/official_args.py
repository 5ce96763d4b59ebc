"""The official DiffusionAD args, read the way the official train.py / eval.py read them.

The official scripts `json.load` args/args1.json into a `defaultdict(str)` (a missing key reads
as ""), and eval.py builds its networks and its one-step denoising from these keys only:

    UNetModel(img_size[0], base_channels, channel_mults=, n_heads=num_heads,
              n_head_channels=num_head_channels, in_channels=channels)  # dropout: no effect
    SegmentationSubNetwork(in_channels=6, out_channels=1)                # fixed, not an arg
    get_beta_schedule(T, beta_schedule); GaussianDiffusionModel(..., noise=noise_fn)
    t_s = eval_normal_t, t_b = eval_noisier_t, w = condition_w; top-k 50 (fixed)

So `attention_resolutions` and `num_res_blocks` are never passed: the UNet always has
attention at 32,16,8 px and 2 ResBlocks per level whatever the args say. They are ignored
here too (with a note), unless an explicit flag says the checkpoint's code honoured them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diffusion import SCHEDULES
from .errors import ExporterError
from .unet import UNetConfig

OFFICIAL_DEFAULT_MULTS: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 3, 4),
}
# what the official UNetModel builds when train.py / eval.py leave the argument out
OFFICIAL_ATTENTION = (32, 16, 8)
OFFICIAL_RES_BLOCKS = 2
OFFICIAL_SEG_IN = 6
OFFICIAL_SEG_WIDTH = 64
OFFICIAL_TOP_K = 50

# keys eval.py does not read, or reads without effect on its outputs
TRAINING_ONLY = (
    "Batch_Size", "EPOCHS", "loss_type", "loss-type", "loss_weight", "diffusion_lr", "seg_lr",
    "random_slice", "weight_decay", "save_imgs", "save_vids", "dropout", "noisier_t_range",
    "less_t_range", "mvtec_root_path", "visa_root_path", "dagm_root_path", "mpdd_root_path",
    "anomaly_source_path", "output_path", "arg_num",
)
IGNORED_BY_OFFICIAL = {
    "attention_resolutions": ("--attention-resolutions", ",".join(map(str, OFFICIAL_ATTENTION))),
    "num_res_blocks": ("--num-res-blocks", str(OFFICIAL_RES_BLOCKS)),
}
# explicit export flags and the official key each one overrides
FLAG_KEYS = {"t_s": ("--t-s", "eval_normal_t"), "t_b": ("--t-b", "eval_noisier_t"),
             "w": ("--w", "condition_w")}
USED = ("img_size", "channels", "base_channels", "channel_mults", "num_heads",
        "num_head_channels", "T", "beta_schedule", "eval_normal_t", "eval_noisier_t",
        "condition_w", "noise_fn")


@dataclass
class OfficialFlags:
    """Explicit export flags (None: not given) that override or complete the args."""

    args_file: Path | None = None
    set_args: dict[str, Any] = field(default_factory=dict)  # --official-set KEY=VALUE
    t_s: int | None = None
    t_b: int | None = None
    w: float | None = None
    attention_resolutions: tuple[int, ...] | None = None
    num_res_blocks: int | None = None

    def given(self) -> list[str]:
        """The official-only flags that were given (for refusing them on our checkpoints)."""
        out = []
        if self.args_file is not None:
            out.append("--official-args")
        if self.set_args:
            out.append("--official-set")
        if self.attention_resolutions is not None:
            out.append("--attention-resolutions")
        if self.num_res_blocks is not None:
            out.append("--num-res-blocks")
        return out


@dataclass
class OfficialSettings:
    """What the args (plus flags) make of the export: configs, diffusion, and the record."""

    unet: UNetConfig
    diffusion: dict[str, Any]  # DiffusionConfig keywords: T, schedule, beta_*, t_s, t_b, w
    args: dict[str, Any]  # as read, before any override
    source: str  # "checkpoint" or the args file
    overrides: dict[str, Any]  # official key -> value that replaced the args' one
    checkpoint_args: dict[str, Any] | None
    mults_default: bool = False  # channel_mults empty: the official default for img_size
    flagged: frozenset[str] = frozenset()  # fixed official settings replaced by a flag
    log: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """`training.official` in the manifest: enough to rebuild the official side."""
        c = self.unet
        return {
            "args_from": self.source,
            "args": _jsonable(self.args),
            "overrides": _jsonable(self.overrides),
            "fixed": {"attention_resolutions": ",".join(map(str, c.attention_resolutions)),
                      "num_res_blocks": c.num_res_blocks},
        }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def parse_value(text: str) -> Any:
    """--official-set values: JSON when they parse (64, [64, 64], "cosine"), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_args_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ExporterError(f"official args file not found: {path}")
    try:
        args = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExporterError(f"official args file {path} is not valid JSON: {e}") from None
    if not isinstance(args, dict):
        raise ExporterError(f"official args file {path}: expected a JSON object of settings")
    return args


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Args:
    """A defaultdict(str) view, as the official scripts have it, with named errors."""

    def __init__(self, d: dict[str, Any], source: str) -> None:
        self.d, self.source = d, source

    def raw(self, key: str) -> Any:
        return self.d.get(key, "")

    def fail(self, key: str, why: str, fix: str) -> ExporterError:
        v = self.d.get(key)
        shown = "missing" if key not in self.d else f"{v!r}"
        return ExporterError(f"official args ({self.source}): {key} {shown}: {why}; {fix}")

    def int(self, key: str, lo: int, fix: str, why: str = "") -> int:
        v = self.raw(key)
        if not _is_int(v) or v < lo:
            raise self.fail(key, why or f"the official code needs an integer >= {lo}", fix)
        return v


def _image_size(a: _Args) -> int:
    v = a.raw("img_size")
    fix = "write it as [H, W], e.g. [256, 256]"
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v)):
        raise a.fail("img_size", "the official code builds the UNet from img_size[0] and "
                                 "resizes test images to img_size[0] x img_size[1]", fix)
    if v[0] != v[1]:
        raise a.fail("img_size", "the exported graph is square", "export a square model")
    if v[0] % 32:
        raise a.fail("img_size", "the networks need a multiple of 32", fix)
    return v[0]


def _channel_mults(a: _Args, size: int, log: list[str]) -> tuple[float, ...]:
    v = a.raw("channel_mults")
    if v == "":
        if size not in OFFICIAL_DEFAULT_MULTS:
            raise a.fail("channel_mults", f"the official UNetModel has no default for img_size "
                                          f"{size} (it has for {sorted(OFFICIAL_DEFAULT_MULTS)})",
                         "give channel_mults as a list")
        mults = OFFICIAL_DEFAULT_MULTS[size]
        log.append(f"channel_mults empty: the official default for img_size {size}, "
                   f"{list(mults)}")
        return mults
    if isinstance(v, str):
        raise a.fail("channel_mults", "the official UNetModel takes a non-empty string character "
                                      "by character and cannot build from it",
                     "write a JSON list such as [1, 2, 3, 4], or \"\" for the img_size default")
    if not (isinstance(v, list) and v and all(_is_number(m) and m > 0 for m in v)):
        raise a.fail("channel_mults", "expected a list of positive numbers", "e.g. [1, 2, 3, 4]")
    return tuple(v)


def _schedule(a: _Args) -> dict[str, Any]:
    T = a.int("T", 2, "the official args1.json has \"T\": 1000")
    name = a.raw("beta_schedule")
    if name not in SCHEDULES:
        raise a.fail("beta_schedule", f"the exporter (like the official get_beta_schedule) "
                                      f"knows {' and '.join(SCHEDULES)} only",
                     "use \"linear\" (the official args1.json) or \"cosine\"")
    out: dict[str, Any] = {"T": T, "schedule": name}
    if name == "linear":  # get_beta_schedule scales the 1000-step betas by 1000 / T
        scale = 1000 / T
        out.update(beta_start=scale * 0.0001, beta_end=scale * 0.02)
    return out


def _apply_overrides(
    args: dict[str, Any], flags: OfficialFlags, log: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    a, overrides = dict(args), {}

    def put(key: str, value: Any, by: str) -> None:
        was = f"{args[key]!r} of the args" if key in args else "absent from the args"
        log.append(f"{by} overrides {key} ({was}): {value!r}")
        a[key] = overrides[key] = value

    for key, value in flags.set_args.items():
        put(key, value, f"--official-set {key}")
    for attr, (flag, key) in FLAG_KEYS.items():
        value = getattr(flags, attr)
        if value is not None:
            put(key, value, f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return a, overrides


def _fixed_by_official(a: _Args, flags: OfficialFlags, log: list[str]) -> tuple[tuple, int]:
    """attention_resolutions and num_res_blocks: the official code's constants, or a flag."""
    att, nrb = OFFICIAL_ATTENTION, OFFICIAL_RES_BLOCKS
    for key, (flag, fixed) in IGNORED_BY_OFFICIAL.items():
        given = getattr(flags, key)
        if given is not None:
            shown = ",".join(map(str, given)) if isinstance(given, tuple) else str(given)
            log.append(f"{flag} {shown} replaces the official code's fixed {key} {fixed} "
                       "(for a checkpoint whose code honoured the arg)")
        elif key in a.d:
            same = str(a.d[key]).replace(" ", "") == fixed
            log.append(f"{key} {a.d[key]!r} ignored, as by the official train.py and eval.py, "
                       f"which never pass it: the UNet always has {key} {fixed}"
                       + ("" if same else f" (use {flag} if this checkpoint's code honoured it)"))
    if flags.attention_resolutions is not None:
        att = flags.attention_resolutions
    if flags.num_res_blocks is not None:
        nrb = flags.num_res_blocks
    return att, nrb


def _note_unread(args: dict[str, Any], log: list[str]) -> None:
    train = [k for k in args if k in TRAINING_ONLY]
    if train:
        log.append("training-only settings, no effect on the exported graph: " + ", ".join(train))
    known = set(USED) | set(TRAINING_ONLY) | set(IGNORED_BY_OFFICIAL)
    unknown = [k for k in args if k not in known]
    if unknown:
        log.append("unknown keys, ignored (the official code does not read them): "
                   + ", ".join(unknown))


# settings that leave no trace in the weights: only the checkpoint's saved args can tell
NOT_IN_WEIGHTS = ("num_heads", "num_head_channels")


def _compare_with_checkpoint(
    file_args: dict[str, Any], ck_args: dict[str, Any] | None, flags: OfficialFlags,
    source: str, log: list[str],
) -> None:
    if not ck_args:
        return
    for k in NOT_IN_WEIGHTS:
        if k not in flags.set_args and k in ck_args and file_args.get(k) != ck_args[k]:
            said = f"says {file_args[k]!r}" if k in file_args else "has none"
            raise ExporterError(
                f"{k}: the args file {source} {said}, the "
                f"checkpoint was trained with {ck_args[k]!r} (its saved args). Heads leave no "
                f"trace in the weights, so this would export a wrong model without any error; "
                f"fix the file, drop --official-args to use the checkpoint's own args, or pass "
                f"--official-set {k}=VALUE to choose")
    diff = [f"{k} {file_args.get(k, 'missing')!r} vs {ck_args.get(k, 'missing')!r}"
            for k in USED if file_args.get(k) != ck_args.get(k)]
    if diff:
        log.append("the args file differs from the args saved in the checkpoint (file vs "
                   "checkpoint): " + "; ".join(diff))


def resolve_official(ck_args: dict[str, Any] | None, flags: OfficialFlags) -> OfficialSettings:
    """Every setting the official eval uses, from the args (file or checkpoint) and the flags."""
    log: list[str] = []
    if flags.args_file is not None:
        args, source = read_args_file(flags.args_file), str(flags.args_file)
        _compare_with_checkpoint(args, ck_args, flags, source, log)
    elif ck_args:
        args, source = dict(ck_args), "checkpoint"
    else:
        raise ExporterError("the checkpoint holds no official args: give the args JSON it was "
                            "trained with, --official-args args/args1.json")
    log.insert(0, f"args from {source}")
    merged, overrides = _apply_overrides(args, flags, log)
    a = _Args(merged, source)
    size = _image_size(a)
    ch = a.raw("channels")
    if ch not in (1, 3) or not _is_int(ch):
        raise a.fail("channels", "the exporter takes 1 (grey) or 3 (RGB)", "set 1 or 3")
    base = a.int("base_channels", 1, "the official args1.json has 128")
    mults = _channel_mults(a, size, log)
    heads = a.int("num_heads", 1, "the official args1.json has 4")
    hc = a.raw("num_head_channels")
    if not _is_int(hc) or (hc < 1 and hc != -1):
        raise a.fail("num_head_channels", "the official AttentionBlock takes -1 (use num_heads) "
                                          "or a positive channel count", "set -1 or a count")
    diffusion = _schedule(a)
    fixes = {"eval_normal_t": "--t-s", "eval_noisier_t": "--t-b"}
    for key, name in (("eval_normal_t", "t_s"), ("eval_noisier_t", "t_b")):
        diffusion[name] = a.int(key, 0, f"set it in the args or pass {fixes[key]}")
        if diffusion[name] >= diffusion["T"]:
            raise a.fail(key, f"a timestep must lie in [0, T) = [0, {diffusion['T']})",
                         f"fix it or pass {fixes[key]}")
    w = a.raw("condition_w")
    if not _is_number(w):
        raise a.fail("condition_w", "the norm guidance weight w must be a number",
                     "set it in the args or pass --w")
    diffusion["w"] = float(w)
    if a.raw("noise_fn") != "gauss":
        raise a.fail("noise_fn", "the official GaussianDiffusionModel sets a noise function for "
                                 "\"gauss\" only, and the graph's noises are Gaussian",
                     "set \"gauss\"")
    att, nrb = _fixed_by_official(a, flags, log)
    _note_unread(merged, log)
    unet = UNetConfig(
        image_size=size, in_channels=ch, base_channels=base, channel_mults=mults,
        num_res_blocks=nrb, attention_resolutions=att, n_heads=heads, n_head_channels=hc,
        norm_groups=32, dropout=0.0,
    )
    d = diffusion
    log.append(f"img_size {merged['img_size']} -> input {size}x{size}; channels {ch}; "
               f"base_channels {base}; channel_mults {list(mults)}; num_heads {heads}; "
               f"num_head_channels {hc}")
    log.append(f"T {d['T']}, beta_schedule {d['schedule']}; eval_normal_t -> t_s {d['t_s']}; "
               f"eval_noisier_t -> t_b {d['t_b']}; condition_w -> w {d['w']:g}")
    flagged = frozenset(k for k in IGNORED_BY_OFFICIAL if getattr(flags, k) is not None)
    return OfficialSettings(unet=unet, diffusion=diffusion, args=args, source=source,
                            overrides=overrides, checkpoint_args=ck_args,
                            mults_default=merged.get("channel_mults", "") == "", flagged=flagged,
                            log=log)
