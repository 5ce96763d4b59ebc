"""The OPC UA server against the line, in one run, with Python's asyncua as the clients.

1. Side by side: the demo's line (brick model, simulated conveyor, `[opcua]` on loopback) at
   `--load` x the rate `diffad bench` measures, for `--seconds`, once without a client and once
   with `--clients` clients of `--subs` subscriptions each (results, the state, the latest
   result's and the counters' variables). The second run lasts while the clients connect and
   then `--seconds` more with all of them subscribed, so every client is measured however long
   connecting takes (2 to 14 s here); the in-time counts are compared as shares of the parts.
   Target: the reject timing p99 with the clients within 10 % of without; the in-time counts
   beside it. On a plant the clients are other machines;
   here the line (engine, stages, the server's `diffad-net` threads) is pinned to the first
   CPU with one inference thread, and the rate is 0.8 x what `diffad bench` measures there,
   while the clients run on the other CPUs: what is measured is what the server's own work does
   to the line, not what Python decoding notifications on the line's core would do.
2. `--parts` (10^4) parts at the same rate with 5 subscribers to `ResultReady`, connected while
   the engine loads (Preoperational): every part's result exactly once at every subscriber, in
   order; the trigger -> notification latency p50 and p99 over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The end-to-end tests' helpers to run diffad (tests/linekit.py).
sys.path.insert(0, str(ROOT / "tests"))
from linekit import free_port, wait_port  # noqa: E402

EXE = ROOT / "target/release/diffad"
BRICK = ROOT / "models/tiles-brick/model.onnx"
MV = "http://opcfoundation.org/UA/MachineVision"
LINE_NS = "urn:diffad-edge:tiles:vision"
# The variables the data-change subscriptions watch, two per subscription (cycled).
WATCHED = [
    "VisionStateMachine.CurrentState",
    "Health.Ready",
    "ResultManagement.Score",
    "ResultManagement.Outcome",
    "ResultManagement.PartId",
    "ResultManagement.ResultCount",
    "Counters.Triggers",
    "Counters.Rejects",
    "Counters.FaultRejects",
    "Health.Heartbeat",
    "Health.DriftMedian",
    "Health.Faults",
]


def board(tmp: Path, name: str, rate: float, parts: int, port: int) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[board]
name = "bench-opcua"
[engine]
model = "{BRICK}"
providers = ["cpu"]
[engine.cpu]
threads = 1
[camera]
source = "sim"
[camera.sim]
photo = "{ROOT / "target/tiles/photos/brick.png"}"
tile = 128
defect_rate = 0.2
seed = 7
[gpio]
sim = true
pulse_ms = 20.0
[line]
name = "tiles"
part_rate_hz = {rate}
belt_speed_mm_s = 500.0
camera_to_ejector_mm = 250.0
parts = {parts}
heartbeat_ms = 500
realtime_priority = 50
reject_spin_us = 2000
[supervisor]
listen = ""
[opcua]
listen = "127.0.0.1:{port}"
pki_dir = "{tmp / "pki"}"
"""
    )
    return path


def pin() -> list[str]:
    """Keep this process (and the clients it starts) off the first CPU; the `taskset` prefix
    that puts the line on it (none on a single CPU)."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        print("bench-opcua: one CPU only: the line and the clients share it")
        return []
    os.sched_setaffinity(0, mine[1:])
    return ["taskset", "-c", str(mine[0])]


LINE_CPU: list[str] = []


def start_line(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*LINE_CPU, EXE, "run", "--config", cfg, "--quiet", "--summary-json", cfg.with_suffix(".json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], cfg: Path) -> dict[str, Any]:
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"bench-opcua: diffad run failed: {err.decode()[-2000:]}")
    return json.loads(cfg.with_suffix(".json").read_text())["summary"]


class Counter:
    """One client's notifications: results by part, data changes by count."""

    def __init__(self) -> None:
        self.parts: list[int] = []
        self.latencies: list[float] = []
        self.changes = 0

    def event_notification(self, event: Any) -> None:
        self.parts.append(int(event.PartId))
        self.latencies.append(time.time() - event.TriggerTime.timestamp())

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.changes += 1


async def result_filter(client: Any) -> tuple[Any, Any]:
    from asyncua import ua
    from asyncua.common.events import get_filter_from_event_type

    mv = (await client.get_namespace_array()).index(MV)
    rr = await client.nodes.root.get_child(["0:Types", "0:EventTypes", "0:BaseEventType", f"{mv}:ResultReadyEventType"])
    f = await get_filter_from_event_type([rr])
    # OfType, not asyncua's EventType InList: async-opcua 0.19 compares numbers and booleans
    # only in filters (README, "What to subscribe to").
    f.WhereClause = ua.ContentFilter(
        Elements=[
            ua.ContentFilterElement(
                FilterOperator=ua.FilterOperator.OfType, FilterOperands=[ua.LiteralOperand(Value=ua.Variant(rr.nodeid))]
            )
        ]
    )
    return f, rr


async def connect(url: str, subs: int, counter: Counter) -> Any:
    """A client with `subs` subscriptions: results first, then data changes of two variables
    each; returns the connected client."""
    from asyncua import Client, ua

    client = Client(url, timeout=30)
    await client.connect()
    ln = (await client.get_namespace_array()).index(LINE_NS)
    vs = client.get_node(ua.NodeId("VisionSystem", ln))
    f, _ = await result_filter(client)
    sub = await client.create_subscription(50, counter)
    await sub._subscribe(vs, ua.AttributeIds.EventNotifier, f, queuesize=1000)
    for i in range(1, subs):
        s = await client.create_subscription(100, counter)
        names = [WATCHED[(2 * i + k) % len(WATCHED)] for k in range(2)]
        nodes = [client.get_node(ua.NodeId(f"VisionSystem.{n}", ln)) for n in names]
        handles = await s.subscribe_data_change(nodes, sampling_interval=0)
        # A node id that does not exist gives a status, not an error: a bench watching nothing
        # would measure nothing.
        bad = [(n, h) for n, h in zip(names, handles, strict=True) if isinstance(h, ua.StatusCode)]
        if bad:
            raise RuntimeError(f"monitored items refused: {bad}")
    return client


async def clients_child(url: str, n: int, subs: int, out: Path) -> None:
    """Run by the side-by-side phase in a child process: `n` clients until SIGINT."""
    # Their retries after the line has stopped are expected, and not worth a traceback each.
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    counters = [Counter() for _ in range(n)]
    # Ten at a time: fifty secure channels opened at once would be a connection storm, not
    # fifty clients.
    gate = asyncio.Semaphore(10)

    async def one(c: Counter) -> Any:
        async with gate:
            return await connect(url, subs, c)

    t0 = time.monotonic()
    clients = await asyncio.gather(*(one(c) for c in counters), return_exceptions=True)
    connected = [c for c in clients if not isinstance(c, BaseException)]
    took = time.monotonic() - t0
    # The bench's cue to start counting down the run's `--seconds`.
    out.with_suffix(".connected").write_text(f"{len(connected)}\n")
    await stop.wait()
    for c in connected:
        with contextlib.suppress(Exception):
            await c.disconnect()
    errors = sorted({f"{type(c).__name__}: {c}" for c in clients if isinstance(c, BaseException)})
    out.write_text(
        json.dumps(
            {
                "connected": len(connected),
                # The clients' own CPU: at 100 % of one core they, not the server, set the pace.
                "cpu_s": time.process_time(),
                "wall_s": time.monotonic() - t0,
                "connect_s": took,
                "errors": errors[:5],
                "results": [len(c.parts) for c in counters],
                "changes": [c.changes for c in counters],
            }
        )
    )


def side_by_side(tmp: Path, rate: float, seconds: float, n: int, subs: int) -> dict[str, Any]:
    parts = int(rate * seconds)
    runs: dict[str, dict[str, Any]] = {}
    port = free_port()
    plain = board(tmp, "without-clients", rate, parts, port)
    runs["without"] = finish(start_line(plain), plain)
    # Parts enough for the longest connecting seen and then some; SIGTERM ends it earlier.
    connect_budget = 180.0
    loaded = board(tmp, "with-clients", rate, int(rate * (seconds + connect_budget)), port)
    out = tmp / "clients.json"
    proc = start_line(loaded)
    wait_port(port, proc, every=0.005)
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            f"opc.tcp://127.0.0.1:{port}/",
            str(n),
            str(subs),
            str(out),
        ],
    )
    cue, end = out.with_suffix(".connected"), time.monotonic() + connect_budget
    while not cue.exists():
        if child.poll() is not None or proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            child.kill()
            raise SystemExit(f"bench-opcua: the clients did not finish connecting within {connect_budget:.0f} s")
        time.sleep(0.05)
    time.sleep(seconds)
    # SIGTERM: the line drains (every part in flight gets its outcome) and writes its summary.
    proc.send_signal(signal.SIGTERM)
    runs["with"] = finish(proc, loaded)
    child.send_signal(signal.SIGINT)
    child.wait(timeout=120)
    clients = json.loads(out.read_text())
    with_parts = int(runs["with"]["counters"]["triggers"])
    return {"parts": parts, "parts_with": with_parts, "runs": runs, "clients": clients}


async def subscribers(url: str, n: int, proc: subprocess.Popen[bytes]) -> list[Counter]:
    counters = [Counter() for _ in range(n)]
    clients = await asyncio.gather(*(connect(url, 1, c) for c in counters))
    while proc.poll() is None:
        await asyncio.sleep(0.2)
    for c in clients:
        with contextlib.suppress(Exception):
            await c.disconnect()
    return counters


def many_parts(tmp: Path, rate: float, parts: int, n: int) -> dict[str, Any]:
    port = free_port()
    cfg = board(tmp, "many-parts", rate, parts, port)
    proc = start_line(cfg)
    wait_port(port, proc, every=0.005)
    counters = asyncio.run(subscribers(f"opc.tcp://127.0.0.1:{port}/", n, proc))
    summary = finish(proc, cfg)
    per: list[dict[str, int]] = []
    lat: list[float] = []
    for c in counters:
        seen = c.parts
        first = min(seen) if seen else 0
        want = list(range(first, parts + 1)) if seen else []
        per.append(
            {
                "first": first,
                "received": len(seen),
                "duplicated": len(seen) - len(set(seen)),
                "lost": len(set(want) - set(seen)),
                "in_order": int(seen == want),
            }
        )
        lat += c.latencies
    lat.sort()
    return {
        "parts": parts,
        "subscribers": per,
        "latency_p50_ms": 1e3 * lat[len(lat) // 2] if lat else None,
        "latency_p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "summary": {k: summary[k] for k in ("inspected_in_time", "reject_error_p99_ms", "opcua")},
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, n, subs, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        asyncio.run(clients_child(url, n, subs, out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", type=float, default=0.8, help="part rate as a share of `diffad bench`")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each side-by-side run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--subs", type=int, default=10, help="subscriptions per client")
    ap.add_argument("--parts", type=int, default=10_000, help="parts of the 5-subscriber run")
    ap.add_argument("--smoke", action="store_true", help="short runs, to prove the script works")
    ap.add_argument("--no-many-parts", action="store_true", help="the side-by-side runs only (the CI test)")
    ap.add_argument("--out", type=Path, default=ROOT / "target/bench")
    a = ap.parse_args()
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    global LINE_CPU
    LINE_CPU = pin()
    if a.smoke:
        a.seconds, a.parts, a.clients = 5.0, 300, 5
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "bench.json"
        subprocess.run(
            [*LINE_CPU, EXE, "bench", "--model", BRICK, "--threads", "1"]
            + ["--iterations", "30" if a.smoke else "200", "--json", report],
            capture_output=True,
            check=True,
        )
        fps = json.loads(report.read_text())["pipeline"]["fps"]
    rate = round(a.load * fps, 1)
    with tempfile.TemporaryDirectory() as d:
        sbs = side_by_side(Path(d), rate, a.seconds, a.clients, a.subs)
    many: dict[str, Any] | None = None
    if not a.no_many_parts:
        with tempfile.TemporaryDirectory() as d:
            many = many_parts(Path(d), rate, a.parts, 5)
    base, loaded = sbs["runs"]["without"], sbs["runs"]["with"]
    ratio = loaded["reject_error_p99_ms"] / base["reject_error_p99_ms"] if base["reject_error_p99_ms"] > 0 else None
    result = {
        "engine_fps": fps,
        "rate_parts_s": rate,
        "side_by_side": {
            "parts": sbs["parts"],
            "parts_with": sbs["parts_with"],
            "clients": sbs["clients"],
            "without": {
                k: base[k] for k in ("inspected_in_time", "reject_error_p99_ms", "max_reject_error_ms", "opcua")
            },
            "with": {
                k: loaded[k] for k in ("inspected_in_time", "reject_error_p99_ms", "max_reject_error_ms", "opcua")
            },
            "threads_cpu_s": {"without": base.get("threads_cpu_s"), "with": loaded.get("threads_cpu_s")},
            "reject_p99_ratio": ratio,
        },
        "many_parts": many,
        "smoke": a.smoke,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    dest = a.out / ("bench-opcua-smoke.json" if a.smoke else "bench-opcua.json")
    dest.write_text(json.dumps(result, indent=2))
    c = sbs["clients"]
    print(
        f"line at {rate:g} parts/s ({a.load:g} x diffad bench {fps:.1f} fps), side-by-side runs of "
        f"{sbs['parts']} parts without clients and {sbs['parts_with']} with them"
    )
    print(
        f"{c['connected']}/{a.clients} clients x {a.subs} subscriptions connected in {c['connect_s']:.1f} s "
        f"(results per client {min(c['results'], default=0)}..{max(c['results'], default=0)}, "
        f"data changes per client {min(c['changes'], default=0)}..{max(c['changes'], default=0)})"
        + (f"; errors: {c['errors']}" if c["errors"] else "")
    )
    for label, s, n in (("without clients", base, sbs["parts"]), ("with clients", loaded, sbs["parts_with"])):
        print(
            f"{label}: reject timing p99 {s['reject_error_p99_ms']:.4f} ms max {s['max_reject_error_ms']:.4f} ms, "
            f"in time {s['inspected_in_time']}/{n}, "
            f"opcua results {s['opcua']['results']} lost {s['opcua']['lost']}"
        )
    verdict = "met" if ratio is not None and ratio <= 1.10 else "MISSED"
    print(
        f"reject timing p99 with / without: {ratio if ratio is None else round(ratio, 3)} (target <= 1.10: {verdict})"
    )
    if many is None:
        print(f"written {dest}")
        return
    lost = sum(s["lost"] for s in many["subscribers"])
    dup = sum(s["duplicated"] for s in many["subscribers"])
    from_start = all(s["first"] == 1 for s in many["subscribers"])
    print(
        f"{a.parts} parts, 5 subscribers: lost {lost}, duplicated {dup}, every subscriber from part 1: {from_start}, "
        f"in order: {all(s['in_order'] for s in many['subscribers'])} (target 0 lost, 0 duplicated: "
        f"{'met' if lost == 0 and dup == 0 and from_start else 'MISSED'})"
    )
    print(
        f"result latency trigger -> ResultReady at the client (50 ms publishing interval): "
        f"p50 {many['latency_p50_ms']:.1f} ms, p99 {many['latency_p99_ms']:.1f} ms"
    )
    print(f"written {dest}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
