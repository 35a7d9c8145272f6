// Images page, seed views (server/seeds_api.py): data randomization sanity check, Zeiler-Fergus
// reconstructions of a unit, features over training. Text reaches the page through textContent only.
"use strict";

(() => {
  const $ = id => document.getElementById(id);
  const model = () => ($("model") && $("model").value) || "mnist-cnn";
  const fmt = v => (Number.isFinite(v) ? v.toFixed(2) : "–");

  /** Keep this section's inputs in the URL next to the page's own keys. */
  function saveState() {
    LV.writeUrl({ ...LV.readUrl(), zf_layer: $("deconv-layer").value, zf_unit: $("deconv-unit").value,
                  ev_layer: $("evolution-layer").value, ev_unit: $("evolution-unit").value });
  }

  function correlationTable(table, rows) {
    LV.clear(table);
    table.append(LV.el("tr", {}, LV.el("th", {}, "method"), LV.el("th", {}, "Spearman ρ (signed)"),
                       LV.el("th", {}, "Spearman ρ (|maps|)"), LV.el("th", {}, "passes (both < 0.5)")));
    for (const r of rows) {
      const pass = Math.abs(r.spearman) < 0.5 && r.spearman_abs < 0.5;
      table.append(LV.el("tr", {}, LV.el("td", {}, r.method), LV.el("td", { class: "num" }, fmt(r.spearman)),
                         LV.el("td", { class: "num" }, fmt(r.spearman_abs)), LV.el("td", {}, pass ? "yes" : "no")));
    }
  }

  async function dataRandomization(ev) {
    ev.preventDefault();
    const table = $("datarand-table");
    LV.clear(table);
    try {
      const res = await LVJobs.run("/api/images/data-randomization", { model: model(), n_images: +$("datarand-n").value },
                                   job => LVJobs.showProgress($("datarand-progress"), job));
      correlationTable(table, res.rows);
      table.append(LV.el("caption", { class: "muted small" }, `${res.model} vs ${res.randomized}, ${res.images.length} test digits`));
    } catch (e) { $("datarand-progress").hidden = true; LV.showError(e.message); }
  }

  function fillLayers(select, layers, wanted) {
    LV.fillSelect(select, layers.map(l => ({ value: l })), wanted || select.value);
  }

  async function deconv(ev) {
    if (ev) ev.preventDefault();
    const grid = LV.clear($("deconv-grid"));
    try {
      const body = { model: model(), unit: +$("deconv-unit").value };
      if ($("deconv-layer").value) body.layer = $("deconv-layer").value;
      const res = await LV.api("/api/images/deconv", {}, { body });
      fillLayers($("deconv-layer"), res.layers, res.layer);
      fillLayers($("evolution-layer"), res.layers, $("evolution-layer").value || res.layer);
      $("deconv-unit").max = res.n_units - 1;
      for (const it of res.items) {
        grid.append(LV.el("figure", {},
          LV.el("img", { src: it.patch, alt: `patch of test digit ${it.index}`, class: "pixelated" }),
          LV.el("img", { src: it.reconstruction, alt: `reconstruction for test digit ${it.index}`, class: "pixelated" }),
          LV.el("figcaption", { class: "small" }, `#${it.index} act ${it.value.toFixed(2)}; ${it.min.toFixed(2)}…${it.max.toFixed(2)}`)));
      }
      saveState();
    } catch (e) { LV.showError(e.message); }
  }

  async function evolution(ev) {
    ev.preventDefault();
    const grid = LV.clear($("evolution-grid"));
    try {
      const res = await LVJobs.run("/api/images/evolution",
                                   { model: "mnist-cnn", layer: $("evolution-layer").value || "features.4",
                                     unit: +$("evolution-unit").value },
                                   job => LVJobs.showProgress($("evolution-progress"), job));
      for (const s of res.snapshots) {
        const acc = s.metrics && s.metrics.test_accuracy !== undefined ? ` (test accuracy ${s.metrics.test_accuracy.toFixed(3)})` : "";
        const classes = LV.el("div", { class: "image-grid am-grid" });
        s.classes.forEach((src, c) => classes.append(LV.el("figure", {}, LV.el("img", { src, alt: `class ${s.labels[c]}` }),
                                                           LV.el("figcaption", {}, s.labels[c]))));
        grid.append(LV.el("div", { class: "panel" }, LV.el("h3", {}, s.label + acc),
          LV.el("p", { class: "small" }, "first-layer filters"), LV.el("img", { src: s.filters, alt: `filters, ${s.label}`, class: "pixelated" }),
          LV.el("p", { class: "small" }, `top-9 patches of ${res.layer} unit ${res.unit}`),
          LV.el("img", { src: s.patches, alt: `top patches, ${s.label}`, class: "pixelated" }),
          LV.el("p", { class: "small" }, "class images (activation maximization)"), classes));
      }
      saveState();
    } catch (e) { $("evolution-progress").hidden = true; LV.showError(e.message); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!$("seeds-images")) return;
    const url = LV.readUrl();
    if (url.zf_unit) $("deconv-unit").value = url.zf_unit;
    if (url.ev_unit) $("evolution-unit").value = url.ev_unit;
    if (url.zf_layer) LV.fillSelect($("deconv-layer"), [{ value: url.zf_layer }], url.zf_layer);
    if (url.ev_layer) LV.fillSelect($("evolution-layer"), [{ value: url.ev_layer }], url.ev_layer);
    $("datarand-form").addEventListener("submit", dataRandomization);
    $("deconv-form").addEventListener("submit", deconv);
    $("evolution-form").addEventListener("submit", evolution);
    deconv();
  });
})();
