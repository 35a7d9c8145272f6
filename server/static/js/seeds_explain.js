// Explanations page, seed views (server/seeds_api.py): embedding-dimension saliency (a plotly heatmap,
// tokens x dimensions, beside the token-level scores) and the data randomization sanity check.
"use strict";

(() => {
  const $ = id => document.getElementById(id);
  const fmt = v => (Number.isFinite(v) ? v.toFixed(2) : "–");
  const divergingScale = () => [-1, -0.5, 0, 0.5, 1].map(t => [(t + 1) / 2, LV.diverging(t)]);

  async function embeddingSaliency() {
    const plot = $("embsal-plot");
    const Plotly = await LV.plotly();
    Plotly.purge(plot);
    plot.hidden = false;  // empty (no 420 px blank) until the first heatmap
    try {
      const target = $("target").value;
      const res = await LV.api("/api/explain/embedding-saliency", {}, { body: {
        model: $("model").value, text: $("text").value, target: target === "" ? null : Number(target) } });
      const rows = res.tokens.map((t, i) => `${i + 1}: ${LV.plotText(LV.tokenLabel(t))}`);
      const m = res.max_abs || 1, s = Math.max(...res.scores.map(Math.abs)) || 1;
      const heat = { type: "heatmap", z: res.matrix, y: rows, x: res.matrix[0].map((_, d) => d),
                     zmin: -m, zmax: m, colorscale: divergingScale(), xaxis: "x", yaxis: "y",
                     colorbar: { title: { text: "gradient × input" }, x: 1.02 },
                     hovertemplate: "token %{y}<br>dimension %{x}<br>%{z:.4f}<extra></extra>" };
      const sums = { type: "heatmap", z: res.scores.map(v => [v]), y: rows, x: ["row sum"], zmin: -s, zmax: s,
                     colorscale: divergingScale(), showscale: false, xaxis: "x2", yaxis: "y",
                     text: res.scores.map(v => [v.toFixed(3)]), texttemplate: "%{text}",
                     hovertemplate: "token %{y}<br>token score %{z:.4f}<extra></extra>" };
      Plotly.react(plot, [sums, heat], {
        title: { text: `target ${LV.plotText(res.label)}: blue = for, red = against, white = 0` },
        xaxis2: { domain: [0, 0.12] }, xaxis: { domain: [0.16, 1], title: { text: "embedding dimension" } },
        yaxis: { autorange: "reversed", automargin: true }, margin: { t: 40 }, height: 120 + 18 * rows.length,
      }, LV.plotConfig);
      LV.writeUrl({ ...LV.readUrl(), embsal: 1 });
    } catch (e) { LV.showError(e.message); }
  }

  async function dataRandomization(ev) {
    ev.preventDefault();
    const table = LV.clear($("textdatarand-table"));
    LV.clear($("textmodelrand-table"));
    try {
      const res = await LVJobs.run("/api/explain/data-randomization",
                                   { model: $("model").value, n_texts: +$("textdatarand-n").value },
                                   job => LVJobs.showProgress($("textdatarand-progress"), job));
      const head = () => LV.el("tr", {}, LV.el("th", {}, "method"), LV.el("th", {}, "Spearman ρ (signed)"),
                               LV.el("th", {}, "Spearman ρ (|scores|)"), LV.el("th", {}, "passes (both < 0.5)"));
      const row = r => LV.el("tr", {}, LV.el("td", {}, r.method),
                             LV.el("td", { class: "num" }, `${fmt(r.spearman)} ± ${fmt(r.spearman_std)}`),
                             LV.el("td", { class: "num" }, `${fmt(r.spearman_abs)} ± ${fmt(r.spearman_abs_std)}`),
                             LV.el("td", {}, r.passes ? "yes" : "no"));
      table.append(LV.el("caption", { class: "muted small" }, `data randomization: ${res.model} vs ${res.randomized}, ${res.texts.length} test sentences`));
      table.append(head());
      for (const r of res.summary) table.append(row(r));
      const other = LV.clear($("textmodelrand-table"));
      other.append(LV.el("caption", { class: "muted small" }, `model randomization: ${res.model} with every layer down to ${res.check_stage} re-initialized`));
      other.append(head());
      for (const r of res.model_randomization) other.append(row(r));
    } catch (e) { $("textdatarand-progress").hidden = true; LV.showError(e.message); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!$("embsal-panel")) return;
    $("embsal-run").addEventListener("click", embeddingSaliency);
    $("textdatarand-form").addEventListener("submit", dataRandomization);
    if (LV.readUrl().embsal) setTimeout(embeddingSaliency, 1500);  // after the page has filled its model and text
  });
})();
