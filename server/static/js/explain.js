// Text explanations: one row of highlighted tokens per method (tokens aligned in columns, LIT-style rows),
// predicted probabilities, faithfulness per method; and the corpus-audit tab.
// Tokens and texts reach the page only through textContent; colours come from the server (the library's scales).
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  const el = LV.el;
  const data = LV.pageData();
  const models = data.models || [];
  const titles = data.titles || {};
  const EXAMPLES = [
    "a gorgeous, witty, seductive movie.",
    "the plot is predictable and the acting is wooden, but the soundtrack is great.",
    "not a bad film, just not a good one either.",
    "rtcritic : a dull , lifeless and overlong film .",
  ];
  const LABEL_WIDTH = 150;
  const FAITH_COLUMNS = [
    ["delta", "completeness Δ", null, "sum(scores) − (F(x) − F(baseline)); only for methods that promise completeness (0 is exact)"],
    ["comprehensiveness", "comprehensiveness ↑", true, "ERASER AOPC: drop of p(target) when the top 10–50% tokens are removed"],
    ["sufficiency", "sufficiency ↓", false, "ERASER AOPC: drop of p(target) when only the top 10–50% tokens are kept"],
    ["deletion_auc", "deletion AUC ↓", false, "area under p(target) as top tokens are removed one by one"],
    ["insertion_auc", "insertion AUC ↑", true, "area under p(target) as top tokens are added one by one"],
    ["loo_kendall_tau", "Kendall τ vs leave-one-out ↑", true, "rank agreement with the effect of removing each token alone"],
    ["seconds", "time (s)", null, "wall time of the method on the server"],
  ];

  let result = null;   // the last /api/explain response
  let lastBody = null; // and its request
  let busy = false;

  // ------------------------------------------------------------------ tabs
  function showTab(name) {
    for (const b of document.querySelectorAll(".tabs button")) {
      const on = b.dataset.tab === name;
      b.setAttribute("aria-selected", on ? "true" : "false");
      $(`pane-${b.dataset.tab}`).hidden = !on;
    }
    // each tab keeps its own settings in the address: the audit's never carry the text tab's model
    if (name === "audit") { Audit.init(); LV.writeUrl({ tab: "audit", ...Audit.urlState() }); }
    else LV.writeUrl(textUrl);
  }
  let textUrl = {};  // the text tab's address state (what its last explanation asked for)

  // ------------------------------------------------------------------ controls
  function labelsOf(name) {
    const m = models.find(x => x.name === name);
    return (m && m.card && m.card.labels) || (result && result.model === name ? result.labels : null);
  }

  function fillTargets(selected) {
    const labels = labelsOf($("model").value) || [];
    LV.fillSelect($("target"), [{ value: "", label: "predicted class" },
                                ...labels.map((l, i) => ({ value: String(i), label: `${i}: ${l}` }))], selected ?? "");
  }

  function chosenMethods() {
    return [...document.querySelectorAll("#methods input:checked")].map(i => i.value);
  }

  function methodParams() {
    return LVParams.values($("param-inputs"));
  }

  function setUp() {
    const url = LV.readUrl();
    if (!models.length) {
      LV.showError("No text classifier is loaded. Train one (python -m data.train sentiment-lstm) or serve a " +
                   "directory with a classifier checkpoint.");
    }
    LV.fillSelect($("model"), models.map(m => ({ value: m.name, label: m.name })), url.model || "sentiment-lstm");
    fillTargets(url.target);
    LVParams.build($("param-inputs"), data.methods.map(m => ({ name: m, ...data.method_inputs[m] })));
    const wanted = url.methods ? url.methods.split(",") : data.default_methods;
    for (const m of data.methods) {
      $("methods").append(el("label", {}, el("input", { type: "checkbox", value: m, name: "method",
                                                        checked: wanted.includes(m) }), titles[m] || m));
    }
    if (url.normalize) $("normalize").value = url.normalize;
    if (url.text) $("text").value = url.text;
    for (const t of EXAMPLES) {
      $("examples").append(el("button", { type: "button", title: t, onclick: () => { $("text").value = t; run(); } }, t));
    }
    $("model").addEventListener("change", () => { fillTargets(""); });
    $("explain-form").addEventListener("submit", ev => { ev.preventDefault(); run(); });
    $("text").addEventListener("keydown", ev => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) run(); });
    $("export").addEventListener("click", exportHtml);
    for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (result) renderSalience(result); }, 150);
    });
    if (url.tab !== "audit") textUrl = { model: url.model, target: url.target, methods: url.methods, normalize: url.normalize, text: url.text };
    if (url.tab === "audit") showTab("audit");
    else if (models.length && $("text").value.trim()) run();
  }

  // ------------------------------------------------------------------ request
  async function run() {
    if (busy) return;
    const methods = chosenMethods();
    if (!methods.length) { LV.showError("Choose at least one method."); return; }
    const target = $("target").value;
    const body = { model: $("model").value, text: $("text").value, methods,
                   target: target === "" ? null : Number(target), normalize: $("normalize").value,
                   faithfulness: $("faithfulness").checked, params: methodParams() };
    const params = {};
    for (const m of methods) if (body.params[m]) params[m] = body.params[m];
    body.params = params;
    textUrl = { model: body.model, target, methods, normalize: body.normalize === "max_abs" ? "" : body.normalize,
                text: body.text };
    LV.writeUrl(textUrl);
    busy = true;
    $("run").disabled = true;
    $("status").textContent = `Explaining with ${methods.map(m => titles[m] || m).join(", ")} …`;
    const t0 = performance.now();
    try {
      result = await LV.api("/api/explain", {}, { body });
      lastBody = body;
      LV.clearError();
      if (!models.find(x => x.name === result.model && x.card && x.card.labels)) fillTargets(target);
      render(result);
      $("status").textContent = `Done in ${((performance.now() - t0) / 1000).toFixed(2)} s.`;
    } catch (e) {
      LV.showError(e.message);
      $("status").textContent = "";
    } finally {
      busy = false;
      $("run").disabled = false;
    }
  }

  // ------------------------------------------------------------------ rendering
  function render(r) {
    $("results").hidden = false;
    renderPrediction(r);
    renderSalience(r);
    const withFaith = r.explanations.some(e => e.faithfulness);
    $("faith-panel").hidden = !withFaith;
    if (withFaith) { renderFaithTable(r); renderCurves(r); }
  }

  function renderPrediction(r) {
    const box = LV.clear($("prediction"));
    box.append("predicted ", el("b", {}, r.labels[r.predicted]), ` (${r.probs[r.predicted].toFixed(3)})`,
               el("br"), "explaining ", el("b", {}, r.target_label), ` (${r.probs[r.target].toFixed(3)})`,
               el("br"), el("span", { class: "muted small" }, `${r.tokens.length} tokens · model ${r.model}`));
    const colors = r.labels.map((_, i) => i === r.target ? "#2166ac" : "#9fb7cc");
    Plotly.react("probs-plot", [{
      type: "bar", orientation: "h", x: r.probs, y: r.labels.map(LV.plotText), marker: { color: colors },
      text: r.probs.map(p => p.toFixed(3)), textposition: "auto", hovertemplate: "%{y}: %{x:.4f}<extra></extra>",
    }], { margin: { l: 80, r: 10, t: 10, b: 30 }, xaxis: { range: [0, 1], title: { text: "probability" } },
          yaxis: { autorange: "reversed", type: "category" }, height: 60 + 34 * r.labels.length },
    LV.plotConfig);
  }

  /** Token pieces as shown: the text under each token's span (else the token itself). */
  function pieces(r) {
    return r.tokens.map((t, i) => LV.tokenLabel(r.spans ? r.text.slice(r.spans[i][0], r.spans[i][1]) : t));
  }

  function fmt(x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "–";
    const a = Math.abs(x);
    return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? x.toExponential(2) : x.toFixed(a < 1 ? 3 : 2);
  }

  function signed(x) { return (x > 0 ? "+" : "") + fmt(x); }

  /** A score as read: with its sign for signed methods, a plain magnitude otherwise. */
  function value(e, x) { return e.signed ? signed(x) : fmt(x); }

  function renderSalience(r) {
    const host = LV.clear($("salience"));
    const shown = pieces(r);
    // measure each token's width once, in the token font
    const probe = el("span", { class: "sal-tok sal-measure" });
    host.append(probe);
    const widths = shown.map(t => { probe.textContent = t; return Math.ceil(probe.getBoundingClientRect().width) + 1; });
    probe.remove();
    const avail = Math.max(200, host.clientWidth - LABEL_WIDTH - 6);
    const lines = [];
    let line = [], used = 0;
    widths.forEach((w, i) => {
      if (line.length && used + w + 3 > avail) { lines.push(line); line = []; used = 0; }
      line.push(i); used += w + 3;
    });
    if (line.length) lines.push(line);
    $("salience-note").textContent = `target ${r.target_label} · ${r.explanations.length} method(s) · ` +
      (r.normalize === "sum_abs" ? "score / sum|score| per row" : "score / max|score| per row");

    lines.forEach((idx, li) => {
      const grid = el("div", { class: "sal-line", dataset: { line: li } });
      grid.style.gridTemplateColumns = `${LABEL_WIDTH}px ` + idx.map(i => `${widths[i]}px`).join(" ");
      for (const e of r.explanations) {
        const label = el("div", { class: "sal-label", title: e.legend.note },
                         el("b", {}, e.title),
                         el("span", { class: "kind" }, e.signed ? "signed" : "unsigned",
                            e.delta !== null && e.delta !== undefined ? ` · Δ ${signed(e.delta)}` : "",
                            Number.isFinite(e.relative_delta) ? ` (${(100 * e.relative_delta).toFixed(1)}%)` : "",
                            e.precision === "float64" ? " · float64" : ""),
                         e.converged === false
                           ? el("span", { class: "not-converged", title: `the scores miss F(x) − F(baseline) by more ` +
                                          `than 1%: ${e.convergence_fix}` }, "not converged")
                           : "");
        if (li === 0) {
          const bar = el("span", { class: "legend-bar", title: legendText(e, r), role: "img", "aria-label": legendText(e, r) });
          bar.style.background = `linear-gradient(to right, ${e.legend.stops.join(", ")})`;
          const s = e.legend.scale;
          label.append(bar, el("span", { class: "legend-ticks" },
            ...(e.signed ? [el("span", {}, signed(-s)), el("span", {}, "0"), el("span", {}, signed(s))]
                         : [el("span", {}, "0"), el("span", {}, fmt(s))])),
            el("span", { class: "legend-words" }, e.signed ? `red against · blue for ${r.target_label}` : "purple: magnitude"));
        }
        grid.append(label);
        for (const i of idx) {
          const cell = el("span", { class: "sal-tok", dataset: { pos: i, method: e.method },
                                    title: `${r.tokens[i]} · ${e.title}: ${value(e, e.scores[i])}` }, shown[i]);
          cell.style.background = e.colors[i];
          cell.style.color = e.text_colors[i];
          grid.append(cell);
        }
      }
      grid.addEventListener("mouseover", ev => hover(ev, r, grid));
      grid.addEventListener("mouseleave", () => unhover(grid));
      host.append(grid);
    });
  }

  function legendText(e, r) {
    const s = e.legend.scale;
    return e.signed ? `${signed(-s)} against ${r.target_label} … ${signed(s)} for ${r.target_label}; ${e.legend.note}`
                    : `0 … ${fmt(s)} (magnitude); ${e.legend.note}`;
  }

  function hover(ev, r, grid) {
    const cell = ev.target.closest(".sal-tok");
    if (!cell) return;
    const pos = Number(cell.dataset.pos);
    unhover(grid);
    for (const c of grid.querySelectorAll(`.sal-tok[data-pos="${pos}"]`)) c.classList.add("hover-col");
    const box = LV.clear($("readout"));
    box.classList.remove("muted");
    box.append(el("span", { class: "tok-name" }, pieces(r)[pos]), ` #${pos}  `);
    for (const e of r.explanations) box.append(el("span", { class: "val" }, `${e.title} ${value(e, e.scores[pos])}`));
  }

  function unhover(grid) {
    for (const c of grid.querySelectorAll(".hover-col")) c.classList.remove("hover-col");
  }

  function deltaText(row) {  // "+0.0031 (1.1%, not converged)": the gap relative to F(x) − F(baseline)
    const rel = Number.isFinite(row.relative) ? `${(100 * row.relative).toFixed(1)}%` : "";
    const flag = row.converged === false ? "not converged" : "";
    const note = [rel, flag].filter(Boolean).join(", ");
    return signed(row.values.delta) + (note ? ` (${note})` : "");
  }

  function renderFaithTable(r) {
    const table = LV.clear($("faith-table"));
    table.append(el("thead", {}, el("tr", {}, el("th", {}, "method"),
      ...FAITH_COLUMNS.map(([, name, , help]) => el("th", { class: "num", title: help }, name)))));
    const rows = r.explanations.map(e => ({ name: e.title, method: e.method, values: {
      ...(e.faithfulness || {}), delta: e.delta, seconds: e.seconds }, converged: e.converged,
      relative: e.relative_delta }));
    // explaining a class the model does not predict: p(target) is near 0, so every drop of it is near 0
    // too; say so, give the numbers relative to p(target), and mark no method "best" on such numbers
    const pTarget = r.probs[r.target], offTarget = r.target !== r.predicted;
    const RELATIVE = new Set(["comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc"]);
    const warn = $("faith-warning");
    warn.hidden = !offTarget;
    warn.textContent = offTarget ? `The model does not predict ${r.target_label} (p = ${pTarget.toFixed(3)}; it predicts ` +
      `${r.labels[r.predicted]}): removing or keeping tokens can change p(${r.target_label}) only a little, so these ` +
      `numbers are small for every method and do not rank them. In brackets: each number divided by p(${r.target_label}).` : "";
    const cellText = (key, v) => (offTarget && RELATIVE.has(key) && Number.isFinite(v) && pTarget > 0)
      ? `${fmt(v)} (${fmt(v / pTarget)}× p)` : fmt(v);
    const best = {};
    for (const [key, , higher] of FAITH_COLUMNS) {
      if (higher === null || offTarget) continue;
      const vals = rows.map(x => x.values[key]).filter(Number.isFinite);
      if (vals.length > 1) best[key] = higher ? Math.max(...vals) : Math.min(...vals);
    }
    const body = el("tbody");
    for (const row of rows) {
      body.append(el("tr", { dataset: { method: row.method } }, el("td", {}, row.name),
        ...FAITH_COLUMNS.map(([key]) => el("td", { class: "num" + (best[key] === row.values[key] ? " best" : "") },
                                           key === "delta" && row.values[key] !== null && row.values[key] !== undefined
                                             ? deltaText(row) : cellText(key, row.values[key])))));
    }
    if (r.random_faithfulness) {
      const v = r.random_faithfulness;
      body.append(el("tr", { class: "baseline" }, el("td", { title: `mean ± standard deviation over ${v.draws} seeded random rankings` },
                                                       `random ranking (floor, mean ± sd of ${v.draws})`),
        ...FAITH_COLUMNS.map(([key]) => el("td", { class: "num" },
          key in v ? `${cellText(key, v[key])} ± ${fmt(v[`${key}_std`])}` : ""))));
    }
    table.append(body);
  }

  function renderCurves(r) {
    const palette = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948"];
    const traces = [];
    r.explanations.forEach((e, k) => {
      const f = e.faithfulness;
      if (!f) return;
      const color = palette[k % palette.length];
      traces.push({ x: f.curve_fractions, y: f.deletion_curve, name: LV.plotText(`${e.title} · deletion`), legendgroup: e.method,
                    line: { color }, mode: "lines" });
      traces.push({ x: f.curve_fractions, y: f.insertion_curve, name: LV.plotText(`${e.title} · insertion`), legendgroup: e.method,
                    line: { color, dash: "dot" }, mode: "lines" });
    });
    if (r.random_faithfulness) {
      const f = r.random_faithfulness;
      traces.push({ x: f.curve_fractions, y: f.deletion_curve, name: `random (mean of ${f.draws}) · deletion`, line: { color: "#999" },
                    mode: "lines" });
      traces.push({ x: f.curve_fractions, y: f.insertion_curve, name: `random (mean of ${f.draws}) · insertion`,
                    line: { color: "#999", dash: "dot" }, mode: "lines" });
    }
    Plotly.react("curves-plot", traces, {
      height: 300, margin: { l: 55, r: 10, t: 10, b: 40 },
      xaxis: { title: { text: "fraction of tokens removed (deletion) / kept (insertion), most important first" },
               range: [0, 1] },
      yaxis: { title: { text: LV.plotText(`p(${r.target_label})`) }, range: [0, 1.02] }, legend: { font: { size: 11 } },
    }, LV.plotConfig);
  }

  async function exportHtml() {
    if (!lastBody) return;
    let html;
    try {
      // the library's rendering (escaped on the server) as a standalone file; never inserted into this page
      html = (await LV.api("/api/explain", {}, { body: { ...lastBody, faithfulness: false, html: true } })).html;
    } catch (e) { LV.showError(e.message); return; }
    const doc = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" " +
                "content=\"default-src 'none'; style-src 'unsafe-inline'\"><title>textexplain</title></head>" +
                `<body style="margin:2em">${html}</body></html>\n`;
    const url = URL.createObjectURL(new Blob([doc], { type: "text/html" }));
    const a = el("a", { href: url, download: `explanation-${result.model}.html` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  // ------------------------------------------------------------------ corpus audit
  const Audit = (() => {
    let ready = false;

    function init() {
      if (ready) return;
      ready = true;
      const url = LV.readUrl();
      LV.fillSelect($("audit-model"), models.map(m => ({ value: m.name, label: m.name })),
                    url["audit-model"] || (models.some(m => m.name === "sentiment-shortcut") ? "sentiment-shortcut" : undefined));
      LV.fillSelect($("audit-corpus"), [{ value: "", label: "the model's own" }, ...data.audit.corpora.map(c => ({ value: c }))],
                    url["audit-corpus"] || "");
      LV.fillSelect($("audit-method"), data.methods.map(m => ({ value: m, label: titles[m] || m })), url["audit-method"] || "gradient_x_input");
      if (["train", "dev", "test"].includes(url["audit-split"])) $("audit-split").value = url["audit-split"];
      if (url["audit-n"]) $("audit-n").value = url["audit-n"];
      if (url["audit-min-count"]) $("audit-min-count").value = url["audit-min-count"];
      $("audit-n").max = data.audit.max_sample;
      $("audit-form").addEventListener("submit", ev => { ev.preventDefault(); start(); });
      for (const id of ["audit-model", "audit-corpus", "audit-split", "audit-method", "audit-n", "audit-min-count"]) {
        $(id).addEventListener("change", () => { ran = false; LV.writeUrl({ tab: "audit", ...urlState() }); });
      }
      if (url["audit-run"] === "1") start();  // the address held a finished audit: the server has it cached
    }

    let ran = false;
    /** The audit's settings (and whether it ran) for the address. */
    function urlState() {
      return { "audit-model": $("audit-model").value, "audit-corpus": $("audit-corpus").value, "audit-split": $("audit-split").value,
               "audit-method": $("audit-method").value, "audit-n": $("audit-n").value, "audit-min-count": $("audit-min-count").value,
               "audit-run": ran ? 1 : "" };
    }

    async function start() {
      const body = { model: $("audit-model").value, split: $("audit-split").value, method: $("audit-method").value,
                     sample: Number($("audit-n").value) };
      if ($("audit-min-count").value) body.min_count = Number($("audit-min-count").value);  // empty: scales with the sample
      if ($("audit-corpus").value) body.corpus = $("audit-corpus").value;
      const p = methodParams()[body.method];
      if (p) body.params = { [body.method]: p };
      LV.clear($("audit-results"));
      $("audit-run").disabled = true;
      try {
        const result = await LVJobs.run("/api/audit", body, job => LVJobs.showProgress($("audit-progress"), job));
        LV.clearError();
        ran = true;
        LV.writeUrl({ tab: "audit", ...urlState() });
        show(result);
      } catch (e) {
        LV.showError(`audit: ${e.message}`);
      } finally {
        $("audit-progress").hidden = true;
        $("audit-run").disabled = false;
      }
    }

    /** An example sentence, its token marked, with a button that explains it on the text tab. */
    function highlighted(text, span, model) {
      const li = el("li");
      if (!span) li.append(text);
      else li.append(text.slice(0, span[0]), el("mark", {}, text.slice(span[0], span[1])), text.slice(span[1]));
      li.append(" ", el("button", { type: "button", class: "explain-example", title: "explain this sentence in the text tab",
                                    onclick: () => explainExample(text, model) }, "Explain"));
      return li;
    }

    function explainExample(text, model) {
      $("model").value = model;
      fillTargets("");
      $("text").value = text;
      showTab("text");
      run();
    }

    /** Sort a table by a column when its header is clicked (again: the other way); each row keeps
     *  the examples row that follows it. */
    function sortable(table) {
      table.querySelectorAll("thead th").forEach((th, col) => {
        th.tabIndex = 0;
        th.classList.add("sortable");
        th.setAttribute("aria-sort", "none");
        const sort = () => {
          const down = th.getAttribute("aria-sort") !== "descending";
          table.querySelectorAll("thead th").forEach(h => h.setAttribute("aria-sort", "none"));
          th.setAttribute("aria-sort", down ? "descending" : "ascending");
          const body = table.tBodies[0];
          const groups = [...body.children].filter(tr => !tr.classList.contains("examples-row"))
            .map(tr => [tr, tr.nextElementSibling && tr.nextElementSibling.classList.contains("examples-row") ? tr.nextElementSibling : null]);
          const key = tr => { const t = tr.children[col].textContent.trim(), v = parseFloat(t); return Number.isFinite(v) ? v : t; };
          groups.sort(([a], [b]) => {
            const x = key(a), y = key(b);
            const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
            return down ? -c : c;
          });
          for (const [tr, ex] of groups) { body.append(tr); if (ex) body.append(ex); }
        };
        th.addEventListener("click", sort);
        th.addEventListener("keydown", ev => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sort(); } });
      });
      return table;
    }

    // the audit's answer: the flip-tested candidates, the token whose flip costs the most accuracy first
    function headline(r) {
      const rows = r.flips.map(f => el("tr", { dataset: { token: f.token, label: f.label } },
        el("td", { class: "token" }, el("code", {}, f.token)), el("td", {}, f.label),
        el("td", { class: "num drop" }, el("b", {}, fmt(f.drop))), el("td", { class: "num" }, fmt(f.accuracy)),
        el("td", { class: "num" }, fmt(f.accuracy_removed)), el("td", { class: "num" }, fmt(f.accuracy_flipped)),
        el("td", { class: "num" }, f.rank)));
      return el("div", { class: "panel", id: "audit-headline" },
        el("h2", {}, "Removing these tokens changes the predictions most"),
        el("p", { class: "muted small" }, "Flip test of the top tokens of each " +
           "class: removed from the texts of that class and prefixed to all others. Drop = accuracy with the token " +
           `removed minus accuracy flipped, against the ${r.flip_reference}.`),
        sortable(el("table", { class: "table audit-flips" },
          el("thead", {}, el("tr", {}, el("th", {}, "token"), el("th", {}, "relied on for"),
            el("th", { class: "num" }, "accuracy drop"), el("th", { class: "num" }, "as is"),
            el("th", { class: "num" }, "removed"), el("th", { class: "num" }, "flipped"),
            el("th", { class: "num", title: "rank by reliance for its class" }, "rank"))),
          el("tbody", {}, ...rows))));
    }

    function show(r) {
      const host = LV.clear($("audit-results"));
      const acc = r.accuracy === null ? "" : ` · accuracy on the sample ${r.accuracy.toFixed(3)}`;
      host.append(el("p", { id: "audit-summary" }, `${r.model} · ${titles[r.method] || r.method} · ${r.n_texts} texts of ` +
                      `${r.corpus}/${r.split}${acc} · ${r.signed ? "signed" : "unsigned"} scores · ` +
                      `min. count ${r.min_count} · ${r.seconds.toFixed(1)} s`));
      host.append(el("p", { id: "audit-statistic", class: "muted small" }, `Ranked by ${r.statistic}.`));
      if (!r.signed) host.append(el("p", { class: "note" }, "Unsigned scores say how sensitive the output is to a token, " +
                                     "not whether it is evidence for the class: choose a signed method to find what the model relies on."));
      if (r.flips.length) host.append(headline(r));
      const drops = new Map(r.flips.map(f => [`${f.label}\u0000${f.token}`, f.drop]));
      const grid = el("div", { class: "audit-classes" });
      for (const label of r.labels) {
        const ranked = r.tokens[label] || [];
        const table = el("table", { class: "table audit-table", dataset: { label } },
          el("thead", {}, el("tr", {}, el("th", { class: "num" }, "#"), el("th", {}, "token"),
            el("th", { class: "num", title: r.statistic }, "reliance"),
            el("th", { class: "num", title: "mean attribution per occurrence" }, "mean"),
            el("th", { class: "num", title: "occurrences in texts explained for this class" }, "count"),
            el("th", { class: "num" }, "texts"),
            el("th", { class: "num", title: "flip test: accuracy with the token removed minus accuracy with it " +
                                            "moved to the other classes' texts" }, "flip drop"))));
        const body = el("tbody");
        for (const st of ranked) {
          const examples = el("tr", { class: "examples-row", hidden: true }, el("td"),
            el("td", { colspan: 6 }, el("ol", { class: "audit-examples" },
               ...st.examples.map(ex => highlighted(ex.text, ex.span, r.model)))));
          const name = st.in_vocab ? st.token : `${st.token} (${Object.keys(st.forms).slice(0, 3).join(", ")}…)`;
          const toggle = () => { examples.hidden = !examples.hidden; row.setAttribute("aria-expanded", String(!examples.hidden)); };
          const row = el("tr", { class: "clickable", dataset: { token: st.token }, title: "click (or Enter) for example sentences",
                                 tabindex: "0", "aria-expanded": "false", onclick: toggle,
                                 onkeydown: ev => { if (ev.target === row && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); toggle(); } } },
            el("td", { class: "num" }, st.rank), el("td", { class: "token" }, name),
            el("td", { class: "num" }, fmt(st.reliance)), el("td", { class: "num" }, fmt(st.mean)),
            el("td", { class: "num" }, st.count), el("td", { class: "num" }, st.n_texts),
            el("td", { class: "num flip-drop" }, fmt(drops.get(`${label}\u0000${st.token}`))));
          body.append(row, examples);
        }
        table.append(body);
        grid.append(el("div", { class: "panel" },
          el("h2", {}, `Tokens relied on for "${label}" `,
             el("span", { class: "muted small" }, `(${r.texts_per_class[label] || 0} texts explained for this class)`)),
          ranked.length ? sortable(table) : el("p", { class: "muted" }, "no token occurs often enough")));
      }
      host.append(grid);
      const plot = el("div", { id: "audit-plot", class: "plot" });
      host.append(el("div", { class: "panel" }, plot));
      const figure = LV.plotFigure(r.figure);
      Plotly.react(plot, figure.data, { ...figure.layout, width: undefined, autosize: true }, LV.plotConfig);
    }

    return { init, urlState };
  })();

  setUp();
})();
