// Hidden-state explorer: LSTMVis select (brush a range -> cells) and match (find the cells' pattern elsewhere).
// The whole view state lives in the URL (store, source, pos, w, zoom, threshold, brush, pad, match, meta tracks).
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  const PLOT_MARGIN = { l: 48, r: 16, t: 8, b: 22 };
  const SEQ_COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  const OTHER_COLOR = "#d0d5dd";  // a category beyond the ones the store's summary lists
  // pixels per token: every level keeps a character (12 px mono) or the start of a word readable
  const ZOOM_LEVELS = { char: [12, 16, 22, 30, 40], word: [28, 40, 56, 72, 96, 128] };
  const DEFAULT_ZOOM = { char: 16, word: 56 };
  const SELECT_DEBOUNCE_MS = 200;  // while a brush is dragged: one select request per pause, not per pixel

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
    zoom: parseInt(url.zoom || "0", 10) || 0,                       // pixels per token (0: the store's default)
    hideMeta: new Set((url.hide_meta || "").split(",").filter(Boolean)),  // meta tracks not shown
    bg: url.bg || "",                                                // meta track mapped onto the token backgrounds
  };
  let info = null;        // the current store's /api/stores/<name>
  let windowData = null;  // {tokens, states, meta, sequences, start, stop}
  let cells = [];         // selected cells
  let hidden = new Set(); // cells toggled off in the chip list (view only)
  let foundPositions = new Set();
  let request = 0;        // guards against out-of-order responses
  let selectRequest = 0;  // the same for select requests (a dragged brush sends several)
  let lastMatch = null;   // {r, nCells}: the matches shown, redrawn when the meta tracks shown change
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
                  sign: state.sign === "positive" ? "" : state.sign, only: onlySelected ? 1 : "",
                  zoom: state.zoom === defaultZoom() ? "" : state.zoom, hide_meta: [...state.hideMeta].sort(), bg: state.bg },
                { push });
  }

  function defaultWidth() {
    return info && info.char_level ? 100 : 40;
  }

  // ------------------------------------------------------------------ zoom: pixels per token
  function zoomLevels() { return info && info.char_level ? ZOOM_LEVELS.char : ZOOM_LEVELS.word; }
  function defaultZoom() { return info && info.char_level ? DEFAULT_ZOOM.char : DEFAULT_ZOOM.word; }
  /** The zoom level nearest to `px` (the URL may hold any number). */
  function snapZoom(px) {
    const levels = zoomLevels();
    if (!px) return defaultZoom();
    return levels.reduce((best, l) => Math.abs(l - px) < Math.abs(best - px) ? l : best, levels[0]);
  }
  /** Pixels per token as drawn: the zoom, or more when the window's tokens would not fill the view. */
  function tokenPx() {
    const T = windowData ? windowData.tokens.length : 1;
    const room = $("track-scroll").clientWidth - PLOT_MARGIN.l - PLOT_MARGIN.r;
    return Math.max(state.zoom, Math.floor(room / Math.max(1, T)));
  }
  /** One zoom step in (+1) or out (-1), keeping the token in the middle of the view where it was. */
  function stepZoom(dir) {
    const levels = zoomLevels(), i = levels.indexOf(state.zoom);
    const next = levels[Math.max(0, Math.min(levels.length - 1, i + dir))];
    if (next === state.zoom || !windowData) return;
    const box = $("track-scroll"), before = tokenPx();
    const middle = (box.scrollLeft + box.clientWidth / 2 - PLOT_MARGIN.l) / before;
    state.zoom = next;
    layoutTrack();
    drawLinePlot();
    box.scrollLeft = Math.max(0, PLOT_MARGIN.l + middle * tokenPx() - box.clientWidth / 2);
    saveUrl();
  }
  /** Widths of the scrolled strip (plot, tokens, meta tracks) at the zoom: the same x for all of them. */
  function layoutTrack() {
    const T = windowData.tokens.length, px = tokenPx();
    const width = PLOT_MARGIN.l + T * px + PLOT_MARGIN.r;
    $("track-inner").style.width = `${width}px`;
    $("lineplot").style.width = `${width}px`;
    for (const row of document.querySelectorAll("#tokens, #meta-tracks .meta-track")) Object.assign(row.style, gridTemplate(T));
    const levels = zoomLevels();
    $("zoom-readout").textContent = `${px} px per token`;
    $("zoom-in").disabled = state.zoom >= levels[levels.length - 1];
    $("zoom-out").disabled = state.zoom <= levels[0];
    renderBrushLayer();
  }
  /** Scroll the strip so that position `pos` is in view (after a jump). */
  function scrollToPosition(pos) {
    const box = $("track-scroll"), x = PLOT_MARGIN.l + (pos - windowData.start) * tokenPx();
    if (x < box.scrollLeft + PLOT_MARGIN.l || x > box.scrollLeft + box.clientWidth - 40) box.scrollLeft = Math.max(0, x - box.clientWidth / 4);
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
    state.zoom = snapZoom(state.zoom);
    info.meta_info = info.meta_info || {};
    if (!(info.meta || []).includes(state.bg)) state.bg = "";
    renderMetaChoices();
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
    layoutTrack();
    drawLinePlot();
    scaleSlider();
    if (state.brush && state.brush[0] >= start && state.brush[0] < stop) scrollToPosition(state.brush[0]);
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
    // the brush and its padding are drawn over the plot by the brush layer (handles to drag)
    const layout = {
      width: PLOT_MARGIN.l + T * tokenPx() + PLOT_MARGIN.r, height: 260,
      margin: PLOT_MARGIN, showlegend: false, hovermode: "closest", dragmode: false,
      xaxis: { range: [-0.5, T - 0.5], showticklabels: false, zeroline: false, fixedrange: true },
      yaxis: { zeroline: true, zerolinecolor: "#ccc", fixedrange: true, title: { text: LV.plotText(state.source), font: { size: 11 } } },
      shapes,
    };
    layout.yaxis.range = [...ys0(w)];
    // the dashed threshold line is the only shape, so it is the only thing that can be dragged
    const config = { ...LV.plotConfig, responsive: false, edits: { shapePosition: true }, displayModeBar: false };
    Plotly.react("lineplot", traces, layout, config);
    drawAxisPin(layout.yaxis);
  }

  /** The plot's y axis once more, in a narrow static plot pinned at the left of the scrolled strip (CSS
   *  sticky): the same range, height and margins give the same ticks, so the labels stay in view. */
  function drawAxisPin(yaxis) {
    const width = PLOT_MARGIN.l + 2;
    const pin = $("lineplot-axis");
    pin.style.width = `${width}px`;
    Plotly.react(pin, [], {
      width, height: 260, margin: { ...PLOT_MARGIN, r: 0 }, showlegend: false,
      xaxis: { visible: false, fixedrange: true },
      yaxis: { ...yaxis, showgrid: false, zeroline: false },
    }, { staticPlot: true, displayModeBar: false, responsive: false });
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
    return { gridTemplateColumns: `repeat(${n}, ${tokenPx()}px)`,
             paddingLeft: `${PLOT_MARGIN.l}px`, paddingRight: `${PLOT_MARGIN.r}px` };
  }

  function renderTokens() {
    const w = windowData, row = LV.clear($("tokens"));
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
    const track = state.bg && w.meta && w.meta[state.bg] ? state.bg : "";
    const scale = track ? metaScale(track) : null;
    $("tokens").querySelectorAll(".tok").forEach((node, t) => {
      const pos = w.start + t;
      node.classList.toggle("brushed", pos >= a && pos < b);
      node.classList.toggle("padded", state.brush !== null && ((pos >= a - pl && pos < a) || (pos >= b && pos < b + pr)));
      node.classList.toggle("found", foundPositions.has(pos));
      let on = 0;
      for (const id of sel) if (isOn(id, t)) on++;
      const colour = track ? scale.colorOf(w.meta[track][t]) : sel.length ? LV.sequential(on / sel.length) : "";
      node.style.background = colour;
      node.style.color = colour ? LV.textOn(colour) : "";
    });
    const legend = LV.clear($("token-legend"));
    if (track) legend.append(metaLegend(track, "token colour: meta track "));
    else if (sel.length) legend.append(LV.legend({ lo: 0, hi: sel.length, ticks: Math.min(5, sel.length + 1), colorOf: v => LV.sequential(v / sel.length),
                                                   caption: "selected cells on at the token:" }));
    $("brush-label").textContent = state.brush ? `[${state.brush[0]}, ${state.brush[1]})` : "none";
    renderBrushLayer();
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
    const next = [Math.min(dragFrom, p), Math.max(dragFrom, p) + 1];
    if (state.brush && next[0] === state.brush[0] && next[1] === state.brush[1]) return;
    state.brush = next;
    paintTokens();
    scheduleSelect();  // the selection follows the drag, one request per pause
  }
  function onUp() {
    if (dragFrom === null) return;
    dragFrom = null;
    flushSelect();
  }

  // ------------------------------------------------------------------ the brush layer: handles over the line plot
  /** Brush band, padding bands and their handles, placed at the brush's positions on the plot's x axis. */
  function renderBrushLayer() {
    const layer = $("brush-layer"), w = windowData;
    const [a, b] = state.brush || [0, 0];
    if (!w || !state.brush || a < w.start || b > w.stop) { layer.hidden = true; return; }  // handles only for a brush in view
    layer.hidden = false;
    const px = tokenPx(), x = pos => PLOT_MARGIN.l + (pos - w.start) * px;
    const [pl, pr] = state.pad;
    const place = (node, left, width) => { node.style.left = `${left}px`; if (width !== undefined) node.style.width = `${width}px`; };
    place(layer.querySelector(".brush-band"), x(a), (b - a) * px);
    place(layer.querySelector('.pad-band[data-side="left"]'), x(a - pl), pl * px);
    place(layer.querySelector('.pad-band[data-side="right"]'), x(b), pr * px);
    const [lo, hi] = brushBounds();
    const values = { "start": [a, lo, b - 1], "stop": [b, a + 1, hi], "move": [a, lo, hi - (b - a)],
                     "pad-left": [pl, 0, MAX_PAD], "pad-right": [pr, 0, MAX_PAD] };
    const left = { "start": x(a), "stop": x(b), "move": x(a), "pad-left": x(a - pl), "pad-right": x(b + pr) };
    for (const node of layer.querySelectorAll("[data-drag]")) {
      const kind = node.dataset.drag, [now, min, max] = values[kind];
      place(node, left[kind], kind === "move" ? (b - a) * px : undefined);
      node.setAttribute("aria-valuenow", String(now));
      node.setAttribute("aria-valuemin", String(min));
      node.setAttribute("aria-valuemax", String(max));
    }
  }

  const MAX_PAD = 100;  // as the API allows
  /** Where a brush may go: its sequence, inside the shown window (a brush across sequences is refused). */
  function brushBounds() {
    const w = windowData, a = state.brush[0];
    const seq = w.sequences.find(s => a >= s.start && a < s.stop) || { start: w.start, stop: w.stop };
    return [Math.max(seq.start, w.start), Math.min(seq.stop, w.stop)];
  }
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  /** The brush and padding after moving handle `kind` by `d` tokens from `from`, kept inside `bounds`. */
  function moved(kind, from, d, [lo, hi]) {
    let [a, b] = from.brush, [pl, pr] = from.pad;
    if (kind === "start") a = clamp(a + d, lo, b - 1);
    else if (kind === "stop") b = clamp(b + d, a + 1, hi);
    else if (kind === "move") { const shift = clamp(d, lo - a, hi - b); a += shift; b += shift; }
    else if (kind === "pad-left") pl = clamp(pl - d, 0, MAX_PAD);
    else if (kind === "pad-right") pr = clamp(pr + d, 0, MAX_PAD);
    return { brush: [a, b], pad: [pl, pr] };
  }
  /** Show a new brush/padding at once; its selection follows, debounced. */
  function applyBrush(next) {
    const same = next.brush[0] === state.brush[0] && next.brush[1] === state.brush[1] &&
                 next.pad[0] === state.pad[0] && next.pad[1] === state.pad[1];
    if (same) return;
    state.brush = next.brush;
    state.pad = next.pad;
    $("pad-left").value = state.pad[0];
    $("pad-right").value = state.pad[1];
    paintTokens();
    saveUrl();
    scheduleSelect();
  }
  let handleDrag = null;
  function onHandleDown(ev) {
    const node = ev.target.closest("[data-drag]");
    if (!node || !state.brush) return;
    ev.preventDefault();
    node.setPointerCapture(ev.pointerId);
    node.classList.add("dragging");
    node.focus({ preventScroll: true });
    handleDrag = { node, kind: node.dataset.drag, x0: ev.clientX, from: { brush: [...state.brush], pad: [...state.pad] },
                   bounds: brushBounds() };
  }
  function onHandleMove(ev) {
    if (!handleDrag) return;
    applyBrush(moved(handleDrag.kind, handleDrag.from, Math.round((ev.clientX - handleDrag.x0) / tokenPx()), handleDrag.bounds));
  }
  function onHandleUp() {
    if (!handleDrag) return;
    handleDrag.node.classList.remove("dragging");
    handleDrag = null;
    flushSelect();
  }
  /** Arrows move the focused handle by one token (Shift: five); the selection follows, debounced. */
  function onHandleKey(ev) {
    const node = ev.target.closest("[data-drag]");
    const d = { ArrowLeft: -1, ArrowRight: 1 }[ev.key];
    if (!node || d === undefined || !state.brush) return;
    ev.preventDefault();
    applyBrush(moved(node.dataset.drag, { brush: state.brush, pad: state.pad }, ev.shiftKey ? 5 * d : d, brushBounds()));
  }

  // ------------------------------------------------------------------ select requests while dragging
  let selectTimer = null;
  let lastSelectKey = "";  // the settings of the last select request, so a drag that ends where it paused asks nothing
  const selectKey = () => JSON.stringify([state.store, state.source, state.brush, state.pad, state.threshold, state.sign]);
  function scheduleSelect() {
    clearTimeout(selectTimer);
    selectTimer = setTimeout(flushSelect, SELECT_DEBOUNCE_MS);
  }
  let selectInFlight = false, selectPending = false;  // one select request at a time; the latest brush goes next
  function flushSelect() {
    clearTimeout(selectTimer);
    selectTimer = null;
    if (selectInFlight) { selectPending = true; return; }
    if (selectKey() === lastSelectKey) return;
    selectInFlight = true;
    runSelect().catch(fail).finally(() => {
      selectInFlight = false;
      if (selectPending) { selectPending = false; flushSelect(); }
    });
  }

  // ------------------------------------------------------------------ meta tracks
  function shownMeta() { return (info.meta || []).filter(name => !state.hideMeta.has(name)); }

  /** A meta track's colours, the same on every row: a categorical palette for categories (the store's
   *  summary lists them), the sequential purples from the track's minimum to its maximum for numbers. */
  function metaScale(name) {
    const mi = info.meta_info[name] || {};
    if (mi.categorical) {
      const values = mi.values || [];
      return { categorical: true, values, more: !!mi.more,
               colorOf: v => { const i = values.indexOf(String(v)); return i < 0 ? OTHER_COLOR : SEQ_COLORS[i % SEQ_COLORS.length]; } };
    }
    const lo = mi.min ?? 0, hi = mi.max ?? 1;
    return { categorical: false, lo, hi, colorOf: v => LV.sequential(hi > lo ? clamp((v - lo) / (hi - lo), 0, 1) : 0.5) };
  }

  /** A track's legend: each category with its colour, or the purples with numbers. */
  function metaLegend(name, caption) {
    const sc = metaScale(name);
    if (!sc.categorical) {
      const few = Number.isInteger(sc.lo) && Number.isInteger(sc.hi) && sc.hi - sc.lo <= 6;  // small integer ranges: every value
      return LV.legend({ lo: sc.lo, hi: sc.hi, colorOf: sc.colorOf, ticks: few ? Math.max(2, sc.hi - sc.lo + 1) : 5,
                         caption: `${caption}${name} (purples, light = low):` });
    }
    const item = (colour, label) => LV.el("span", { class: "cat-item" }, LV.el("span", { class: "swatch", style: { background: colour } }), label);
    return LV.el("span", { class: "lv-legend cat-legend", dataset: { meta: name } },
                 LV.el("span", { class: "legend-caption" }, `${caption}${name} (categories):`),
                 ...sc.values.map((v, i) => item(SEQ_COLORS[i % SEQ_COLORS.length], LV.tokenLabel(v))),
                 sc.more ? item(OTHER_COLOR, "other") : null);
  }

  /** The track's name as a button: colours the words (token row and match rows) by the track; pressed again, by the cells. */
  function metaToggle(name) {
    return LV.el("button", { type: "button", class: "meta-toggle", dataset: { meta: name }, "aria-pressed": String(state.bg === name),
                             title: `colour the tokens by the meta track ${name} (again: by the selected cells)`,
                             onclick: ev => { ev.stopPropagation(); toggleBackground(name); } }, name);
  }

  function toggleBackground(name) {
    state.bg = state.bg === name ? "" : name;
    for (const b of document.querySelectorAll(".meta-toggle")) b.setAttribute("aria-pressed", String(b.dataset.meta === state.bg));
    saveUrl();
    paintTokens();
    paintMatches();
  }

  /** The match rows' token backgrounds: how many selected cells are on, or the mapped meta track; and their legends. */
  function paintMatches() {
    if (!lastMatch) return;
    const { r, nCells } = lastMatch;
    const track = state.bg, scale = track ? metaScale(track) : null;
    for (const tr of document.querySelectorAll("#word-matrix tr.match-row")) {
      const h = r.hits[parseInt(tr.dataset.hit, 10)], values = track && h.meta ? h.meta[track] : null;
      for (const td of tr.querySelectorAll("td[data-k]")) {
        const k = parseInt(td.dataset.k, 10);
        const colour = values ? scale.colorOf(values[k]) : LV.sequential(h.counts[k] / nCells);
        td.style.background = colour;
        td.style.color = LV.textOn(colour);
      }
    }
    const shown = shownMeta().filter(name => name !== track);
    LV.clear($("match-legend")).append(
      track ? metaLegend(track, "token colour: meta track ")
            : LV.legend({ lo: 0, hi: nCells, ticks: Math.min(5, nCells + 1), colorOf: v => LV.sequential(v / nCells),
                          caption: "selected cells on at the token:" }),
      ...shown.map(name => metaLegend(name, "strip under each match: ")));
  }

  /** The checkboxes that choose which meta tracks are shown (under the tokens and beside each match). */
  function renderMetaChoices() {
    const box = $("meta-choices");
    box.querySelectorAll("label").forEach(n => n.remove());
    box.hidden = !(info.meta || []).length;
    for (const name of info.meta || []) {
      const input = LV.el("input", { type: "checkbox", dataset: { meta: name } });
      input.checked = !state.hideMeta.has(name);
      input.addEventListener("change", () => {
        if (input.checked) state.hideMeta.delete(name); else state.hideMeta.add(name);
        if (!input.checked && state.bg === name) state.bg = "";
        saveUrl();
        if (windowData) { renderMeta(); layoutTrack(); paintTokens(); }
        if (lastMatch) renderMatches(lastMatch.r, lastMatch.nCells);
      });
      box.append(LV.el("label", { class: "small" }, input, ` ${name}`));
    }
  }

  /** The shown meta tracks as heatmap strips under the tokens, aligned with them, with their legends. */
  function renderMeta() {
    const box = LV.clear($("meta-tracks")), legends = LV.clear($("meta-legend"));
    const w = windowData;
    for (const name of shownMeta()) {
      const values = (w.meta || {})[name];
      if (!values) continue;
      const sc = metaScale(name);
      const row = LV.el("div", { class: "meta-track", dataset: { meta: name }, onclick: () => toggleBackground(name) });
      values.forEach((v, t) => row.append(LV.el("div", { class: "meta-cell", title: `${name} = ${v} @ ${w.start + t}`,
                                                         style: { background: sc.colorOf(v) } })));
      box.append(LV.el("div", { class: "meta-label" }, metaToggle(name)), row);
      legends.append(metaLegend(name, ""));
    }
  }

  // ------------------------------------------------------------------ select
  async function runSelect() {
    LV.clearError();
    if (!state.brush) { cells = []; renderCells(); return; }
    const [start, stop] = state.brush;
    const my = ++selectRequest;
    lastSelectKey = selectKey();
    let r;
    try {
      r = await LV.api(`/api/stores/${encodeURIComponent(state.store)}/select`, {
        source: state.source, start, stop, threshold: state.threshold, pad_left: state.pad[0], pad_right: state.pad[1],
        sign: state.sign });
    } catch (e) {
      lastSelectKey = "";  // the same settings may be asked again
      throw e;
    }
    if (my !== selectRequest) return;  // a newer brush was asked for meanwhile
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
    lastMatch = { r, nCells };
    $("match-summary").textContent = `the ${r.hits.length} best-ranked runs · ranked by how many of the ${nCells} selected ` +
      `cells are on over the whole run, then fewest other cells on, then length · ${r.n_verified} candidate runs were ` +
      `scored to find them · ${r.n_runs} runs in the corpus have all ${nCells} cells on (histogram)`;
    const table = LV.clear($("word-matrix"));
    table.append(LV.el("tr", {}, LV.el("td", { class: "meta" }, "#"), LV.el("td", { class: "meta" }, "position"),
                       LV.el("td", { class: "meta", title: "|C∩C'| selected cells on over the whole run / |C∪C'| with the other cells on over it" }, "∩ / ∪"),
                       LV.el("td", { class: "meta", colspan: r.left + 30 }, "context (the match is outlined)")));
    const MAX_SHOWN = 40;  // long runs are cut: the row shows their start, then "…"
    r.hits.forEach((h, i) => {
      const tr = LV.el("tr", { class: "match-row", dataset: { position: String(h.start), hit: String(i) }, tabindex: "0",
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
      h.text.forEach((tok, k) => {
        const pos = h.context_start + k;
        if (pos - h.start >= MAX_SHOWN) {
          if (pos - h.start === MAX_SHOWN) tr.append(LV.el("td", { class: "meta", title: `${h.context_stop - pos} more tokens` }, "…"));
          return;
        }
        const inMatch = pos >= h.start && pos < h.stop;
        tr.append(LV.el("td", { class: inMatch ? "in-match" : "", title: `${h.counts[k]} of ${nCells} cells on @ ${pos}`,
                                dataset: { k: String(k) } }, LV.tokenLabel(tok)));
      });
      table.append(tr);
      // LSTMVis's heatmaps: each shown meta track as a strip under the row, one cell per token
      for (const name of shownMeta()) {
        const values = (h.meta || {})[name];
        if (!values) continue;
        const sc = metaScale(name);
        const strip = LV.el("tr", { class: "meta-row", dataset: { meta: name, position: String(h.start) }, onclick: () => toggleBackground(name) },
                            LV.el("td", { class: "meta", colspan: 3 }, metaToggle(name)));
        for (let k = 0; k < pad; k++) strip.append(LV.el("td", {}));
        values.forEach((v, k) => {
          const pos = h.context_start + k;
          if (pos - h.start > MAX_SHOWN) return;
          strip.append(pos - h.start === MAX_SHOWN ? LV.el("td", {})
                       : LV.el("td", { class: "meta-cell", title: `${name} = ${v} @ ${pos}`, style: { background: sc.colorOf(v) } }));
        });
        table.append(strip);
      }
    });
    paintMatches();
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
    overviewCursor = null;
    if (!gd.dataset.wired) {
      gd.dataset.wired = "1";
      gd.on("plotly_click", ev => { if (ev.points.length) jumpTo(Math.round(ev.points[0].x)); });
      gd.addEventListener("focus", () => { if (overviewCursor === null) moveOverviewCursor(overviewBins()[0]); });
      gd.addEventListener("keydown", onOverviewKey);
    }
  }

  // the minimap by keyboard: a cursor on one of the bins where the selected cells are on; Enter jumps there
  let overviewCursor = null;  // a bin index of lastMatch's overview
  /** The bins with any step where every selected cell is on, in corpus order. */
  function overviewBins() {
    return lastMatch ? lastMatch.r.overview.all_on.flatMap((n, i) => n > 0 ? [i] : []) : [];
  }

  function onOverviewKey(ev) {
    const bins = overviewBins();
    if (!bins.length || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const size = lastMatch.r.overview.bin_size;
    if ((ev.key === "Enter" || ev.key === " ") && overviewCursor !== null) {
      ev.preventDefault();
      jumpTo(overviewCursor * size);
      return;
    }
    const i = Math.max(0, bins.indexOf(overviewCursor));
    const next = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: bins.length - 1 }[ev.key];
    if (next === undefined) return;
    ev.preventDefault();
    moveOverviewCursor(bins[Math.max(0, Math.min(bins.length - 1, next))]);
  }

  /** Mark bin ``bin`` on the minimap and announce it (``undefined``: no bin has the cells on). */
  function moveOverviewCursor(bin) {
    if (bin === undefined) { $("overview-status").textContent = "The selected cells are never all on together."; return; }
    overviewCursor = bin;
    const { bin_size: size, all_on: counts } = lastMatch.r.overview;
    Plotly.restyle("match-overview", { "marker.color": [counts.map((_, i) => i === bin ? "#7a2e0e" : "#f28e2b")] }, [0]);
    const start = bin * size, where = size === 1 ? `token ${start}` : `tokens ${start}\u2013${start + size - 1}`;
    const n = counts[bin];
    const cellsOn = lastMatch.nCells === 1 ? "the selected cell" : `all ${lastMatch.nCells} selected cells`;
    $("overview-status").textContent = `${where}: ${n} step${n === 1 ? "" : "s"} with ${cellsOn} on. Enter goes there.`;
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
      state.source = ""; state.brush = null; state.pos = 0; state.w = 0; state.zoom = 0; state.match = false; cells = [];
      lastMatch = null;
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
    const layer = $("brush-layer");
    layer.addEventListener("pointerdown", onHandleDown);
    layer.addEventListener("pointermove", onHandleMove);
    layer.addEventListener("pointerup", onHandleUp);
    layer.addEventListener("pointercancel", onHandleUp);
    layer.addEventListener("keydown", onHandleKey);
    $("zoom-in").addEventListener("click", () => stepZoom(1));
    $("zoom-out").addEventListener("click", () => stepZoom(-1));
    document.addEventListener("keydown", ev => {  // + and - zoom, except while typing in a field
      if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.closest("input, select, textarea")) return;
      const dir = { "+": 1, "=": 1, "-": -1 }[ev.key];
      if (dir !== undefined) { ev.preventDefault(); stepZoom(dir); }
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (windowData) { layoutTrack(); drawLinePlot(); } }, 150);
    });
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
