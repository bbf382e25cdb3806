// The live cluster page of `tallyd-ring ui` (docs/ui.md). Plain JavaScript, no build step,
// nothing loaded from elsewhere. Every REFRESH_MS it reads /cluster.json (the cluster
// report: ringtool.cluster.report_json) and draws proxies -> aggregators -> Carbon nodes as
// SVG. Rates are the growth of the report's counters between two readings divided by the
// time between them, so they move at every refresh (the daemons' own per-interval rates move
// once a flush interval). Text from the daemons only ever goes in through textContent.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const FETCH_TIMEOUT_MS = 10000;  // the server bounds each daemon's answer well below this
  const SVG = "http://www.w3.org/2000/svg";
  const NODE_W = 250;
  const MIN_NODE_H = 100;
  const LABEL_W = 150;
  const LABEL_H = 28;
  const COLUMN_X = [10, 480, 950];
  const TOP = 34;
  const GAP = 22;

  // What the page remembers between readings.
  function newMemory() {
    return {
      previous: null,        // the last report drawn
      identities: new Map(), // daemon URL -> the identity it last answered with
      carbon: new Map(),     // Carbon node name -> address, every node ever reported
      refreshes: 0,
    };
  }

  // --- numbers -------------------------------------------------------------------------

  function fmt(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return "-";
    const digits = Math.abs(n) < 10 && !Number.isInteger(n) ? 1 : 0;
    return n.toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  // A line of a node's text, cut to fit its box (the whole text is in its tooltip).
  function clip(content, chars) {
    return content.length <= chars ? content : content.slice(0, chars - 1) + "\u2026";
  }

  function sum(byReason) {
    return Object.values(byReason || {}).reduce((a, b) => a + (Number(b) || 0), 0);
  }

  // The growth per second of a counter between two readings; null when there is no earlier
  // reading or the counter went back (a restarted daemon).
  function rate(now, before, seconds) {
    if (before === undefined || before === null || !(seconds > 0) || now < before) return null;
    return (now - before) / seconds;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " d";
  }

  // --- the report as the page draws it -------------------------------------------------

  function daemonKey(d) { return d.tier + "|" + d.url; }
  function edgeKey(e) { return [e.source, e.kind, e.target_index, e.target].join("|"); }

  // A daemon's state: down (unreachable, a bad document, or drained by `health down`),
  // not-ready (answers, but /readyz would say 503), or up.
  function daemonState(d) {
    if (!d.reachable || d.health === "down") return "down";
    if (!d.ready) return "not-ready";
    return "up";
  }

  function stateText(d) {
    if (!d.reachable) return (d.error_kind || "unreachable") + ": " + (d.error || "");
    if (d.health === "down") return "health down (drained)";
    if (!d.ready) return "not ready: " + (d.not_ready || []).join(", ");
    return "up, ready" + (d.workers > 1 ? ", " + d.workers + " workers" : "");
  }

  // The picture's nodes and edges from a report and what `seen` remembers of the earlier
  // ones (pure but for updating `seen.identities` and `seen.carbon`).
  function model(report, seen) {
    const previous = seen.previous;
    const before = { daemons: new Map(), edges: new Map(), taken_at: null };
    if (previous) {
      before.taken_at = previous.taken_at;
      for (const d of previous.daemons || []) before.daemons.set(daemonKey(d), d);
      for (const e of previous.edges || []) before.edges.set(edgeKey(e), e);
    }
    const seconds = before.taken_at === null ? null : report.taken_at - before.taken_at;
    const diverged = new Set((report.findings || [])
      .filter((f) => f.kind === "diverged" && f.daemon).map((f) => f.daemon));

    const daemons = (report.daemons || []).map((d) => {
      if (d.reachable && d.identity) seen.identities.set(d.url, d.identity);
      const old = before.daemons.get(daemonKey(d));
      const t = d.totals || {};
      const o = old && old.reachable && old.pid === d.pid ? old.totals || {} : null;
      return {
        raw: d, key: daemonKey(d), tier: d.tier, position: d.position, url: d.url,
        title: d.identity || seen.identities.get(d.url) || d.url,
        state: daemonState(d), stateText: stateText(d),
        diverged: diverged.has(d.url),
        membership: d.membership || "",
        linesIn: t.lines_in || 0, linesOut: t.lines_out || 0,
        buffered: (t.buffered_lines || 0) + (t.points_buffered || 0),
        dropped: sum(t.dropped_lines) + sum(t.points_dropped),
        inRate: o ? rate(t.lines_in || 0, o.lines_in || 0, seconds) : null,
        outRate: o ? rate(t.lines_out || 0, o.lines_out || 0, seconds) : null,
        intervalIn: d.rates ? d.rates.lines_in : null,
        intervalOut: d.rates ? d.rates.lines_out : null,
        uptime: d.uptime_seconds,
      };
    });
    const proxies = daemons.filter((d) => d.tier === "proxy")
      .sort((a, b) => a.position - b.position);
    const aggregators = daemons.filter((d) => d.tier === "aggregator")
      .sort((a, b) => a.position - b.position);

    // A proxy's member i is the i-th --aggregator; one it names but nobody listed gets a
    // placeholder, so its edges still end somewhere.
    const byPosition = new Map(aggregators.map((a) => [a.position, a]));
    for (const e of report.edges || []) {
      if (e.kind === "aggregator" && !byPosition.has(e.target_index)) {
        const placeholder = {
          raw: null, key: "unlisted|" + e.target_index, tier: "aggregator",
          position: e.target_index, url: "", title: e.target, state: "unlisted",
          stateText: "not given to this page (--aggregator)", diverged: false,
          membership: "", linesIn: null, linesOut: null, buffered: null, dropped: null,
          inRate: null, outRate: null, intervalIn: null, intervalOut: null, uptime: null,
        };
        byPosition.set(e.target_index, placeholder);
        aggregators.push(placeholder);
      }
    }
    aggregators.sort((a, b) => a.position - b.position);
    // What the proxies sent each aggregator and what it counted (the report's intake).
    for (const i of report.intake || []) {
      const a = byPosition.get(i.position);
      if (a) a.intake = { sent: i.sent, received: i.received, difference: i.difference };
    }

    for (const n of report.carbon_nodes || []) seen.carbon.set(n.name, n.address);
    const reported = new Map((report.carbon_nodes || []).map((n) => [n.name, n]));
    const carbon = [...seen.carbon.keys()].sort().map((name) => {
      const n = reported.get(name);
      const down = n ? n.down_at || [] : [];
      return {
        key: "carbon|" + name, tier: "carbon", url: "", title: name,
        address: seen.carbon.get(name),
        state: !n ? "unknown" : down.length ? "down" : "up",
        stateText: !n ? "no aggregator reports it now"
          : down.length ? "down at " + down.map((x) => x.aggregator + " (" + x.reason + ")")
            .join(", ") : "up",
        linesIn: n ? n.points_sent : null,
        buffered: n ? n.points_buffered : null,
        dropped: n ? sum(n.points_dropped) : null,
      };
    });
    const carbonByName = new Map(carbon.map((c) => [c.title, c]));
    const aggregatorByUrl = new Map(aggregators.filter((a) => a.url).map((a) => [a.url, a]));
    const proxyByUrl = new Map(proxies.map((p) => [p.url, p]));

    const edges = [];
    for (const e of report.edges || []) {
      const source = e.kind === "aggregator" ? proxyByUrl.get(e.source)
        : aggregatorByUrl.get(e.source);
      const target = e.kind === "aggregator" ? byPosition.get(e.target_index)
        : carbonByName.get(e.target);
      if (!source || !target) continue;
      const old = before.edges.get(edgeKey(e));
      const dropped = sum(e.dropped);
      edges.push({
        raw: e, key: edgeKey(e), kind: e.kind, source, target,
        state: e.state, reason: e.reason,
        sent: e.sent, rate: old ? rate(e.sent, old.sent, seconds) : null,
        buffered: e.buffered, capacity: e.buffer_capacity,
        dropped, dropping: old ? dropped > sum(old.dropped) : false,
      });
    }
    return { proxies, aggregators, carbon, edges, seconds };
  }

  // --- drawing -------------------------------------------------------------------------

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, cls) {
    const t = el("text", { x, y, class: cls || "" }, parent);
    t.textContent = content;
    return t;
  }

  // Stack a column's nodes from the top; each node is tall enough for the edges at its sides.
  function place(nodes, x, edgesIn, edgesOut) {
    let y = TOP;
    for (const n of nodes) {
      const ends = Math.max(edgesIn.get(n.key) || 0, edgesOut.get(n.key) || 0);
      n.x = x;
      n.y = y;
      n.h = Math.max(MIN_NODE_H, ends * (LABEL_H + 4) + 10);
      y += n.h + GAP;
    }
    return y;
  }

  function spreadAnchors(edges, end) {
    const groups = new Map();
    for (const e of edges) {
      const node = e[end];
      if (!groups.has(node.key)) groups.set(node.key, []);
      groups.get(node.key).push(e);
    }
    for (const list of groups.values()) {
      list.forEach((e, i) => {
        const node = e[end];
        e[end + "Y"] = node.y + node.h * (i + 1) / (list.length + 1);
      });
    }
  }

  function drawNode(svg, n) {
    const g = el("g", {
      class: ["node", n.tier, n.state, n.diverged ? "diverged" : ""].join(" ").trim(),
      "data-key": n.key, "data-url": n.url, "data-name": n.title, "data-state": n.state,
      "data-diverged": n.diverged ? "true" : "false",
      "data-lines-in": n.linesIn === null ? "" : n.linesIn,
    }, svg);
    el("rect", { x: n.x, y: n.y, width: NODE_W, height: n.h, rx: 8, class: "box" }, g);
    const x = n.x + 10;
    text(g, x, n.y + 18, clip(n.title, 34), "title");
    text(g, x, n.y + 33, clip(n.tier === "carbon" ? n.address || "" : n.url, 40), "url");
    text(g, x, n.y + 48, clip(n.stateText, 40), "state");
    let figures;
    if (n.tier === "carbon") {
      figures = "points " + fmt(n.linesIn) + "  buf " + fmt(n.buffered) +
        "  dropped " + fmt(n.dropped);
    } else if (n.state === "unlisted" || (n.raw && !n.raw.reachable)) {
      figures = "";
    } else {
      const live = n.inRate !== null ? fmt(n.inRate) : fmt(n.intervalIn);
      figures = "in " + live + "/s  total " + fmt(n.linesIn) + "  dropped " + fmt(n.dropped);
    }
    let y = n.y + 63;  // the optional lines follow one another
    if (figures) {
      text(g, x, y, figures, "figures");
      y += 15;
    }
    if (n.intake) {
      const i = n.intake;
      const got = i.received === null ? "?" : fmt(i.received);
      text(g, x, y, "proxies sent " + fmt(i.sent) + ", received " + got,
        i.difference > 0 ? "intake missing" : "intake");
      y += 15;
    }
    if (n.membership) {
      text(g, x, y, (n.diverged ? "\u2260 " : "") + "membership " +
        n.membership.slice(0, 12), "fingerprint");
    }
    const tip = el("title", {}, g);
    tip.textContent = [n.title, n.url, n.stateText].filter(Boolean).join("\n");
  }

  function drawEdge(svg, e) {
    const points = e.kind === "carbon" ? "pts" : "lines";
    const fill = e.capacity ? e.buffered / e.capacity : null;
    const g = el("g", {
      class: ["edge", "edge-" + e.kind, "state-" + e.state, e.dropping ? "dropping" : "",
        e.dropped > 0 ? "has-drops" : "",
        fill !== null && fill >= 0.8 ? "filling" : ""].join(" ").trim(),
      "data-source": e.source.key, "data-target": e.target.key,
      "data-sent": e.sent, "data-rate": e.rate === null ? "" : e.rate.toFixed(3),
      "data-buffered": e.buffered, "data-dropped": e.dropped, "data-state": e.state,
    }, svg);
    const x1 = e.source.x + NODE_W;
    const x2 = e.target.x;
    const labelX = x2 - 6 - LABEL_W;
    const mid = (x1 + labelX) / 2;
    el("path", {
      d: `M${x1},${e.sourceY} C${mid},${e.sourceY} ${mid},${e.targetY} ${labelX},${e.targetY}` +
        ` L${x2},${e.targetY}`,
      class: "line",
    }, g);
    const top = e.targetY - LABEL_H / 2;
    el("rect", { x: labelX, y: top, width: LABEL_W, height: LABEL_H, rx: 4, class: "label" }, g);
    if (fill !== null) {
      el("rect", { x: labelX, y: top + LABEL_H - 4, width: LABEL_W * Math.min(1, fill),
        height: 4, class: "fill" }, g);
    }
    const head = e.state !== "up" ? e.state + (e.reason ? " (" + e.reason + ")" : "")
      : (e.rate === null ? "-" : fmt(e.rate)) + " " + points + "/s";
    text(g, labelX + 5, top + 11, head, "rate");
    const buffer = "buf " + fmt(e.buffered) + (e.capacity ? "/" + fmt(e.capacity) : "");
    text(g, labelX + 5, top + 22, buffer + "  drop " + fmt(e.dropped),
      e.dropped > 0 ? "buffer has-drops" : "buffer");
    const tip = el("title", {}, g);
    tip.textContent = `${e.source.title} -> ${e.target.title}: sent ${fmt(e.sent)} ${points}, ` +
      `buffered ${fmt(e.buffered)}, dropped ${fmt(e.dropped)}` +
      (e.raw.dropped && Object.keys(e.raw.dropped).length
        ? " (" + Object.entries(e.raw.dropped).map(([k, v]) => k + " " + v).join(", ") + ")"
        : "");
  }

  function drawPicture(m) {
    const svg = document.getElementById("picture");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const edgesIn = new Map();
    const edgesOut = new Map();
    for (const e of m.edges) {
      edgesOut.set(e.source.key, (edgesOut.get(e.source.key) || 0) + 1);
      edgesIn.set(e.target.key, (edgesIn.get(e.target.key) || 0) + 1);
    }
    const columns = [m.proxies, m.aggregators, m.carbon];
    const bottoms = columns.map((nodes, i) => place(nodes, COLUMN_X[i], edgesIn, edgesOut));
    const height = Math.max(...bottoms, TOP + MIN_NODE_H);
    columns.forEach((nodes, i) => {  // centre the shorter columns
      const shift = (height - bottoms[i]) / 2;
      for (const n of nodes) n.y += shift;
    });
    spreadAnchors(m.edges, "source");
    spreadAnchors(m.edges, "target");
    svg.setAttribute("viewBox", `0 0 ${COLUMN_X[2] + NODE_W + 10} ${height}`);
    ["proxies", "aggregators", "Carbon nodes"].forEach((title, i) => {
      text(svg, COLUMN_X[i], 18, `${title} (${columns[i].length})`, "column");
    });
    for (const e of m.edges) drawEdge(svg, e);
    for (const nodes of columns) for (const n of nodes) drawNode(svg, n);
  }

  // --- text parts ----------------------------------------------------------------------

  function setText(id, content, cls) {
    const node = document.getElementById(id);
    node.textContent = content;
    if (cls !== undefined) node.className = cls;
  }

  function drawSummary(report) {
    const s = report.summary || {};
    const parts = [];
    if (s.lines_lost) parts.push(fmt(s.lines_lost) + " lines lost");
    if (s.points_lost) parts.push(fmt(s.points_lost) + " points lost");
    if (s.unreachable) parts.push(s.unreachable + " unreachable");
    if (s.diverged) parts.push(s.diverged + " diverged");
    if (s.partial) parts.push(s.partial + " partial");
    const tiers = report.tiers || {};
    const p = tiers.proxy || {};
    const a = tiers.aggregator || {};
    const counts = `${p.reachable ?? 0}/${p.daemons ?? 0} proxies, ` +
      `${a.reachable ?? 0}/${a.daemons ?? 0} aggregators up`;
    const b = report.between;
    if (b) {
      const gap = b.difference === null || b.difference === undefined ? "unknown"
        : fmt(b.difference);
      setText("between", `proxies -> aggregators: sent ${fmt(b.sent)}, received ` +
        `${fmt(b.received)} of the ${fmt(b.sent_to_read)} sent to those read, ` +
        `not received ${gap}` + (b.unread && b.unread.length
          ? `, ${b.unread.length} aggregator(s) not read` : ""),
        b.difference > 0 ? "between missing" : "between");
    }
    if (report.ok) setText("summary", "OK: nothing lost, all agree; " + counts, "summary ok");
    else setText("summary", "PROBLEMS: " + parts.join(", ") + "; " + counts, "summary bad");
  }

  function drawFindings(report) {
    const list = document.getElementById("findings");
    while (list.firstChild) list.removeChild(list.firstChild);
    const problems = new Set(["lost", "unreachable", "diverged", "bad_status", "partial"]);
    for (const f of report.findings || []) {
      const li = document.createElement("li");
      li.className = "finding " + f.kind + (problems.has(f.kind) ? " problem" : "");
      li.dataset.kind = f.kind;
      const count = f.count !== null && f.count !== undefined
        ? " " + fmt(f.count) + " " + (f.unit || "") : "";
      li.textContent = `${f.kind}: ${f.where}: ${f.reason}${count}` +
        (f.detail ? " \u2014 " + f.detail : "");
      list.appendChild(li);
    }
    if (!list.firstChild) {
      const li = document.createElement("li");
      li.textContent = "none";
      list.appendChild(li);
    }
  }

  function drawTable(m) {
    const body = document.querySelector("#daemons tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    for (const d of [...m.proxies, ...m.aggregators]) {
      if (!d.raw) continue;
      const tr = document.createElement("tr");
      tr.className = d.state + (d.diverged ? " diverged" : "");
      tr.dataset.url = d.url;
      const answered = d.raw.reachable;
      const figure = (n) => (answered ? fmt(n) : "-");
      const cells = [d.tier, d.title === d.url ? d.url : d.title + " " + d.url, d.stateText,
        figure(d.inRate !== null ? d.inRate : d.intervalIn),
        figure(d.outRate !== null ? d.outRate : d.intervalOut),
        figure(d.linesIn), figure(d.buffered), figure(d.dropped),
        (d.diverged ? "\u2260 " : "") + d.membership, duration(d.uptime)];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function draw(seen, report) {
    const m = model(report, seen);
    drawPicture(m);
    drawSummary(report);
    drawFindings(report);
    drawTable(m);
    seen.previous = report;
    seen.refreshes += 1;
    document.body.dataset.refreshes = String(seen.refreshes);
    document.body.dataset.takenAt = String(report.taken_at);
    const when = new Date(report.taken_at * 1000).toLocaleTimeString();
    setText("updated", `read at ${when}; refreshed every ${REFRESH_MS / 1000} s`, "updated");
  }

  async function refresh(seen) {
    // A page server that stops answering must not stop the refreshes: give up on a reading
    // after FETCH_TIMEOUT_MS and try again.
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const answer = await fetch("cluster.json", { cache: "no-store",
                                                   signal: controller.signal });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      draw(seen, await answer.json());
    } catch (err) {
      const why = err.name === "AbortError" ? "no answer in " + FETCH_TIMEOUT_MS / 1000 + " s"
        : err.message;
      setText("updated", "cannot read cluster.json (" + why + "): the picture is stale",
        "updated stale");
    } finally {
      clearTimeout(timer);
      setTimeout(refresh, REFRESH_MS, seen);
    }
  }

  // Under Node (tests/unit/test_ui_model.py) the page's model is a module; in a browser the
  // page starts reading.
  if (typeof module === "object" && module.exports) {
    module.exports = { fmt, rate, clip, daemonState, model, newMemory };
    return;
  }
  refresh(newMemory());
})();
