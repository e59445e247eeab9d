// The live view: frames from the WebSocket, drawn at the browser's frame rate.
//
// Every frame carries the time it was taken on the host's clock; the page plays each
// stream back PLAYBACK_DELAY_MS behind the newest, interpolating between the two frames
// around that moment, so what is drawn is what each client drew, at the browser's own
// frame rate. Frame layout: demo-client/src/view/frame.rs.
"use strict";
(() => {
  const COLORS = { truth: "#555555", udp: "#1f77b4", "udp-reliable": "#d62728", tcp: "#2ca02c" };
  const OWN = "#f28e2b";
  const NOTES = {
    truth: "The authoritative world, as the server simulates it each tick.",
    udp: "Unreliable datagrams, newest wins: a lost snapshot costs one tick.",
    "udp-reliable": "The same snapshots on a reliable, ordered channel over the same link: stream semantics, head-of-line blocking.",
    tcp: "Kernel TCP on a clean loopback: the in-process link cannot drop its segments. The control.",
  };
  const PLAYBACK_DELAY_MS = 50;
  const KEEP_FRAMES = 48;
  // A client that has had no newer snapshot for this many ticks is drawn as frozen.
  const FROZEN_TICKS = 3.5;
  // A freeze stays marked this long after it ends, so the eye catches it.
  const FROZEN_HOLD_MS = 600;
  const PLOT_SECONDS = 10;
  const FRAME_HEADER = 28;
  const ENTITY_BYTES = 12;

  let hello = null;
  let streams = [];
  let offset = Infinity;
  let halfById = new Map();
  let worldHalf = 0;
  let stats = null;
  let statsAt = 0;
  let editing = new Map();

  const $ = (id) => document.getElementById(id);
  const tickMs = () => (hello ? 1000 / hello.tick_rate : 1000 / 60);

  function parseFrame(buf) {
    const dv = new DataView(buf);
    if (dv.byteLength < FRAME_HEADER || dv.getUint8(0) !== 1) return null;
    const n = dv.getUint32(24, true);
    if (FRAME_HEADER + n * ENTITY_BYTES > dv.byteLength) return null;
    const flags = dv.getUint16(2, true);
    const figure = dv.getFloat32(12, true);
    const tick = dv.getUint32(16, true);
    const f = {
      stream: dv.getUint8(1),
      connected: (flags & 2) !== 0,
      owned: (flags & 1) !== 0 ? dv.getUint32(20, true) : null,
      t: dv.getFloat64(4, true),
      figure: Number.isNaN(figure) ? null : figure,
      tick: tick === 0xffffffff ? null : tick,
      n,
      ids: new Uint16Array(n),
      x: new Float32Array(n),
      y: new Float32Array(n),
      z: new Float32Array(n),
      yaw: new Float32Array(n),
      half: new Float32Array(n),
      arrived: performance.now(),
      index: null,
    };
    for (let i = 0; i < n; i++) {
      const o = FRAME_HEADER + i * ENTITY_BYTES;
      f.ids[i] = dv.getUint16(o, true);
      f.x[i] = dv.getInt16(o + 2, true) / 100;
      f.y[i] = dv.getInt16(o + 4, true) / 100;
      f.z[i] = dv.getInt16(o + 6, true) / 100;
      f.yaw[i] = dv.getInt16(o + 8, true) / 10000;
      f.half[i] = dv.getUint8(o + 10) / 100;
    }
    return f;
  }

  function setup(h) {
    hello = h;
    $("tick-ms").textContent = tickMs().toFixed(1);
    const box = $("streams");
    box.textContent = "";
    streams = h.streams.map((meta, i) => {
      const fig = document.createElement("figure");
      fig.className = "stream";
      fig.dataset.stream = meta.name;
      const color = COLORS[meta.kind] || "#888";
      const title = meta.kind === "truth" ? "server (truth)" : meta.kind === "tcp" ? "tcp (clean control)" : meta.name;
      fig.innerHTML =
        `<h2><span class="swatch" style="background:${color}"></span>${title}</h2>` +
        `<p class="note">${NOTES[meta.kind] || ""}</p>` +
        `<canvas width="600" height="600"></canvas>` +
        `<div class="state"></div>` +
        `<table class="numbers"></table>`;
      box.appendChild(fig);
      const rows = meta.kind === "truth"
        ? [["tick", "tick"], ["tick cost p99 (5 s)", "cost"], ["browsers watching", "viewers"], ["frames dropped for slow browsers", "dropped"]]
        : [["update gap p50 / p99", "gap"], ["staleness p50 / p99", "stale"], ["loss on the link, both ways", "loss"],
           ["kbit/s in", "kbps"], ["underruns (5 s / session)", "under"], ["snapshots received", "snaps"]];
      const table = fig.querySelector("table");
      for (const [label, key] of rows) {
        const tr = document.createElement("tr");
        tr.innerHTML = `<td>${label}</td><td class="v-${key}">–</td>`;
        table.appendChild(tr);
      }
      return {
        index: i,
        meta,
        color,
        fig,
        canvas: fig.querySelector("canvas"),
        state: fig.querySelector(".state"),
        frames: [],
        lastTick: null,
        lastTickAt: null,
        holdUntil: 0,
        freezeMs: 0,
      };
    });
    resize();
  }

  function resize() {
    for (const s of streams) {
      const w = Math.max(150, Math.round(s.canvas.clientWidth * (window.devicePixelRatio || 1)));
      if (s.canvas.width !== w) {
        s.canvas.width = w;
        s.canvas.height = w;
      }
    }
    const plot = $("plot");
    const pw = Math.round(plot.clientWidth * (window.devicePixelRatio || 1));
    const ph = Math.round(plot.clientHeight * (window.devicePixelRatio || 1));
    if (plot.width !== pw || plot.height !== ph) {
      plot.width = pw;
      plot.height = ph;
    }
  }

  function onFrame(f) {
    if (!f || !hello) return;
    const s = streams[f.stream];
    if (!s) return;
    // The smallest arrival delay seen is the clock offset; creep up slowly, so a run of
    // late frames after a fast one does not keep the playback too far back.
    offset = Math.min(offset + 0.02, f.arrived - f.t);
    if (s.meta.kind === "truth") {
      let reach = 0;
      for (let i = 0; i < f.n; i++) {
        halfById.set(f.ids[i], f.half[i]);
        reach = Math.max(reach, Math.abs(f.x[i]) + f.half[i], Math.abs(f.z[i]) + f.half[i]);
      }
      if (reach * 1.05 > worldHalf) worldHalf = Math.max(10, reach * 1.08);
    } else if (f.tick !== null && f.tick !== s.lastTick) {
      s.lastTick = f.tick;
      s.lastTickAt = f.t;
    }
    f.since = s.lastTickAt === null ? 0 : f.t - s.lastTickAt;
    const fr = s.frames;
    if (fr.length && f.t < fr[fr.length - 1].t) return;
    fr.push(f);
    if (fr.length > KEEP_FRAMES) fr.splice(0, fr.length - KEEP_FRAMES);
  }

  function indexOf(f, id) {
    if (!f.index) {
      f.index = new Map();
      for (let i = 0; i < f.n; i++) f.index.set(f.ids[i], i);
    }
    return f.index.get(id);
  }

  function angleLerp(a, b, k) {
    let d = b - a;
    while (d > Math.PI) d -= 2 * Math.PI;
    while (d < -Math.PI) d += 2 * Math.PI;
    return a + d * k;
  }

  function drawStream(s, target) {
    const c = s.canvas;
    const ctx = c.getContext("2d");
    const W = c.width;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, W, W);
    const fr = s.frames;
    let i = fr.length - 1;
    while (i > 0 && fr[i].t > target) i--;
    const a = fr[i];
    if (!a || worldHalf === 0) {
      ctx.fillStyle = "#999";
      ctx.font = `${Math.round(W / 16)}px system-ui, sans-serif`;
      ctx.fillText("waiting for frames…", W * 0.08, W * 0.5);
      return;
    }
    const b = a.t <= target ? fr[i + 1] : undefined;
    const k = b ? Math.min(1, Math.max(0, (target - a.t) / Math.max(0.001, b.t - a.t))) : 0;
    const scale = W / (2 * worldHalf);
    // A 5 m grid.
    ctx.strokeStyle = "#ececec";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let m = -Math.floor(worldHalf / 5) * 5; m <= worldHalf; m += 5) {
      const p = (m + worldHalf) * scale;
      ctx.moveTo(p, 0);
      ctx.lineTo(p, W);
      ctx.moveTo(0, p);
      ctx.lineTo(W, p);
    }
    ctx.stroke();
    const plain = new Path2D();
    const own = new Path2D();
    const ownId = s.meta.kind === "truth" ? ownedInTruth() : a.owned;
    for (let e = 0; e < a.n; e++) {
      const id = a.ids[e];
      let x = a.x[e], y = a.y[e], z = a.z[e], yaw = a.yaw[e];
      if (b) {
        const j = b.ids[e] === id ? e : indexOf(b, id);
        if (j !== undefined) {
          x += (b.x[j] - x) * k;
          y += (b.y[j] - y) * k;
          z += (b.z[j] - z) * k;
          yaw = angleLerp(yaw, b.yaw[j], k);
        }
      }
      const half = (halfById.get(id) || 0.4) * (1 + Math.max(0, y) / 30);
      const r = half * scale;
      const cx = (x + worldHalf) * scale;
      const cz = (z + worldHalf) * scale;
      const co = Math.cos(-yaw), si = Math.sin(-yaw);
      const path = id === ownId ? own : plain;
      path.moveTo(cx + (-r * co - -r * si), cz + (-r * si + -r * co));
      path.lineTo(cx + (r * co - -r * si), cz + (r * si + -r * co));
      path.lineTo(cx + (r * co - r * si), cz + (r * si + r * co));
      path.lineTo(cx + (-r * co - r * si), cz + (-r * si + r * co));
      path.closePath();
    }
    ctx.fillStyle = s.color + "b0";
    ctx.fill(plain);
    ctx.fillStyle = OWN;
    ctx.fill(own);
    ctx.strokeStyle = "#222";
    ctx.lineWidth = Math.max(1, W / 300);
    ctx.stroke(own);
    if (s.meta.kind === "truth") {
      s.state.textContent = a.tick === null ? "" : `tick ${a.tick}`;
      return;
    }
    const frozen = a.connected && a.since > FROZEN_TICKS * tickMs();
    const now = performance.now();
    if (frozen) {
      if (!(now < s.holdUntil)) s.freezeMs = 0;
      s.freezeMs = Math.max(s.freezeMs, a.since);
      s.holdUntil = now + FROZEN_HOLD_MS;
    }
    const marked = frozen || now < s.holdUntil;
    c.classList.toggle("frozen", marked);
    s.state.classList.toggle("frozen", marked);
    if (!a.connected) {
      s.state.textContent = "joining…";
    } else if (frozen) {
      s.state.textContent = `frozen: no newer snapshot for ${a.since.toFixed(0)} ms`;
    } else if (marked) {
      s.state.textContent = `froze for ${s.freezeMs.toFixed(0)} ms, then jumped`;
    } else {
      s.state.textContent = a.figure === null ? "" : `newest state ${a.figure.toFixed(0)} ms old`;
    }
  }

  // The truth is the first transport's server: its avatar is that transport's client.
  function ownedInTruth() {
    const first = streams[1];
    const f = first && first.frames[first.frames.length - 1];
    return f ? f.owned : null;
  }

  function fmt(v, digits = 1) {
    return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–";
  }

  function set(fig, key, text) {
    const el = fig.querySelector(`.v-${key}`);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function onStats(st, you) {
    stats = st;
    statsAt = performance.now();
    const c = st.conditioner;
    $("link").textContent = `link now: ${c.text}`;
    const toggle = $("conditioner-toggle");
    toggle.textContent = c.enabled ? "conditioner: on" : "conditioner: off";
    toggle.classList.toggle("on", c.enabled);
    for (const [id, v] of [["loss", c.loss_pct], ["latency", c.latency_ms], ["jitter", c.jitter_ms]]) {
      const input = $(id);
      if (!editing.get(id) || performance.now() - editing.get(id) > 1500) {
        input.value = v;
        showSlider(id);
      }
    }
    $("viewers").textContent = `Browsers watching: ${st.viewers}. Frames dropped for slow browsers: ${st.frames_dropped} (for this one: ${you ? you.dropped : 0}); the game never waits for a browser.`;
    const bySrv = new Map(st.streams.map((x) => [x.name, x]));
    for (const s of streams) {
      if (s.meta.kind === "truth") {
        const first = st.streams[0];
        if (first) {
          set(s.fig, "tick", String(first.server_tick));
          set(s.fig, "cost", `${fmt(first.tick_cost_p99_us, 0)} µs`);
        }
        set(s.fig, "viewers", String(st.viewers));
        set(s.fig, "dropped", String(st.frames_dropped));
        continue;
      }
      const x = bySrv.get(s.meta.name);
      if (!x) continue;
      set(s.fig, "gap", `${fmt(x.gap_p50_ms)} / ${fmt(x.gap_p99_ms)} ms`);
      set(s.fig, "stale", `${fmt(x.stale_p50_ms)} / ${fmt(x.stale_p99_ms)} ms`);
      set(s.fig, "loss", x.link_loss_pct === null ? "none simulated (kernel TCP)" : `${fmt(x.link_loss_pct)} %`);
      set(s.fig, "kbps", fmt(x.kbps_in, 0));
      set(s.fig, "under", `${x.underruns_recent} / ${x.underruns}`);
      set(s.fig, "snaps", x.connected ? String(x.snapshots) : "joining…");
    }
  }

  function drawPlot() {
    const c = $("plot");
    const ctx = c.getContext("2d");
    const W = c.width, H = c.height;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, W, H);
    if (!stats) return;
    const now = stats.t_s + (performance.now() - statsAt) / 1000;
    let top = 100;
    for (const x of stats.streams) for (const g of x.gaps) top = Math.max(top, g[1]);
    top = Math.min(400, Math.ceil((top * 1.1) / 50) * 50);
    const left = 44 * (window.devicePixelRatio || 1), bottom = H - 16 * (window.devicePixelRatio || 1);
    const px = (t) => left + ((t - (now - PLOT_SECONDS)) / PLOT_SECONDS) * (W - left - 4);
    const py = (ms) => bottom - (Math.min(ms, top) / top) * (bottom - 6);
    ctx.font = `${Math.round(11 * (window.devicePixelRatio || 1))}px system-ui, sans-serif`;
    ctx.fillStyle = "#666";
    ctx.strokeStyle = "#e6e6e6";
    ctx.lineWidth = 1;
    for (const ms of [tickMs(), 50, 100, 200, 300, 400].filter((m) => m <= top)) {
      ctx.beginPath();
      ctx.moveTo(left, py(ms));
      ctx.lineTo(W, py(ms));
      ctx.stroke();
      ctx.fillText(`${ms.toFixed(0)} ms`, 2, py(ms) + 4);
    }
    ctx.fillText(`${PLOT_SECONDS} s ago`, left, H - 2);
    ctx.fillText("now", W - 28 * (window.devicePixelRatio || 1), H - 2);
    for (const x of stats.streams) {
      const s = streams.find((s) => s.meta.name === x.name);
      ctx.strokeStyle = s ? s.color : "#888";
      ctx.lineWidth = 1.5 * (window.devicePixelRatio || 1);
      ctx.beginPath();
      let first = true;
      for (const [t, ms] of x.gaps) {
        if (t < now - PLOT_SECONDS) continue;
        if (first) ctx.moveTo(px(t), py(ms));
        else ctx.lineTo(px(t), py(ms));
        first = false;
      }
      ctx.stroke();
    }
  }

  function frame(now) {
    resize();
    const target = now - offset - PLAYBACK_DELAY_MS;
    for (const s of streams) drawStream(s, target);
    drawPlot();
    requestAnimationFrame(frame);
  }

  async function send(cmd) {
    try {
      const r = await fetch("/control", { method: "POST", body: cmd });
      $("link-error").textContent = r.ok ? "" : (await r.text()).trim();
    } catch (e) {
      $("link-error").textContent = String(e);
    }
  }

  function showSlider(id) {
    const unit = id === "loss" ? " %" : " ms";
    $(`${id}-out`).textContent = `${Number($(id).value)}${unit}`;
  }

  function wireControls() {
    for (const id of ["loss", "latency", "jitter"]) {
      const input = $(id);
      input.addEventListener("input", () => {
        editing.set(id, performance.now());
        showSlider(id);
      });
      input.addEventListener("change", () => {
        editing.set(id, performance.now());
        send(`${id} ${input.value}`);
      });
    }
    for (const b of document.querySelectorAll("button[data-cmd]")) {
      b.addEventListener("click", () => {
        editing.clear();
        send(b.dataset.cmd);
      });
    }
    $("conditioner-toggle").addEventListener("click", () => {
      send(stats && stats.conditioner.enabled ? "conditioner off" : "conditioner on");
    });
  }

  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        const m = JSON.parse(ev.data);
        if (m.hello) setup(m.hello);
        if (m.stats) onStats(m.stats, m.you);
      } else {
        onFrame(parseFrame(ev.data));
      }
    };
    ws.onclose = () => {
      $("link").textContent = "disconnected from demo-client view; retrying…";
      setTimeout(connect, 1000);
    };
  }

  // For a look from the browser's console (and the browser test's diagnostics).
  window.snapsyncView = {
    playback: () => streams.map((s) => {
      const last = s.frames[s.frames.length - 1];
      return { name: s.meta.name, frames: s.frames.length, newest_t: last ? last.t : null, tick: last ? last.tick : null };
    }),
    offset: () => offset,
  };

  wireControls();
  connect();
  requestAnimationFrame(frame);
})();
