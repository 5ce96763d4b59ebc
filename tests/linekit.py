"""What the end-to-end tests and `scripts/bench.d` share to run `diffad` as a user does: the
binary, the ONNX Runtime it loads, a free port, and a wait for a listener."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class LineKitError(RuntimeError):
    """A missing build or library, or a line that did not come up, named with what to do."""


def diffad() -> Path:
    """The newer of the debug and release builds (scripts/test builds both first)."""
    built = [ROOT / "target" / p / "diffad" for p in ("debug", "release")]
    built = [b for b in built if b.exists()]
    if not built:
        raise LineKitError("target/debug/diffad not built: run `cargo build` (scripts/test does) first")
    return max(built, key=lambda b: b.stat().st_mtime)


def env() -> dict[str, str]:
    """This process's environment with `ORT_DYLIB_PATH` set (the venv's ONNX Runtime if unset)."""
    e = dict(os.environ)
    if "ORT_DYLIB_PATH" not in e:
        libs = sorted((ROOT / ".venv/lib").glob("python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))
        if not libs:
            raise LineKitError("ONNX Runtime not found: set ORT_DYLIB_PATH or run scripts/setup")
        e["ORT_DYLIB_PATH"] = str(libs[0])
    return e


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on the loopback `port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen[bytes], within: float = 60.0, every: float = 0.02) -> None:
    """Until `proc` listens on the loopback `port`; an error if it exits first or `within` runs out."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise LineKitError(f"diffad exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(every)
    raise LineKitError(f"nothing listens on 127.0.0.1:{port} after {within} s")
