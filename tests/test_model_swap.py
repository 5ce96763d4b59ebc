"""A new model on a running line: staged, shadowed, promoted, rolled back, refused.

Each test runs the real `diffad run` (the demo's line: brick model, simulated conveyor or a replay
of tiles, simulated pins) with a `[control]` socket, drives it with `diffad model ...` as a line
engineer would, and reads every event from the supervisor stream (TCP NDJSON, resumed from the
run's first event). The candidate is the gravel model, which judges brick tiles differently: its
verdicts and scores show which model judged which part. Needs the `diffad` binary that
`cargo test` built, `scripts/texture-photos`, and onnx (the exporter's requirements).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from linekit import diffad, env, free_port

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "target/tiles/photos/brick.png"
BRICK = ROOT / "models/tiles-brick/model.onnx"
GRAVEL = ROOT / "models/tiles-gravel/model.onnx"
DEMO_KEY = ROOT / "models/demo-signing.pub"


def board(
    tmp: Path,
    name: str,
    model: Path,
    parts: int,
    rate: float,
    camera: str | None = None,
    signed: bool = False,
    sock_dir: Path | None = None,
) -> tuple[Path, int, Path]:
    if not PHOTO.exists():
        pytest.fail(f"{PHOTO} missing: run scripts/texture-photos (scripts/test does)")
    port = free_port()
    sock = (sock_dir or tmp) / f"{name}.sock"
    camera = (
        camera
        or f'[camera]\nsource = "sim"\n[camera.sim]\nphoto = "{PHOTO}"\ntile = 128\ndefect_rate = 0.2\nseed = 7\n'
    )
    keys = f'require_signature = true\ntrusted_keys = ["{DEMO_KEY}"]\n' if signed else ""
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[board]
name = "{name}"
[engine]
model = "{model}"
providers = ["cpu"]
{keys}{camera}[gpio]
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
[drift]
window = 40
[supervisor]
listen = "127.0.0.1:{port}"
[control]
socket = "{sock}"
"""
    )
    return path, port, sock


class Line:
    """`diffad run` in the background, with every event of its stream collected."""

    def __init__(self, cfg: Path, port: int, sock: Path) -> None:
        self.cfg, self.sock = cfg, sock
        self.summary_path = cfg.with_suffix(".summary.json")
        self.proc = subprocess.Popen(
            [diffad(), "run", "--config", cfg, "--quiet", "--summary-json", self.summary_path],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        end = time.monotonic() + 60
        while True:
            try:
                self.conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"the line did not start: {self.proc.stderr.read().decode()[-3000:]}")
                time.sleep(0.05)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail("no control socket")
            time.sleep(0.05)

    def _read(self) -> None:
        buf = b""
        f = self.conn.makefile("rb")
        hello = json.loads(f.readline())
        # Everything of this run from its first event, then live.
        self.conn.sendall(f"resume {hello['run']} 0\n".encode())
        for line in f:
            buf = line.strip()
            if not buf:
                continue
            ev = json.loads(buf)
            ev["_at"] = time.monotonic()
            with self.lock:
                self.events.append(ev)

    def parts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("type") == "part"]

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("type") == kind]

    def wait_parts(self, n: int, within: float = 120) -> None:
        end = time.monotonic() + within
        while len(self.parts()) < n:
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"the line stopped or stalled at {len(self.parts())} parts, waiting for {n}")
            time.sleep(0.02)

    def model(self, *args: str) -> tuple[int, str]:
        r = subprocess.run(
            [diffad(), "model", *args, "--socket", self.sock, "--json"], capture_output=True, text=True, env=env()
        )
        return r.returncode, r.stdout + r.stderr

    def finish(self, within: float = 180) -> dict[str, Any]:
        try:
            _, err = self.proc.communicate(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("the line did not finish")
        assert self.proc.returncode == 0, err.decode(errors="replace")[-3000:]
        self.reader.join(5)
        return json.loads(self.summary_path.read_text())["summary"]


def ok(line: Line, *args: str) -> dict[str, Any]:
    code, out = line.model(*args)
    assert code == 0, f"diffad model {' '.join(args)}: {out}"
    return json.loads(out)


def model_id(path: Path) -> str:
    out = subprocess.run([diffad(), "inspect", path], capture_output=True, text=True, env=env(), check=True).stdout
    return next(ln.split()[2] for ln in out.splitlines() if ln.startswith("model id:"))


def test_stage_shadow_promote_rollback_on_a_running_line(tmp_path: Path) -> None:
    parts, rate = 2000, 30.0
    cfg, port, sock = board(tmp_path, "live", BRICK, parts, rate)
    brick, gravel = model_id(BRICK), model_id(GRAVEL)
    line = Line(cfg, port, sock)
    line.wait_parts(100)
    staged = ok(line, "stage", str(GRAVEL))["staged"]
    assert staged["id"] == gravel
    ok(line, "shadow")
    line.wait_parts(700)
    report = ok(line, "report", "--out", str(tmp_path / "report.json"))["report"]
    assert report["compared"] > 0 and json.loads((tmp_path / "report.json").read_text()) == report
    line.wait_parts(800)
    t0 = time.monotonic()
    promoted = ok(line, "promote")["switch"]
    p1 = promoted["after_part"]
    status = ok(line, "status")
    assert status["status"]["live"]["id"] == gravel and status["differs_from_board"] is True
    line.wait_parts(1400)
    p2 = ok(line, "rollback")["switch"]["after_part"]
    summary = line.finish()

    events = line.parts()
    by_part = {e["part"]: e for e in events}
    assert sorted(by_part) == list(range(1, parts + 1)) and len(events) == parts, "every part once"
    c = summary["counters"]
    assert summary["invariant_ok"] and c["triggers"] == parts
    assert c["fault_rejects"] == 0 and c["fault_passes"] == 0, f"fail-safe outcomes: {c}"
    for n, e in by_part.items():
        want = gravel if p1 < n <= p2 else brick
        assert e.get("model") == want, (
            f"part {n} judged by {e.get('model')}, expected {want} (switches after {p1}, {p2})"
        )
    first_new = by_part[p1 + 1]
    promote_ms = (first_new["_at"] - t0) * 1e3
    # The shadow run ended at the promote; every shadow event is a part the live model judged too.
    shadows = line.of("shadow")
    assert shadows and all(s["model"] == gravel and s["part"] <= p1 for s in shadows)
    final = [r for r in line.of("shadow_report") if r["done"]][-1]
    assert final["compared"] == len(shadows)
    assert final["agree"] == sum(s["would_reject"] == s["live_rejects"] for s in shadows)
    assert final["would_reject_count"] == sum(s["would_reject"] and not s["live_rejects"] for s in shadows)
    for s in shadows:
        assert s["live_score"] == pytest.approx(by_part[s["part"]]["score"], abs=1e-6)

    # The parts the candidate judged get the verdicts a line started with it gives them.
    cfg2, port2, sock2 = board(tmp_path, "candidate", GRAVEL, p2, rate)
    again = Line(cfg2, port2, sock2)
    again.finish()
    ref = {e["part"]: e for e in again.parts()}
    for n in range(p1 + 1, p2 + 1):
        assert by_part[n]["outcome"] == ref[n]["outcome"], f"part {n}: {by_part[n]} vs {ref[n]}"
        assert by_part[n]["score"] == pytest.approx(ref[n]["score"], abs=1e-5)
    print(
        f"2000 parts at {rate:g}/s: promote after part {p1}, rollback after part {p2}; "
        f"{final['compared']} parts shadowed, {final['not_compared']} not (no headroom); "
        f"first part judged by the candidate {promote_ms:.1f} ms after `diffad model promote` was called "
        f"(frame interval {1e3 / rate:.1f} ms); latency p99 {summary['latency_p99_ms']:.1f} ms"
    )


def tiles(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir()
    photo = Image.open(PHOTO).convert("L")
    out = []
    for i in range(n):
        x, y = (i * 29) % 384, (i * 53) % 384
        p = folder / f"{i:03d}.png"
        photo.crop((x, y, x + 128, y + 128)).save(p)
        out.append(p)
    return out


def test_the_shadow_report_equals_an_offline_run_of_the_candidate(tmp_path: Path) -> None:
    images = tiles(tmp_path / "tiles", 40)
    camera = f'[camera]\nsource = "replay"\n[camera.replay]\ndir = "{tmp_path / "tiles"}"\n'
    cfg, port, sock = board(tmp_path, "replay", BRICK, 40, 5.0, camera)
    line = Line(cfg, port, sock)
    ok(line, "stage", str(GRAVEL))
    ok(line, "shadow")
    line.finish()
    offline = subprocess.run(
        [diffad(), "infer", "--json", "--model", GRAVEL, *images], capture_output=True, text=True, env=env()
    )
    rows = [json.loads(ln) for ln in offline.stdout.splitlines() if ln.startswith("{")]
    score_of = {Path(r["image"]).name: r for r in rows}
    assert len(score_of) == 40, offline.stdout + offline.stderr
    parts = {e["part"]: e for e in line.parts()}
    shadows = line.of("shadow")
    assert len(shadows) >= 20, f"only {len(shadows)} parts shadowed at 5 parts/s"
    for s in shadows:
        name = Path(parts[s["part"]]["origin"]).name
        assert s["score"] == pytest.approx(score_of[name]["score"], abs=1e-5), (name, s, score_of[name])
        assert s["would_reject"] == (score_of[name]["verdict"] == "reject"), (name, s, score_of[name])
    report = [r for r in line.of("shadow_report") if r["done"]][-1]
    compared = {s["part"] for s in shadows}
    want_reject = sorted(
        p
        for p in compared
        if score_of[Path(parts[p]["origin"]).name]["verdict"] == "reject" and parts[p]["outcome"] == "pass"
    )
    want_pass = sorted(
        p
        for p in compared
        if score_of[Path(parts[p]["origin"]).name]["verdict"] == "pass" and parts[p]["outcome"] == "reject"
    )
    assert report["compared"] == len(compared)
    assert sorted(report["would_reject"]) == want_reject and sorted(report["would_pass"]) == want_pass
    assert report["agree"] == len(compared) - len(want_reject) - len(want_pass)


def candidates(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Bad candidates, each with what its refusal must say."""
    import onnx

    out: dict[str, tuple[Path, str]] = {}

    def copy(name: str) -> Path:
        d = tmp / name
        shutil.copytree(BRICK.parent, d)
        return d / "model.onnx"

    flipped = copy("flipped")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    out["flipped byte"] = (flipped, "does not match its signature")
    out["wrong input size"] = (ROOT / "tests/fixtures/sigmoid.onnx", "is not signed")

    def resign(path: Path) -> None:
        subprocess.run(
            [ROOT / ".venv/bin/python", "-m", "exporter", "sign", path, "--key", ROOT / "models/demo-signing.key"],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )

    wrong = copy("small")
    shutil.copy(ROOT / "tests/fixtures/sigmoid.onnx", wrong)
    for p in (wrong.parent / "model.golden.json",):
        p.unlink()
    shutil.copy(ROOT / "tests/fixtures/sigmoid.golden.json", wrong.parent / "model.golden.json")
    shutil.rmtree(wrong.parent / "model.golden")
    shutil.copytree(ROOT / "tests/fixtures/sigmoid.golden", wrong.parent / "sigmoid.golden")
    resign(wrong)
    out["wrong input size, signed"] = (wrong, "takes 1x16x16")

    uncal = copy("uncalibrated")
    m = onnx.load(uncal)
    for prop in m.metadata_props:
        if prop.key == "diffad.manifest":
            manifest = json.loads(prop.value)
            manifest["threshold"] = None
            prop.value = json.dumps(manifest)
    onnx.save(m, uncal)
    resign(uncal)
    out["missing threshold"] = (uncal, "no calibrated threshold")

    failing = copy("failing")
    golden = json.loads((failing.parent / "model.golden.json").read_text())
    golden["cases"][0]["score"] += 0.25
    (failing.parent / "model.golden.json").write_text(json.dumps(golden))
    resign(failing)
    out["failing self-test"] = (failing, "self-test")
    return out


def test_bad_candidates_are_refused_with_their_reason_and_the_line_runs_on(tmp_path: Path) -> None:
    parts, rate = 240, 20.0
    bad = candidates(tmp_path)
    runs = {}
    for label, stage in (("without stages", False), ("with refused stages", True)):
        cfg, port, sock = board(tmp_path, label.replace(" ", "-"), BRICK, parts, rate, signed=True)
        line = Line(cfg, port, sock)
        if stage:
            line.wait_parts(20)
            for what, (path, reason) in bad.items():
                code, out = line.model("stage", str(path))
                assert code != 0 and reason in out, f"{what}: {out}"
            status = ok(line, "status")["status"]
            assert status["candidate"] is None and status["live"]["file"].endswith("tiles-brick/model.onnx")
        runs[label] = line.finish()
    base, staged = runs["without stages"], runs["with refused stages"]
    for label, s in runs.items():
        print(
            f"{label}: in time {s['inspected_in_time']}/{parts}, reject timing p99 {s['reject_error_p99_ms']:.3f} ms "
            f"max {s['max_reject_error_ms']:.3f} ms, latency p99 {s['latency_p99_ms']:.1f} ms"
        )
    assert staged["inspected_in_time"] == base["inspected_in_time"] == parts
    # Loading and self-testing five candidates beside the line moves the reject edges on this
    # kernel (a CI run: p99 1.6 ms against 0.1 ms without); every pulse must still land well
    # inside its 20 ms width.
    assert staged["max_reject_error_ms"] <= 5.0, (base, staged)


def test_the_control_socket_answers_its_owner_only(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    import tempfile

    # A folder another user can reach (pytest's own are the owner's only).
    shared = Path(tempfile.mkdtemp(prefix="diffad-control-"))
    shared.chmod(0o755)
    cfg, port, sock = board(tmp_path, "owner", BRICK, 60, 10.0, sock_dir=shared)
    line = Line(cfg, port, sock)
    assert sock.stat().st_mode & 0o777 == 0o600
    assert ok(line, "status")["status"]["live"]["id"]
    # The file's mode keeps others out; opened up here, the peer's credentials still do.
    os.chmod(sock, 0o666)
    other = subprocess.run(
        [diffad(), "model", "status", "--socket", sock],
        capture_output=True,
        text=True,
        env=env(),
        user=65534,
        group=65534,
    )
    assert other.returncode != 0 and "refused" in other.stdout + other.stderr, other.stdout + other.stderr
    line.finish()
    shutil.rmtree(shared, ignore_errors=True)
