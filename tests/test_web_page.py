"""The operator's page in a real browser, on a real line.

Debian's Chromium, driven through chromedriver over the W3C WebDriver protocol (plain HTTP and
JSON, no client library), opens the page that `diffad run` serves for the demo's line (brick
model, simulated conveyor). The page's counters at the end must equal the run's summary, a
rejected part's heatmap must load, the page must say "no data" within 3 s of the line stopping,
and every part event must be drawn within 500 ms of reaching the bus (p99). A screenshot goes to
`target/web-page.png` (the README's copy is `tests/screenshots/web-page.png`).

A second test runs the same line twice, without and with 100 live viewers, and compares the
line's own figures. Needs the `diffad` binary that `cargo test` built (scripts/test runs cargo
first), `scripts/texture-photos`, and chromium + chromium-driver (`scripts/setup --test-deps`).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from linekit import diffad, env, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "target/tiles/photos/brick.png"
MODEL = ROOT / "models/tiles-brick/model.onnx"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
]


def board(tmp: Path, web_port: int, parts: int, rate_hz: float, extra: str = "") -> Path:
    if not PHOTO.exists():
        pytest.fail(f"{PHOTO} missing: run scripts/texture-photos (scripts/test does)")
    path = tmp / "board.toml"
    path.write_text(
        f"""[board]
name = "page-test"
[engine]
model = "{MODEL}"
providers = ["cpu"]
[camera]
source = "sim"
[camera.sim]
photo = "{PHOTO}"
tile = 128
defect_rate = 0.2
seed = 7
[gpio]
sim = true
pulse_ms = 20.0
[line]
name = "tiles"
part_rate_hz = {rate_hz}
belt_speed_mm_s = 500.0
camera_to_ejector_mm = 250.0
parts = {parts}
heartbeat_ms = 500
realtime_priority = 50
[supervisor]
listen = ""
[archive]
dir = "{tmp / "archive"}"
[web]
listen = "127.0.0.1:{web_port}"
{extra}
"""
    )
    return path


class Browser:
    """One Chromium session through chromedriver (W3C WebDriver)."""

    def __init__(self, tmp: Path) -> None:
        for exe in ("chromium", "chromedriver"):
            if shutil.which(exe) is None:
                pytest.fail(f"{exe} not found: `scripts/setup --test-deps` installs chromium and chromium-driver")
        port = free_port()
        self.proc = subprocess.Popen(
            ["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 30
        while True:
            try:
                if self.call("GET", "/status")["value"]["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > end:
                pytest.fail("chromedriver did not become ready in 30 s")
            time.sleep(0.1)
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": shutil.which("chromium"),
                "args": [*CHROME_FLAGS, f"--user-data-dir={tmp / 'chrome'}"],
            },
        }
        session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self.sid = session["value"]["sessionId"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def go(self, url: str) -> None:
        self.call("POST", f"/session/{self.sid}/url", {"url": url})

    def js(self, script: str) -> Any:
        return self.call("POST", f"/session/{self.sid}/execute/sync", {"script": script, "args": []})["value"]

    def screenshot(self, dest: Path) -> None:
        png = self.call("GET", f"/session/{self.sid}/screenshot")["value"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(base64.b64decode(png))

    def close(self) -> None:
        try:
            self.call("DELETE", f"/session/{self.sid}")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


def start_line(cfg: Path, summary: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [diffad(), "run", "--config", cfg, "--quiet", "--summary-json", summary],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], summary: Path, within: float) -> dict[str, Any]:
    try:
        _, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the line did not finish in {within} s")
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(summary.read_text())["summary"]


def test_the_page_shows_the_run_live_and_says_when_it_stops(tmp_path: Path) -> None:
    port = free_port()
    parts = 60
    cfg = board(tmp_path, port, parts, 4.0)
    browser = Browser(tmp_path)
    try:
        proc = start_line(cfg, tmp_path / "summary.json")
        wait_port(port, proc)
        browser.go(f"http://127.0.0.1:{port}/")
        shot_taken = False
        while proc.poll() is None:
            time.sleep(0.2)
            if not shot_taken and (browser.js("return window.diffadPage.counts().parts") or 0) >= 40:
                assert browser.js("return window.diffadPage.state()") == "ready"
                browser.screenshot(ROOT / "target/web-page.png")
                shot_taken = True
        stopped_at = time.monotonic()
        summary = finish(proc, tmp_path / "summary.json", 10)
        assert shot_taken, "the page never showed 40 parts while the line ran"
        # "No data" once the line is gone, within 3 s.
        while browser.js("return window.diffadPage.state()") != "nodata":
            assert time.monotonic() - stopped_at < 3.0, "the page still shows a live line 3 s after it stopped"
            time.sleep(0.05)
        no_data_after = time.monotonic() - stopped_at
        shown = browser.js("return window.diffadPage.counts()")
        c = summary["counters"]
        assert c["triggers"] == parts and summary["invariant_ok"]
        assert shown == {
            "parts": c["triggers"],
            "passes": c["passes"],
            "rejects": c["rejects"],
            "fault_rejects": c["fault_rejects"],
            "fault_passes": c["fault_passes"],
        }, (shown, c)
        # What a person reads on the page, not only the script's state.
        assert browser.js("return document.getElementById('c-total').textContent") == str(parts)
        assert browser.js("return document.getElementById('c-reject').textContent") == str(c["rejects"])
        assert browser.js("return document.getElementById('state').textContent") == "NO DATA"
        # Rejected parts' heatmaps came from the archive and decoded.
        assert c["rejects"] > 0
        loaded = browser.js(
            "return [...document.querySelectorAll('#rejects img')].filter(i => i.complete && i.naturalWidth > 0).length"
        )
        assert loaded >= 1, "no rejected part's heatmap loaded"
        lat = sorted(browser.js("return window.diffadPage.latencies()"))
        from_snapshot = browser.js("return window.diffadPage.snapshotParts()")
        assert len(lat) + from_snapshot == parts, f"{len(lat)} part frames drawn + {from_snapshot} in the snapshot"
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        p50 = lat[len(lat) // 2]
        print(
            f"page update latency (bus -> drawn) over {len(lat)} parts: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {lat[-1]:.1f} ms; 'no data' {no_data_after:.2f} s after the line stopped; "
            f"{loaded} heatmaps loaded"
        )
        assert p99 <= 500.0, f"page update latency p99 {p99:.1f} ms > 500 ms"
    finally:
        browser.close()


def viewers(port: int, n: int, stop: threading.Event, frames: list[int]) -> list[threading.Thread]:
    """`n` live connections to /events, each read to the end of the stream."""

    def read(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(1.0)
            while not stop.is_set():
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                frames[i] += chunk.count(b"event: part")

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_a_hundred_viewers_leave_the_line_as_it_was(tmp_path: Path) -> None:
    parts, rate = 100, 10.0
    runs: dict[str, dict[str, Any]] = {}
    counted: list[int] = []
    for label, n in (("without viewers", 0), ("with 100 viewers", 100)):
        port = free_port()
        run_dir = tmp_path / label.replace(" ", "-")
        run_dir.mkdir()
        cfg = board(run_dir, port, parts, rate, "max_clients = 128")
        proc = start_line(cfg, run_dir / "summary.json")
        wait_port(port, proc)
        stop = threading.Event()
        counted = [0] * n
        threads = viewers(port, n, stop, counted)
        runs[label] = finish(proc, run_dir / "summary.json", 60)
        stop.set()
        for t in threads:
            t.join(5)
    base, loaded = runs["without viewers"], runs["with 100 viewers"]
    for label, s in runs.items():
        print(
            f"{label}: in time {s['inspected_in_time']}/{parts}, skipped {s['counters']['skipped']}, "
            f"latency p99 {s['latency_p99_ms']:.1f} ms, reject timing p99 {s['reject_error_p99_ms']:.3f} ms "
            f"max {s['max_reject_error_ms']:.3f} ms"
        )
    assert loaded["web"]["viewers"] >= 100 and loaded["web"]["dropped"] == 0, loaded["web"]
    # Viewers that connected while the first parts went by got those in the snapshot.
    assert all(c >= parts - 20 for c in counted), sorted(counted)[:5]
    assert loaded["inspected_in_time"] == base["inspected_in_time"] == parts
    assert loaded["counters"]["late_verdicts"] == base["counters"]["late_verdicts"] == 0
    # Pulses within half the late-ejection limit (10 ms for the 20 ms pulse): on this 2-core VM
    # one fresh-clone run saw one pulse of 26 at 2.9 ms with the viewers (0.007 ms without);
    # `scripts/bench-web` measures the figure itself over many more pulses.
    assert loaded["reject_error_p99_ms"] <= base["reject_error_p99_ms"] + 5.0, (base, loaded)
    assert loaded["late_ejections"] == base["late_ejections"] == 0, (base, loaded)
