// Two batches compared on the page (GET /compare/{baseline}/{candidate}/), picked in the list
// view's form: #compare=<baseline>,<candidate>. The same numbers as `faust -A simapp compare
// --format json` (simapp/observe/comparison.py): pass rates overall and per criterion with
// their 95 % interval and the call ("no change" when it holds 0), the regressions with the
// judge's reasoning, the fixes, the scenarios side by side. Built with textContent only.
"use strict";
(function () {
  const SHOWN = 50;  // rows of each list (the JSON view has all)
  let shown = null;  // "baseline,candidate" on screen

  const {el, pct, section, table} = window.simappDom;  // report.js
  const pts = (r) => (r >= 0 ? "+" : "") + (100 * r).toFixed(1);

  // `pairs`: [cells, data-* attributes] per row
  const pairTable = (head, pairs) => table(head, pairs.map((p) => p[0]), (i) => pairs[i][1]);

  function rateRow(name, r) {
    const [low, high] = r.ci95;
    return [[name, pct(r.baseline), pct(r.candidate), pts(r.difference),
             "[" + pts(low) + ", " + pts(high) + "]", r.call],
            {name: name, call: r.call}];
  }

  function changes(rows) {
    return rows.slice(0, SHOWN).map((r) => {
      const failed = el("div");
      for (const f of r.failed.slice(0, 3)) {
        failed.append(el("div", "r-note", f.criterion + ": " + f.reasoning));
      }
      return [[r.scenario_id, r.persona, pct(r.baseline), pct(r.candidate), failed],
              {scenario: r.scenario_id}];
    });
  }

  function render(r) {
    const body = el("div", "c-body");
    body.dataset.baseline = r.baseline;
    body.dataset.candidate = r.candidate;
    const head = el("div", "r-head");
    head.append(el("div", "r-line", r.scenarios + " scenarios paired; " +
      r.only_in_baseline.length + " only in " + r.baseline + ", " +
      r.only_in_candidate.length + " only in " + r.candidate));
    const m = r.overall.mcnemar;
    if (m) {
      head.append(el("div", "r-note", "McNemar's exact test: " + m.regressions +
        " regressions, " + m.fixes + " fixes, p = " + m.p_value.toPrecision(4)));
    }
    head.append(el("div", "r-note", "Differences in points with a 95 % interval from a " +
      "paired bootstrap over scenarios (" + r.resamples + " resamples, seed " + r.seed +
      "); an interval that holds 0 is \"no change\"."));
    const rates = section("Pass rates", "c-rates");
    rates.append(pairTable(["", r.baseline, r.candidate, "difference", "95 % interval", ""],
      [rateRow("overall", r.overall),
       ...Object.entries(r.criteria).map(([name, row]) => rateRow(name, row))]));
    const worse = section("Regressions: " + r.regressions.length, "c-regressions");
    worse.append(pairTable(["scenario", "persona", r.baseline, r.candidate,
                        "the candidate's failed criteria"], changes(r.regressions)));
    const better = section("Fixes: " + r.fixes.length, "c-fixes");
    better.append(pairTable(["scenario", "persona", r.baseline, r.candidate,
                         "the baseline's failed criteria"], changes(r.fixes)));
    const side = section("Per scenario (pass rate, cost per run, turns, duration)", "c-side");
    side.append(pairTable(["scenario", r.baseline, r.candidate],
      r.side_by_side.slice(0, SHOWN).map((s) => {
        const one = (x) => pct(x.pass_rate) + " · $" + x.cost_usd + " · " + x.turns +
          " turns · " + x.duration_s + " s";
        return [[s.scenario_id, one(s.baseline), one(s.candidate)], {scenario: s.scenario_id}];
      })));
    const apart = section("Apart", "c-apart");
    apart.append(
      el("div", "r-note", "only in " + r.baseline + ": " + (r.only_in_baseline.join(", ") || "none")),
      el("div", "r-note", "only in " + r.candidate + ": " + (r.only_in_candidate.join(", ") || "none")),
      el("div", "r-note", "flaky (mixed verdicts over repeats): " + r.flaky.baseline.length +
        " in " + r.baseline + ", " + r.flaky.candidate.length + " in " + r.candidate));
    body.append(head, rates, worse, better, side, apart);
    document.getElementById("compare").replaceChildren(body);
  }

  async function load(baseline, candidate) {
    const status = document.getElementById("compare-status");
    status.className = "";
    status.textContent = "reading both batches from the results topic…";
    try {
      const path = "/compare/" + encodeURIComponent(baseline) + "/" +
        encodeURIComponent(candidate) + "/";
      const resp = await window.simappFetch(path);
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
      if (shown !== baseline + "," + candidate) return;  // another pair was picked meanwhile
      render(data);
      status.textContent = "read " + new Date().toLocaleTimeString();
    } catch (err) {
      status.className = "stale";
      status.textContent = "could not compare: " + err.message;
    }
  }

  // the form's choices: the batches the list view shows
  function fillChoices() {
    const ids = Array.from(document.querySelectorAll("#batches .batch"))
      .map((c) => c.id.slice("batch-".length));
    for (const id of ["compare-baseline", "compare-candidate"]) {
      const select = document.getElementById(id);
      const have = Array.from(select.options).map((o) => o.value);
      for (const batch of ids) {
        if (!have.includes(batch)) select.append(new Option(batch, batch));
      }
    }
  }

  document.getElementById("compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const a = document.getElementById("compare-baseline").value;
    const b = document.getElementById("compare-candidate").value;
    if (a && b) location.hash = "#compare=" + encodeURIComponent(a) + "," + encodeURIComponent(b);
  });

  function route() {
    const m = /^#compare=([^,]+),([^,]+)$/.exec(location.hash);
    const box = document.getElementById("compare-view");
    box.hidden = m === null;
    if (m === null) { shown = null; return; }
    document.getElementById("list-view").hidden = true;
    const [a, b] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
    if (shown === a + "," + b) return;
    shown = a + "," + b;
    document.getElementById("compare-title").textContent = "Compare " + a + " → " + b;
    document.getElementById("compare").replaceChildren();
    load(a, b);
  }

  window.addEventListener("hashchange", route);
  setInterval(fillChoices, 1000);
  fillChoices();
  route();
})();
