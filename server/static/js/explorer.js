// Hidden-state explorer: LSTMVis select (brush a range -> cells) and match (find the cells' pattern elsewhere).
// The whole view state lives in the URL (store, source, pos, w, threshold, brush, pad, match).
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  const PLOT_MARGIN = { l: 48, r: 16, t: 8, b: 22 };
  const SEQ_COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

  const data = LV.pageData();
  const url = LV.readUrl();
  const state = {
    store: url.store || "",
    source: url.source || "",
    pos: Math.max(0, parseInt(url.pos || "0", 10) || 0),
    w: url.w ? Math.min(300, Math.max(10, parseInt(url.w, 10) || 40)) : 0,
    threshold: Number.isFinite(parseFloat(url.threshold)) ? parseFloat(url.threshold) : 0.3,
    brush: LV.intList(url.brush).length === 2 ? LV.intList(url.brush) : null,
    pad: LV.intList(url.pad).length === 2 ? LV.intList(url.pad) : [1, 0],
    match: url.match === "1",
    sign: ["positive", "negative", "both"].includes(url.sign) ? url.sign : "positive",
  };
  let info = null;        // the current store's /api/stores/<name>
  let windowData = null;  // {tokens, states, meta, sequences, start, stop}
  let cells = [];         // selected cells
  let hidden = new Set(); // cells toggled off in the chip list (view only)
  let foundPositions = new Set();
  let request = 0;        // guards against out-of-order responses
  let onlySelected = url.only === "1";  // draw only the selected cells' lines
  let highlighted = null;  // the selected cell whose line is drawn on top (hovered chip)

  const stores = LV.readyStores(data.status || {});
  const note = LV.pendingStoresNote(data.status || {});
  if (note) { $("pending-note").textContent = note; $("pending-note").hidden = false; }

  let pushNext = false;  // the next saveUrl adds a history entry (a navigation jump), else it replaces the current one
  function saveUrl() {
    const push = pushNext;
    pushNext = false;
    LV.writeUrl({ store: state.store, source: state.source, pos: state.pos, w: state.w,
                  threshold: state.threshold, brush: state.brush, pad: state.pad, match: state.match ? 1 : "",
                  sign: state.sign === "positive" ? "" : state.sign, only: onlySelected ? 1 : "" }, { push });
  }

  function defaultWidth() {
    return info && info.char_level ? 100 : 40;
  }

  // ------------------------------------------------------------------ loading
  /** No store to show: say how to add one, instead of a page of empty controls. */
  function showEmptyState() {
    const box = LV.clear($("empty-state"));
    box.hidden = false;
    box.append(LV.el("h2", {}, note ? "No state store is ready yet" : "No state store in the data directory"),
               LV.el("p", {}, note || "The explorer shows the hidden states kept in a state store (an .h5 file). Make one " +
                     "from a model and a corpus, put it in the data directory, and reload this page:"),
               LV.el("pre", {}, LV.el("code", {}, "lstmvis extract --model MODEL --corpus TEXTS --out DATA_DIR/name.h5\n" +
                                                  "lstmvis serve --data DATA_DIR")),
               LV.el("p", {}, "Or start lstmvis serve without --data to explore the bundled demo stores."));
    $("controls").hidden = true;
    $("select-view").hidden = true;
  }

  async function chooseStore(name) {
    if (!stores.length) { showEmptyState(); return false; }
    state.store = LV.fillSelect($("store"), stores.map(s => ({ value: s.name, label: `${s.title} (${s.name})` })), name);
    // the page carries the details of the store it opens on, so the first window's requests go out at once
    const preloaded = data.store_info && data.store_info.name === state.store ? data.store_info : null;
    data.store_info = null;
    info = preloaded || await LV.api(`/api/stores/${encodeURIComponent(state.store)}`);
    info.char_level = !!info.char_level;
    state.source = LV.fillSelect($("source"), info.sources.map(s => ({ value: s, label: `${s} (${info.cells[s]} cells)` })),
                                 state.source);
    if (!state.w) state.w = defaultWidth();
    $("width").value = state.w;
    return true;
  }

  async function loadWindow() {
    const my = ++request;
    state.pos = Math.max(0, Math.min(state.pos, Math.max(0, info.n_tokens - 1)));
    const start = state.pos, stop = Math.min(info.n_tokens, state.pos + state.w);
    $("pos").value = state.pos;
    const [tok, st] = await Promise.all([
      LV.api(`/api/stores/${encodeURIComponent(state.store)}/tokens`, { start, stop }),
      LV.api(`/api/stores/${encodeURIComponent(state.store)}/states`, { source: state.source, start, stop }),
    ]);
    await LV.plotly();
    if (my !== request) return;
    windowData = { start, stop, tokens: tok.tokens, text: tok.text, sequences: tok.sequences, meta: tok.meta,
                   values: st.values, cellIds: st.cells };
    renderTokens();
    renderMeta();
    drawLinePlot();
    scaleSlider();
    saveUrl();
  }

  // ------------------------------------------------------------------ cell ids and signs
  // With sign "both", ids D..2D-1 mean cells 0..D-1 on negatively (as lstmvis.match defines them).
  function nCells() { return windowData ? windowData.cellIds.length : 0; }
  function baseCell(id) { return id % nCells(); }
  function negativeId(id) { return state.sign === "negative" || (state.sign === "both" && id >= nCells()); }
  function cellLabel(id) { return negativeId(id) ? `\u2212${baseCell(id)}` : String(baseCell(id)); }
  function isOn(id, t) {
    const v = windowData.values[baseCell(id)][t];
    return negativeId(id) ? v <= -state.threshold : v >= state.threshold;
  }

  // ------------------------------------------------------------------ line plot of all cells
  function drawLinePlot() {
    const w = windowData;
    const T = w.tokens.length;
    const active = cells.filter(c => !hidden.has(c));
    const sel = new Set(active.map(baseCell));
    const xs = [], ys = [], cd = [];
    if (!onlySelected || !sel.size) {
      // the unselected cells as one faint trace: the density of lines, not a hairball
      w.values.forEach((row, i) => {
        const cell = w.cellIds[i];
        if (sel.has(cell)) return;
        for (let t = 0; t < T; t++) { xs.push(t); ys.push(row[t]); cd.push(cell); }
        xs.push(null); ys.push(null); cd.push(null);
      });
    }
    const traces = [
      { x: xs, y: ys, customdata: cd, type: "scatter", mode: "lines", name: "cells",
        line: { color: sel.size ? "rgba(120,130,150,0.12)" : "rgba(120,130,150,0.28)", width: 1 },
        hovertemplate: "cell %{customdata}: %{y:.3f}<extra></extra>" },
    ];
    // each selected cell in its own colour (the colour of its chip); the hovered one thick, on top
    const order = [...sel].sort((a, b) => (a === highlighted) - (b === highlighted));
    for (const cell of order) {
      const row = w.values[w.cellIds.indexOf(cell)];
      if (!row) continue;
      traces.push({ x: row.map((_, t) => t), y: row, type: "scatter", mode: "lines", name: `cell ${cell}`,
                    line: { color: cellColor(cell), width: cell === highlighted ? 4 : 2 },
                    opacity: highlighted === null || cell === highlighted ? 1 : 0.35,
                    hovertemplate: `selected cell ${cell}: %{y:.3f}<extra></extra>` });
    }
    const lineY = state.sign === "negative" ? -state.threshold : state.threshold;
    const shapes = [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: lineY, y1: lineY,
                      line: { color: "#1399e4", width: 2, dash: "dash" }, editable: true }];
    if (state.sign === "both") {
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: -state.threshold, y1: -state.threshold,
                    line: { color: "#1399e4", width: 1, dash: "dot" }, editable: false });
    }
    if (state.brush) {
      // the brushed range as a filled band behind the lines (a trace: shapes would all be draggable)
      const [a, b] = state.brush, x0 = a - w.start - 0.5, x1 = b - w.start - 0.5;
      const ys = [...ys0(w)];
      traces.unshift({ x: [x0, x1, x1, x0, x0], y: [ys[0], ys[0], ys[1], ys[1], ys[0]], type: "scatter", mode: "lines",
                       fill: "toself", fillcolor: "rgba(242,142,43,0.12)", line: { width: 0 }, hoverinfo: "skip" });
    }
    const layout = {
      margin: PLOT_MARGIN, showlegend: false, hovermode: "closest", dragmode: false,
      xaxis: { range: [-0.5, T - 0.5], showticklabels: false, zeroline: false, fixedrange: true },
      yaxis: { zeroline: true, zerolinecolor: "#ccc", fixedrange: true, title: { text: LV.plotText(state.source), font: { size: 11 } } },
      shapes,
    };
    layout.yaxis.range = [...ys0(w)];
    // the dashed threshold line is the only shape, so it is the only thing that can be dragged
    const config = { ...LV.plotConfig, edits: { shapePosition: true }, displayModeBar: false };
    Plotly.react("lineplot", traces, layout, config);
  }

  /** The colour of a selected cell: its line and its chip. */
  function cellColor(cell) { return SEQ_COLORS[cells.map(baseCell).indexOf(cell) % SEQ_COLORS.length] || SEQ_COLORS[0]; }

  /** The y range of the plot: every value of the window, the threshold line(s), and a margin. */
  function ys0(w) {
    let lo = Math.min(0, -state.threshold), hi = Math.max(0, state.threshold);
    for (const row of w.values) for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const m = 0.05 * (hi - lo || 1);
    return [lo - m, hi + m];
  }

  /** While the dashed line is dragged: show its value. */
  function onRelayouting(ev) {
    const y = ev["shapes[0].y0"] ?? ev["shapes[0].y1"];
    if (y === undefined) return;
    $("threshold-readout").textContent = `threshold ${(state.sign === "negative" ? -y : y).toFixed(3)}`;
  }

  /** The threshold slider spans the window's values (0 .. max |value|), in 200 steps. */
  function scaleSlider() {
    let top = 0;
    for (const row of windowData.values) for (const v of row) top = Math.max(top, Math.abs(v));
    top = Math.max(top, Math.abs(state.threshold), 1e-3);
    const slider = $("threshold-slider");
    slider.max = String(+top.toPrecision(3));
    slider.step = String(10 ** Math.floor(Math.log10(top / 200)));  // a round step near 1/200 of the range
    slider.value = String(state.threshold);
    $("threshold-readout").textContent = `threshold ${state.threshold}`;
  }

  function onRelayout(ev) {
    const y = ev["shapes[0].y0"] ?? ev["shapes[0].y1"];
    if (y === undefined) return;
    const v = Math.round((state.sign === "negative" ? -y : y) * 1000) / 1000;
    if (v === state.threshold) drawLinePlot();  // snap the line back to horizontal
    else setThreshold(v);
  }

  // ------------------------------------------------------------------ token row with brush
  function gridTemplate(n) {
    return { gridTemplateColumns: `repeat(${n}, minmax(0, 1fr))`,
             paddingLeft: `${PLOT_MARGIN.l}px`, paddingRight: `${PLOT_MARGIN.r}px` };
  }

  function renderTokens() {
    const w = windowData, row = LV.clear($("tokens"));
    Object.assign(row.style, gridTemplate(w.tokens.length));
    row.classList.toggle("tokens-vertical", !info.char_level);
    const seqStarts = new Set(w.sequences.map(s => s.start));
    w.tokens.forEach((tok, t) => {
      const pos = w.start + t, shown = w.text[t];
      row.append(LV.el("div", { class: "tok" + (seqStarts.has(pos) ? " seq-start" : ""), tabindex: t === 0 ? "0" : "-1",
                                title: `${JSON.stringify(shown)}${shown !== tok ? ` (token ${JSON.stringify(tok)})` : ""} @ ${pos}`,
                                dataset: { pos: String(pos) } },
                       LV.tokenLabel(shown)));
    });
    paintTokens();
  }

  /** Brush/padding marks, search hits, and the LSTMVis shading: how many selected cells are on at each token. */
  function paintTokens() {
    const w = windowData;
    if (!w) return;
    const sel = cells.filter(c => !hidden.has(c));
    const [a, b] = state.brush || [-1, -1];
    const [pl, pr] = state.pad;
    $("tokens").querySelectorAll(".tok").forEach((node, t) => {
      const pos = w.start + t;
      node.classList.toggle("brushed", pos >= a && pos < b);
      node.classList.toggle("padded", state.brush !== null && ((pos >= a - pl && pos < a) || (pos >= b && pos < b + pr)));
      node.classList.toggle("found", foundPositions.has(pos));
      let on = 0;
      for (const id of sel) if (isOn(id, t)) on++;
      const frac = sel.length ? on / sel.length : 0;
      node.style.background = sel.length ? LV.sequential(frac) : "";
      node.style.color = sel.length ? LV.textOn(LV.sequential(frac)) : "";
    });
    const legend = LV.clear($("token-legend"));
    if (sel.length) legend.append(LV.legend({ lo: 0, hi: sel.length, ticks: Math.min(5, sel.length + 1), colorOf: v => LV.sequential(v / sel.length),
                                              caption: "selected cells on at the token:" }));
  }

  /** Keyboard on the token row: arrows move along it, Shift+arrows grow the brush, Enter or space
   *  brushes the focused token (or selects the grown brush), Escape clears. */
  let keyAnchor = null;
  function onTokenKey(ev) {
    const node = ev.target.closest(".tok");
    if (!node) return;
    const toks = [...$("tokens").querySelectorAll(".tok")];
    const i = toks.indexOf(node), pos = parseInt(node.dataset.pos, 10);
    const step = { ArrowRight: 1, ArrowLeft: -1, End: toks.length - 1 - i, Home: -i }[ev.key];
    if (step !== undefined) {
      ev.preventDefault();
      const next = toks[Math.max(0, Math.min(toks.length - 1, i + step))];
      node.tabIndex = -1; next.tabIndex = 0; next.focus();
      if (ev.shiftKey) {
        if (keyAnchor === null) keyAnchor = pos;
        const p = parseInt(next.dataset.pos, 10);
        state.brush = [Math.min(keyAnchor, p), Math.max(keyAnchor, p) + 1];
        paintTokens();
      }
    } else if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      if (keyAnchor === null) state.brush = [pos, pos + 1];
      keyAnchor = null;
      paintTokens();
      runSelect().catch(fail);
    } else if (ev.key === "Escape") {
      keyAnchor = null;
      $("clear-brush").click();
    }
  }
  const fail = e => LV.showError(e.message);

  let dragFrom = null;
  function tokenAt(ev) {
    const target = ev.pointerType === "touch" ? document.elementFromPoint(ev.clientX, ev.clientY) : ev.target;
    const node = target && target.closest(".tok");
    return node ? parseInt(node.dataset.pos, 10) : null;
  }
  function onDown(ev) {
    const p = tokenAt(ev);
    if (p === null) return;
    ev.preventDefault();
    dragFrom = p;
    state.brush = [p, p + 1];
    paintTokens();
  }
  function onMove(ev) {
    if (dragFrom === null) return;
    const p = tokenAt(ev);
    if (p === null) return;
    state.brush = [Math.min(dragFrom, p), Math.max(dragFrom, p) + 1];
    paintTokens();
  }
  function onUp() {
    if (dragFrom === null) return;
    dragFrom = null;
    runSelect().catch(e => LV.showError(e.message));
  }

  // ------------------------------------------------------------------ meta tracks
  function renderMeta() {
    const box = LV.clear($("meta-tracks"));
    const w = windowData;
    for (const [name, values] of Object.entries(w.meta || {})) {
      const nums = values.filter(v => typeof v === "number");
      const numeric = nums.length === values.length;
      const lo = numeric ? Math.min(...nums) : 0, hi = numeric ? Math.max(...nums) : 1;
      const cats = numeric ? [] : [...new Set(values.map(String))];
      const row = LV.el("div", { class: "meta-track", style: gridTemplate(values.length), dataset: { meta: name } });
      values.forEach((v, t) => {
        const bg = numeric ? LV.sequential(0.08 + 0.92 * (hi > lo ? (v - lo) / (hi - lo) : 0.5))
                           : SEQ_COLORS[cats.indexOf(String(v)) % SEQ_COLORS.length];
        row.append(LV.el("div", { class: "meta-cell", title: `${name} = ${v} @ ${w.start + t}`, style: { background: bg } }));
      });
      box.append(LV.el("div", { class: "meta-label", style: { paddingLeft: `${PLOT_MARGIN.l}px` } },
                       `${name}` + (numeric ? ` (${lo} .. ${hi})` : "")), row);
    }
  }

  // ------------------------------------------------------------------ select
  async function runSelect() {
    LV.clearError();
    if (!state.brush) { cells = []; renderCells(); return; }
    const [start, stop] = state.brush;
    const r = await LV.api(`/api/stores/${encodeURIComponent(state.store)}/select`, {
      source: state.source, start, stop, threshold: state.threshold, pad_left: state.pad[0], pad_right: state.pad[1],
      sign: state.sign });
    cells = r.cells;
    hidden = new Set();
    renderCells();
    saveUrl();
    if (!cells.length) await showHints(); else LV.clear($("select-hints")).hidden = true;
    if (state.match) await runMatch();
  }

  /** A brush that selects no cell: why, and what would select some, each one click away. */
  async function showHints() {
    const [start, stop] = state.brush;
    const box = LV.clear($("select-hints"));
    const h = await LV.api(`/api/stores/${encodeURIComponent(state.store)}/select/hints`, {
      source: state.source, start, stop, threshold: state.threshold, pad_left: state.pad[0], pad_right: state.pad[1],
      sign: state.sign });
    const apply = (label, count, change) => LV.el("button", { type: "button", disabled: !count,
      onclick: () => { change(); syncControls(); saveUrl(); runSelect().catch(fail); } }, `${label}: ${count} cells`);
    const items = [];
    if (h.pad_left || h.pad_right) {
      items.push(LV.el("li", {}, `${h.without_padding.cells} cells are on over the brush, but also in the padding ` +
                       `(${h.pad_left} before, ${h.pad_right} after), where a selected cell must be off. `,
                       apply("no padding", h.without_padding.cells, () => { state.pad = [0, 0]; })));
    }
    if (h.cover) {
      items.push(LV.el("li", {}, `Those cells stay on over [${h.cover.start}, ${h.cover.stop}): the phrase they track is longer. `,
                       apply(`brush [${h.cover.start}, ${h.cover.stop})`, h.cover.cells, () => { state.brush = [h.cover.start, h.cover.stop]; })));
    }
    const t = h.thresholds.filter(x => x.cells);
    items.push(LV.el("li", {}, t.length ? "Other thresholds: " : `No threshold near ${h.threshold} selects a cell here.`,
                     ...t.map(x => apply(`threshold ${x.threshold}`, x.cells, () => { state.threshold = x.threshold; }))));
    const src = h.sources.filter(x => x.cells);
    items.push(LV.el("li", {}, src.length ? "Other sources at these settings: " : "No other source selects a cell at these settings.",
                     ...src.map(x => apply(x.source, x.cells, () => { state.source = x.source; reloadSource = true; }))));
    box.append(LV.el("b", {}, "This brush selects no cell."), LV.el("ul", {}, ...items));
    box.hidden = false;
  }
  let reloadSource = false;

  /** The controls show the state (after a hint changed it). */
  function syncControls() {
    $("threshold").value = state.threshold;
    $("pad-left").value = state.pad[0];
    $("pad-right").value = state.pad[1];
    if (reloadSource) {
      reloadSource = false;
      $("source").value = state.source;
      loadWindow().catch(fail);
    } else if (windowData) { paintTokens(); drawLinePlot(); }
  }

  function renderCells() {
    const chips = LV.clear($("cell-chips"));
    for (const c of cells) {
      chips.append(LV.el("button", { type: "button", class: "chip" + (hidden.has(c) ? " off" : ""),
                                     title: "hide/show this cell (hover: highlight its line)", "aria-pressed": hidden.has(c) ? "false" : "true",
                                     dataset: { cell: String(c) }, style: { borderColor: cellColor(baseCell(c)), boxShadow: `inset 4px 0 0 ${cellColor(baseCell(c))}` },
                                     onclick: () => { hidden.has(c) ? hidden.delete(c) : hidden.add(c); renderCells(); },
                                     onmouseenter: () => highlight(baseCell(c)), onmouseleave: () => highlight(null),
                                     onfocus: () => highlight(baseCell(c)), onblur: () => highlight(null) },
                         cellLabel(c)));
    }
    $("cell-count").textContent = `(${cells.length})`;
    $("brush-label").textContent = state.brush ? `[${state.brush[0]}, ${state.brush[1]})` : "none";
    $("match").disabled = !cells.length;
    if (windowData) { drawLinePlot(); paintTokens(); }
  }

  function highlight(cell) {
    if (highlighted === cell) return;
    highlighted = cell;
    if (windowData) drawLinePlot();
  }

  function setThreshold(v) {
    if (!Number.isFinite(v) || v === state.threshold) return;
    state.threshold = v;
    $("threshold").value = v;
    $("threshold-slider").value = v;
    $("threshold-readout").textContent = `threshold ${v}`;
    saveUrl();
    if (state.brush) runSelect().catch(e => LV.showError(e.message));
    else if (windowData) { drawLinePlot(); paintTokens(); }
  }

  // ------------------------------------------------------------------ match
  async function runMatch() {
    const active = cells.filter(c => !hidden.has(c));
    // no cell selected: hide the matches, but keep "match" on, so they come back with the selection
    if (!active.length) { $("match-view").hidden = true; return; }
    $("match-summary").textContent = "searching…";
    $("match-view").hidden = false;
    const r = await LVJobs.whenIndexed(`/api/stores/${encodeURIComponent(state.store)}/match`, {
      source: state.source, cells: active, threshold: state.threshold,
      pad_left: state.pad[0], pad_right: state.pad[1], sign: state.sign, left: 3, right: info.char_level ? 25 : 12 },
      pct => { $("match-summary").textContent = `building the match index: ${pct}%`; });
    state.match = true;
    saveUrl();
    renderMatches(r, active.length);
  }

  function renderMatches(r, nCells) {
    $("match-summary").textContent = `the ${r.hits.length} best-ranked runs · ranked by how many of the ${nCells} selected ` +
      `cells are on over the whole run, then fewest other cells on, then length · ${r.n_verified} candidate runs were ` +
      `scored to find them · ${r.n_runs} runs in the corpus have all ${nCells} cells on (histogram)`;
    LV.clear($("match-legend")).append(LV.legend({ lo: 0, hi: nCells, ticks: Math.min(5, nCells + 1), colorOf: v => LV.sequential(v / nCells),
                                                   caption: "selected cells on at the token:" }));
    const table = LV.clear($("word-matrix"));
    table.append(LV.el("tr", {}, LV.el("td", { class: "meta" }, "#"), LV.el("td", { class: "meta" }, "position"),
                       LV.el("td", { class: "meta", title: "|C∩C'| selected cells on over the whole run / |C∪C'| with the other cells on over it" }, "∩ / ∪"),
                       LV.el("td", { class: "meta", colspan: r.left + 30 }, "context (the match is outlined)")));
    const heat = [], heatText = [];
    r.hits.forEach((h, i) => {
      const tr = LV.el("tr", { class: "match-row", dataset: { position: String(h.start) }, tabindex: "0",
                               title: "click (or Enter) to show this match above",
                               onclick: ev => { if (!ev.target.closest("a")) jumpTo(h.start, [h.start, h.stop]); },
                               onkeydown: ev => { if (ev.target === tr && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); jumpTo(h.start, [h.start, h.stop]); } } });
      const here = new URL(window.location.href);
      here.searchParams.set("pos", String(Math.max(0, h.start - Math.floor(state.w / 4))));
      here.searchParams.set("brush", `${h.start},${h.stop}`);
      tr.append(LV.el("td", { class: "meta" }, String(i + 1)),
                LV.el("td", { class: "meta" }, LV.el("a", { href: here.pathname + here.search.replace(/%2C/g, ","), target: "_blank", rel: "noopener",
                                                          title: "open this match in a new tab" }, String(h.start))),
                LV.el("td", { class: "meta" }, `${h.intersection} / ${h.union}`));
      const pad = r.left - (h.start - h.context_start);  // blank cells so every match starts in the same column
      for (let k = 0; k < pad; k++) tr.append(LV.el("td", {}));
      const hrow = new Array(pad).fill(null), trow = new Array(pad).fill("");
      const MAX_SHOWN = 40;  // long runs are cut: the row shows their start, then "…"
      h.text.forEach((tok, k) => {
        const pos = h.context_start + k, frac = h.counts[k] / nCells;
        if (pos - h.start >= MAX_SHOWN) {
          if (pos - h.start === MAX_SHOWN) tr.append(LV.el("td", { class: "meta", title: `${h.context_stop - pos} more tokens` }, "…"));
          return;
        }
        const inMatch = pos >= h.start && pos < h.stop;
        tr.append(LV.el("td", { class: inMatch ? "in-match" : "", title: `${h.counts[k]} of ${nCells} cells on @ ${pos}`,
                                style: { background: LV.sequential(frac), color: LV.textOn(LV.sequential(frac)) } },
                        LV.tokenLabel(tok)));
        hrow.push(h.counts[k]); trow.push(tok);
      });
      table.append(tr);
      heat.push(hrow); heatText.push(trow);
    });
    const hist = (r.length_histogram || []).slice(1);
    Plotly.react("length-hist", [{ type: "bar", x: hist.map((_, i) => i + 1), y: hist, marker: { color: "#1399e4" },
                                   hovertemplate: "length %{x}: %{y} runs<extra></extra>" }],
                 { margin: { l: 48, r: 10, t: 28, b: 36 },
                   title: { text: `Lengths of the ${r.n_runs} runs with all selected cells on, off at the padding (LSTMVis's strict histogram)`, font: { size: 13 } },
                   xaxis: { title: { text: "run length (tokens)" }, dtick: hist.length > 30 ? undefined : 1 },
                   yaxis: { title: { text: "runs" } } }, LV.plotConfig);
    const ov = r.overview;
    const xs = ov.all_on.map((_, i) => i * ov.bin_size);
    Plotly.react("match-overview", [{ type: "bar", x: xs, y: ov.all_on, marker: { color: "#f28e2b" }, width: ov.bin_size,
                                      hovertemplate: `tokens %{x}..: %{y} steps with all ${nCells} cells on<extra></extra>` }],
                 { margin: { l: 48, r: 10, t: 28, b: 36 }, bargap: 0,
                   title: { text: "Where in the corpus all selected cells are on (click to go there)", font: { size: 13 } },
                   xaxis: { title: { text: "token position" } },
                   yaxis: { title: { text: `steps per ${ov.bin_size} tokens` } } }, LV.plotConfig);
    const gd = $("match-overview");
    if (!gd.dataset.wired) {
      gd.dataset.wired = "1";
      gd.on("plotly_click", ev => { if (ev.points.length) jumpTo(Math.round(ev.points[0].x)); });
    }
  }

  // ------------------------------------------------------------------ navigation and search
  function jumpTo(position, brush) {
    pushNext = true;  // Back returns to where the jump started
    state.pos = Math.max(0, position - Math.floor(state.w / 4));
    if (brush) state.brush = brush;
    loadWindow().then(() => brush ? runSelectKeepMatch() : null).catch(e => LV.showError(e.message));
    window.scrollTo({ top: 0, behavior: "smooth" });
  }

  async function runSelectKeepMatch() {
    const keep = state.match;
    state.match = false;
    await runSelect();
    state.match = keep;
    saveUrl();
  }

  async function runSearch() {
    const q = $("search").value.trim();
    const box = LV.clear($("search-results"));
    foundPositions = new Set();
    if (!q) { paintTokens(); return; }
    const r = await LV.api(`/api/stores/${encodeURIComponent(state.store)}/search`, { q, regex: $("search-regex").checked, limit: 50 });
    if (!r.hits.length) box.append(LV.el("span", { class: "muted" }, "no hits"));
    for (const h of r.hits) {
      for (let p = h.position; p < h.position + h.length; p++) foundPositions.add(p);
      const snippet = h.tokens.map(LV.tokenLabel).join(info.char_level ? "" : " ");
      box.append(LV.el("button", { type: "button", title: `position ${h.position}`, dataset: { position: String(h.position) },
                                   onclick: () => jumpTo(h.position) }, snippet.slice(0, 60)));
    }
    if (r.truncated) box.append(LV.el("span", { class: "muted" }, "first 50 shown"));
    paintTokens();
  }

  // ------------------------------------------------------------------ wiring
  function wire() {
    $("controls").addEventListener("submit", ev => ev.preventDefault());
    $("store").addEventListener("change", async () => {
      state.source = ""; state.brush = null; state.pos = 0; state.w = 0; state.match = false; cells = [];
      $("match-view").hidden = true;
      await chooseStore($("store").value);
      await loadWindow();
      renderCells();
    });
    $("source").addEventListener("change", async () => {
      state.source = $("source").value;
      await loadWindow();
      await runSelect();
    });
    $("threshold").addEventListener("change", () => setThreshold(parseFloat($("threshold").value)));
    $("sign").addEventListener("change", () => {
      state.sign = $("sign").value;
      saveUrl();
      runSelect().catch(e => LV.showError(e.message));
    });
    const padChange = () => {
      state.pad = [Math.max(0, parseInt($("pad-left").value, 10) || 0), Math.max(0, parseInt($("pad-right").value, 10) || 0)];
      saveUrl();
      runSelect().catch(e => LV.showError(e.message));
    };
    $("pad-left").addEventListener("change", padChange);
    $("pad-right").addEventListener("change", padChange);
    $("go").addEventListener("click", () => { pushNext = true; state.pos = parseInt($("pos").value, 10) || 0; loadWindow().catch(e => LV.showError(e.message)); });
    $("pos").addEventListener("keydown", ev => { if (ev.key === "Enter") $("go").click(); });
    $("prev").addEventListener("click", () => { state.pos = Math.max(0, state.pos - Math.floor(state.w / 2)); loadWindow().catch(e => LV.showError(e.message)); });
    $("next").addEventListener("click", () => { state.pos += Math.floor(state.w / 2); loadWindow().catch(e => LV.showError(e.message)); });
    $("width").addEventListener("change", () => {
      state.w = Math.min(300, Math.max(10, parseInt($("width").value, 10) || 40));
      loadWindow().then(paintTokens).catch(e => LV.showError(e.message));
    });
    $("search-go").addEventListener("click", () => runSearch().catch(e => LV.showError(e.message)));
    $("search").addEventListener("keydown", ev => { if (ev.key === "Enter") { ev.preventDefault(); $("search-go").click(); } });
    $("clear-brush").addEventListener("click", () => {
      state.brush = null; state.match = false; cells = []; $("match-view").hidden = true; renderCells(); saveUrl();
    });
    $("match").addEventListener("click", () => runMatch().catch(e => LV.showError(e.message)));
    const row = $("tokens");
    row.addEventListener("pointerdown", onDown);
    row.addEventListener("pointermove", onMove);
    window.addEventListener("pointerup", onUp);
    row.addEventListener("keydown", onTokenKey);
    $("lineplot").on("plotly_relayout", onRelayout);
    $("lineplot").on("plotly_relayouting", onRelayouting);
    $("threshold-slider").addEventListener("input", () => { $("threshold-readout").textContent = `threshold ${$("threshold-slider").value}`; });
    $("threshold-slider").addEventListener("change", () => setThreshold(parseFloat($("threshold-slider").value)));
    $("only-selected").checked = onlySelected;
    $("only-selected").addEventListener("change", () => { onlySelected = $("only-selected").checked; saveUrl(); drawLinePlot(); });
    // Back and Forward: the address holds the whole view, so show the view it holds
    window.addEventListener("popstate", () => window.location.reload());
  }

  async function start() {
    $("threshold").value = state.threshold;
    $("sign").value = state.sign;
    $("pad-left").value = state.pad[0];
    $("pad-right").value = state.pad[1];
    if (!(await chooseStore(state.store))) return;
    await loadWindow();
    wire();
    await runSelect();
    renderCells();
  }

  start().catch(e => LV.showError(e.message));
})();
