// The operator's page: one EventSource on /events, state applied frame by frame, drawn at most
// once per animation frame. Text from the line only ever goes through textContent.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const RATE_WINDOW = 50;
  let info = null;
  let counts = { parts: 0, passes: 0, rejects: 0, fault_rejects: 0, fault_passes: 0 };
  let scores = [];
  let rejects = [];
  let alarms = [];
  let active = {};
  let heartbeat = null;
  let heartbeatAt = 0; // browser time of the last heartbeat
  let lastFrameAt = 0; // browser time of the last frame of any kind
  let lastId = null; // RUN/SEQ of the last numbered frame
  let connected = false;
  let stopped = false;
  let es = null;
  let dirty = false;
  const pendingBus = []; // bus times of part frames applied but not drawn yet
  const latencies = []; // bus → drawn, ms, per part frame (the test reads them)
  let snapshotParts = 0; // parts the page learnt from a snapshot rather than one by one

  // What the browser test reads; nothing on the page depends on it.
  window.diffadPage = {
    counts: () => Object.assign({}, counts),
    state: () => $("state").dataset.state,
    latencies: () => latencies.slice(),
    snapshotParts: () => snapshotParts,
    run: () => (info ? info.run : null),
  };

  const maxScore = () => 1.0;
  const pct = (n, d) => (d > 0 ? (100 * n / d).toFixed(1) + " %" : "—");
  const pad8 = (n) => String(n).padStart(8, "0");
  const clock = (ms) => new Date(ms).toLocaleTimeString();

  function silentAfterMs() {
    const hb = info ? info.heartbeat_ms : 500;
    return Math.max(3 * hb, 2000);
  }

  function connect() {
    const url = stopped && lastId ? "/events?resume=" + encodeURIComponent(lastId) : "/events";
    es = new EventSource(url);
    es.onopen = () => { connected = true; schedule(); };
    es.onerror = () => { connected = false; schedule(); };
    const on = (kind, fn) => es.addEventListener(kind, (e) => {
      lastFrameAt = Date.now();
      if (e.lastEventId) lastId = e.lastEventId;
      fn(JSON.parse(e.data));
      schedule();
    });
    on("info", (d) => {
      if (info && info.run !== d.run) reset();
      info = d;
      stopped = false;
      drawFacts();
    });
    on("snapshot", (s) => {
      counts = s.counts;
      snapshotParts = s.counts.parts;
      scores = s.scores;
      rejects = s.rejects;
      alarms = s.alarms;
      active = s.active_alarms;
      heartbeat = s.heartbeat;
      heartbeatAt = s.heartbeat ? Date.now() - Math.max(0, s.bus_ms - s.heartbeat_bus_ms) : 0;
      stopped = s.stopped;
    });
    on("resumed", () => {});
    on("part", (p) => {
      counts.parts += 1;
      const key = { pass: "passes", reject: "rejects", fault_reject: "fault_rejects", fault_pass: "fault_passes" }[p.outcome];
      if (key) counts[key] += 1;
      scores.push({ part: p.part, score: p.score, outcome: p.outcome });
      const keep = info ? info.keep_scores : 300;
      if (scores.length > keep) scores.splice(0, scores.length - keep);
      if (p.outcome === "reject" || p.outcome === "fault_reject") {
        rejects.push({ part: p.part, score: p.score, outcome: p.outcome, bus_ms: p.bus_ms, origin: p.origin, kind: p.kind, reason: p.reason });
        const shown = info ? info.keep_rejects : 12;
        if (rejects.length > shown) rejects.splice(0, rejects.length - shown);
      }
      pendingBus.push(p.bus_ms);
    });
    on("alarm", (a) => {
      if (a.active) active[a.code] = a.message; else delete active[a.code];
      alarms.push(a);
      if (alarms.length > 50) alarms.splice(0, alarms.length - 50);
    });
    on("heartbeat", (h) => { heartbeat = h; heartbeatAt = Date.now(); });
    on("end", () => {
      stopped = true;
      connected = false;
      es.close();
      // The line stopped; a restarted one (a new run) is picked up when it comes back.
      setTimeout(connect, 2000);
    });
  }

  function reset() {
    counts = { parts: 0, passes: 0, rejects: 0, fault_rejects: 0, fault_passes: 0 };
    scores = []; rejects = []; alarms = []; active = {}; heartbeat = null; lastId = null;
  }

  function schedule() {
    if (dirty) return;
    dirty = true;
    requestAnimationFrame(draw);
  }

  function lineState() {
    const silent = Date.now() - lastFrameAt > silentAfterMs();
    if (!connected || stopped || silent || !heartbeat) {
      const why = stopped ? "the line stopped" : !connected ? "no connection to the line" : silent ? "the line has sent nothing for " + ((Date.now() - lastFrameAt) / 1000).toFixed(1) + " s" : "waiting for the first heartbeat";
      return ["nodata", "NO DATA", why];
    }
    if (heartbeat.ready) return ["ready", "READY", "every part accounted for"];
    const faults = (heartbeat.faults || []).join(", ") || "ready is low";
    return ["fault", "FAULT", faults];
  }

  function drawState() {
    const [cls, text, detail] = lineState();
    const el = $("state");
    el.className = "state " + cls;
    el.dataset.state = cls;
    el.textContent = text;
    $("state-detail").textContent = detail;
    $("hb-age").textContent = heartbeatAt ? ((Date.now() - heartbeatAt) / 1000).toFixed(1) + " s ago" : "—";
  }

  function drawCounters() {
    const c = counts;
    $("c-pass").textContent = c.passes;
    $("c-reject").textContent = c.rejects;
    $("c-fault").textContent = c.fault_rejects + c.fault_passes;
    $("c-total").textContent = c.parts;
    $("r-pass").textContent = pct(c.passes, c.parts);
    $("r-reject").textContent = pct(c.rejects, c.parts);
    $("r-fault").textContent = c.fault_passes ? c.fault_rejects + " rejected, " + c.fault_passes + " passed" : pct(c.fault_rejects, c.parts);
    const recent = scores.slice(-RATE_WINDOW);
    const r = recent.filter((s) => s.outcome === "reject" || s.outcome === "fault_reject").length;
    $("r-total").textContent = recent.length ? "last " + recent.length + ": " + pct(r, recent.length) + " rejected" : "—";
  }

  function drawScores() {
    const W = 600, H = 230, L = 40, B = 22, T = 8;
    const ymax = Math.max(maxScore(), ...scores.map((s) => (s.score == null ? 0 : s.score)));
    const y = (v) => T + (H - T - B) * (1 - v / ymax);
    const n = Math.max(scores.length, 2);
    const x = (i) => L + (W - L - 6) * (i / (n - 1));
    const parts = [`<svg viewBox="0 0 ${W} ${H}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="scores">`];
    if (info && info.good_median != null && info.good_std != null) {
      const lo = Math.max(0, info.good_median - info.max_shift_std * info.good_std);
      const hi = info.good_median + info.max_shift_std * info.good_std;
      parts.push(`<rect x="${L}" y="${y(hi).toFixed(1)}" width="${W - L - 6}" height="${(y(lo) - y(hi)).toFixed(1)}" fill="rgba(90,160,255,.22)"/>`);
    }
    for (const v of [0, 0.25, 0.5, 0.75, 1.0]) {
      if (v > ymax) continue;
      parts.push(`<line x1="${L}" x2="${W - 6}" y1="${y(v)}" y2="${y(v)}" stroke="#2a313a"/><text x="${L - 6}" y="${y(v) + 5}" fill="#8a96a3" font-size="14" text-anchor="end">${v.toFixed(2)}</text>`);
    }
    if (info) {
      parts.push(`<line x1="${L}" x2="${W - 6}" y1="${y(info.threshold).toFixed(1)}" y2="${y(info.threshold).toFixed(1)}" stroke="#ff4d4d" stroke-width="2.5" stroke-dasharray="8 5"/>`);
    }
    const colour = { pass: "#2fbf71", reject: "#ff4d4d", fault_reject: "#ffb020", fault_pass: "#ffb020" };
    scores.forEach((s, i) => {
      if (s.score == null) {
        parts.push(`<path d="M${x(i).toFixed(1)} ${T + 2}l-5 9h10z" fill="#ffb020"/>`);
        return;
      }
      parts.push(`<circle cx="${x(i).toFixed(1)}" cy="${y(s.score).toFixed(1)}" r="3.6" fill="${colour[s.outcome] || "#ccc"}"/>`);
    });
    if (scores.length) {
      parts.push(`<text x="${L}" y="${H - 4}" fill="#8a96a3" font-size="14">part ${scores[0].part}</text><text x="${W - 6}" y="${H - 4}" fill="#8a96a3" font-size="14" text-anchor="end">part ${scores[scores.length - 1].part}</text>`);
    }
    parts.push("</svg>");
    $("chart-scores").innerHTML = parts.join("");
  }

  function drawRate() {
    const W = 400, H = 230, L = 44, B = 22, T = 8;
    const y = (v) => T + (H - T - B) * (1 - v);
    const rates = [];
    let inWindow = 0;
    scores.forEach((s, i) => {
      if (s.outcome === "reject" || s.outcome === "fault_reject") inWindow += 1;
      if (i >= RATE_WINDOW) {
        const old = scores[i - RATE_WINDOW];
        if (old.outcome === "reject" || old.outcome === "fault_reject") inWindow -= 1;
      }
      rates.push(inWindow / Math.min(i + 1, RATE_WINDOW));
    });
    const n = Math.max(rates.length, 2);
    const x = (i) => L + (W - L - 6) * (i / (n - 1));
    const parts = [`<svg viewBox="0 0 ${W} ${H}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="reject rate">`];
    for (const v of [0, 0.25, 0.5, 0.75, 1.0]) {
      parts.push(`<line x1="${L}" x2="${W - 6}" y1="${y(v)}" y2="${y(v)}" stroke="#2a313a"/><text x="${L - 6}" y="${y(v) + 5}" fill="#8a96a3" font-size="14" text-anchor="end">${Math.round(v * 100)}%</text>`);
    }
    if (rates.length) {
      const pts = rates.map((r, i) => `${x(i).toFixed(1)},${y(r).toFixed(1)}`).join(" ");
      parts.push(`<polyline points="${pts}" fill="none" stroke="#ff4d4d" stroke-width="3"/>`);
    }
    parts.push("</svg>");
    $("chart-rate").innerHTML = parts.join("");
  }

  function imageName(r, suffix) {
    const tag = r.outcome === "fault_reject" ? "fault" : "reject";
    return "/archive/" + info.run + "_" + pad8(r.part) + "_" + tag + suffix;
  }

  function card(r) {
    const el = document.createElement("div");
    el.className = "card " + r.outcome;
    el.dataset.part = r.part;
    if (info && info.archive) {
      const img = document.createElement("img");
      // A verdict's overlay; a fail-safe part was not inspected, so its frame alone.
      const src = imageName(r, r.outcome === "fault_reject" ? ".png" : "_overlay.png");
      img.alt = "part " + r.part;
      let tries = 0;
      img.onerror = () => {
        // The archive writes after the verdict: try again briefly before giving up.
        if (++tries <= 4) setTimeout(() => { img.src = src + "?t=" + tries; }, 600 * tries);
        else { const no = document.createElement("div"); no.className = "noimg"; no.textContent = "image not archived"; img.replaceWith(no); }
      };
      img.src = src;
      el.appendChild(img);
    } else {
      const no = document.createElement("div");
      no.className = "noimg";
      no.textContent = "no [archive] on this line";
      el.appendChild(no);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const b = document.createElement("b");
    b.textContent = "part " + r.part;
    meta.appendChild(b);
    meta.appendChild(document.createElement("br"));
    const what = r.outcome === "fault_reject" ? "fail-safe" + (r.reason ? ": " + r.reason : "") : "score " + (r.score == null ? "—" : r.score.toFixed(3));
    meta.appendChild(document.createTextNode(what));
    meta.appendChild(document.createElement("br"));
    meta.appendChild(document.createTextNode(clock(r.bus_ms) + (r.kind ? " · " + r.kind : "")));
    el.appendChild(meta);
    el.onclick = () => {
      const img = el.querySelector("img");
      if (!img) return;
      $("zoom-img").src = img.src;
      $("zoom-text").textContent = "part " + r.part + " · " + what + " · " + clock(r.bus_ms) + " · " + (r.origin || "");
      $("zoom").showModal();
    };
    return el;
  }

  let drawnRejects = "";
  function drawRejects() {
    const key = rejects.map((r) => r.part).join(",") + (info ? info.run : "");
    if (key === drawnRejects) return;
    drawnRejects = key;
    const grid = $("rejects");
    const have = new Map([...grid.querySelectorAll(".card")].map((c) => [c.dataset.part, c]));
    grid.replaceChildren();
    if (!rejects.length) { const p = document.createElement("p"); p.className = "empty"; p.textContent = "none yet"; grid.appendChild(p); return; }
    for (const r of rejects.slice().reverse()) grid.appendChild(have.get(String(r.part)) || card(r));
  }

  function drawAlarms() {
    const codes = Object.keys(active);
    const banner = $("alarms-active");
    banner.hidden = codes.length === 0;
    banner.textContent = codes.length ? "ALARM: " + codes.map((c) => c + " — " + active[c]).join(" | ") : "";
    const list = $("alarms");
    list.replaceChildren();
    if (!alarms.length) { const li = document.createElement("li"); li.className = "empty"; li.textContent = "none"; list.appendChild(li); return; }
    for (const a of alarms.slice(-15).reverse()) {
      const li = document.createElement("li");
      const s = document.createElement("span");
      s.className = a.active ? "raised" : "cleared";
      s.textContent = a.active ? "raised " : "cleared ";
      li.appendChild(document.createTextNode(clock(a.bus_ms) + " "));
      li.appendChild(s);
      li.appendChild(document.createTextNode(a.code + (a.part != null ? " (part " + a.part + ")" : "") + ": " + a.message));
      list.appendChild(li);
    }
  }

  function drawFacts() {
    if (!info) return;
    $("line-name").textContent = info.line + " · " + info.board;
    $("f-model").textContent = info.model_file + " · id " + info.model_id.slice(0, 16) + " · threshold " + info.threshold.toFixed(4);
    $("f-card").textContent = info.card.length ? info.card.join(" · ") : "no card beside the model";
    $("f-camera").textContent = info.camera;
    $("f-board").textContent = info.board_file;
    $("f-run").textContent = info.run;
    drawnRejects = "";
  }

  function draw() {
    dirty = false;
    drawState();
    drawCounters();
    drawScores();
    drawRate();
    drawRejects();
    drawAlarms();
    const now = Date.now();
    for (const t of pendingBus.splice(0)) latencies.push(now - t);
    if (latencies.length > 5000) latencies.splice(0, latencies.length - 5000);
  }

  // The state and the heartbeat's age change with time alone.
  setInterval(() => { drawState(); }, 250);
  connect();
})();
