// Cell discovery: rank cells against a hypothesis, then inspect one cell: over the text, its top
// contexts, its gate saturation, and an explanation of what drives it at a step. State lives in the URL.
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  const data = LV.pageData();
  const url = LV.readUrl();
  const state = {
    store: url.store || "", source: url.source || "", hypothesis: url.hyp || "", method: url.method || "",
    cell: url.cell !== undefined && url.cell !== "" ? parseInt(url.cell, 10) : null,
    pos: Math.max(0, parseInt(url.pos || "0", 10) || 0), direction: url.dir === "-1" ? -1 : 1,
    step: url.step !== undefined && url.step !== "" ? parseInt(url.step, 10) : null,
  };
  let info = null, hypotheses = null, ranking = null;
  const stores = LV.readyStores(data.status || {});
  const note = LV.pendingStoresNote(data.status || {});
  if (note) { $("pending-note").textContent = note; $("pending-note").hidden = false; }
  const enc = encodeURIComponent;
  const fail = e => LV.showError(e.message);

  function saveUrl() {
    LV.writeUrl({ store: state.store, source: state.source, hyp: state.hypothesis, method: state.method,
                  cell: state.cell, pos: state.cell !== null ? state.pos : "", dir: state.direction === -1 ? -1 : "",
                  step: state.step });
  }
  // the store's tokenization (StateStore.tokenization, from its card) decides what reads as characters
  const charLevel = () => info.tokenization === "char";
  const width = () => (info && charLevel() ? 400 : 120);

  // ------------------------------------------------------------------ pickers
  // the named hypotheses read the characters of source code (quotes, comments, indentation, ...): they fit
  // character-level stores; a word-level store gets the bracket counts, its meta tracks, regex and tokens
  const WORD_LEVEL_NAMED = new Set(["depth", "parens"]);
  function fitsStore(h) { return charLevel() || WORD_LEVEL_NAMED.has(h.name); }

  function hypothesisOptions() {
    const opts = hypotheses.named.filter(fitsStore).map(h => ({ value: h.name, label: `${h.name} (${h.kind}): ${h.description}` }));
    for (const m of info.meta || []) {
      const mi = (info.meta_info || {})[m] || {};
      if (!mi.categorical) opts.push({ value: `meta:${m}`, label: `meta track "${m}" (${mi.min} .. ${mi.max})` });
      else for (const v of mi.values) opts.push({ value: `meta:${m}=${v}`, label: `meta track "${m}" is "${v}"` });
    }
    opts.push({ value: "regex:", label: "regular expression…" }, { value: "tokens:", label: "these tokens…" },
              { value: "meta=", label: "meta track equals a value…" });
    return opts;
  }

  function setHypothesisControls() {
    const h = state.hypothesis;
    let choice = h, arg = "";
    if (h.startsWith("regex:")) { choice = "regex:"; arg = h.slice(6); }
    else if (h.startsWith("tokens:")) { choice = "tokens:"; arg = h.slice(7); }
    else if (h.startsWith("meta:") && h.includes("=") && !hypothesisOptions().some(o => o.value === h)) {
      choice = "meta="; arg = h.slice(5);
    }
    LV.fillSelect($("hypothesis"), hypothesisOptions(), choice || defaultHypothesis());
    $("arg").value = arg;
    showArg();
  }

  /** A hypothesis that fits the store: bracket depth for parens, the label track, else quotes. */
  function defaultHypothesis() {
    if (/paren/.test(state.store)) return "parens";
    for (const [m, mi] of Object.entries(info.meta_info || {})) {
      return mi.categorical ? `meta:${m}=${mi.values[mi.values.length - 1]}` : `meta:${m}`;
    }
    return charLevel() ? "quotes" : "regex:";
  }

  function showArg() {
    const v = $("hypothesis").value;
    const names = { "regex:": ["Pattern", "e.g. def |class "], "tokens:": ["Tokens", "e.g. not,never,no"],
                    "meta=": ["TRACK=VALUE", "e.g. label=fresh"] };
    $("arg-label").hidden = !names[v];
    if (names[v]) { $("arg-name").textContent = names[v][0]; $("arg").placeholder = names[v][1]; }
  }

  function hypothesisFromControls() {
    const v = $("hypothesis").value, arg = $("arg").value.trim();
    if (v === "regex:" || v === "tokens:") return arg ? v + arg : "";
    if (v === "meta=") return arg ? `meta:${arg}` : "";
    return v;
  }

  async function chooseStore(name) {
    if (!stores.length) { LV.showError("No state store is ready yet. " + note); return false; }
    state.store = LV.fillSelect($("store"), stores.map(s => ({ value: s.name, label: `${s.title} (${s.name})` })), name);
    info = await LV.api(`/api/stores/${enc(state.store)}`);
    state.source = LV.fillSelect($("source"), info.sources.map(s => ({ value: s, label: `${s} (${info.cells[s]} cells)` })),
                                 state.source);
    setHypothesisControls();
    return true;
  }

  // ------------------------------------------------------------------ ranking
  async function runRank() {
    state.hypothesis = hypothesisFromControls();
    state.method = $("method").value;
    if (!state.hypothesis) { LV.showError("Type the pattern, tokens or TRACK=VALUE for this hypothesis."); return; }
    LV.clearError();
    $("rank-summary").textContent = "ranking…";
    saveUrl();
    try {
      ranking = await LVJobs.whenIndexed(`/api/stores/${enc(state.store)}/cells/rank`,
                                         { source: state.source, hypothesis: state.hypothesis, method: state.method, top: 50 },
                                         pct => { $("rank-summary").textContent = `building the match index: ${pct}%`; });
    } catch (e) {
      $("rank-summary").textContent = "ranking failed (see the message above)";
      throw e;
    }
    await LV.plotly();
    renderRanking();
  }

  function renderRanking() {
    const r = ranking;
    const metric = { auroc: "AUROC", pearson: "Pearson r", spearman: "Spearman ρ" }[r.metric];
    $("rank-summary").textContent = `${r.hypothesis} · ${metric} over ${r.n_tokens.toLocaleString()} tokens` +
      (r.positive_rate !== null ? ` · ${(100 * r.positive_rate).toFixed(1)}% positive` : "");
    const top = r.top.slice(0, 30);
    const base = r.metric === "auroc" ? 0.5 : 0;
    Plotly.react("rank-plot", [{
      type: "bar", x: top.map(t => `#${t.cell}`), y: top.map(t => t.score - base), base: base,
      customdata: top.map(t => t.cell), marker: { color: top.map(t => LV.diverging(t.direction > 0 ? 0.85 : -0.85)) },
      hovertemplate: `cell %{customdata}: ${metric} %{y:.4f}<extra></extra>`,
      name: "blue: high when true, red: low when true",
    }], { margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { type: "category", tickangle: -45 },
          yaxis: { title: { text: metric } }, shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: base, y1: base,
          line: { dash: "dot", color: "#888" } }] }, LV.plotConfig);
    const gd = $("rank-plot");
    if (!gd.dataset.wired) {
      gd.dataset.wired = "1";
      gd.on("plotly_click", ev => ev.points.length && openCell(ev.points[0].customdata, true).catch(fail));
    }
    const table = LV.clear($("rank-table"));
    table.append(LV.el("thead", {}, LV.el("tr", {}, LV.el("th", {}, "#"), LV.el("th", {}, "cell"),
      LV.el("th", { class: "num" }, metric), LV.el("th", { class: "num" }, "strength"), LV.el("th", {}, "direction"))));
    const body = LV.el("tbody");
    for (const t of r.top) {
      body.append(LV.el("tr", { class: "clickable" + (t.cell === state.cell ? " current" : ""), dataset: { cell: String(t.cell) },
                                tabindex: "0", title: "click (or Enter) to open this cell",
                                onclick: () => openCell(t.cell, true).catch(fail),
                                onkeydown: ev => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); openCell(t.cell, true).catch(fail); } } },
        LV.el("td", {}, String(t.rank)), LV.el("td", {}, String(t.cell)), LV.el("td", { class: "num" }, t.score.toFixed(4)),
        LV.el("td", { class: "num" }, t.strength.toFixed(4)),
        LV.el("td", {}, t.direction > 0 ? "high when true" : "low when true")));
    }
    table.append(body);
  }

  // ------------------------------------------------------------------ one cell
  async function openCell(cell, jumpToPeak) {
    state.cell = cell;
    state.step = null;
    // a cell that is low where the hypothesis holds opens on its lowest contexts: those support the hypothesis
    const ranked = ranking && ranking.top.find(t => t.cell === cell);
    if (ranked) {
      state.direction = ranked.direction > 0 ? 1 : -1;
      $("direction").value = String(state.direction);
    }
    $("direction-note").textContent = ranked ? `cell ${cell} is ${ranked.direction > 0 ? "high" : "low"} where ` +
      `${ranking.hypothesis} holds: shown where it is ${ranked.direction > 0 ? "highest" : "lowest"}` : "";
    $("cell-input").value = cell;
    $("explain-panel").hidden = true;
    document.querySelectorAll("#rank-table tr[data-cell]").forEach(tr => tr.classList.toggle("current", +tr.dataset.cell === cell));
    const ctx = await loadContexts();
    if (jumpToPeak && ctx.contexts.length) state.pos = Math.max(0, ctx.contexts[0].position - Math.floor(width() / 2));
    await Promise.all([loadCellWindow(), loadSaturation()]);
    saveUrl();
  }

  async function loadCellWindow() {
    if (state.cell === null) return;
    const start = Math.min(state.pos, Math.max(0, info.n_tokens - 1));
    const stop = Math.min(info.n_tokens, start + width());
    state.pos = start;
    $("pos").value = start;
    const calls = [
      LV.api(`/api/stores/${enc(state.store)}/states`, { source: state.source, start, stop, cells: [state.cell] }),
      LV.api(`/api/stores/${enc(state.store)}/tokens`, { start, stop }),
    ];
    if (state.hypothesis) calls.push(LV.api(`/api/stores/${enc(state.store)}/hypothesis`, { hypothesis: state.hypothesis, start, stop }));
    const [st, tok, hyp] = await Promise.all(calls);
    await LV.plotly();
    const values = st.values[0];
    $("cell-title").textContent = `Cell ${state.cell} of ${state.source}, tokens ${start}–${stop - 1}`;
    const traces = [{ type: "scatter", mode: "lines", x: values.map((_, i) => start + i), y: values, name: `cell ${state.cell}`,
                      line: { color: "#1399e4", width: 1.5 }, hovertemplate: "%{x}: %{y:.3f}<extra>cell</extra>" }];
    if (hyp) traces.push({ type: "scatter", mode: "lines", x: hyp.values.map((_, i) => start + i), y: hyp.values, yaxis: "y2",
                           name: LV.plotText(hyp.hypothesis), line: { color: "#f28e2b", width: 1.5, shape: "hv" },
                           hovertemplate: `%{x}: %{y}<extra>${LV.plotText(hyp.hypothesis)}</extra>` });
    Plotly.react("cell-plot", traces, {
      margin: { l: 44, r: 44, t: 8, b: 30 }, showlegend: true, legend: { orientation: "h", y: 1.15 },
      xaxis: { title: { text: "token position" } }, yaxis: { title: { text: "cell" } },
      yaxis2: { overlaying: "y", side: "right", title: { text: "hypothesis" }, showgrid: false,
                ...(hyp && hyp.values.every(v => v === 0 || v === 1 || v === null)
                  ? { tickvals: [0, 1], ticktext: ["0 false", "1 true"], range: [-0.1, 1.1] } : {}) },
    }, LV.plotConfig);
    renderHeatText($("cell-text"), tok.text, values, start, pos => explainAt(pos).catch(fail),
                   undefined, `cell ${state.cell}: red negative, white 0, blue positive`);
  }

  /** Tokens with diverging background colours (value / max |value|), a numbered legend before them;
   *  each token clickable (and focusable: Enter or space). */
  function renderHeatText(box, tokens, values, start, onClick, focus, caption) {
    LV.clear(box);
    const top = Math.max(1e-9, ...values.map(v => Math.abs(v ?? 0)));
    const legendBox = box.previousElementSibling && box.previousElementSibling.classList.contains("heat-legend")
      ? LV.clear(box.previousElementSibling) : null;
    if (legendBox) legendBox.append(LV.legend({ lo: -top, hi: top, colorOf: v => LV.diverging(v / top), caption }));
    tokens.forEach((tok, i) => {
      const v = values[i] ?? 0, t = v / top, pos = start + i;
      const shown = tok === "\n" ? "\u21b5\n" : tok === " " ? " " : tok;
      box.append(LV.el("span", { class: (onClick ? "clickable" : "") + (pos === focus ? " focus" : ""),
                                 title: `${JSON.stringify(tok)} @ ${pos}: ${v.toFixed(4)}`,
                                 tabindex: onClick ? (i === 0 ? "0" : "-1") : undefined, role: onClick ? "button" : undefined,
                                 dataset: { pos: String(pos) }, style: { background: LV.diverging(t), color: LV.textColorFor(t) },
                                 onclick: onClick ? () => onClick(pos) : undefined,
                                 onkeydown: onClick ? ev => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onClick(pos); } } : undefined },
                       shown));
      if (tokens.length && !charLevel()) box.append(" ");
    });
    if (onClick && !box.dataset.keys) {  // one tab stop; arrows move along the text
      box.dataset.keys = "1";
      box.addEventListener("keydown", ev => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[ev.key];
        const here = ev.target.closest("span[data-pos]");
        if (step === undefined || !here) return;
        ev.preventDefault();
        const spans = [...box.querySelectorAll("span[data-pos]")], i = spans.indexOf(here);
        const next = spans[Math.max(0, Math.min(spans.length - 1, i + step))];
        here.tabIndex = -1; next.tabIndex = 0; next.focus();
      });
    }
  }

  async function loadContexts() {
    const box = LV.clear($("contexts"));
    const r = await LVJobs.whenIndexed(`/api/stores/${enc(state.store)}/cells/${state.cell}/contexts`,
                                       { source: state.source, k: 10, direction: state.direction,
                                         before: charLevel() ? 40 : 12, after: charLevel() ? 10 : 4 },
                                       pct => { box.textContent = `building the match index: ${pct}%`; });
    LV.clear(box);
    for (const c of r.contexts) {
      const show = () => { state.pos = Math.max(0, c.position - Math.floor(width() / 2)); loadCellWindow().then(saveUrl).catch(fail); };
      const row = LV.el("div", { class: "clickable", title: `position ${c.position}: ${c.value.toFixed(4)} (click or Enter to show it)`,
                                 dataset: { position: String(c.position) }, tabindex: "0", role: "button", onclick: show,
                                 onkeydown: ev => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); show(); } } });
      const top = Math.max(1e-9, ...c.values.map(Math.abs));
      row.append(LV.el("span", { class: "muted" }, `${c.value.toFixed(3)}  `));
      c.text.forEach((tok, i) => {
        const pos = c.start + i, t = c.values[i] / top;
        row.append(LV.el("span", { class: pos === c.position ? "center" : "",
                                   style: pos === c.position ? {} : { background: LV.diverging(t), color: LV.textColorFor(t) } },
                         LV.tokenLabel(tok) + (charLevel() ? "" : " ")));
      });
      box.append(row);
    }
    return r;
  }

  async function loadSaturation() {
    const note = $("saturation-note");
    const gates = info.sources.filter(s => /\.gate_[a-z]$/.test(s));
    const m = state.source.match(/^(.*\.l\d+\.(?:reverse\.)?)/);
    const layerGates = m ? gates.filter(g => g.startsWith(m[1])) : [];
    if (!gates.length) {
      note.textContent = `Store "${state.store}" recorded no gates (extract with kinds including "gates" to see them).`;
      note.hidden = false;
      if (window.Plotly) Plotly.purge("saturation-plot");
      return;
    }
    note.hidden = true;
    const sources = layerGates.length ? layerGates : gates;
    const r = await LV.api(`/api/stores/${enc(state.store)}/saturation`, { sources });
    await LV.plotly();
    const traces = [], colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];
    sources.forEach((s, i) => {
      const left = r.left[s], right = r.right[s];
      traces.push({ type: "scatter", mode: "markers", x: left, y: right, name: LV.plotText(s.split(".").pop()), opacity: 0.55,
                    marker: { size: 6, color: colours[i % colours.length] }, text: left.map((_, u) => `unit ${u}`),
                    hovertemplate: `%{text}: left %{x:.3f}, right %{y:.3f}<extra>${LV.plotText(s)}</extra>` });
      if (state.cell !== null && state.cell < left.length) {
        traces.push({ type: "scatter", mode: "markers", x: [left[state.cell]], y: [right[state.cell]], showlegend: false,
                      marker: { size: 15, color: colours[i % colours.length], line: { color: "#111", width: 2 } },
                      hovertemplate: `cell ${state.cell}: left %{x:.3f}, right %{y:.3f}<extra>${LV.plotText(s)}</extra>` });
      }
    });
    Plotly.react("saturation-plot", traces, {
      margin: { l: 50, r: 10, t: 10, b: 44 }, legend: { orientation: "h", y: 1.1 },
      xaxis: { range: [0, 1], title: { text: `fraction of steps < ${r.low}` } },
      yaxis: { range: [0, 1], title: { text: `fraction of steps > ${r.high}` } },
      shapes: [{ type: "line", x0: 0, y0: 1, x1: 1, y1: 0, line: { dash: "dot", color: "#999" } }],
    }, LV.plotConfig);
  }

  // ------------------------------------------------------------------ explain the cell at a step
  async function explainAt(pos) {
    state.step = pos;
    saveUrl();
    document.querySelectorAll("#cell-text span.focus").forEach(s => s.classList.remove("focus"));
    const here = document.querySelector(`#cell-text span[data-pos="${pos}"]`);
    if (here) here.classList.add("focus");
    $("explain-panel").hidden = false;
    $("explain-title").textContent = `cell ${state.cell} of ${state.source} at position ${pos}`;
    const maxSteps = parseInt($("explain-steps").value, 10);
    $("explain-summary").textContent = `computing Integrated Gradients (at most ${maxSteps} steps)…`;
    LV.clear($("explain-text"));
    const e = await LV.api(`/api/stores/${enc(state.store)}/cells/${state.cell}/explain`, {},
                           { body: { source: state.source, position: pos, n_steps: Math.min(50, maxSteps),
                                     max_steps: maxSteps, window: parseInt($("explain-window").value, 10) } });
    const parts = [`Integrated Gradients (${e.n_gradient_rows} gradient evaluations of at most ${e.params.max_steps}, ` +
                   `${e.params.baseline} baseline) on ${e.model}`,
                   `activation ${e.activation.toFixed(4)} (stored ${e.stored_activation.toFixed(4)})`,
                   `baseline ${e.activation_baseline.toFixed(4)}`];
    if (e.delta !== null) {
      const rel = e.relative_delta === null ? "no change to compare with" : `${(100 * e.relative_delta).toFixed(2)}%`;
      parts.push(`completeness delta ${e.delta.toExponential(2)} (${rel}` +
                 (e.converged ? ")" : ": not converged, allow more integration steps)"));
    }
    parts.push(e.whole_sequence ? "whole sequence" : `the ${e.stop - e.start} tokens before the step, from a zero state`);
    $("explain-summary").textContent = parts.join(" · ");
    renderHeatText($("explain-text"), e.text, e.scores, e.start, null, pos,
                   "attribution to the cell: blue raises it, red lowers it, white 0");
  }

  // ------------------------------------------------------------------ wiring
  function wire() {
    $("controls").addEventListener("submit", ev => { ev.preventDefault(); runRank().catch(fail); });
    $("store").addEventListener("change", async () => {
      state.source = ""; state.hypothesis = ""; state.cell = null; state.step = null; state.pos = 0;
      await chooseStore($("store").value);
      saveUrl();
    });
    $("source").addEventListener("change", () => {
      state.source = $("source").value;
      saveUrl();
      if (state.hypothesis) runRank().then(() => state.cell !== null && openCell(state.cell, false)).catch(fail);
    });
    $("hypothesis").addEventListener("change", showArg);
    $("cell-input").addEventListener("change", () => {
      const c = parseInt($("cell-input").value, 10);
      if (Number.isFinite(c)) openCell(c, true).catch(fail);
    });
    for (const id of ["explain-steps", "explain-window"]) {
      $(id).addEventListener("change", () => { if (state.step !== null) explainAt(state.step).catch(fail); });
    }
    $("direction").addEventListener("change", () => {
      state.direction = parseInt($("direction").value, 10);
      saveUrl();
      if (state.cell !== null) loadContexts().catch(fail);
    });
    const move = d => { state.pos = Math.max(0, state.pos + d); loadCellWindow().then(saveUrl).catch(fail); };
    $("prev").addEventListener("click", () => move(-Math.floor(width() / 2)));
    $("next").addEventListener("click", () => move(Math.floor(width() / 2)));
    $("pos").addEventListener("change", () => { state.pos = parseInt($("pos").value, 10) || 0; loadCellWindow().then(saveUrl).catch(fail); });
  }

  async function start() {
    hypotheses = await LV.api("/api/hypotheses");
    wire();
    if (!(await chooseStore(state.store))) return;
    $("method").value = state.method;
    $("direction").value = String(state.direction);
    if (state.hypothesis) await runRank();
    if (state.cell !== null) {
      const step = state.step;
      $("cell-input").value = state.cell;
      await Promise.all([loadContexts(), loadCellWindow(), loadSaturation()]);
      if (step !== null) await explainAt(step);
    }
    saveUrl();
  }

  start().catch(fail);
})();
