"""The GenICam source on Aravis's fake GigE Vision camera (real GVCP/GVSP on loopback).

Run through `scripts/bench-camera`. Each figure comes from one `diffad run` and its summary JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXE = ROOT / "target/release/diffad"


def start(cmd: list[str]) -> subprocess.Popen[bytes]:
    """A fake camera process, given a second to open its GVCP port."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise SystemExit(f"bench-camera: {cmd[0]} exited at once (another camera on 127.0.0.1?)")
    return proc


def run(config: Path, parts: int, rate: float | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        cmd = [str(EXE), "run", "--config", str(config), "--quiet", "--parts", str(parts), "--summary-json", str(out)]
        if rate is not None:
            cmd += ["--part-rate", str(rate)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if not out.exists():
            raise SystemExit(f"bench-camera: diffad run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(out.read_text())["summary"]


def genicam_board(tmp: Path, name: str, width: int, height: int, fps: float) -> Path:
    board = tmp / f"{name}.toml"
    board.write_text(
        f"""[board]
name = "{name}"

[engine]
model = "{ROOT}/models/tiles-brick/model.onnx"
providers = ["cpu"]

[camera]
source = "genicam"
stall_ms = 2000

[camera.genicam]
camera = "Aravis-Fake-GV01"
pixel_format = "Mono8"
width = {width}
height = {height}
frame_rate = {fps}
trigger = "free"
timeout_ms = 1000
socket_buffer_bytes = 8388608

[gpio]
sim = true
pulse_ms = 10.0

[line]
name = "bench"
part_rate_hz = {fps}
belt_speed_mm_s = 500.0
camera_to_ejector_mm = 250.0
realtime_priority = 50

[supervisor]
listen = "127.0.0.1:0"
"""
    )
    return board


def stream_figures(s: dict[str, Any]) -> dict[str, Any]:
    c, cam, cpu = s["counters"], s.get("camera") or {}, s.get("threads_cpu_s", {})
    frames = max(1, cam.get("frames_converted", 0) + c["frames_incomplete"])
    source_cpu = cpu.get("capture", 0.0) + cpu.get("arv_gv_stream", 0.0)
    return {
        "parts": c["triggers"],
        "inspections": s["inspections"],
        "frames_incomplete": c["frames_incomplete"],
        "fault_rejects": c["fault_rejects"],
        "packets_missing": c["packets_missing"],
        "packets_resent": c["packets_resent"],
        "underruns": c["stream_underruns"],
        "frames_dropped": c["frames_dropped"],
        "convert_p50_us": cam.get("convert_p50_us"),
        "convert_p99_us": cam.get("convert_p99_us"),
        "convert_max_us": cam.get("convert_max_us"),
        "buffers_allocated": cam.get("buffers_allocated"),
        "source_cpu_ms_per_frame": 1000.0 * source_cpu / frames,
        "capture_cpu_s": cpu.get("capture", 0.0),
        "aravis_receiver_cpu_s": cpu.get("arv_gv_stream", 0.0),
        "invariant_ok": s["invariant_ok"],
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the 30 fps runs")
    ap.add_argument("--smoke", action="store_true", help="a few seconds each, to prove the script runs")
    ap.add_argument("--out", type=Path, default=ROOT / "target/bench")
    args = ap.parse_args()
    seconds = 3.0 if args.smoke else args.seconds
    demo_parts = 20 if args.smoke else 200
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        board = genicam_board(tmp, "bench-camera", 1280, 1024, 30.0)
        for lost in (0, 1):
            cam = start(["arv-fake-gv-camera-0.8", "-i", "127.0.0.1", "-r", str(lost)])
            try:
                s = run(board, int(30 * seconds))
            finally:
                cam.kill()
                cam.wait()
            report[f"lost_{lost}_per_mille"] = stream_figures(s)
        cam = start([str(EXE), "fake-camera", "--config", str(ROOT / "board-configs/desktop-sim.toml")])
        try:
            g = run(ROOT / "board-configs/desktop-genicam.toml", demo_parts)
        finally:
            cam.kill()
            cam.wait()
        sim = run(ROOT / "board-configs/desktop-sim.toml", demo_parts, rate=30.0)
    report["demo"] = {
        name: {
            "parts": s["counters"]["triggers"],
            "passes": s["counters"]["passes"],
            "rejects": s["counters"]["rejects"],
            "fault_rejects": s["counters"]["fault_rejects"],
            "escapes": s["escapes"] if s["with_truth"] else None,
            "false_rejects": s["false_rejects"] if s["with_truth"] else None,
            "invariant_ok": s["invariant_ok"],
        }
        for name, s in (("genicam", g), ("sim", sim))
    }

    a, b = report["lost_0_per_mille"], report["lost_1_per_mille"]
    print(f"fake camera 1280x1024 Mono8 at 30 fps, {seconds:.0f} s, loopback (one run each)")
    print(
        f"  lost 0: {a['parts']} parts, incomplete {a['frames_incomplete']}, dropped {a['frames_dropped']}, "
        f"underruns {a['underruns']}   target 0 incomplete   {verdict(a['frames_incomplete'] == 0)}"
    )
    p99, mx = a["convert_p99_us"] or 0.0, a["convert_max_us"] or 0.0
    print(
        f"  conversion into the frame buffer: p50 {a['convert_p50_us']:.0f} us, p99 {p99:.0f} us, max {mx:.0f} us"
        f"   target <= 1 ms per frame   p99 {verdict(p99 <= 1000)}, max {verdict(mx <= 1000)}"
    )
    print(
        f"  buffers allocated {a['buffers_allocated']} over {a['parts']} frames (then recycled)   "
        f"target no per-frame allocation   {verdict((a['buffers_allocated'] or 0) < 64)}"
    )
    print(
        f"  source CPU per frame {a['source_cpu_ms_per_frame']:.2f} ms "
        f"(capture thread {a['capture_cpu_s']:.2f} s + Aravis receiver {a['aravis_receiver_cpu_s']:.2f} s)"
    )
    ok = b["inspections"] + b["frames_incomplete"] == b["parts"] and b["fault_rejects"] >= b["frames_incomplete"]
    print(
        f"  lost 1 per mille: {b['parts']} parts, packets missing {b['packets_missing']}, incomplete "
        f"{b['frames_incomplete']} (all failed safe), inspected {b['inspections']}   "
        f"target every incomplete frame counted and failed safe, 0 inspected   {verdict(ok)}"
    )
    d = report["demo"]
    gd, sd = d["genicam"], d["sim"]
    same = (gd["passes"], gd["rejects"]) == (sd["passes"], sd["rejects"]) and gd["fault_rejects"] == 0
    print(
        f"demo, {demo_parts} parts: desktop-genicam (diffad fake-camera) passes {gd['passes']} rejects {gd['rejects']} "
        f"fault-rejects {gd['fault_rejects']}; desktop-sim passes {sd['passes']} rejects {sd['rejects']} "
        f"(escapes {sd['escapes']}, false rejects {sd['false_rejects']})   same verdicts {verdict(same)}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / ("camera-smoke.json" if args.smoke else "camera.json")
    dest.write_text(json.dumps(report, indent=2))
    print(f"wrote {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
