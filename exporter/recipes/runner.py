"""The reference sampler around an exported AnoDDPM eps-network in ONNX Runtime
(`onnxio.run_batched` hands sampler models here, so evaluate, calibrate and verify take every
recipe)."""

from __future__ import annotations

from typing import Any

import numpy as np


def run_sampler(sess: Any, manifest: dict[str, Any], images: np.ndarray,
                steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from .detect import SamplerSpec, ScoreSpec, reconstruction_score, sample

    spec = SamplerSpec.from_manifest(manifest["sampler"])
    score = ScoreSpec.from_manifest(manifest["score"])
    net = manifest["sampler"]["network"]

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        tt = np.full((x.shape[0],), float(t), np.float32)
        return torch.from_numpy(sess.run([net["eps"]], {net["x_t"]: x.numpy(), net["t"]: tt})[0])

    x0 = torch.from_numpy(images.astype(np.float32))
    amap, scores = reconstruction_score(x0, sample(eps, x0, spec, steps or spec.steps), score)
    return amap.numpy(), scores.numpy()
