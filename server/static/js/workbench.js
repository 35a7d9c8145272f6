// The classifier workbench: table, datapoint editor with pinning, counterfactuals, two models, projector,
// sliced metrics and the global view. Every choice lives in the URL; text only reaches the page via textContent.
"use strict";

(() => {
  const $ = id => document.getElementById(id);
  const el = LV.el;
  const page = LV.pageData();
  const url = LV.readUrl();
  const LIMIT = 25;
  const state = {
    model: url.model, model2: url.model2 || "", corpus: url.corpus || page.default_corpus, regex: url.regex || "", label: url.label || "",
    predicted: url.predicted || "", correct: url.correct || "", conf_min: url.conf_min || "", conf_max: url.conf_max || "",
    token: url.token || "", sort: url.sort || "id", desc: url.desc === "1", offset: parseInt(url.offset || "0", 10) || 0,
    row: url.row !== undefined ? parseInt(url.row, 10) : null, text: url.text || "", pin: url.pin || "",
    methods: url.methods ? url.methods.split(",") : page.default_methods, sel: url.sel || "",
    pj: url.pj || "pca", colour: url.colour || "gold", slice: url.slice || "", slice_arg: url.slice_arg || "",
    thr: url.thr || "", g_method: url.g_method || "gradient_x_input",
  };
  let labels = [];
  let generated = [];
  const fmt = x => (x === null || x === undefined) ? "–" : Number(x).toFixed(3);

  function save() {
    LV.writeUrl({ ...state, desc: state.desc ? "1" : "", offset: state.offset || "", methods: state.methods,
                  row: state.row === null ? "" : state.row });
  }

  function selection() {
    const q = { model: state.model, corpus: state.corpus };
    for (const k of ["regex", "label", "predicted", "correct", "conf_min", "conf_max", "token"]) if (state[k] !== "") q[k] = state[k];
    if (state.sel) q.selection = state.sel;
    if (state.thr !== "") q.threshold = state.thr;
    return q;
  }

  function status(msg) { $("wb-status").textContent = msg; }
  function failed(node, err) { LV.clear(node).append(el("p", { class: "error", role: "alert" }, err.message)); }

  // ---------------------------------------------------------------- controls
  function setupControls() {
    const models = page.models.map(m => ({ value: m.name }));
    state.model = LV.fillSelect($("wb-model"), models, state.model);
    LV.fillSelect($("wb-model2"), [{ value: "", label: "(none)" }, ...models], state.model2);
    state.corpus = LV.fillSelect($("wb-corpus"), page.corpora.map(c => ({ value: c })), state.corpus);
    LV.fillSelect($("wb-sort"), ["id", "text", "label", "predicted", "confidence", "loss", "length", "correct"].map(v => ({ value: v })), state.sort);
    $("wb-desc").checked = state.desc;
    for (const [id, k] of [["f-regex", "regex"], ["f-conf-min", "conf_min"], ["f-conf-max", "conf_max"], ["f-token", "token"]]) $(id).value = state[k];
    $("f-correct").value = state.correct;
    for (const m of page.methods) {
      const box = el("input", { type: "checkbox", value: m, checked: state.methods.includes(m) });
      $("wb-methods").append(el("label", {}, box, page.method_inputs[m].title));
    }
    LV.fillSelect($("g-method"), page.methods.map(m => ({ value: m, label: page.method_inputs[m].title })), state.g_method);
    LV.fillSelect($("m-slice"), [{ value: "", label: "(none)" }, ...page.slice_kinds.map(v => ({ value: v }))], state.slice);
    $("m-slice-arg").value = state.slice_arg;
    $("pj-method").value = state.pj;
    $("pj-colour").value = state.colour;
    if (state.thr !== "") { $("m-use-threshold").checked = true; $("m-threshold").value = state.thr; }
    $("wb-text").value = state.text;
    $("wb-clear-sel").hidden = !state.sel;

    $("wb-form").addEventListener("submit", ev => { ev.preventDefault(); readFilters(); state.offset = 0; refresh(); });
    $("wb-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - LIMIT); loadTable(); });
    $("wb-next").addEventListener("click", () => { state.offset += LIMIT; loadTable(); });
    $("wb-clear-sel").addEventListener("click", clearSelection);
    $("wb-explain").addEventListener("click", () => { state.text = $("wb-text").value; explain(); });
    $("wb-pin").addEventListener("click", () => { state.pin = $("wb-text").value; explain(); });
    $("wb-unpin").addEventListener("click", () => { state.pin = ""; explain(); });
    $("cf-run").addEventListener("click", counterfactuals);
    $("pj-run").addEventListener("click", () => { state.pj = $("pj-method").value; project(); });
    $("pj-colour").addEventListener("change", () => { state.colour = $("pj-colour").value; save(); if (lastProjection) drawProjection(lastProjection); });
    $("m-slice").addEventListener("change", () => { state.slice = $("m-slice").value; loadMetrics(); });
    $("m-slice-arg").addEventListener("change", () => { state.slice_arg = $("m-slice-arg").value.trim(); loadMetrics(); });
    const thr = () => { state.thr = $("m-use-threshold").checked ? $("m-threshold").value : ""; $("m-threshold-val").textContent = state.thr || "argmax"; };
    $("m-threshold").addEventListener("input", thr);
    $("m-threshold").addEventListener("change", () => { thr(); refresh(); });
    $("m-use-threshold").addEventListener("change", () => { thr(); refresh(); });
    thr();
    $("g-run").addEventListener("click", runGlobal);
  }

  function readFilters() {
    state.model = $("wb-model").value; state.model2 = $("wb-model2").value; state.corpus = $("wb-corpus").value;
    state.regex = $("f-regex").value.trim(); state.label = $("f-label").value; state.predicted = $("f-predicted").value;
    state.correct = $("f-correct").value; state.conf_min = $("f-conf-min").value; state.conf_max = $("f-conf-max").value;
    state.token = $("f-token").value.trim(); state.sort = $("wb-sort").value; state.desc = $("wb-desc").checked;
    state.methods = [...$("wb-methods").querySelectorAll("input:checked")].map(x => x.value);
    state.g_method = $("g-method").value;
  }

  // ---------------------------------------------------------------- table
  async function loadTable() {
    save();
    const table = $("wb-table");
    table.classList.add("stale");
    try {
      const r = await LV.api("/api/workbench/rows", { ...selection(), sort: state.sort, desc: state.desc, offset: state.offset, limit: LIMIT });
      LV.clearError();
      labels = r.labels;
      for (const [id, key] of [["f-label", "label"], ["f-predicted", "predicted"]])
        LV.fillSelect($(id), [{ value: "", label: "any" }, ...labels.map(l => ({ value: l }))], state[key]);
      $("m-pos").textContent = labels[1] || "";
      LV.fillSelect($("pj-colour"), [{ value: "gold", label: "gold label" }, { value: "predicted", label: "prediction" },
        { value: "correct", label: "correctness" }, ...r.meta.map(m => ({ value: `meta:${m}`, label: `meta: ${m}` }))], state.colour);
      $("wb-total").textContent = `${r.total} rows selected`;
      $("wb-pageinfo").textContent = r.total ? `rows ${r.offset + 1}–${Math.min(r.offset + LIMIT, r.total)} of ${r.total}` : "no rows";
      $("wb-prev").disabled = r.offset === 0;
      $("wb-next").disabled = r.offset + LIMIT >= r.total;
      LV.clear(table).append(el("thead", {}, el("tr", {}, ...["#", "text", "gold", "predicted", "confidence", "loss", "tokens", ...r.meta]
        .map(h => el("th", { scope: "col" }, h)))));
      const body = el("tbody");
      for (const row of r.rows) {
        const tr = el("tr", { class: "clickable" + (row.id === state.row ? " current" : ""), tabindex: "0", dataset: { id: row.id },
                              "aria-label": `row ${row.id}: open in the datapoint editor` },
          el("td", { class: "num" }, row.id), el("td", { class: "text" }, row.text), el("td", {}, row.label ?? "–"),
          el("td", {}, row.predicted, row.correct === false ? " ✗" : ""), el("td", { class: "num" }, fmt(row.confidence)),
          el("td", { class: "num" }, fmt(row.loss)), el("td", { class: "num" }, row.length),
          ...r.meta.map(m => el("td", {}, row.meta[m])));
        const open = () => openRow(row.id, row.text);
        tr.addEventListener("click", open);
        tr.addEventListener("keydown", ev => { if (ev.key === "Enter") { ev.preventDefault(); open(); } });
        body.append(tr);
      }
      table.append(body);
      table.classList.remove("stale");
    } catch (err) {
      LV.clear(table);
      $("wb-total").textContent = "";
      LV.showError(err.message);
    }
  }

  /** Open row ``id`` in the datapoint editor and explain it (marked current in the table). */
  function openRow(id, text) {
    state.row = id; state.text = text; $("wb-text").value = text;
    loadTable(); explain();
  }

  function showGenerated() {
    const t = LV.clear($("wb-generated"));
    if (!generated.length) return;
    t.append(el("thead", {}, el("tr", {}, ...["kind", "text", "change", "predicted", ...labels.map(l => `p(${l})`)].map(h => el("th", { scope: "col" }, h)))));
    const body = el("tbody");
    for (const g of generated) {
      const tr = el("tr", { class: "clickable", tabindex: "0", "aria-label": "open this generated text in the editor" },
        el("td", {}, g.kind), el("td", {}, g.text), el("td", {}, g.note || ""), el("td", {}, g.predicted),
        ...g.probs.map(p => el("td", { class: "num" }, fmt(p))));
      const open = () => { state.text = g.text; $("wb-text").value = g.text; explain(); };
      tr.addEventListener("click", open);
      tr.addEventListener("keydown", ev => { if (ev.key === "Enter") { ev.preventDefault(); open(); } });
      body.append(tr);
    }
    t.append(body);
  }

  // ---------------------------------------------------------------- datapoint, pin, second model
  function presets(methods) {
    const out = {};
    for (const m of methods) if (Object.keys(page.method_inputs[m].presets || {}).length) out[m] = page.method_inputs[m].presets;
    return out;
  }

  function explainText(model, text) {
    return LV.api("/api/explain", {}, { body: { model, text, methods: state.methods, params: presets(state.methods), faithfulness: false } });
  }

  function tokenRow(tokens, colors, textColors, title) {
    return el("div", {}, el("div", { class: "wb-row-label" }, title),
      el("div", { class: "wb-tokens" }, ...tokens.map((t, i) => el("span", { style: { background: colors[i], color: textColors[i] } }, LV.tokenLabel(t)))));
  }

  function legend(e, target) {
    const bar = el("span", { class: "wb-legend" });
    bar.style.background = `linear-gradient(to right, ${e.legend.stops.join(", ")})`;
    const s = e.legend.scale;
    return el("div", { class: "legend" }, e.signed ? `−${s.toPrecision(3)} against ${target}` : "0", bar,
              e.signed ? `+${s.toPrecision(3)} for ${target}` : `${s.toPrecision(3)} (magnitude)`);
  }

  function renderExplanation(r, heading) {
    const probs = r.labels.map((l, i) => `p(${l}) = ${r.probs[i].toFixed(3)}`).join(" · ");
    const box = el("div", { class: "panel" }, el("h3", {}, heading), el("p", {}, `${r.model}: predicts ${r.labels[r.predicted]} (${probs}); explained class ${r.target_label}`));
    for (const e of r.explanations) box.append(tokenRow(r.tokens, e.colors, e.text_colors, e.title), legend(e, r.target_label));
    return box;
  }

  function diffPanel(cur, pin) {
    const box = el("div", { class: "panel" }, el("h3", {}, "Current − pinned"));
    box.append(el("p", {}, cur.labels.map((l, i) => `Δp(${l}) = ${(cur.probs[i] - pin.probs[i]).toFixed(3)}`).join(" · ")));
    if (cur.tokens.length !== pin.tokens.length || cur.target !== pin.target) {
      box.append(el("p", { class: "muted" }, "Token scores are compared position by position when both texts have the same number of tokens and explained class."));
      return box;
    }
    cur.explanations.forEach((e, k) => {
      const d = e.scores.map((s, i) => s - pin.explanations[k].scores[i]);
      const scale = Math.max(1e-12, ...d.map(Math.abs));
      const colors = d.map(v => LV.diverging(v / scale));
      const tcols = d.map(v => LV.textColorFor(v / scale));
      box.append(tokenRow(cur.tokens, colors, tcols, `${e.title}: difference of scores`),
        el("div", { class: "legend" }, `−${scale.toPrecision(3)} (lower than pinned)`,
          el("span", { class: "wb-legend", style: { background: `linear-gradient(to right, ${LV.diverging(-1)}, ${LV.diverging(0)}, ${LV.diverging(1)})` } }),
          `+${scale.toPrecision(3)} (higher than pinned)`));
    });
    return box;
  }

  async function explain() {
    readFilters();
    state.text = $("wb-text").value;
    save();
    const host = $("wb-explanation");
    $("wb-unpin").hidden = !state.pin;
    if (!state.text.trim() || !state.methods.length) { LV.clear(host); LV.clear($("wb-pinned")); return; }
    host.classList.add("stale");
    try {
      const [cur, other, pinned] = await Promise.all([explainText(state.model, state.text),
        state.model2 ? explainText(state.model2, state.text) : null, state.pin ? explainText(state.model, state.pin) : null]);
      LV.clear(host).append(renderExplanation(cur, "Current"));
      if (other) host.append(renderExplanation(other, `Second model: ${other.model}`));
      const pin = LV.clear($("wb-pinned"));
      if (pinned) pin.append(renderExplanation(pinned, "Pinned"), diffPanel(cur, pinned));
      host.classList.remove("stale");
    } catch (err) { failed(host, err); }
  }

  function parseReplacements(s) {
    const out = {};
    for (const part of s.split(";")) {
      const [word, subs] = part.split(":");
      if (word && subs) out[word.trim()] = subs.split(",").map(x => x.trim()).filter(Boolean);
    }
    return out;
  }

  async function counterfactuals() {
    const text = $("wb-text").value;
    if (!text.trim()) return;
    const kind = $("cf-kind").value;
    status(`generating ${kind} counterfactuals …`);
    try {
      const r = await LV.api("/api/workbench/counterfactuals", {}, { body: { model: $("wb-model").value, text, kind,
        replacements: parseReplacements($("cf-repl").value), method: state.methods[0] || "gradient_x_input" } });
      labels = r.labels;
      generated = [...r.counterfactuals, ...generated].slice(0, 100);
      showGenerated();
      status(`${r.counterfactuals.length} counterfactual(s) of a text predicted ${r.predicted}`);
    } catch (err) { status(""); LV.showError(err.message); }
  }

  // ---------------------------------------------------------------- projector
  let lastProjection = null;
  // the projector by keyboard: a ring on one point (pjRow, a row id) moved by the arrows; Space marks
  // the rows under it (pjMarked, row ids) for a selection that S applies as the lasso does
  let pjRow = null;
  const pjMarked = new Set();

  async function project() {
    save();
    const plot = $("pj-plot");
    try {
      const q = { ...selection(), method: state.pj };
      let r = await LV.api("/api/workbench/projection", q);
      if (r.status && r.id) {  // a job: UMAP or t-SNE
        let job = r;
        while (job.status !== "done") {
          if (job.status === "error") throw new Error(job.error);
          LVJobs.showProgress($("pj-progress"), job);
          await new Promise(res => setTimeout(res, 500));
          job = await LV.api(`/api/jobs/${encodeURIComponent(job.id)}`);
        }
        $("pj-progress").hidden = true;
        r = job.result;
      }
      lastProjection = r;
      drawProjection(r);
    } catch (err) { lastProjection = null; const P = await LV.plotly(); P.purge(plot); failed(plot, err); }
  }

  /** The colour group of point ``i`` of the projection ``r`` under the "Colour by" choice. */
  function groupOf(r, i) {
    return state.colour.startsWith("meta:") ? String((r.meta[state.colour.slice(5)] || [])[i] ?? "–")
      : state.colour === "predicted" ? r.labels[r.predicted[i]]
      : state.colour === "correct" ? (r.gold ? (r.gold[i] === r.predicted[i] ? "correct" : "wrong") : "no gold label")
      : (r.gold ? r.labels[r.gold[i]] : "no gold label");
  }

  async function drawProjection(r) {
    const P = await LV.plotly();
    const plot = $("pj-plot");
    LV.clear(plot);
    const groups = {};
    r.ids.forEach((id, i) => {
      const key = groupOf(r, i);
      (groups[key] = groups[key] || { x: [], y: [], ids: [] });
      groups[key].x.push(r.x[i]); groups[key].y.push(r.y[i]); groups[key].ids.push(id);
    });
    const traces = Object.entries(groups).map(([name, g]) => ({ type: "scatter", mode: "markers", name: LV.plotText(name),
      x: g.x, y: g.y, customdata: g.ids, marker: { size: 5, opacity: 0.7 }, hovertemplate: "row %{customdata}<extra></extra>" }));
    const shown = new Set(r.ids);
    for (const id of pjMarked) if (!shown.has(id)) pjMarked.delete(id);
    await P.newPlot(plot, traces, { margin: { t: 10, r: 10, b: 30, l: 40 }, height: 340, dragmode: "lasso",
      xaxis: { title: { text: `${r.method} 1` } }, yaxis: { title: { text: `${r.method} 2` } }, shapes: keyboardShapes(r) },
      { displaylogo: false, responsive: true });
    plot.on("plotly_selected", async ev => {
      if (!ev || !ev.points || !ev.points.length) return;
      try { status(`projector selection: ${await applySelection(ev.points.map(p => p.customdata))} rows`); }
      catch (err) { LV.showError(err.message); }
    });
    if (!plot.dataset.bound) {
      plot.addEventListener("focus", () => {
        if (lastProjection) moveProjectorCursor(cursorIndex(lastProjection));
        else pjStatus("No projection yet: the Project button above draws it.");
      });
      plot.addEventListener("keydown", onProjectorKey);
      plot.dataset.bound = "1";
    }
  }

  /** Keep ``ids`` on the server as the selection (its token goes into the URL) and filter the table and
   *  the metrics by it, as the lasso does; answers the number of rows. */
  async function applySelection(ids) {
    const s = await LV.api("/api/workbench/selection", {}, { body: { model: state.model, corpus: state.corpus, ids } });
    state.sel = s.selection; state.offset = 0; $("wb-clear-sel").hidden = false;
    loadTable(); loadMetrics();
    return s.n;
  }

  /** Clear the projector's selection: the keyboard's marks, and the applied one (the table and the metrics
   *  show every row again), as the "Clear projector selection" button does. */
  function clearSelection() {
    pjMarked.clear();
    if (lastProjection) drawKeyboardShapes();
    if (!state.sel) return;
    state.sel = ""; $("wb-clear-sel").hidden = true; state.offset = 0;
    refresh();
  }

  function pjStatus(msg) { $("pj-status").textContent = msg; }

  /** Where the ring is in the projection ``r``: its row, else the row open in the editor, else the first point. */
  function cursorIndex(r) {
    const i = r.ids.indexOf(pjRow);
    if (i !== -1) return i;
    return Math.max(0, r.ids.indexOf(state.row));
  }

  /** The ring (a circle) and the marked points (squares), drawn as shapes at the points in screen pixels,
   *  so the traces stay the colour groups and the lasso never selects them. */
  function keyboardShapes(r) {
    const at = (i, name, type, half, width) => ({ type, name, xref: "x", yref: "y", xsizemode: "pixel", ysizemode: "pixel",
      xanchor: r.x[i], yanchor: r.y[i], x0: -half, x1: half, y0: -half, y1: half, line: { color: "#101828", width } });
    const shapes = [];
    r.ids.forEach((id, i) => { if (pjMarked.has(id)) shapes.push(at(i, "keyboard selection", "rect", 6, 2)); });
    const ring = r.ids.indexOf(pjRow);
    if (ring !== -1) shapes.push(at(ring, "keyboard", "circle", 9, 2.5));
    return shapes;
  }

  function drawKeyboardShapes() { Plotly.relayout($("pj-plot"), { shapes: keyboardShapes(lastProjection) }); }

  /** The points at the same place as point ``i`` (rows with the same features): the ring covers them all. */
  function samePlace(r, i) {
    const out = [];
    for (let j = 0; j < r.ids.length; j++) if (r.x[j] === r.x[i] && r.y[j] === r.y[i]) out.push(j);
    return out;
  }

  /** Point ``i`` of the projection in words: its row, labels (and meta group when coloured by one), whether
   *  marked, and the other rows at the same place. */
  function describePoint(i) {
    const r = lastProjection, id = r.ids[i];
    const group = state.colour.startsWith("meta:") ? `, ${state.colour.slice(5)} ${groupOf(r, i)}` : "";
    const others = samePlace(r, i).filter(j => j !== i).map(j => r.ids[j]);
    const also = others.length ? `; ${others.length === 1 ? "row" : "rows"} ${others.slice(0, 5).join(", ")}` +
      `${others.length > 5 ? ` and ${others.length - 5} more` : ""} at the same place` : "";
    return `row ${id}: gold ${r.gold ? r.labels[r.gold[i]] : "none"}, predicted ${r.labels[r.predicted[i]]}${group}` +
           (pjMarked.has(id) ? ", selected" : "") + also;
  }

  /** Put the ring on point ``i`` and announce it. */
  function moveProjectorCursor(i) {
    pjRow = lastProjection.ids[i];
    drawKeyboardShapes();
    pjStatus(`${describePoint(i)}. ${pjMarked.size} selected: Space adds or removes a point, S applies, ` +
             "Enter opens the row, Escape clears.");
  }

  function onProjectorKey(ev) {
    const r = lastProjection;
    if (!r || ev.target !== ev.currentTarget || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const i = cursorIndex(r), key = ev.key;
    if (key.startsWith("Arrow")) {
      moveProjectorCursor(LVRoving.nearestToward(r.x, r.y, i, key, ev.currentTarget.clientWidth - 50, 300));
    } else if (key === " ") {  // every row under the ring, as a lasso round it takes them all
      pjRow = r.ids[i];
      const added = !pjMarked.has(pjRow);
      for (const j of samePlace(r, i)) if (added) pjMarked.add(r.ids[j]); else pjMarked.delete(r.ids[j]);
      drawKeyboardShapes();
      pjStatus(`${added ? "Added" : "Taken out"}: ${describePoint(i)}. ${pjMarked.size} selected; S applies them to the table and metrics.`);
    } else if (key === "Enter") {
      openProjected(r.ids[i]);
    } else if (key === "s" || key === "S") {
      applyMarked();
    } else if (key === "Escape") {
      const applied = Boolean(state.sel);
      clearSelection();
      pjStatus(`Selection cleared${applied ? ": the table and the metrics show every row again" : ""}.`);
    } else return;
    ev.preventDefault();
  }

  /** Open the row of a projected point in the editor, as a click on its table row does (its text fetched by id). */
  async function openProjected(id) {
    try {
      const r = await LV.api("/api/workbench/rows", { model: state.model, corpus: state.corpus, ids: id, limit: 1 });
      openRow(id, r.rows[0].text);
      pjStatus(`row ${id} opened in the datapoint editor.`);
    } catch (err) { LV.showError(err.message); }
  }

  /** S: the marked points become the selection, as a lasso around them would. */
  async function applyMarked() {
    if (!pjMarked.size) { pjStatus("Nothing selected yet: Space adds the point under the ring."); return; }
    try {
      const n = await applySelection([...pjMarked]);
      pjStatus(`Selection applied: ${n} rows in the table and metrics. Escape clears it.`);
    } catch (err) {
      pjStatus(`The selection was not applied: ${err.message}`);
      LV.showError(err.message);
    }
  }

  // ---------------------------------------------------------------- metrics
  async function loadMetrics() {
    save();
    const summary = $("m-summary");
    const q = { ...selection() };
    if (state.slice) {
      q.slice = state.slice;
      if (state.slice === "token") q.slice_tokens = state.slice_arg;
      if (state.slice === "meta") q.slice_meta = state.slice_arg;
    }
    try {
      const m = await LV.api("/api/workbench/metrics", q);
      LV.clear(summary).append(el("p", {}, m.accuracy === undefined ? `${m.n} rows; no gold labels, so no accuracy` :
        `${m.n} rows · accuracy ${fmt(m.accuracy)} · macro F1 ${fmt(m.macro.f1)} · ECE ${fmt(m.calibration.ece)} · mean loss ${fmt(m.mean_loss)}` +
        (m.threshold !== null ? ` · threshold ${m.threshold}` : "")));
      const P = await LV.plotly();
      if (m.confusion) {
        const max = Math.max(1, ...m.confusion.flat());
        await P.newPlot($("m-confusion"), [{ type: "heatmap", z: m.confusion, x: m.labels.map(LV.plotText), y: m.labels.map(LV.plotText),
          zmin: 0, zmax: max, colorscale: [[0, LV.sequential(0)], [1, LV.sequential(1)]], text: m.confusion, texttemplate: "%{text}",
          colorbar: { title: { text: "rows" } }, hovertemplate: "gold %{y}, predicted %{x}: %{z}<extra></extra>" }],
          { title: { text: "Confusion (rows: gold)" }, height: 260, margin: { t: 30, r: 10, b: 40, l: 60 },
            xaxis: { title: { text: "predicted" } }, yaxis: { autorange: "reversed" } }, { displaylogo: false, responsive: true });
        const bins = m.calibration.bins.filter(b => b.count);
        await P.newPlot($("m-reliability"), [
          { type: "bar", x: bins.map(b => (b.lo + b.hi) / 2), y: bins.map(b => b.accuracy), width: 0.09, name: "accuracy",
            customdata: bins.map(b => b.count), hovertemplate: "confidence %{x:.2f}: accuracy %{y:.3f} (%{customdata} rows)<extra></extra>" },
          { type: "scatter", mode: "lines", x: [0, 1], y: [0, 1], name: "perfect calibration", line: { dash: "dot", color: "#667085" } }],
          { title: { text: `Reliability (ECE ${fmt(m.calibration.ece)})` }, height: 260, margin: { t: 30, r: 10, b: 40, l: 50 },
            xaxis: { title: { text: "confidence" }, range: [0, 1] }, yaxis: { title: { text: "accuracy" }, range: [0, 1] }, showlegend: false },
          { displaylogo: false, responsive: true });
        const t = LV.clear($("m-classes"));
        t.append(el("thead", {}, el("tr", {}, ...["class", "precision", "recall", "F1", "support"].map(h => el("th", { scope: "col" }, h)))));
        t.append(el("tbody", {}, ...m.per_class.map(c => el("tr", {}, el("td", {}, c.label), el("td", { class: "num" }, fmt(c.precision)),
          el("td", { class: "num" }, fmt(c.recall)), el("td", { class: "num" }, fmt(c.f1)), el("td", { class: "num" }, c.support)))));
      }
      const st = LV.clear($("m-slices"));
      if (m.slices) {
        st.append(el("thead", {}, el("tr", {}, ...["slice", "rows", "accuracy", "macro F1", "ECE"].map(h => el("th", { scope: "col" }, h)))));
        st.append(el("tbody", {}, ...m.slices.map(s => el("tr", {}, el("td", {}, s.slice), el("td", { class: "num" }, s.n),
          el("td", { class: "num" }, fmt(s.accuracy)), el("td", { class: "num" }, s.macro ? fmt(s.macro.f1) : "–"),
          el("td", { class: "num" }, s.calibration ? fmt(s.calibration.ece) : "–")))));
      }
    } catch (err) { LV.clear($("m-classes")); LV.clear($("m-slices")); failed(summary, err); }
  }

  // ---------------------------------------------------------------- global explanations + audit
  function openLink(text) {
    const q = new URLSearchParams({ model: state.model, corpus: state.corpus, text });
    return el("a", { href: `/workbench?${q}` }, "open");
  }

  async function runGlobal() {
    readFilters(); save();
    const out = LV.clear($("g-results"));
    try {
      const r = await LVJobs.run("/api/workbench/global", { ...selection(), method: state.g_method,
        sample: parseInt($("g-sample").value, 10) || 200 }, job => LVJobs.showProgress($("g-progress"), job));
      $("g-progress").hidden = true;
      const sal = r.saliency;
      const max = Math.max(1e-12, ...sal.tokens.map(t => Math.abs(t.mean)));
      out.append(el("h3", {}, `Expected saliency over ${sal.n_texts} texts (each explained for its predicted class)`),
        el("div", { class: "legend" }, `−${max.toPrecision(3)} against`,
          el("span", { class: "wb-legend", style: { background: `linear-gradient(to right, ${LV.diverging(-1)}, ${LV.diverging(0)}, ${LV.diverging(1)})` } }),
          `+${max.toPrecision(3)} for the predicted class`));
      const t = el("table", { class: "table" }, el("thead", {}, el("tr", {}, ...["token", "count", "mean", "mean |score|", ...sal.slices.map(s => `mean in ${s.slice}`)].map(h => el("th", { scope: "col" }, h)))));
      t.append(el("tbody", {}, ...sal.tokens.map(tok => el("tr", {}, el("td", { class: "token" }, el("code", {}, tok.token)), el("td", { class: "num" }, tok.count),
        el("td", { class: "num", style: { background: LV.diverging(tok.mean / max), color: LV.textColorFor(tok.mean / max) } }, fmt(tok.mean)),
        el("td", { class: "num" }, fmt(tok.mean_abs)), ...sal.slices.map(s => el("td", { class: "num" }, fmt(s.tokens[tok.token])))))));
      out.append(t);
      if (r.importance.length) {
        out.append(el("h3", {}, "Token importance: accuracy drop when a token type is removed or permuted"));
        out.append(el("table", { class: "table" }, el("thead", {}, el("tr", {}, ...["token", "mode", "texts with it", "accuracy", "after", "drop"].map(h => el("th", { scope: "col" }, h)))),
          el("tbody", {}, ...r.importance.map(x => el("tr", {}, el("td", {}, el("code", {}, x.token)), el("td", {}, x.mode), el("td", { class: "num" }, x.n_texts_with),
            el("td", { class: "num" }, fmt(x.accuracy)), el("td", { class: "num" }, fmt(x.accuracy_after)), el("td", { class: "num" }, fmt(x.drop)))))));
      }
      const a = r.audit;
      out.append(el("h3", {}, `Audit: tokens relied on per class (${a.statistic})`));
      for (const [lab, toks] of Object.entries(a.tokens)) {
        out.append(el("h4", {}, lab));
        out.append(el("table", { class: "table" }, el("thead", {}, el("tr", {}, ...["rank", "token", "texts", "reliance", "example"].map(h => el("th", { scope: "col" }, h)))),
          el("tbody", {}, ...toks.slice(0, 10).map(st => el("tr", {}, el("td", { class: "num" }, st.rank), el("td", {}, el("code", {}, st.token)),
            el("td", { class: "num" }, st.n_texts), el("td", { class: "num" }, fmt(st.reliance)),
            el("td", {}, st.examples[0] ? st.examples[0].text : "", " ", st.examples[0] ? openLink(st.examples[0].text) : ""))))));
      }
      if (a.flips.length) {
        out.append(el("h3", {}, `Flip tests (against ${a.flip_reference})`));
        out.append(el("ul", {}, ...a.flips.map(f => el("li", {}, el("code", {}, f.token), ` (${f.label}): accuracy ${fmt(f.accuracy_removed)} without it, ${fmt(f.accuracy_flipped)} flipped, drop ${fmt(f.drop)}`))));
      }
    } catch (err) { $("g-progress").hidden = true; failed(out, err); }
  }

  function refresh() { loadTable(); loadMetrics(); if (state.text) explain(); }

  setupControls();
  if (!state.model || !state.corpus) { status("no text classifier or corpus is loaded"); return; }
  refresh();
})();
