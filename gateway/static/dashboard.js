// gpux dashboard: plain JS + canvas, no dependencies, no build step (docs/demo.md).
//
// Live data comes over the public market-data feed (WebSocket /v1/feeds, docs/feeds.md): for every
// class the book (level 2 snapshot + deltas), trades, ticker, 1-minute candles (every kind, and
// each kind's: spot, on_demand, reserved) and the price index, with the feed's gap rule (a
// stream's `u` must grow by one; a heartbeat's `u` must match, else resubscribe).  When a class is
// first shown, its charts' history comes from GET /v1/candles (the recording): older candles of
// every kind, and the index line before the page opened, recomputed per minute from the firm
// (on-demand and reserved) candles of the 24 h before.  Capacity calendar, utilisation and open
// leases are polled from GET /v1/dashboard/CLASS every POLL_MS.  Messages only mark what changed; drawing happens at most
// once per animation frame (requestAnimationFrame), and only for the selected class.
//
// Every chart element carries data-count: how many data items it drew last time (levels, candles,
// trades seen, points, heat-map cells, leases).  window.gpux.counts() returns them all (tests).
"use strict";
(() => {
  const USD = 1e6;
  const HOUR = 3600;
  const POLL_MS = 2000;
  const FORWARD_DAYS = 14;
  const TAPE_ROWS = 40;
  const KINDS = ["spot", "on_demand", "reserved"];
  const KIND_LABEL = { all: "all kinds", spot: "spot", on_demand: "on-demand", reserved: "reserved" };
  const STREAMS = [["book"], ["trades"], ["ticker"], ["candles", "1m"], ["index"]]
    .concat(KINDS.map((k) => ["candles", "1m", k]));
  const LIVE = ["products", "quotes"];  // the products' channels: live only, for the selected class
  const CANDLES_KEPT = 240;
  const COLORS = {};
  const css = getComputedStyle(document.documentElement);
  for (const k of ["bid", "ask", "sbid", "sask", "accent", "text", "dim", "line", "warn", "panel"]) {
    COLORS[k] = css.getPropertyValue("--" + k).trim() || "#888";
  }

  const S = {
    classes: [], sel: null, ws: null, cls: {}, dirty: new Set(), raf: 0, ids: 1, connected: false,
    time: 0, seq: 0, messages: 0, gaps: 0, retry: 500, pollTimer: 0, lastTapeTid: {},
    candleKind: "all", openedAt: 0, live: false, liveFor: null,
  };

  function C(name) {
    return S.cls[name] || (S.cls[name] = {
      book: { bids: new Map(), spot_bids: new Map(), asks: new Map(), spot_asks: new Map() },
      u: {}, pending: new Set(), trades: [], lastTid: 0, tradeCount: 0, ticker: null,
      candles: { all: [], spot: [], on_demand: [], reserved: [] },  // 1-minute candles by kind
      index: null, indexHist: [], dash: null, utilHist: [], products: new Map(), quotes: new Map(),
      // history from GET /v1/candles: candles received and merged (older than the live snapshot's), index points
      hist: { state: "", received: 0, candles: 0, index: [] },
    });
  }

  // ------------------------------------------------------------------ formatting
  const dollars = (micro, digits = 3) => (micro == null ? "—" : "$" + (micro / USD).toFixed(digits));
  const pad = (n) => String(n).padStart(2, "0");
  const hhmmss = (t) => { const d = new Date(t * 1000); return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()); };
  const hhmm = (t) => { const d = new Date(t * 1000); return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()); };
  const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const num = (n) => (n == null ? "—" : Number(n).toLocaleString("en-US"));

  // ------------------------------------------------------------------ the feed
  function send(op) {
    if (S.ws && S.ws.readyState === 1) { op.id = S.ids++; S.ws.send(JSON.stringify(op)); }
  }
  function subscribe(name, channel, interval, kind) {
    const op = { op: "subscribe", channel, class: name };
    if (interval) op.interval = interval;
    if (kind) op.kind = kind;
    send(op);
  }
  // stream names (docs/feeds.md): channel, candles:INTERVAL, candles:INTERVAL:KIND, index:KIND
  function streamOf(m) {
    let s = m.type;
    if (m.type === "candles") s += ":" + m.interval;
    if ((m.type === "candles" || m.type === "index") && m.kind) s += ":" + m.kind;
    return s;
  }
  function resubscribe(name, stream) {
    const c = C(name);
    if (c.pending.has(stream)) return;
    S.gaps++;
    c.pending.add(stream);
    const parts = stream.split(":");
    if (parts[0] === "candles") subscribe(name, "candles", parts[1], parts[2]);
    else subscribe(name, parts[0], null, parts[1]);
  }

  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/feeds";
    setStatus("connecting", "connecting…");
    const ws = new WebSocket(url);
    S.ws = ws;
    ws.onmessage = (e) => { try { onMessage(JSON.parse(e.data)); } catch (err) { console.error(err); } };
    ws.onopen = () => { S.retry = 500; };
    ws.onclose = () => {
      S.connected = false;
      setStatus("closed", "disconnected — retrying");
      setTimeout(connect, S.retry);
      S.retry = Math.min(S.retry * 2, 10000);
    };
  }

  function onMessage(m) {
    S.messages++;
    const t = m.type;
    if (t === "hello") { onHello(m); return; }
    if (t === "subscribed" || t === "unsubscribed" || t === "pong") return;
    if (t === "error") { console.warn("feed error", m); return; }
    const name = m.class;
    if (!name) return;
    const c = C(name);
    if (m.time > S.time) S.time = m.time;
    if (!S.openedAt && m.time) S.openedAt = m.time;
    if (t === "heartbeat") {
      for (const [stream, u] of Object.entries(m.u || {})) {
        if (c.u[stream] !== undefined && !c.pending.has(stream) && c.u[stream] !== u) resubscribe(name, stream);
      }
      S.seq = Math.max(S.seq, m.seq || 0);
      markStatus();
      return;
    }
    const stream = streamOf(m);
    if (m.action === "snapshot") {
      c.pending.delete(stream);
    } else {
      if (c.pending.has(stream)) return;
      if (c.u[stream] === undefined) return; // an update before our snapshot: the snapshot covers it
      if (m.u !== c.u[stream] + 1) { resubscribe(name, stream); return; }
    }
    c.u[stream] = m.u;
    apply(c, t, m);
    S.dirty.add(name);
    schedule();
  }

  function onHello(m) {
    S.connected = true;
    const order = ["H100", "A100", "RTX4090", "L40S"];
    S.classes = (m.classes || []).slice().sort((a, b) => {
      const ia = order.indexOf(a), ib = order.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : 1);
    });
    const want = decodeURIComponent(location.hash.slice(1));
    if (!S.sel || !S.classes.includes(S.sel)) {
      S.sel = S.classes.includes(want) ? want : (S.classes.includes("H100") ? "H100" : S.classes[0]);
    }
    for (const name of S.classes) {
      const c = C(name);
      c.u = {};
      c.pending = new Set();
      for (const [channel, interval, kind] of STREAMS) subscribe(name, channel, interval, kind);
    }
    S.live = (m.channels || []).includes("products");
    S.liveFor = null;
    followProducts(S.sel);
    buildTabs();
    markStatus();
    poll();
    loadHistory(S.sel);
  }

  // the products and quotes channels of the selected class only (each costs the exchange a computation)
  function followProducts(name) {
    if (!S.live || S.liveFor === name) return;
    if (S.liveFor) {
      const old = C(S.liveFor);
      for (const ch of LIVE) {
        send({ op: "unsubscribe", channel: ch, class: S.liveFor });
        delete old.u[ch];
        old.pending.delete(ch);
      }
    }
    S.liveFor = name;
    for (const ch of LIVE) subscribe(name, ch);
  }

  function apply(c, type, m) {
    if (type === "book") {
      const b = c.book;
      if (m.action === "snapshot") for (const k in b) b[k].clear();
      for (const k of ["bids", "spot_bids", "asks", "spot_asks"]) {
        for (const [price, gpus] of m[k] || []) {
          if (gpus) b[k].set(price, gpus); else b[k].delete(price);
        }
      }
    } else if (type === "trades") {
      for (const tr of m.trades || []) {
        if (tr.trade_id <= c.lastTid) continue;
        c.lastTid = tr.trade_id;
        c.trades.push(tr);
        c.tradeCount++;
      }
      if (c.trades.length > 200) c.trades.splice(0, c.trades.length - 200);
    } else if (type === "products" || type === "quotes") {
      // a snapshot replaces the class's copy; an update replaces the rows it lists and drops `removed`
      if (m.action === "snapshot") c[type] = new Map();
      for (const gone of m.removed || []) c[type].delete(gone);
      for (const row of m[type] || []) c[type].set(row.product, type === "products" ? row : row.quotes);
    } else if (type === "ticker") {
      c.ticker = m;
    } else if (type === "candles") {
      const kind = m.kind || "all";
      let cs = c.candles[kind];
      // a snapshot replaces the candles it covers; older ones (history from GET /v1/candles) stay
      if (m.action === "snapshot" && m.candles && m.candles.length) cs = cs.filter((k) => k.start < m.candles[0].start);
      for (const k of m.candles || []) {
        const last = cs.length ? cs[cs.length - 1] : null;
        if (last && last.start === k.start) cs[cs.length - 1] = k;
        else if (!last || k.start > last.start) cs.push(k);
      }
      if (cs.length > CANDLES_KEPT) cs.splice(0, cs.length - CANDLES_KEPT);
      c.candles[kind] = cs;
    } else if (type === "index") {
      if (m.kind) return;  // only the class-wide index is drawn
      c.index = m;
      if (m.value != null) {
        const h = c.indexHist;
        if (h.length && h[h.length - 1].t === m.time) h[h.length - 1].v = m.value;
        else h.push({ t: m.time, v: m.value });
        if (h.length > 2000) h.splice(0, h.length - 2000);
      }
    }
  }

  // ------------------------------------------------------------------ history (GET /v1/candles)
  async function candlesOf(name, kind, limit) {
    let url = "/v1/candles?class=" + encodeURIComponent(name) + "&interval=1m&limit=" + limit;
    if (kind !== "all") url += "&kind=" + kind;
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error("GET /v1/candles: " + r.status);
    return (await r.json()).candles;
  }

  // the charts' history of a class, once per page: candles older than the live snapshot's, and
  // the index line before the page opened (the 24 h VWAP of firm trades at each minute's end,
  // from the on-demand and reserved candles: Σ notional // Σ volume, as the server rounds)
  async function loadHistory(name) {
    const c = C(name);
    if (!name || c.hist.state) return;
    c.hist.state = "loading";
    try {
      const [all, spot, od, rs] = await Promise.all([
        candlesOf(name, "all", CANDLES_KEPT), candlesOf(name, "spot", CANDLES_KEPT),
        candlesOf(name, "on_demand", 1440 + CANDLES_KEPT), candlesOf(name, "reserved", 1440 + CANDLES_KEPT)]);
      const got = { all, spot, on_demand: od.slice(-CANDLES_KEPT), reserved: rs.slice(-CANDLES_KEPT) };
      for (const kind of Object.keys(got)) {
        const have = new Set(c.candles[kind].map((k) => k.start));
        const add = got[kind].filter((k) => !have.has(k.start));  // the live feed's candles win
        c.hist.received += got[kind].length;
        c.hist.candles += add.length;
        c.candles[kind] = add.concat(c.candles[kind]).sort((a, b) => a.start - b.start).slice(-CANDLES_KEPT);
      }
      const firm = new Map();
      for (const k of od.concat(rs)) {
        const f = firm.get(k.start) || { n: 0, v: 0 };
        f.n += k.notional; f.v += k.volume;
        firm.set(k.start, f);
      }
      const starts = [...firm.keys()].sort((a, b) => a - b);
      const pts = [];
      let n = 0, v = 0, lo = 0;
      for (let i = 0; i < starts.length; i++) {
        const t = starts[i] + 60;  // the minute's end (the current minute's: now)
        n += firm.get(starts[i]).n; v += firm.get(starts[i]).v;
        while (starts[lo] < t - 86400) {  // the window: candles starting in [t - 24 h, t)
          n -= firm.get(starts[lo]).n; v -= firm.get(starts[lo]).v; lo++;
        }
        if (v > 0) pts.push({ t: Math.min(t, S.time || t), v: Math.floor(n / v) });
      }
      c.hist.index = pts;
      c.hist.state = "loaded";
    } catch (err) {
      c.hist.state = "";  // try again when the class is shown next
      console.warn("history", err);
      return;
    }
    S.dirty.add(name);
    schedule();
  }

  // ------------------------------------------------------------------ polling the capacity endpoint
  async function poll() {
    clearTimeout(S.pollTimer);
    const name = S.sel;
    if (name) {
      try {
        const r = await fetch("/v1/dashboard/" + encodeURIComponent(name) + "?hours=72", { cache: "no-store" });
        if (r.ok) {
          const d = await r.json();
          const c = C(name);
          c.dash = d;
          const u = d.utilisation;
          c.utilHist.push({ t: d.time, ratio: u.ratio, used: u.used, capacity: u.capacity });
          if (c.utilHist.length > 1800) c.utilHist.splice(0, c.utilHist.length - 1800);
          S.dirty.add(name);
          schedule();
        }
        const f = await fetch("/v1/forward?class=" + encodeURIComponent(name) + "&days=" + FORWARD_DAYS, { cache: "no-store" });
        if (f.ok) {
          C(name).forward = (await f.json()).days;
          S.dirty.add(name);
          schedule();
        }
      } catch (err) { /* the exchange is restarting: the next poll tries again */ }
    }
    S.pollTimer = setTimeout(poll, POLL_MS);
  }

  // ------------------------------------------------------------------ drawing, once per frame
  function schedule() { if (!S.raf) S.raf = requestAnimationFrame(frame); }

  function frame() {
    S.raf = 0;
    const dirty = S.dirty;
    S.dirty = new Set();
    for (const name of dirty) drawTicker(name);
    if (S.sel && (dirty.has(S.sel) || dirty.has("*"))) drawClass(S.sel);
    markStatus();
  }

  function drawClass(name) {
    const c = C(name);
    drawDepth(c);
    drawCandles(c);
    drawTape(name, c);
    drawProducts(c);
    drawIndex(c);
    drawCalendar(c);
    drawForward(c);
    drawUtil(c);
    drawLeases(c);
  }

  function setStatus(state, text) {
    const el = document.getElementById("status");
    el.dataset.state = state;
    el.textContent = text;
  }
  function markStatus() {
    if (!S.connected) return;
    setStatus("live", "live · engine time " + (S.time ? hhmmss(S.time) + " UTC" : "—") + " · " +
      num(S.messages) + " messages");
  }

  function buildTabs() {
    const nav = document.getElementById("tabs");
    nav.textContent = "";
    const tick = document.getElementById("tickers");
    tick.textContent = "";
    for (const name of S.classes) {
      const b = document.createElement("button");
      b.textContent = name;
      b.dataset.cls = name;
      b.setAttribute("role", "tab");
      b.onclick = () => select(name);
      nav.appendChild(b);
      const card = document.createElement("div");
      card.className = "ticker";
      card.id = "ticker-" + name;
      card.onclick = () => select(name);
      tick.appendChild(card);
      drawTicker(name);
    }
    markSelected();
  }

  function markSelected() {
    for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.cls === S.sel));
    for (const el of document.querySelectorAll(".ticker")) el.classList.toggle("selected", el.id === "ticker-" + S.sel);
  }

  function select(name) {
    if (!S.classes.includes(name)) return;
    S.sel = name;
    history.replaceState(null, "", "#" + encodeURIComponent(name));
    followProducts(name);
    loadHistory(name);
    S.lastTapeTid = {};
    document.getElementById("tape-rows").textContent = "";
    markSelected();
    S.dirty.add(name);
    schedule();
    poll();
  }

  function drawTicker(name) {
    const el = document.getElementById("ticker-" + name);
    if (!el) return;
    const c = C(name), t = c.ticker || {}, ix = c.index || {}, k = t.kinds || {};
    const lastOf = (kind) => dollars((k[kind] || {}).last);
    el.innerHTML = "<b>" + name + "</b>" +
      row("last", t.last == null ? "—" : dollars(t.last) + " " + (t.last_kind || "").replace("_", "-")) +
      KINDS.map((kind) => row("last " + KIND_LABEL[kind], lastOf(kind))).join("") +
      row("bid / ask", dollars(t.best_bid) + " / " + dollars(t.best_ask)) +
      row("spot bid / ask", dollars(t.best_spot_bid) + " / " + dollars(t.best_spot_ask)) +
      row("24 h volume", num(t.volume_24h) + " GPU-h · " + num(t.trades_24h) + " trades") +
      row("index (firm, 24 h VWAP)", dollars(ix.value));
  }
  function row(k, v) { return '<div class="row"><span>' + k + "</span><span>" + v + "</span></div>"; }

  function canvas(id) {
    const el = document.getElementById(id);
    if (!el.dataset.h) el.dataset.h = el.getAttribute("height");
    const h = +el.dataset.h;
    el.style.height = h + "px";
    const w = Math.max(50, el.clientWidth);
    const dpr = window.devicePixelRatio || 1;
    if (el.width !== Math.round(w * dpr) || el.height !== Math.round(h * dpr)) {
      el.width = Math.round(w * dpr);
      el.height = Math.round(h * dpr);
    }
    const g = el.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";
    return { el, g, w, h };
  }

  function empty(g, w, h, text) {
    g.fillStyle = COLORS.dim;
    g.textAlign = "center";
    g.fillText(text, w / 2, h / 2);
    g.textAlign = "left";
  }

  function niceTicks(lo, hi, n) {
    const span = hi - lo || 1;
    const step0 = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(v);
    return out;
  }

  // depth: cumulative GPUs per price, bids to the left of the best, asks to the right
  function drawDepth(c) {
    const { el, g, w, h } = canvas("depth");
    const b = c.book;
    const bids = [...b.bids].sort((x, y) => y[0] - x[0]);
    const sbids = [...b.spot_bids].sort((x, y) => y[0] - x[0]);
    const asks = [...b.asks].sort((x, y) => x[0] - y[0]);
    const sasks = [...b.spot_asks].sort((x, y) => x[0] - y[0]);
    const all = [...bids, ...sbids, ...asks, ...sasks];
    if (!all.length) { el.dataset.count = "0"; empty(g, w, h, "no orders yet"); return; }
    const ref = (c.index && c.index.value) || (asks.length && bids.length ? (asks[0][0] + bids[0][0]) / 2 : median(all.map((x) => x[0])));
    let lo = Infinity, hi = -Infinity;
    for (const [p] of all) { if (p >= ref * 0.3 && p <= ref * 2) { lo = Math.min(lo, p); hi = Math.max(hi, p); } }
    if (!(lo < hi)) { lo = ref * 0.8; hi = ref * 1.2; }
    const padp = (hi - lo) * 0.05;
    lo -= padp; hi += padp;
    const cum = (side) => { let s = 0; return side.filter(([p]) => p >= lo && p <= hi).map(([p, q]) => [p, (s += q)]); };
    const series = [[cum(bids), COLORS.bid, true], [cum(asks), COLORS.ask, true],
                    [cum(sbids), COLORS.sbid, false], [cum(sasks), COLORS.sask, false]];
    let ymax = 1;
    for (const [pts] of series) for (const [, q] of pts) ymax = Math.max(ymax, q);
    const L = 44, R = 8, T = 8, B = 22;
    const X = (p) => L + ((p - lo) / (hi - lo)) * (w - L - R);
    const Y = (q) => h - B - (q / (ymax * 1.08)) * (h - T - B);
    axes(g, w, h, L, R, T, B, lo, hi, 0, ymax * 1.08, (v) => "$" + (v / USD).toFixed(2), (v) => num(Math.round(v)));
    let drawn = 0;
    for (const [pts, color, fill] of series) {
      if (!pts.length) continue;
      drawn += pts.length;
      const isBid = color === COLORS.bid || color === COLORS.sbid;
      g.beginPath();
      g.moveTo(X(pts[0][0]), Y(0));
      let prevQ = 0;
      for (const [p, q] of pts) { g.lineTo(X(p), Y(prevQ)); g.lineTo(X(p), Y(q)); prevQ = q; }
      g.lineTo(X(isBid ? lo : hi), Y(prevQ));
      g.strokeStyle = color;
      g.lineWidth = 1.5;
      g.setLineDash(fill ? [] : [4, 3]);
      g.stroke();
      g.setLineDash([]);
      if (fill) {
        g.lineTo(X(isBid ? lo : hi), Y(0));
        g.closePath();
        g.globalAlpha = 0.15;
        g.fillStyle = color;
        g.fill();
        g.globalAlpha = 1;
      }
    }
    el.dataset.count = String(drawn);
  }

  function median(a) { const s = a.slice().sort((x, y) => x - y); return s[Math.floor(s.length / 2)] || 0; }

  // time ticks on round seconds/minutes/hours (UTC)
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  function timeTicks(t0, t1, n) {
    const step = TIME_STEPS.find((s) => s >= (t1 - t0) / n) || 86400;
    const out = [];
    for (let v = Math.ceil(t0 / step) * step; v <= t1; v += step) out.push(v);
    out.step = step;
    return out;
  }

  function axes(g, w, h, L, R, T, B, x0, x1, y0, y1, fx, fy) {
    g.strokeStyle = COLORS.line;
    g.fillStyle = COLORS.dim;
    g.lineWidth = 1;
    g.beginPath();
    g.moveTo(L, T); g.lineTo(L, h - B); g.lineTo(w - R, h - B);
    g.stroke();
    g.textAlign = "center";
    const nx = Math.max(2, Math.floor((w - L - R) / 90));
    const xt = fx === "time" ? timeTicks(x0, x1, nx) : niceTicks(x0, x1, nx);
    const fmt = fx === "time" ? (xt.step < 60 ? hhmmss : hhmm) : fx;
    for (const v of xt) {
      const x = L + ((v - x0) / (x1 - x0)) * (w - L - R);
      g.fillText(fmt(v), x, h - B + 11);
    }
    g.textAlign = "right";
    for (const v of niceTicks(y0, y1, 4)) {
      const y = h - B - ((v - y0) / (y1 - y0)) * (h - T - B);
      g.fillText(fy(v), L - 4, y);
      g.globalAlpha = 0.35;
      g.beginPath(); g.moveTo(L, y); g.lineTo(w - R, y); g.stroke();
      g.globalAlpha = 1;
    }
    g.textAlign = "left";
  }

  function drawCandles(c) {
    const { el, g, w, h } = canvas("candles");
    const L = 48, R = 8, T = 8, B = 22;
    const slot = 9;
    const n = Math.max(10, Math.floor((w - L - R) / slot));
    const all = c.candles[S.candleKind];
    document.getElementById("candles-kind").textContent = KIND_LABEL[S.candleKind];
    const tEnd = Math.floor(Math.max(S.time, all.length ? all[all.length - 1].start : 0) / 60) * 60 + 60;
    const cs = all.filter((k) => k.start >= tEnd - n * 60);
    if (!cs.length) { el.dataset.count = "0"; empty(g, w, h, "no " + KIND_LABEL[S.candleKind] + " trades yet"); return; }
    let lo = Infinity, hi = -Infinity, vmax = 1;
    for (const k of cs) { lo = Math.min(lo, k.low); hi = Math.max(hi, k.high); vmax = Math.max(vmax, k.volume); }
    if (hi === lo) { hi += 10000; lo -= 10000; }
    const padp = (hi - lo) * 0.08;
    lo -= padp; hi += padp;
    const volH = (h - T - B) * 0.22;
    const Y = (p) => T + (1 - (p - lo) / (hi - lo)) * (h - T - B - volH);
    const t1 = tEnd, t0 = Math.min(cs[0].start, t1 - Math.min(n, 10) * 60);
    const X = (t) => L + ((t - t0) / (t1 - t0)) * (w - L - R);
    axes(g, w, h, L, R, T, B, t0, t1, lo, hi, "time", (v) => "$" + (v / USD).toFixed(2));
    const bw = Math.max(2, Math.min(slot - 2, ((w - L - R) / Math.max(1, (t1 - t0) / 60)) - 2));
    for (const k of cs) {
      const x = X(k.start + 30);
      const up = k.close >= k.open;
      g.strokeStyle = g.fillStyle = up ? COLORS.bid : COLORS.ask;
      g.beginPath(); g.moveTo(x, Y(k.high)); g.lineTo(x, Y(k.low)); g.stroke();
      const y1 = Y(Math.max(k.open, k.close)), y2 = Y(Math.min(k.open, k.close));
      g.fillRect(x - bw / 2, y1, bw, Math.max(1, y2 - y1));
      g.globalAlpha = 0.35;
      const vh = (k.volume / vmax) * volH;
      g.fillRect(x - bw / 2, h - B - vh, bw, vh);
      g.globalAlpha = 1;
    }
    el.dataset.count = String(cs.length);
  }

  function drawTape(name, c) {
    const tbody = document.getElementById("tape-rows");
    const last = S.lastTapeTid[name] || 0;
    const fresh = c.trades.filter((t) => t.trade_id > last);
    if (fresh.length) {
      const frag = document.createDocumentFragment();
      for (const t of fresh.slice(-TAPE_ROWS).reverse()) {
        const tr = document.createElement("tr");
        if (last) tr.className = "new";
        const resale = t.resale_of ? '<span class="resale" title="resale of lease ' + name + "-" + t.resale_of + '">resale</span>' : "";
        tr.innerHTML = "<td>" + hhmmss(t.time) + '</td><td class="k-' + t.kind + '">' + t.kind.replace("_", "-") + resale +
          "</td><td>" + t.gpus + "×" + t.hours + "</td><td>" + dollars(t.price) + "</td><td>" + name + "-" + t.trade_id + "</td>";
        frag.appendChild(tr);
      }
      tbody.insertBefore(frag, tbody.firstChild);
      while (tbody.children.length > TAPE_ROWS) tbody.removeChild(tbody.lastChild);
      S.lastTapeTid[name] = c.trades[c.trades.length - 1].trade_id;
    }
    const tape = document.getElementById("tape");
    tape.dataset.count = String(c.tradeCount);
    document.getElementById("tape-total").textContent = num(c.tradeCount);
  }

  // products (docs/feeds.md, "Products"): those with a price, firm first, then spot, then reserved by day
  const KIND_ORDER = { on_demand: 0, spot: 1, reserved: 2 };
  function productLabel(p) {
    const day = p.start ? " from " + DAYS[new Date(p.start * 1000).getUTCDay()] + " " +
      new Date(p.start * 1000).toISOString().slice(5, 10) : "";
    return KIND_LABEL[p.kind] + " · " + p.hours + " h · ×" + p.block + day;
  }
  function drawProducts(c) {
    const rows = [...c.products.values()].filter((p) => p.best_bid != null || p.best_ask != null)
      .sort((a, b) => KIND_ORDER[a.kind] - KIND_ORDER[b.kind] || (a.start || 0) - (b.start || 0) ||
        a.hours - b.hours || a.block - b.block);
    const html = rows.map((p) => {
      const q = (c.quotes.get(p.product) || [])[1];  // the second standard size: 8 blocks
      const ask = p.asks.length ? dollars(p.asks[0][0]) + " (" + num(p.asks[0][1]) + ")" : "—";
      return '<tr><td class="k-' + p.kind + '" title="' + p.product + '">' + productLabel(p) + "</td><td>" +
        dollars(p.best_bid) + "</td><td>" + ask + "</td><td>" + (q ? dollars(q.limit) : "—") + "</td></tr>";
    }).join("");
    const tbody = document.getElementById("product-rows");
    if (tbody.innerHTML !== html) tbody.innerHTML = html;
    document.getElementById("products").dataset.count = String(rows.length);
  }

  function drawIndex(c) {
    const { el, g, w, h } = canvas("index");
    const ix = c.index;
    document.getElementById("index-value").innerHTML = ix && ix.value != null
      ? dollars(ix.value) + "<small>/GPU-hour · " + num(ix.volume_24h) + " GPU-h over " + num(ix.trades_24h) + " firm trades in 24 h</small>"
      : "—<small>no firm trades in the last 24 h</small>";
    // the line: history before the first live index message, then the live ones
    const live = c.indexHist;
    const line = c.hist.index.filter((p) => !live.length || p.t < live[0].t).concat(live);
    const firm = new Map();
    for (const k of c.candles.on_demand.concat(c.candles.reserved)) {
      const f = firm.get(k.start) || { n: 0, v: 0 };
      f.n += k.notional; f.v += k.volume;
      firm.set(k.start, f);
    }
    const dots = [...firm].filter(([, f]) => f.v > 0).map(([t, f]) => ({ t: t + 30, v: f.n / f.v }));
    if (!line.length && !dots.length) { el.dataset.count = "0"; empty(g, w, h, "no trades yet"); return; }
    const pts = line.concat(dots);
    let t0 = Infinity, t1 = -Infinity, lo = Infinity, hi = -Infinity;
    for (const p of pts) { t0 = Math.min(t0, p.t); t1 = Math.max(t1, p.t); lo = Math.min(lo, p.v); hi = Math.max(hi, p.v); }
    t1 = Math.max(t1, S.time || t1);
    if (t1 - t0 < 60) t0 = t1 - 60;
    if (hi === lo) { hi += 10000; lo -= 10000; }
    const padp = (hi - lo) * 0.1;
    lo -= padp; hi += padp;
    const L = 48, R = 8, T = 8, B = 22;
    const X = (t) => L + ((t - t0) / (t1 - t0)) * (w - L - R);
    const Y = (v) => T + (1 - (v - lo) / (hi - lo)) * (h - T - B);
    axes(g, w, h, L, R, T, B, t0, t1, lo, hi, "time", (v) => "$" + (v / USD).toFixed(2));
    g.fillStyle = COLORS.dim;
    for (const p of dots) { g.beginPath(); g.arc(X(p.t), Y(p.v), 2, 0, 6.283); g.fill(); }
    if (line.length) {
      g.strokeStyle = COLORS.accent;
      g.lineWidth = 2;
      g.beginPath();
      line.forEach((p, i) => (i ? g.lineTo(X(p.t), Y(p.v)) : g.moveTo(X(p.t), Y(p.v))));
      g.lineTo(X(t1), Y(line[line.length - 1].v));
      g.stroke();
      g.lineWidth = 1;
    }
    el.dataset.count = String(line.length + dots.length);
  }

  // forward curve (GET /v1/forward): per start day, the limit a reserved 1-GPU x 24 h bid fills at now
  // (line and dots) and the price reserved trades starting that day paid (hollow dots)
  function drawForward(c) {
    const { el, g, w, h } = canvas("forward");
    const days = c.forward || [];
    const best = days.filter((d) => d.best != null);
    const traded = days.filter((d) => d.traded_vwap != null);
    if (!best.length && !traded.length) {
      el.dataset.count = "0";
      empty(g, w, h, c.forward ? "no ask holds a GPU-day from the coming midnights" : "loading…");
      return;
    }
    let lo = Infinity, hi = -Infinity;
    for (const d of best) { lo = Math.min(lo, d.best); hi = Math.max(hi, d.best); }
    for (const d of traded) { lo = Math.min(lo, d.traded_vwap); hi = Math.max(hi, d.traded_vwap); }
    if (hi === lo) { hi += 10000; lo -= 10000; }
    const padp = (hi - lo) * 0.1;
    lo -= padp; hi += padp;
    const t0 = days[0].start, t1 = days[days.length - 1].start;
    const L = 48, R = 8, T = 8, B = 22;
    const X = (t) => L + ((t - t0) / Math.max(t1 - t0, 1)) * (w - L - R);
    const Y = (v) => T + (1 - (v - lo) / (hi - lo)) * (h - T - B);
    axes(g, w, h, L, R, T, B, t0, t1, lo, hi, (v) => new Date(v * 1000).toISOString().slice(5, 10),
         (v) => "$" + (v / USD).toFixed(2));
    g.strokeStyle = COLORS.accent;
    g.fillStyle = COLORS.accent;
    g.lineWidth = 2;
    g.beginPath();
    best.forEach((d, i) => (i ? g.lineTo(X(d.start), Y(d.best)) : g.moveTo(X(d.start), Y(d.best))));
    g.stroke();
    g.lineWidth = 1;
    for (const d of best) { g.beginPath(); g.arc(X(d.start), Y(d.best), 2.5, 0, 6.283); g.fill(); }
    g.strokeStyle = COLORS.text;
    for (const d of traded) { g.beginPath(); g.arc(X(d.start), Y(d.traded_vwap), 4, 0, 6.283); g.stroke(); }
    el.dataset.count = String(best.length + traded.length);
  }

  // capacity calendar: rows are UTC days, columns hours; colour = GPUs free for a firm buyer
  function drawCalendar(c) {
    const { el, g, w, h } = canvas("calendar");
    const d = c.dash;
    if (!d) { el.dataset.count = "0"; empty(g, w, h, "loading…"); return; }
    const cal = d.calendar;
    const firstHour = Math.floor(cal.start / HOUR);
    const day0 = Math.floor(firstHour / 24);
    const days = Math.floor((firstHour + cal.hours - 1) / 24) - day0 + 1;
    const L = 56, T = 16, R = 8, B = 4;
    const cw = (w - L - R) / 24, ch = Math.min(34, (h - T - B) / days);
    let fmax = 1;
    for (let i = 0; i < cal.hours; i++) fmax = Math.max(fmax, cal.free[i]);
    g.fillStyle = COLORS.dim;
    g.textAlign = "center";
    for (let hr = 0; hr < 24; hr += cw > 26 ? 1 : 3) g.fillText(pad(hr), L + (hr + 0.5) * cw, T / 2);
    g.textAlign = "right";
    for (let r = 0; r < days; r++) {
      const dt = new Date((day0 + r) * 86400 * 1000);
      g.fillText(DAYS[dt.getUTCDay()] + " " + dt.getUTCDate(), L - 6, T + (r + 0.5) * ch);
    }
    g.textAlign = "center";
    let cells = 0;
    for (let i = 0; i < cal.hours; i++) {
      const hrAbs = firstHour + i;
      const r = Math.floor(hrAbs / 24) - day0, col = hrAbs % 24;
      const x = L + col * cw, y = T + r * ch;
      const free = cal.free[i], cap = cal.capacity[i];
      if (cap > 0 || free > 0) cells++;
      if (free > 0) {
        const a = 0.15 + 0.85 * (free / fmax);
        g.fillStyle = "rgba(47,191,113," + a.toFixed(3) + ")";
      } else {
        g.fillStyle = cap > 0 ? "rgba(229,83,75,0.55)" : "#1d2530";
      }
      g.fillRect(x + 1, y + 1, cw - 2, ch - 2);
      if (cw > 24 && ch > 14 && (free > 0 || cap > 0)) {
        g.fillStyle = "#0f1419";
        g.fillText(String(free), x + cw / 2, y + ch / 2);
      }
      if (i === 0) { g.strokeStyle = COLORS.accent; g.lineWidth = 2; g.strokeRect(x + 1, y + 1, cw - 2, ch - 2); g.lineWidth = 1; }
    }
    g.textAlign = "left";
    el.dataset.count = String(cells);
    el.title = "green: GPUs free for a firm buyer (brighter = more); red: all sold; dark: nothing offered";
  }

  function drawUtil(c) {
    const { el, g, w, h } = canvas("util");
    const d = c.dash;
    const u = d && d.utilisation;
    document.getElementById("util-value").innerHTML = u && u.ratio != null
      ? (u.ratio * 100).toFixed(1) + "%<small>" + num(u.used) + " of " + num(u.capacity) + " GPUs leased now · " +
        num(u.free) + " free firm, " + num(u.spot_free) + " free spot</small>"
      : "—<small>no capacity offered</small>";
    const hist = c.utilHist.filter((p) => p.ratio != null);
    if (!hist.length) { el.dataset.count = "0"; empty(g, w, h, "waiting for capacity…"); return; }
    const provs = (d && d.providers) || [];
    const barH = 12, barsH = provs.length * (barH + 4) + 6;
    const L = 44, R = 8, T = 6, B = 22 + barsH;
    const t1 = hist[hist.length - 1].t, t0 = Math.min(hist[0].t, t1 - 60);
    const X = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (w - L - R);
    const Y = (v) => T + (1 - v) * (h - T - B);
    axes(g, w, h - barsH, L, R, T, 22, t0, t1, 0, 1, "time", (v) => Math.round(v * 100) + "%");
    g.strokeStyle = COLORS.accent;
    g.lineWidth = 2;
    g.beginPath();
    hist.forEach((p, i) => (i ? g.lineTo(X(p.t), Y(p.ratio)) : g.moveTo(X(p.t), Y(p.ratio))));
    g.stroke();
    g.lineWidth = 1;
    let y = h - barsH + 6;
    for (const p of provs) {
      const frac = p.capacity ? p.used / p.capacity : 0;
      g.fillStyle = "#1d2530";
      g.fillRect(L, y, w - L - R, barH);
      g.fillStyle = COLORS.accent;
      g.fillRect(L, y, (w - L - R) * frac, barH);
      g.fillStyle = COLORS.text;
      g.textAlign = "right";
      g.fillText("#" + p.account, L - 4, y + barH / 2);  // provider account
      g.textAlign = "left";
      g.fillText(p.used + "/" + p.capacity + " GPUs", L + 4, y + barH / 2);
      y += barH + 4;
    }
    el.dataset.count = String(hist.length);
  }

  function drawLeases(c) {
    const { el, g, w, h } = canvas("leases");
    const d = c.dash;
    const ls = d && d.leases;
    document.getElementById("leases-value").innerHTML = ls
      ? num(ls.open) + "<small>" + num(ls.running) + " running, " + num(ls.scheduled) + " scheduled</small>"
      : "—";
    if (!ls || !ls.open) { el.dataset.count = "0"; empty(g, w, h, ls ? "no open leases" : "loading…"); return; }
    const kinds = ["spot", "on_demand", "reserved"];
    const color = { spot: COLORS.sbid, on_demand: COLORS.bid, reserved: COLORS.accent };
    let vmax = 1;
    for (const k of kinds) { const v = ls.by_kind[k]; if (v) vmax = Math.max(vmax, v.running, v.scheduled); }
    const L = 80, R = 40, T = 10, rowH = (h - T - 10) / kinds.length;
    g.textAlign = "right";
    kinds.forEach((k, i) => {
      const v = ls.by_kind[k] || { running: 0, scheduled: 0, gpus_running: 0 };
      const y = T + i * rowH;
      g.fillStyle = COLORS.text;
      g.fillText(k.replace("_", "-"), L - 8, y + rowH * 0.3);
      const bh = rowH * 0.28;
      g.fillStyle = color[k];
      g.fillRect(L, y + rowH * 0.3 - bh / 2, ((w - L - R) * v.running) / vmax, bh);
      g.globalAlpha = 0.4;
      g.fillRect(L, y + rowH * 0.62 - bh / 2, ((w - L - R) * v.scheduled) / vmax, bh);
      g.globalAlpha = 1;
      g.fillStyle = COLORS.dim;
      g.textAlign = "left";
      const label = (text, n, yy) => {
        const x = L + 4 + ((w - L - R) * n) / vmax;
        const tw = g.measureText(text).width;
        g.fillStyle = x + tw > w - 2 ? "#0f1419" : COLORS.dim;
        g.fillText(text, x + tw > w - 2 ? L + 4 : x, yy);
      };
      label(v.running + " running (" + v.gpus_running + " GPUs)", v.running, y + rowH * 0.3);
      label(v.scheduled + " scheduled", v.scheduled, y + rowH * 0.62);
      g.textAlign = "right";
    });
    g.textAlign = "left";
    el.dataset.count = String(ls.open);
  }

  function markKind() {
    document.getElementById("candles-kind").textContent = KIND_LABEL[S.candleKind];
    for (const b of document.querySelectorAll("#candle-kinds button")) b.setAttribute("aria-pressed", String(b.dataset.kind === S.candleKind));
  }
  for (const b of document.querySelectorAll("#candle-kinds button")) {
    b.onclick = () => window.gpux.candleKind(b.dataset.kind);
  }

  window.addEventListener("resize", () => { S.dirty.add("*"); schedule(); });
  window.addEventListener("hashchange", () => { const n = decodeURIComponent(location.hash.slice(1)); if (n !== S.sel) select(n); });

  window.gpux = {
    state: S,
    select,
    counts() {
      const out = {};
      for (const el of document.querySelectorAll("[data-count]")) out[el.id] = Number(el.dataset.count);
      return out;
    },
    // what GET /v1/candles gave a class's charts (tests): candles received and merged, index points,
    // the first point's time, and the engine time when the page got its first message
    history(name) {
      const h = C(name).hist;
      return { state: h.state, received: h.received, candles: h.candles, index: h.index.length,
               first: h.index.length ? h.index[0].t : null, opened: S.openedAt };
    },
    candleKind(kind) { if (KIND_LABEL[kind]) { S.candleKind = kind; markKind(); S.dirty.add("*"); schedule(); } },
  };
  connect();
})();
