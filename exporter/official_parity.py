"""Opt-in parity with the official DiffusionAD code: `verify MODEL --official-code DIR`.

The exported graph is compared with the modules of an official checkout (models/
Recon_subnetwork.py, Seg_subnetwork.py, DDPM.py, imported from DIR by file path), built and run
the way the official eval.py builds and runs them: from the official args recorded in the
manifest (`training.official`: the args as read at export, plus the flags that overrode them),
with `torch.manual_seed(noise_seed)` before `norm_guided_one_step_denoising_eval` on CPU and
batch 1, which draws the graph's two noises. Inputs: the golden images, and optionally real
images, for which the effect of the official 8-bit resize is reported too.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .diffusion import gaussian_blur
from .errors import ExporterError
from .official import find_checkpoint_file, load_checkpoint_dict, sha256_file
from .official_args import OFFICIAL_TOP_K
from .onnxio import get_manifest, load_model, ort_session, run_batched
from .preprocess import list_images, load_pixels, preprocess_file, resize_uint8
from .verify import golden_paths

MODULES = {
    "Recon_subnetwork": ("UNetModel",),
    "Seg_subnetwork": ("SegmentationSubNetwork",),
    "DDPM": ("GaussianDiffusionModel", "get_beta_schedule"),
}
TOL_FP32 = 1e-4
TOL_FP16 = 2e-2
MAX_IMAGES = 4


@dataclass
class OfficialCode:
    root: Path
    names: dict[str, Any]  # UNetModel, SegmentationSubNetwork, GaussianDiffusionModel, ...


def _import_file(root: Path, name: str) -> ModuleType:
    path = root / "models" / f"{name}.py"
    if not path.is_file():
        raise ExporterError(f"{root} is not a checkout of the official DiffusionAD code: no "
                            f"models/{name}.py")
    mod_name = f"_diffad_official_{abs(hash(str(root.resolve())))}_{name}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        del sys.modules[mod_name]
        raise ExporterError(f"the official models/{name}.py imports {e.name}, which is not "
                            f"installed here; install it (the official requirements.txt lists "
                            f"it) and run again") from None
    except Exception as e:  # noqa: BLE001 - any failure of foreign code is a bad checkout
        del sys.modules[mod_name]
        raise ExporterError(f"cannot import the official models/{name}.py: "
                            f"{type(e).__name__}: {e}") from None
    return module


def load_official_code(root: Path) -> OfficialCode:
    """Imports the official modules from a checkout by file path (no sys.path change)."""
    if not root.is_dir():
        raise ExporterError(f"official code directory not found: {root}")
    names: dict[str, Any] = {}
    for mod, wanted in MODULES.items():
        module = _import_file(root, mod)
        for attr in wanted:
            if not hasattr(module, attr):
                raise ExporterError(f"the official models/{mod}.py has no {attr}")
            names[attr] = getattr(module, attr)
    return OfficialCode(root, names)


def official_args(manifest: dict[str, Any]) -> tuple[defaultdict, dict[str, Any]]:
    """The args the export read, with the overriding flags applied, as a defaultdict(str)."""
    rec = (manifest.get("training") or {}).get("official")
    if not rec:
        raise ExporterError("the model was not exported from an official checkpoint (its "
                            "manifest has no training.official); --official-code compares "
                            "with the official DiffusionAD code only")
    args: defaultdict = defaultdict(str, rec["args"])
    args.update(rec.get("overrides", {}))
    return args, rec


class OfficialPipeline:
    """The official networks and one-step denoising, as eval.py builds and runs them."""

    def __init__(self, code: OfficialCode, args: defaultdict, rec: dict[str, Any],
                 ck: dict[str, Any]) -> None:
        n, fixed = code.names, rec.get("fixed", {})
        seg_w = ck["seg_model_state_dict"]["encoder_segment.block1.0.weight"]
        try:
            # eval.py passes neither attention_resolutions nor num_res_blocks: the recorded
            # values are the official defaults unless an export flag replaced them
            self.unet = n["UNetModel"](
                args["img_size"][0], args["base_channels"], channel_mults=args["channel_mults"],
                dropout=0, n_heads=args["num_heads"], n_head_channels=args["num_head_channels"],
                in_channels=args["channels"],
                attention_resolutions=fixed.get("attention_resolutions", "32,16,8"),
                num_res_blocks=fixed.get("num_res_blocks", 2))
            self.seg = n["SegmentationSubNetwork"](
                in_channels=int(seg_w.shape[1]), out_channels=1, base_channels=int(seg_w.shape[0]))
            self.unet.load_state_dict(ck["unet_model_state_dict"])
            self.seg.load_state_dict(ck["seg_model_state_dict"])
            self.ddpm = n["GaussianDiffusionModel"](
                args["img_size"], n["get_beta_schedule"](args["T"], args["beta_schedule"]),
                loss_weight=args["loss_weight"], loss_type=args["loss-type"],
                noise=args["noise_fn"], img_channels=args["channels"])
        except Exception as e:  # noqa: BLE001 - foreign code: report, do not crash
            raise ExporterError(f"the official code cannot build this checkpoint's networks "
                                f"from its args: {type(e).__name__}: {e}") from None
        self.unet.eval()
        self.seg.eval()
        self.args = args

    def run(self, x: np.ndarray, seed: int, top_k: int, sigma: float
            ) -> tuple[np.ndarray, np.ndarray]:
        """maps [N, 1, H, W] and scores [N], one image at a time as eval.py (batch 1)."""
        maps, scores = [], []
        a = self.args
        for i in range(len(x)):
            xi = torch.from_numpy(x[i : i + 1])
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = self.ddpm.norm_guided_one_step_denoising_eval(
                    self.unet, xi, torch.tensor([a["eval_normal_t"]]),
                    torch.tensor([a["eval_noisier_t"]]), a)
                m = self.seg(torch.cat((xi, out[1]), dim=1))
                pooled = gaussian_blur(m, sigma) if sigma > 0 else m
                top = torch.topk(torch.flatten(pooled[0], start_dim=1), top_k, dim=1)[0]
            maps.append(m.numpy())
            scores.append(float(top.mean()))
        return np.concatenate(maps), np.asarray(scores, np.float32)


def _official_tensor(path: Path, channels: int, size: int, value_range: tuple) -> np.ndarray:
    """The official test loader's input: 8-bit resize, then / 255 (into value_range)."""
    lo, hi = value_range
    px = resize_uint8(load_pixels(path, channels), size, size).astype(np.float64)
    return (lo + (hi - lo) * px / 255.0).astype(np.float32).transpose(2, 0, 1).copy()


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def verify_official(model_path: Path, code_dir: Path, checkpoint: Path,
                    images: Path | None = None, tol: float | None = None) -> dict[str, Any]:
    """Compares the model with the official code; raises ExporterError above `tol`."""
    manifest = get_manifest(load_model(model_path))
    args, rec = official_args(manifest)
    f = find_checkpoint_file(checkpoint)
    sha = sha256_file(f)
    if sha != manifest.get("checkpoint_sha256"):
        raise ExporterError(f"{f} is not the checkpoint {model_path.name} was exported from "
                            f"(sha256 {sha[:12]} vs {str(manifest.get('checkpoint_sha256'))[:12]} "
                            "in the manifest)")
    code = load_official_code(code_dir)
    pipe = OfficialPipeline(code, args, rec, load_checkpoint_dict(f))
    inp, d, sc = manifest["input"], manifest["diffusion"], manifest["score"]
    ch, size, rng = inp["channels"], inp["height"], tuple(inp["range"])
    if tol is None:
        tol = TOL_FP16 if manifest["architecture"].get("precision") == "fp16" else TOL_FP32
    gjson, _ = golden_paths(model_path)
    cases = json.loads(gjson.read_text())["cases"] if gjson.is_file() else []
    paths = [gjson.parent / c["image"] for c in cases]
    real = list_images(images)[:MAX_IMAGES] if images is not None else []
    if not paths and not real:
        raise ExporterError(f"nothing to compare: no golden file {gjson} and no --images")
    x = np.stack([preprocess_file(p, ch, size, size, rng) for p in paths + real])
    sess = ort_session(model_path)
    sigma = float(sc.get("blur_sigma", 0.0))
    top_k = int(sc["top_k"])
    ort_map, ort_score = run_batched(sess, x, inp["batch"])
    off_map, off_score = pipe.run(x, int(d["noise_seed"]), top_k, sigma)
    report: dict[str, Any] = {
        "cases": len(paths), "images": len(real), "tol": tol,
        "map_max_abs_diff": _diff(ort_map, off_map),
        "score_max_abs_diff": _diff(ort_score, off_score),
        "notes": [],
    }
    if top_k != OFFICIAL_TOP_K:
        report["notes"].append(f"score: top_k {top_k} (the official eval uses "
                               f"{OFFICIAL_TOP_K}), applied to the official map too")
    if sigma > 0:
        report["notes"].append(f"score: map blurred (sigma {sigma:g}) before the top-k, on the "
                               "official map too (the official eval does not blur)")
    worst = max(report["map_max_abs_diff"], report["score_max_abs_diff"])
    if worst > tol:
        raise ExporterError(f"the model disagrees with the official code: max |map| "
                            f"{report['map_max_abs_diff']:.3g}, max |score| "
                            f"{report['score_max_abs_diff']:.3g} > {tol:g}")
    if real:
        xo = np.stack([_official_tensor(p, ch, size, rng) for p in real])
        om, osc = pipe.run(xo, int(d["noise_seed"]), top_k, sigma)
        n = len(paths)
        report["resize"] = {
            "input_max_abs_diff": _diff(x[n:], xo),
            "map_max_abs_diff": _diff(ort_map[n:], om),
            "score_max_abs_diff": _diff(ort_score[n:], osc),
        }
    return report


def format_parity(r: dict[str, Any]) -> str:
    lines = [f"official code parity OK: {r['cases']} golden cases + {r['images']} images, max "
             f"|map| {r['map_max_abs_diff']:.3g}, max |score| {r['score_max_abs_diff']:.3g} "
             f"(tol {r['tol']:g})"]
    lines += [f"note: {n}" for n in r["notes"]]
    if "resize" in r:
        z = r["resize"]
        lines.append(f"official 8-bit resize vs ours (float) on the images: input "
                     f"{z['input_max_abs_diff']:.3g}, map {z['map_max_abs_diff']:.3g}, score "
                     f"{z['score_max_abs_diff']:.3g} (not a failure: the runtime keeps floats)")
    return "\n".join(lines)
