"""The reference sampler around an exported AnoDDPM eps-network in ONNX Runtime
(`onnxio.run_batched` hands sampler models here, so evaluate, calibrate and verify take every
recipe)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..onnxio import MANIFEST_KEY


def session_manifest(sess: Any) -> dict[str, Any]:
    meta = sess.get_modelmeta().custom_metadata_map
    return json.loads(meta[MANIFEST_KEY]) if MANIFEST_KEY in meta else {}


def sampler_spec(manifest: dict[str, Any]):
    from .. import simplex
    from .detect import SamplerSpec, ScoreSpec

    s = manifest["sampler"]
    noise = {k: v for k, v in s["noise"].items() if k not in ("kind", "seed")}
    spec = SamplerSpec(T=s["T"], beta_start=s["beta_start"], beta_end=s["beta_end"],
                       t_start=s["t_start"], steps=s["steps"], kind=s["kind"],
                       seed=s["noise"]["seed"], noise=simplex.SimplexConfig(**noise))
    sc = manifest["score"]
    return spec, ScoreSpec(top_k=sc["top_k"], sigma=sc.get("blur_sigma", 0.0))


def run_sampler(sess: Any, manifest: dict[str, Any], images: np.ndarray,
                steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from ..diffusion import topk_mean
    from .detect import error_map, sample

    spec, score = sampler_spec(manifest)
    net = manifest["sampler"]["network"]

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        tt = np.full((x.shape[0],), float(t), np.float32)
        return torch.from_numpy(sess.run([net["eps"]], {net["x_t"]: x.numpy(), net["t"]: tt})[0])

    x0 = torch.from_numpy(images.astype(np.float32))
    amap = error_map(x0, sample(eps, x0, spec, steps or spec.steps), score.sigma)
    return amap.numpy(), topk_mean(amap, score.top_k).numpy()
