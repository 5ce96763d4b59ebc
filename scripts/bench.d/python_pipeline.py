"""The peer: a Python pipeline written the way anomalib users write one, timed in one process.

Pillow decode, numpy preprocess, onnxruntime session, numpy top-k — plus the bare session call
in a tight loop, on the same model and images. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.sort(np.asarray(seconds) * 1e3)

    def rank(q: float) -> float:
        return float(ms[min(len(ms), max(1, int(np.ceil(q / 100 * len(ms))))) - 1])

    return {
        "fps": 1e3 / float(ms.mean()),
        "p50_ms": float(rank(50)),
        "p99_ms": float(rank(99)),
        "mean_ms": float(ms.mean()),
    }


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.provider == "cuda" else ["CPUExecutionProvider"]
    )
    sess = ort.InferenceSession(args.model, opts, providers=providers)
    if args.provider == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise SystemExit("python pipeline: CUDA provider unavailable in this onnxruntime build")
    manifest = json.loads(sess.get_modelmeta().custom_metadata_map["diffad.manifest"])
    spec = manifest["input"]
    lo, hi = spec["range"]
    threshold = (manifest.get("threshold") or {}).get("value", float("inf"))
    top_k = manifest["score"]["top_k"]
    name = spec["name"]
    shape = (spec["batch"], spec["channels"], spec["height"], spec["width"])
    blobs = [Path(p).read_bytes() for p in args.images]

    def pipeline(blob: bytes) -> bool:
        img = Image.open(io.BytesIO(blob))
        img = img.convert("L" if spec["channels"] == 1 else "RGB")
        if img.size != (spec["width"], spec["height"]):
            img = img.resize((spec["width"], spec["height"]), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0 * (hi - lo) + lo
        x = x.reshape(shape) if spec["channels"] == 1 else x.transpose(2, 0, 1)[None]
        amap = sess.run([manifest["outputs"]["map"]], {name: x})[0]
        flat = amap.reshape(amap.shape[0], -1)
        score = np.partition(flat, -top_k, axis=1)[:, -top_k:].mean(axis=1)[0]
        return bool(score >= threshold)

    x0 = np.zeros(shape, np.float32)
    for i in range(args.warmup):
        pipeline(blobs[i % len(blobs)])
    bare, pipe = [], []
    block = min(10, max(1, args.iterations))
    while len(pipe) < args.iterations:
        for _ in range(block):
            t = time.perf_counter()
            sess.run(None, {name: x0})
            bare.append(time.perf_counter() - t)
        for _ in range(block):
            blob = blobs[len(pipe) % len(blobs)]
            t = time.perf_counter()
            pipeline(blob)
            pipe.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "onnxruntime": ort.__version__,
                "iterations": len(pipe),
                "session": stats(bare),
                "pipeline": stats(pipe),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
