"""A model changed on a running line, timed: the demo's line (brick model, simulated conveyor) at
half the engine's rate (`diffad bench` in the same run), the gravel model as the candidate.

- Latency while shadowing: the same 600 parts with and without a shadow run (staged before the
  first part is counted); p99 of trigger-to-verdict latency over parts 101-600, both runs.
- Promote and rollback: 6 switches on one line; for each, the time from the request to the
  switch (the inspect thread finishes its batch first) and from the switch to the first verdict
  by the new model, against the frame interval.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The end-to-end tests' helpers to run diffad (tests/linekit.py).
sys.path.insert(0, str(ROOT / "tests"))
from linekit import free_port  # noqa: E402

EXE = ROOT / "target/release/diffad"
BRICK = ROOT / "models/tiles-brick/model.onnx"
GRAVEL = ROOT / "models/tiles-gravel/model.onnx"


POOL = "true"


def board(tmp: Path, name: str, rate: float, parts: int, every: int = 20) -> tuple[Path, int, Path]:
    port, sock = free_port(), tmp / f"{name}.sock"
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[board]
name = "bench-swap"
[engine]
model = "{BRICK}"
providers = ["cpu"]
[engine.cpu]
shared_pool = {POOL}
[camera]
source = "sim"
[camera.sim]
photo = "{ROOT / 'target/tiles/photos/brick.png'}"
tile = 128
defect_rate = 0.2
seed = 7
[gpio]
sim = true
[line]
name = "tiles"
part_rate_hz = {rate}
belt_speed_mm_s = 500.0
camera_to_ejector_mm = 250.0
parts = {parts}
realtime_priority = 50
[supervisor]
listen = "127.0.0.1:{port}"
[control]
socket = "{sock}"
shadow_every = {every}
"""
    )
    return path, port, sock


def ask(sock: Path, req: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall((json.dumps(req) + "\n").encode())
        answer = json.loads(s.makefile().readline())
    if not answer.get("ok"):
        raise SystemExit(f"bench-model-swap: {req['cmd']}: {answer.get('error')}")
    return answer


class Line:
    def __init__(self, cfg: Path, port: int, sock: Path) -> None:
        self.proc = subprocess.Popen([EXE, "run", "--config", cfg, "--quiet"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.parts: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        end = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise SystemExit("bench-model-swap: the line did not start") from None
                time.sleep(0.05)
        while not sock.exists():
            time.sleep(0.05)
        self.sock = sock
        threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        hello = json.loads(f.readline())
        conn.sendall(f"resume {hello['run']} 0\n".encode())
        for line in f:
            e = json.loads(line)
            if e.get("type") == "part":
                with self.lock:
                    self.parts[e["part"]] = e

    def count(self) -> int:
        with self.lock:
            return len(self.parts)

    def wait(self, n: int) -> None:
        while self.count() < n:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench-model-swap: the line stopped at {self.count()} parts")
            time.sleep(0.01)

    def finish(self) -> None:
        _, err = self.proc.communicate(timeout=300)
        if self.proc.returncode != 0:
            raise SystemExit(f"bench-model-swap: diffad run failed: {err.decode()[-2000:]}")
        time.sleep(0.3)


def p99(values: list[float]) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="short runs, to prove the script works")
    ap.add_argument("--load", type=float, default=0.5, help="part rate as a share of `diffad bench`")
    ap.add_argument("--shadow-every", type=int, default=20, help="control.shadow_every of the shadow run")
    ap.add_argument("--per-session-pools", action="store_true",
                    help="engine.cpu.shared_pool = false: each model its own ONNX Runtime thread pool")
    ap.add_argument("--out", type=Path, default=ROOT / "target/bench")
    a = ap.parse_args()
    global POOL
    POOL = "false" if a.per_session_pools else "true"
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bench.json"
        subprocess.run([EXE, "bench", "--model", BRICK, "--iterations", "30" if a.smoke else "200",
                        "--json", out], capture_output=True, check=True)
        fps = json.loads(out.read_text())["pipeline"]["fps"]
    rate = round(a.load * fps, 1)
    parts = 200 if a.smoke else 600
    skip = 100 if not a.smoke else 50
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lat: dict[str, float] = {}
        shadowed = 0
        runs = {}
        # The shadow run counts from 50 parts after its shadow began (staging loads a session
        # and self-tests it, which is not shadowing); the run without it from the same part.
        start = skip
        for label, shadow in (("shadowing", True), ("without shadow", False)):
            cfg, port, sock = board(tmp, label.replace(" ", "-"), rate, parts, a.shadow_every)
            line = Line(cfg, port, sock)
            if shadow:
                ask(sock, {"cmd": "stage", "file": str(GRAVEL)})
                ask(sock, {"cmd": "shadow"})
                start = max(skip, line.count() + 50)
            line.wait(parts - 20)
            if shadow:
                shadowed = ask(sock, {"cmd": "report"})["report"]["compared"]
            line.wait(parts)
            line.finish()
            runs[label] = line
        for label, line in runs.items():
            lat[label] = p99([e["latency_ms"] for n, e in line.parts.items() if n > start and e.get("latency_ms")])
        cfg, port, sock = board(tmp, "switches", rate, parts)
        line = Line(cfg, port, sock)
        ask(sock, {"cmd": "stage", "file": str(GRAVEL)})
        switches = []
        for i in range(6):
            line.wait(skip // 2 + i * (parts - skip) // 7)
            r = ask(sock, {"cmd": "promote" if i % 2 == 0 else "rollback"})
            switches.append(r)
        line.finish()
        rows = []
        for r in switches:
            s = r["switch"]
            first = line.parts[s["after_part"] + 1]
            rows.append({
                "to": s["to"]["id"],
                "request_to_switch_ms": round(r["waited_ms"], 2),
                "switch_to_first_verdict_ms": round((first["verdict_ns"] - s["at_ns"]) / 1e6, 2),
                # Less the wait for that part to arrive, when it came after the switch.
                "judged_after_switch_or_arrival_ms": round(
                    (first["verdict_ns"] - max(s["at_ns"], first["trigger_ns"])) / 1e6, 2),
                "first_part_model": first.get("model"),
            })
    interval = 1e3 / rate
    worst_switch = max(r["request_to_switch_ms"] for r in rows)
    worst_first = max(r["switch_to_first_verdict_ms"] for r in rows)
    worst_judged = max(r["judged_after_switch_or_arrival_ms"] for r in rows)
    ratio = lat["shadowing"] / lat["without shadow"]
    result = {
        "engine_fps": fps, "rate": rate, "latency_from_part": start + 1,
        "frame_interval_ms": round(interval, 2), "parts": parts,
        "latency_p99_ms": lat, "latency_ratio": round(ratio, 3), "parts_shadowed": shadowed,
        "switches": rows, "shadow_every": a.shadow_every, "shared_pool": POOL == "true", "smoke": a.smoke,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    dest = a.out / ("bench-model-swap-smoke.json" if a.smoke else "bench-model-swap.json")
    dest.write_text(json.dumps(result, indent=2))
    print(f"line at {rate:g} parts/s ({a.load:g} x diffad bench {fps:.1f} fps), frame interval {interval:.1f} ms")
    print(f"latency p99 over parts {start + 1}-{parts} (from 50 parts after the shadow began): "
          f"{lat['without shadow']:.1f} ms without a shadow run, "
          f"{lat['shadowing']:.1f} ms shadowing ({shadowed} parts compared): x{ratio:.2f}; target <= x1.20: "
          f"{'met' if ratio <= 1.2 else 'MISSED'}")
    print(f"6 switches: request -> switch at most {worst_switch:.1f} ms, switch -> first verdict by the new model "
          f"at most {worst_first:.1f} ms ({worst_judged:.1f} ms from the switch or that part's arrival, "
          f"whichever was later); target <= 1 frame interval ({interval:.1f} ms): "
          f"{'met' if max(worst_switch, worst_first) <= interval else 'MISSED'}")
    assert all(r["first_part_model"] == r["to"] for r in rows), rows
    print(f"written {dest}")


if __name__ == "__main__":
    main()
