// The batch report on the page (GET /report/{batch}/), opened from a batch's card: #report=<id>.
// Everything is built with textContent and SVG elements: no innerHTML, no request outside the
// worker (the charts are drawn here, nothing is vendored). `simappFetch(path)` is the page's
// fetch with the token it asked for (index.html).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 2000;
  const COLORS = {done: "#2f9e52", calls: "#3b82f6", endpoint: "#8b5cf6", budget: "#d9534f"};
  let shown = null;   // the batch whose report is open
  let timer = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  const pct = (r) => (r === null || r === undefined) ? "—" : (100 * r).toFixed(1) + "%";
  const money = (v) => "$" + (v || 0).toFixed(4);
  const num = (v) => (v === null || v === undefined) ? "—" : String(v);

  function section(title, id) {
    const s = el("section", "r-section");
    if (id) s.id = id;
    s.append(el("h3", null, title));
    return s;
  }

  // A table: `head` the column titles, `rows` arrays of cells (text or nodes); `attrs(row, i)`
  // gives data-* attributes of a row for the tests and for people reading the DOM.
  function table(head, rows, attrs) {
    const t = el("table", "r-table");
    const hr = el("tr");
    for (const h of head) hr.append(el("th", null, h));
    t.append(hr);
    rows.forEach((cells, i) => {
      const tr = el("tr");
      for (const [k, v] of Object.entries(attrs ? attrs(i) : {})) tr.dataset[k] = String(v);
      for (const c of cells) {
        const td = el("td");
        if (c instanceof Node) td.append(c); else td.textContent = num(c);
        tr.append(td);
      }
      t.append(tr);
    });
    return t;
  }

  // the page's other views build with the same pieces (compare.js)
  window.simappDom = {el, pct, section, table};

  function groupTable(rows, key, label) {
    return table([label, "simulations", "failed", "judged", "pass rate"],
      rows.map((r) => [r.other ? "(other)" : r[key], r.simulations, r.failed, r.judged,
                       pct(r.pass_rate)]),
      (i) => ({name: rows[i].other ? "" : rows[i][key], simulations: rows[i].simulations,
               failed: rows[i].failed, judged: rows[i].judged, passed: rows[i].passed}));
  }

  // ----- charts ---------------------------------------------------------------------------
  const W = 640, H = 200, PAD = {l: 44, r: 10, t: 10, b: 28};

  function axes(g, maxY, maxX, unitX) {
    const y0 = H - PAD.b, x1 = W - PAD.r;
    g.append(svg("line", {x1: PAD.l, y1: y0, x2: x1, y2: y0, stroke: "#888"}));
    g.append(svg("line", {x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: y0, stroke: "#888"}));
    for (const f of [0, 0.5, 1]) {
      const y = y0 - f * (y0 - PAD.t);
      g.append(svg("text", {x: PAD.l - 4, y: y + 4, "text-anchor": "end", "font-size": 10},
                   (maxY * f).toFixed(maxY * f >= 10 ? 0 : 1)));
    }
    g.append(svg("text", {x: x1, y: H - 6, "text-anchor": "end", "font-size": 10},
                 maxX + " " + unitX));
  }

  function lineChart(tl, budget) {
    const series = [["completions/s", tl.completions_per_s, COLORS.done],
                    ["LLM requests/s", tl.llm_calls_per_s, COLORS.calls],
                    ["endpoint requests/s", tl.endpoint_calls_per_s, COLORS.endpoint]]
      .filter(([, v]) => v && v.some((x) => x > 0));
    const n = Math.max(1, ...series.map(([, v]) => v.length));
    const maxY = Math.max(1, budget || 0, ...series.flatMap(([, v]) => v)) * 1.1;
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "r-chart",
                             "data-chart": "timeline", role: "img"});
    root.append(svg("title", {}, "completions and LLM requests per second against the budget"));
    axes(root, maxY, Math.round(n * tl.step_s), "s");
    const x = (i) => PAD.l + (W - PAD.l - PAD.r) * (n === 1 ? 0.5 : i / (n - 1));
    const y = (v) => (H - PAD.b) - (H - PAD.b - PAD.t) * v / maxY;
    for (const [name, values, color] of series) {
      const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      root.append(svg("polyline", {points, fill: "none", stroke: color, "stroke-width": 1.5,
                                   "data-series": name}));
    }
    if (budget) {
      root.append(svg("line", {x1: PAD.l, x2: W - PAD.r, y1: y(budget), y2: y(budget),
                               stroke: COLORS.budget, "stroke-dasharray": "5 4",
                               "data-series": "budget"}));
    }
    const legend = el("div", "r-legend");
    for (const [name, , color] of series) legend.append(swatch(color, name));
    if (budget) legend.append(swatch(COLORS.budget, "budget " + budget + "/s"));
    const box = el("div", "r-chart-box");
    box.append(root, legend);
    return box;
  }

  function swatch(color, label) {
    const s = el("span", "r-swatch");
    const dot = el("i");
    dot.style.background = color;
    s.append(dot, label);
    return s;
  }

  function histogram(name, bounds, counts, unit, scale) {
    let last = counts.length - 1;
    while (last > 0 && !counts[last]) last--;
    const first = Math.max(0, counts.findIndex((c) => c > 0));
    const shownCounts = counts.slice(first, last + 1);
    const maxY = Math.max(1, ...shownCounts) * 1.1;
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "r-chart",
                             "data-chart": name, role: "img"});
    root.append(svg("title", {}, name + " histogram"));
    axes(root, maxY, "", "");
    const bw = (W - PAD.l - PAD.r) / Math.max(1, shownCounts.length);
    shownCounts.forEach((c, j) => {
      const i = first + j;
      const h = (H - PAD.b - PAD.t) * c / maxY;
      const label = i < bounds.length ? "≤" + (bounds[i] / scale) : ">" + (bounds[bounds.length - 1] / scale);
      const bar = svg("rect", {x: PAD.l + j * bw + 1, y: H - PAD.b - h, width: Math.max(1, bw - 2),
                               height: h, fill: COLORS.calls, "data-count": c});
      bar.append(svg("title", {}, label + " " + unit + ": " + c));
      root.append(bar);
      if (shownCounts.length <= 24 || j % 2 === 0) {
        root.append(svg("text", {x: PAD.l + (j + 0.5) * bw, y: H - PAD.b + 12, "font-size": 9,
                                 "text-anchor": "middle"}, label));
      }
    });
    return root;
  }

  // ----- the report -----------------------------------------------------------------------
  function render(r) {
    const box = document.getElementById("report");
    box.dataset.batchId = r.batch_id;
    const body = el("div", "r-body");
    const p = r.progress || {};
    const head = el("div", "r-head");
    const total = p.total || 0, finished = (p.completed || 0) + (p.failed || 0);
    const track = el("div", "track");
    const bar = el("div", "bar"), barFailed = el("div", "bar-failed");
    bar.style.width = (total ? 100 * (p.completed || 0) / total : 0).toFixed(2) + "%";
    barFailed.style.width = (total ? 100 * (p.failed || 0) / total : 0).toFixed(2) + "%";
    track.append(bar, barFailed);
    head.append(el("div", "r-line", finished + " / " + total + (p.total_known ? "" : "?") +
                    " finished — " + (p.done ? "done" : "ETA " + (p.eta_seconds === null ?
                    "—" : Math.round(p.eta_seconds) + " s"))), track);
    body.append(head);

    const usage = r.usage || {}, tot = usage.total || {};
    const stats = el("div", "stats r-stats");
    const stat = (label, value, key) => {
      const s = el("span");
      const b = el("b", "r-" + key, value);
      b.dataset.value = value;
      s.append(label + " ", b);
      stats.append(s);
    };
    stat("simulations", r.simulations, "simulations");
    stat("judge pass rate", pct(r.judge.pass_rate), "pass-rate");
    stat("judged", r.judge.judged, "judged");
    stat("cost to date", money(tot.cost_usd), "cost");
    stat("LLM calls", tot.llm_calls, "calls");
    stat("tokens", tot.total_tokens, "tokens");
    const rate = r.llm_rate || {};
    stat("achieved LLM rate", num(rate.achieved_rps) + "/s", "rate");
    stat("budget", rate.budget_rps ? rate.budget_rps + "/s" : "—", "budget");
    body.append(stats);
    if (rate.budget) body.append(el("div", "r-note", "budget: " + rate.budget));
    if (r.names_hidden) {
      body.append(el("div", "r-note", "Personas and criteria are shown as labels and " +
        "transcripts are not served: this worker has no WEB_AUTH_TOKEN (README, Monitoring)."));
    }

    const charts = section("Completions and LLM requests per second", "r-timeline");
    charts.append(lineChart(r.timeline, rate.budget_rps), el("div", "r-note",
      "LLM requests are attributed: each simulation's calls are spread evenly over its run " +
      "(waits for the budget included), so a curve can pass the budget where the provider " +
      "saw none; endpoint requests are under the endpoints' own budgets."));
    body.append(charts);
    const dist = section("Turns and duration", "r-distributions");
    dist.append(el("div", "r-note", "turns: mean " + num(r.turns.mean) + ", p50 ≤ " +
                   num(r.turns.p50) + ", p95 ≤ " + num(r.turns.p95) + " — duration: p50 " +
                   num(r.duration.p50_s) + " s, p95 " + num(r.duration.p95_s) + " s"));
    dist.append(el("div", "r-caption", "turns per simulation"),
                histogram("turns", r.turns.bounds, r.turns.counts, "turns", 1),
                el("div", "r-caption", "duration per simulation (s)"),
                histogram("duration", r.duration.bounds_ms, r.duration.counts, "s", 1000));
    body.append(dist);

    const reasons = section("End reasons and failures", "r-reasons");
    reasons.append(table(["end reason", "simulations"],
      Object.entries(r.end_reasons).map(([k, v]) => [k, v]), (i) => ({reason: Object.keys(r.end_reasons)[i]})));
    const failedBy = Object.entries(p.failed_by_reason || {});
    if (failedBy.length) {
      reasons.append(table(["failed by reason", "simulations"], failedBy.map(([k, v]) => [k, v])));
    }
    body.append(reasons);

    const crit = section("Judge: pass rate per criterion", "r-criteria");
    crit.append(table(["criterion", "judged", "passed", "pass rate"],
      r.criteria.map((c) => [c.other ? "(other criteria)" : c.criterion, c.judged, c.passed,
                             pct(c.pass_rate)]),
      (i) => ({name: r.criteria[i].other ? "" : r.criteria[i].criterion,
               judged: r.criteria[i].judged, passed: r.criteria[i].passed})));
    body.append(crit);
    for (const [title, rows, key, id] of [["Per persona", r.personas, "name", "r-personas"],
                                          ["Per assistant model", r.models, "model", "r-models"],
                                          ["Per endpoint", r.endpoints, "endpoint", "r-endpoints"]]) {
      if (!rows.length) continue;
      const s = section(title, id);
      s.append(groupTable(rows, key, key === "name" ? "persona" : key));
      body.append(s);
    }
    const cost = section("Usage and cost to date", "r-usage");
    const roles = Object.entries(usage.by_role || {});
    cost.append(table(["role", "LLM calls", "tokens", "cost"],
      roles.map(([role, u]) => [role, u.llm_calls, u.total_tokens, money(u.cost_usd)]),
      (i) => ({role: roles[i][0], calls: roles[i][1].llm_calls, tokens: roles[i][1].total_tokens,
               cost: roles[i][1].cost_usd})));
    cost.append(table(["model", "LLM calls", "tokens", "cost"],
      (usage.by_model || []).map((m) => [m.other ? "(other models)" : m.model, m.llm_calls,
                                         m.total_tokens, money(m.cost_usd)])));
    body.append(cost);

    const failing = section("Failing simulations (" + r.failing_total + "; the newest " +
                            r.failing.length + " listed)", "r-failing");
    failing.append(table(["simulation", "reason", "failed criteria", ""],
      r.failing.map((f) => {
        const why = (f.end_reason || f.reason) + (f.dead ? " (dead-lettered)" : "");
        let open = "no transcript";
        if (f.ref) {
          open = el("button", "r-open", "transcript");
          open.type = "button";
          open.addEventListener("click", () => openTranscript(r.batch_id, f.id));
        }
        return [f.id, why, (f.criteria || []).join("; "), open];
      }), (i) => ({simulationId: r.failing[i].id})));
    body.append(failing);
    if (r.webhook && r.webhook.set) {
      body.append(el("div", "r-note", "batch webhook: " + (r.webhook.sent_at ? "sent" :
        "due when the batch finishes") + (r.webhook.conflicts ?
        " (" + r.webhook.conflicts + " other URL(s) ignored)" : "")));
    }
    const old = box.querySelector(".r-body");
    if (old) old.replaceWith(body); else box.append(body);
  }

  async function openTranscript(batchId, simId) {
    const panel = document.getElementById("transcript");
    panel.hidden = false;
    panel.replaceChildren(el("h3", null, "Transcript of " + simId), el("div", "r-note", "loading…"));
    panel.dataset.simulationId = simId;
    panel.scrollIntoView();
    try {
      const resp = await window.simappFetch("/report/" + encodeURIComponent(batchId) +
                                            "/transcript/" + encodeURIComponent(simId) + "/");
      const data = await resp.json();
      if (!resp.ok) {
        panel.replaceChildren(el("h3", null, "Transcript of " + simId),
                              el("div", "r-refused", data.error || ("HTTP " + resp.status)));
        panel.dataset.state = "refused";
        return;
      }
      showTranscript(panel, simId, data);
    } catch (err) {
      panel.replaceChildren(el("div", "r-refused", "could not load: " + err.message));
      panel.dataset.state = "error";
    }
  }

  function showTranscript(panel, simId, data) {
    const s = data.summary;
    const close = el("button", "r-close", "close");
    close.type = "button";
    close.addEventListener("click", () => { panel.hidden = true; });
    const items = [el("h3", null, "Transcript of " + simId), close,
                   el("div", "r-note", "end reason " + s.end_reason + ", " +
                      s.total_iterations + " turns, " + (s.duration_ms / 1000).toFixed(1) + " s" +
                      (s.error ? " — " + s.error : ""))];
    const ev = s.evaluation;
    if (ev) {
      const verdicts = el("div", "r-verdicts");
      verdicts.append(el("h4", null, "Judge (" + (ev.model || "") + "): " +
        (ev.error ? "error: " + ev.error : ev.passed ? "passed" : "failed")));
      for (const c of ev.criteria || []) {
        const v = el("div", "r-verdict " + (c.passed ? "pass" : "fail"));
        v.append(el("b", null, (c.passed ? "✓ " : "✗ ") + c.criterion),
                 el("div", "r-reasoning", c.reasoning || ""));
        verdicts.append(v);
      }
      items.push(verdicts);
    }
    const turns = el("div", "r-turns");
    for (const m of s.conversation_history || []) {
      const t = el("div", "r-msg " + m.role);
      t.append(el("b", null, m.role), el("pre", null, m.content));
      turns.append(t);
    }
    items.push(turns);
    panel.replaceChildren(...items);
    panel.dataset.state = "shown";
  }

  async function refresh() {
    timer = null;
    if (shown === null) return;
    const status = document.getElementById("report-status");
    try {
      const resp = await window.simappFetch("/report/" + encodeURIComponent(shown) + "/");
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
      if (data.batch_id === shown) render(data);
      status.textContent = "updated " + new Date().toLocaleTimeString();
      status.className = "";
      if (data.progress && data.progress.done) return;  // a finished batch does not change
    } catch (err) {
      status.textContent = "could not refresh (" + err.message + "); retrying";
      status.className = "stale";
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function route() {
    const m = /^#report=(.+)$/.exec(location.hash);
    const id = m ? decodeURIComponent(m[1]) : null;
    const other = location.hash.startsWith("#compare=");  // compare.js's view
    document.getElementById("list-view").hidden = id !== null || other;
    const box = document.getElementById("report-view");
    box.hidden = id === null;
    if (id === shown) return;
    shown = id;
    document.getElementById("transcript").hidden = true;
    const body = document.querySelector("#report .r-body");
    if (body) body.remove();
    if (id !== null) {
      document.getElementById("report-title").textContent = "Batch " + id;
      if (timer) clearTimeout(timer);
      refresh();
    }
  }

  window.addEventListener("hashchange", route);
  route();
})();
