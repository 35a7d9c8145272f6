// Text-CNN filters: the top n-grams of every Conv1D filter, one card per filter, a bar per filter's peak.
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  const data = LV.pageData();
  const url = LV.readUrl();
  const state = { model: url.model || "", store: url.store || "", layer: url.layer || "", k: parseInt(url.k || "9", 10) || 9,
                  filter: url.filter !== undefined && url.filter !== "" ? parseInt(url.filter, 10) : null };
  const fail = e => { $("status").textContent = "failed (see the message above)"; LV.showError(e.message); };
  const status = data.status || {};
  const cnns = data.textcnn_models || [];  // every classifier whose Conv1d stack lstmvis.textcnn maps
  const stores = LV.readyStores(status);
  const note = LV.pendingStoresNote(status);
  if (note) { $("pending-note").textContent = note; $("pending-note").hidden = false; }
  let report = null;

  function saveUrl() { LV.writeUrl({ model: state.model, store: state.store, layer: state.layer, k: state.k, filter: state.filter }); }

  async function load() {
    LV.clearError();
    $("status").textContent = "running the corpus through the model (once per model and corpus)…";
    report = await LV.api("/api/textcnn/filters", { model: state.model, store: state.store, k: state.k });
    await LV.plotly();
    const layers = Object.keys(report.fields);
    state.layer = LV.fillSelect($("layer"), layers.map(l => {
      const f = report.fields[l];
      return { value: l, label: `${l} (${f.size}-token receptive field)` };
    }), state.layer || layers[0]);
    $("status").textContent = `${report.model} over the ${report.n_texts.toLocaleString()} texts of store "${report.store}"`;
    render();
    saveUrl();
  }

  function render() {
    const filters = report.filters.filter(f => f.layer === state.layer);
    const order = [...filters].sort((a, b) => (b.max ?? -Infinity) - (a.max ?? -Infinity));
    Plotly.react("filters-plot", [{
      type: "bar", x: order.map((_, i) => i), y: order.map(f => f.max), customdata: order.map(f => f.filter),
      text: order.map(f => LV.plotText(f.ngrams.length ? f.ngrams[0].original : "")),
      // the n-gram is in the hover, not printed inside the bars (where it shrinks to unreadable text)
      textposition: "none",
      marker: { color: order.map(f => f.filter === state.filter ? "#f28e2b" : isDead(f) ? "#c9ced8" : "#1399e4") },
      hovertemplate: "filter %{customdata}: top activation %{y:.2f}<br>%{text}<extra></extra>",
    }], { margin: { l: 50, r: 10, t: 30, b: 30 }, bargap: 0.1,
          title: { text: LV.plotText(`${filters.length} filters of ${state.layer}, by their top activation`), font: { size: 13 } },
          xaxis: { showticklabels: false, title: { text: "filters (sorted)" } }, yaxis: { title: { text: "top activation" } } },
    LV.plotConfig);
    const gd = $("filters-plot");
    if (!gd.dataset.wired) {
      gd.dataset.wired = "1";
      gd.on("plotly_click", ev => { if (ev.points.length) focusFilter(ev.points[0].customdata); });
    }
    const grid = LV.clear($("filter-grid"));
    const needle = $("filter-search").value.trim().toLowerCase();
    const dead = filters.filter(isDead).length;
    $("dead-note").textContent = dead ? `${dead} of ${filters.length} filters are dead here: their output never rises above 0 ` +
      "on this corpus, so the ReLU passes nothing and their n-grams mean nothing (grey bars; marked below)." : "";
    for (const f of order) {
      if (needle && !f.ngrams.some(h => h.original.toLowerCase().includes(needle))) continue;
      if (isDead(f) && $("hide-dead").checked) continue;
      const list = LV.el("ol");
      for (const h of f.ngrams) {
        list.append(LV.el("li", { title: `activation ${h.activation.toFixed(3)}; text ${h.text_index}, tokens ${h.start}–${h.stop - 1}` },
                          h.original, LV.el("span", { class: "muted" }, `  ${h.activation.toFixed(2)}`)));
      }
      grid.append(LV.el("div", { class: "ngram-card" + (f.filter === state.filter ? " current" : "") + (isDead(f) ? " dead" : ""),
                                 id: `filter-${f.filter}`, dataset: { filter: String(f.filter), dead: isDead(f) ? "1" : "" },
                                 role: "button", "aria-pressed": String(f.filter === state.filter),
                                 onclick: () => focusFilter(f.filter) },
                        LV.el("b", {}, `filter ${f.filter}`), LV.el("span", { class: "muted" }, `  peak ${f.max === null ? "–" : f.max.toFixed(2)}`),
                        isDead(f) ? LV.el("span", { class: "dead-mark", title: "its output never rises above 0 on this corpus" }, " dead") : null,
                        list));
    }
    if (!grid.children.length) grid.append(LV.el("p", { class: "muted" }, "no filter has that n-gram among its top ones"));
    LVRoving.refresh(grid, ".ngram-card");
  }

  /** A filter whose output never rises above 0 over the corpus: after the ReLU it passes nothing. */
  function isDead(f) { return f.max === null || f.max <= 0; }

  /** Make ``filter`` the current one (URL, marked card, the deconvnet panel's filter); ``keepFocus``: the
   * keyboard picked it, so its card, drawn again, keeps the focus. */
  function focusFilter(filter, keepFocus = false) {
    state.filter = filter;
    saveUrl();
    $("filter-search").value = "";
    if ($("tdeconv-filter")) $("tdeconv-filter").value = filter;
    render();
    const card = $(`filter-${filter}`);
    if (!card) return;
    card.scrollIntoView({ block: "center", behavior: keepFocus ? "auto" : "smooth" });
    if (keepFocus) card.focus();
  }

  /** The corpus picker: only the stores with texts cut as the model cuts them (the server refuses the
   * others), those of unknown tokenization marked; says how many are hidden and why. False: none fits. */
  function fillStores() {
    const model = cnns.find(m => m.name === state.model) || {};
    const want = model.tokenization || null;
    const withText = stores.filter(s => s.has_texts);
    const fit = withText.filter(s => !want || !s.tokenization || s.tokenization === want);
    const hidden = withText.length - fit.length;
    const others = [...new Set(withText.filter(s => !fit.includes(s)).map(s => s.tokenization))].join(", ");
    $("store-note").textContent = hidden ? `${hidden} store${hidden > 1 ? "s" : ""} hidden: tokenized by ${others}, ` +
      `not by ${want} as ${state.model} is, so their n-grams would not be the units the model reads.` : "";
    $("store-note").hidden = !hidden;
    if (!fit.length) {
      LV.clear($("store"));
      LV.showError(`No ready store is tokenized by ${want} as ${state.model} is: extract one with ` +
                   `lstmvis.extract("${state.model}", texts, path).`);
      return false;
    }
    const preferred = fit.some(s => s.name === state.store) ? state.store
      : (fit.some(s => s.name === "sentiment") ? "sentiment" : fit[0].name);
    state.store = LV.fillSelect($("store"), fit.map(s => ({
      value: s.name, label: `${s.title} (${s.name})` + (s.tokenization ? "" : " \u2013 tokenization not known"),
    })), preferred);
    return true;
  }

  function start() {
    $("controls").addEventListener("submit", ev => ev.preventDefault());
    if (!cnns.length) { LV.showError("No text-CNN model is loaded."); return; }
    if (!stores.some(s => s.has_texts)) { LV.showError("No state store with texts is ready to use as the corpus yet. " + note); return; }
    state.model = LV.fillSelect($("model"), cnns.map(m => ({ value: m.name, label: `${m.name} (${m.tokenization || "tokenization not known"})` })), state.model);
    if (!fillStores()) return;
    $("k").value = state.k;
    $("model").addEventListener("change", () => {
      state.model = $("model").value; state.layer = "";
      if (fillStores()) load().catch(fail);
    });
    $("store").addEventListener("change", () => { state.store = $("store").value; load().catch(fail); });
    $("layer").addEventListener("change", () => { state.layer = $("layer").value; state.filter = null; saveUrl(); render(); });
    $("k").addEventListener("change", () => { state.k = Math.min(50, Math.max(1, parseInt($("k").value, 10) || 9)); load().catch(fail); });
    // the cards are one Tab stop: arrows move along them, Enter or Space picks the filter
    LVRoving.wire($("filter-grid"), ".ngram-card", card => focusFilter(Number(card.dataset.filter), true));
    $("filter-search").addEventListener("input", () => render());
    $("hide-dead").addEventListener("change", () => render());
    load().then(() => { if (state.filter !== null) focusFilter(state.filter); }).catch(fail);
  }

  start();
})();
