"""ONNX file helpers: manifest metadata, atomic writes, graph hash, FLOP count, ORT runs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import ExporterError

MANIFEST_KEY = "diffad.manifest"


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yields a temp path beside `final`; renamed onto it on success, removed on failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def load_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ExporterError(f"model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise ExporterError(f"cannot read ONNX model {path}: {e}") from None


def get_manifest(model: onnx.ModelProto) -> dict[str, Any]:
    for p in model.metadata_props:
        if p.key == MANIFEST_KEY:
            try:
                return json.loads(p.value)
            except json.JSONDecodeError as e:
                raise ExporterError(f"manifest is not valid JSON: {e}") from None
    raise ExporterError(f"model has no '{MANIFEST_KEY}' metadata")


def set_manifest(model: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=None, sort_keys=False)
    for p in model.metadata_props:
        if p.key == MANIFEST_KEY:
            p.value = text
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = MANIFEST_KEY, text


def save_model_atomic(model: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def graph_sha256(model: onnx.ModelProto) -> str:
    """sha256 of the model with metadata_props cleared: graph + weights, manifest excluded.

    So calibration (which only rewrites the manifest) keeps goldens valid.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.metadata_props[:]
    return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()


def resolved_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's shape, found by running the graph once on zeros with ONNX Runtime.

    Static shape inference leaves dimensions behind data-dependent Reshapes at 0 (torch's
    export computes many target shapes in the graph), which once hid most of the work.
    """
    import onnxruntime as ort

    inferred = shape_inference.infer_shapes(model)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.metadata_props[:]
    have = {o.name for o in probe.graph.output}
    inits = {i.name for i in probe.graph.initializer}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in have and name not in inits and node.op_type != "Constant":
                probe.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, elem.get(name, onnx.TensorProto.FLOAT),
                                                       None))
                have.add(name)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ExporterError(f"cannot run the graph to resolve its shapes: {e}") from None
    feeds = {}
    for i in sess.get_inputs():
        if any(not isinstance(d, int) for d in i.shape):
            raise ExporterError(f"input {i.name} has a dynamic shape {i.shape}; "
                                "the FLOP count needs a static graph")
        feeds[i.name] = np.zeros(i.shape, np.float32)
    names = [o.name for o in sess.get_outputs()]
    shapes = {n: list(v.shape) for n, v in zip(names, sess.run(names, feeds), strict=True)}
    for i in sess.get_inputs():
        shapes[i.name] = list(i.shape)
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
    return shapes


def count_flops_by_op(model: onnx.ModelProto) -> dict[str, int]:
    """2 x multiply-accumulates per op type (Conv, ConvTranspose, MatMul, Gemm), whole graph
    (all of the batch), from the shapes the graph really has."""
    shapes = resolved_shapes(model)
    macs: dict[str, int] = {}
    for node in model.graph.node:
        op = node.op_type
        n = 0
        if op in ("Conv", "ConvTranspose"):
            w, out, inp = (shapes.get(node.input[1]), shapes.get(node.output[0]),
                           shapes.get(node.input[0]))
            if not (w and out and inp):
                raise ExporterError(f"no shape for {op} node {node.name!r}")
            if op == "Conv":  # weight [Cout, Cin/g, k...]: each output sums Cin/g x k taps
                n = int(np.prod(out)) * int(np.prod(w[1:]))
            else:  # weight [Cin, Cout/g, k...]: each input element scatters Cout/g x k taps
                n = int(np.prod(inp)) * int(np.prod(w[1:]))
        elif op in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not (a and out):
                raise ExporterError(f"no shape for {op} node {node.name!r}")
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            k = a[-2] if trans_a else a[-1]
            n = int(np.prod(out)) * int(k)
        if n:
            macs[op] = macs.get(op, 0) + 2 * n
    return macs


def count_flops(model: onnx.ModelProto) -> int:
    """2 x multiply-accumulates of Conv / ConvTranspose / Gemm / MatMul, whole graph."""
    return sum(count_flops_by_op(model).values())


def ort_session(path_or_bytes: Path | bytes, threads: int = 0, spin: bool = False) -> Any:
    """CPU session; no spin-waiting by default (this machine's cores are shared)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    try:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ExporterError(f"onnxruntime cannot load the model: {e}") from None


def padded_batches(images: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """[N, ...] in static batches of `batch`, the last one padded with copies of its last
    image; with each, how many of its images are real."""
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
        yield chunk, n


def run_batched(sess: Any, images: np.ndarray, batch: int, steps: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Runs [N, C, H, W] through a static-batch session, padding the last batch. A model whose
    manifest has a `sampler` (AnoDDPM) runs the reference sampler around its eps-network, at
    `steps` or the manifest's step count."""
    meta = sess.get_modelmeta().custom_metadata_map
    manifest = json.loads(meta[MANIFEST_KEY]) if MANIFEST_KEY in meta else {}
    maps, scores = [], []
    for chunk, n in padded_batches(images, batch):
        if "sampler" in manifest:
            from .recipes.runner import run_sampler

            m, s = run_sampler(sess, manifest, chunk, steps)
        else:
            m, s = sess.run(["anomaly_map", "score"], {"image": chunk.astype(np.float32)})
        maps.append(m[:n])
        scores.append(s[:n])
    return np.concatenate(maps), np.concatenate(scores)


def tensor_to_numpy(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)
