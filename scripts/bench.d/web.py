"""The operator page's CPU cost on a running line, in one run: the demo's line (brick model,
simulated conveyor) at 30 parts/s, once without `[web]` and once with it and 5 live viewers.

The page's work is done on the network runtime's threads (`diffad-net`: HTTP, the viewers'
streams) and in the bus's fan-out thread (`events`: one frame per record, queued to every
viewer). Each thread's CPU time comes from /proc/PID/task/TID/schedstat (nanoseconds on a CPU),
read every 0.25 s while the line runs; the cost is the `diffad-net` threads' time plus the
`events` thread's extra time against the run without the page, as a share of one core.
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

ROOT = Path(__file__).resolve().parents[2]
# The end-to-end tests' helpers to run diffad (tests/linekit.py).
sys.path.insert(0, str(ROOT / "tests"))
from linekit import free_port, listening  # noqa: E402


def board(tmp: Path, rate: float, parts: int, web_port: int | None) -> Path:
    web = f'[web]\nlisten = "127.0.0.1:{web_port}"\n' if web_port else ""
    path = tmp / f"board-{'web' if web_port else 'plain'}.toml"
    path.write_text(
        f"""[board]
name = "bench-web"
[engine]
model = "{ROOT / 'models/tiles-brick/model.onnx'}"
providers = ["cpu"]
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
listen = ""
[archive]
dir = "{tmp / 'archive'}"
{web}"""
    )
    return path


def thread_cpu(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread's (name, ns on a CPU so far)."""
    out: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[int(task.name)] = (name, ns)
    return out


def viewer(port: int, stop: threading.Event, frames: list[int], i: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            frames[i] += chunk.count(b"event: part")


def run(exe: Path, cfg: Path, port: int | None, viewers: int, warmup_s: float) -> dict:
    proc = subprocess.Popen(
        [exe, "run", "--config", cfg, "--quiet", "--summary-json", cfg.with_suffix(".json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stop = threading.Event()
    frames = [0] * viewers
    threads = []
    if port:
        end = time.monotonic() + 60
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > end:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise SystemExit(f"bench-web: the line never served its page: {err}")
            time.sleep(0.05)
        threads = [threading.Thread(target=viewer, args=(port, stop, frames, i), daemon=True) for i in range(viewers)]
        for t in threads:
            t.start()
    time.sleep(warmup_s)
    first = thread_cpu(proc.pid)
    t_first = time.monotonic()
    # A thread's last reading is kept after it ends: the page's threads stop before the process.
    last, t_last = dict(first), t_first
    while proc.poll() is None:
        time.sleep(0.25)
        try:
            now = thread_cpu(proc.pid)
        except OSError:
            break
        if now and proc.poll() is None:
            last.update(now)
            t_last = time.monotonic()
    _, err = proc.communicate()
    stop.set()
    for t in threads:
        t.join(2)
    if proc.returncode != 0:
        raise SystemExit(f"bench-web: diffad run failed: {err.decode()[-2000:]}")
    wall = t_last - t_first
    by_name: dict[str, float] = {}
    for tid, (name, ns) in last.items():
        base = first.get(tid, (name, 0))[1]
        by_name[name] = by_name.get(name, 0.0) + (ns - base) / 1e9
    summary = json.loads(cfg.with_suffix(".json").read_text())["summary"]
    return {"wall_s": wall, "cpu_s": by_name, "frames_per_viewer": frames, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=30.0, help="parts per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    ap.add_argument("--viewers", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="short runs, to prove the script works")
    ap.add_argument("--out", type=Path, default=ROOT / "target/bench")
    args = ap.parse_args()
    seconds = 4.0 if args.smoke else args.seconds
    parts = int(args.rate * seconds)
    exe = ROOT / "target/release/diffad"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        plain = run(exe, board(tmp, args.rate, parts, None), None, 0, 1.0)
        web = run(exe, board(tmp, args.rate, parts, port), port, args.viewers, 1.0)
    net = web["cpu_s"].get("diffad-net", 0.0)
    events_extra = web["cpu_s"].get("events", 0.0) / web["wall_s"] - plain["cpu_s"].get("events", 0.0) / plain["wall_s"]
    share = net / web["wall_s"] + max(0.0, events_extra)
    ps = web["summary"]
    result = {
        "rate_parts_s": args.rate,
        "viewers": args.viewers,
        "seconds_measured": round(web["wall_s"], 2),
        "net_threads_cpu_share": round(net / web["wall_s"], 5),
        "events_thread_extra_share": round(events_extra, 5),
        "web_cpu_share_of_one_core": round(share, 5),
        "target_share": 0.05,
        "parts_per_viewer": web["frames_per_viewer"],
        "in_time": [plain["summary"]["inspected_in_time"], ps["inspected_in_time"]],
        "parts": parts,
        "smoke": args.smoke,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / ("bench-web-smoke.json" if args.smoke else "bench-web.json")
    dest.write_text(json.dumps(result, indent=2))
    print(
        f"operator page at {args.rate:g} parts/s with {args.viewers} viewers over {web['wall_s']:.1f} s: "
        f"{100 * share:.2f} % of one core (diffad-net threads {100 * net / web['wall_s']:.2f} %, "
        f"events thread +{100 * events_extra:.2f} % against the run without the page); target <= 5 %: "
        f"{'met' if share <= 0.05 else 'MISSED'}"
    )
    seen = web["frames_per_viewer"]
    print(
        f"in time: {plain['summary']['inspected_in_time']}/{parts} without the page, "
        f"{ps['inspected_in_time']}/{parts} with it; "
        f"part frames per viewer: {min(seen, default=0)}..{max(seen, default=0)}"
    )
    print(f"written {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
