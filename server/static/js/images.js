// CNN image methods: a digit (test set or upload) -> one overlay per method, feature maps; per model:
// filters, activation maximization, t-SNE of the test set, model-randomization sanity check.
// Images arrive as PNG data URLs made by the server; text only through textContent.
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  const el = LV.el;
  const data = LV.pageData();
  const models = data.models || [];
  let current = null;  // {index} or {image}
  let busy = false;

  function setUp() {
    const url = LV.readUrl();
    if (!models.length) {
      LV.showError("No image classifier is loaded: train one with python -m data.train mnist-cnn.");
      return;
    }
    LV.fillSelect($("model"), models.map(m => ({ value: m.name, label: m.name })), url.model);
    LV.fillSelect($("target"), [{ value: "", label: "predicted class" },
                                ...Array.from({ length: 10 }, (_, i) => ({ value: String(i), label: String(i) }))],
                  url.target ?? "");
    $("index").max = data.n_test - 1;
    LVParams.build($("param-inputs"), data.methods.map(m => ({ name: m.name, title: m.title, params: m.hyperparameters })));
    for (const d of data.picker) {
      $("picker").append(el("button", { type: "button", title: `test digit ${d.index} (label ${d.label})`,
                                        dataset: { index: d.index }, onclick: () => explainIndex(d.index) },
                            el("img", { src: `/api/images/digit/${d.index}.png`, alt: `digit ${d.label}` })));
    }
    LVRoving.wire($("picker"), "button", b => b.click());  // one Tab stop; arrows move along the digits
    $("image-form").addEventListener("submit", ev => { ev.preventDefault(); explainIndex(Number($("index").value)); });
    $("target").addEventListener("change", () => { if (current) explain(current); });
    $("param-inputs").addEventListener("change", () => { if (current) explain(current); });
    $("model").addEventListener("change", () => { loadModelViews(); if (current) explain(current); });
    $("upload").addEventListener("change", upload);
    explainIndex(url.index !== undefined ? Number(url.index) : data.picker[0].index);
    loadModelViews();
  }

  function explainIndex(index) {
    if (!Number.isInteger(index) || index < 0 || index >= data.n_test) {
      LV.showError(`Choose a test digit between 0 and ${data.n_test - 1}.`);
      return;
    }
    $("index").value = index;
    explain({ index });
  }

  function upload() {
    const file = $("upload").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => explain({ image: reader.result });
    reader.onerror = () => LV.showError("could not read the file");
    reader.readAsDataURL(file);
  }

  // ------------------------------------------------------------------ one digit
  async function explain(input) {
    if (busy) return;
    busy = true;
    current = input;
    const target = $("target").value;
    const body = { model: $("model").value, target: target === "" ? null : Number(target),
                   params: LVParams.values($("param-inputs")), ...input };
    LV.writeUrl({ model: body.model, index: input.index, target });
    for (const b of $("picker").querySelectorAll("button")) {
      b.classList.toggle("current", Number(b.dataset.index) === input.index);
    }
    const picker = $("picker");
    LVRoving.refresh(picker, "button", picker.contains(document.activeElement) ? document.activeElement : undefined);
    $("overlay-note").textContent = "computing …";
    try {
      const r = await LV.api("/api/images/explain", {}, { body });
      LV.clearError();
      render(r);
    } catch (e) {
      LV.showError(e.message);
      $("overlay-note").textContent = "";
    } finally {
      busy = false;
      $("upload").value = "";
    }
  }

  function render(r) {
    $("results").hidden = false;
    $("input-img").src = r.input_png;
    const s = r.source;
    $("input-note").textContent = s.index !== undefined ? `test digit ${s.index}, true label ${s.label}` :
      `uploaded ${s.width}×${s.height} PNG${s.inverted ? ", inverted (light background)" : ""}`;
    Plotly.react("probs-plot", [{
      type: "bar", x: r.labels.map(LV.plotText), y: r.probs, marker: { color: r.labels.map((_, i) => i === r.target ? "#2166ac" : "#9fb7cc") },
      hovertemplate: "class %{x}: %{y:.4f}<extra></extra>",
    }], { margin: { l: 40, r: 10, t: 10, b: 30 }, yaxis: { range: [0, 1], title: { text: "probability" } },
          xaxis: { type: "category" }, height: 220 }, LV.plotConfig);
    $("overlay-note").textContent = `predicted ${r.labels[r.predicted]} (${r.probs[r.predicted].toFixed(3)}) · ` +
      `explaining ${r.labels[r.target]} · ${r.overlays.length} methods`;
    const grid = LV.clear($("overlays"));
    for (const o of r.overlays) {
      grid.append(el("figure", { class: "image-card", dataset: { method: o.method }, title: o.summary },
        el("img", { src: o.png, alt: `${o.title} map` }),
        el("figcaption", { class: "caption" }, el("b", {}, o.title),
           el("small", {}, `${o.signed ? "signed" : "unsigned"} · [${fmt(o.min)}, ${fmt(o.max)}] · ${(o.seconds * 1000).toFixed(0)} ms`),
           o.signed ? LV.legend({ lo: -o.scale, hi: o.scale, ticks: 3, colorOf: v => LV.diverging(v / o.scale),
                                  caption: `red against, blue for ${r.labels[r.target]}` })
                    : LV.legend({ lo: 0, hi: o.scale, ticks: 3, colorOf: v => LV.sequential(v / o.scale), caption: "purple: magnitude" }))));
    }
    const maps = LV.clear($("feature-maps"));
    for (const f of r.feature_maps) {
      maps.append(el("p", { class: "muted small" }, `${f.layer}: ${f.channels} channels of ${f.size.join("×")} ` +
                                                    "(each scaled to its own range)"),
                  el("img", { src: f.png, alt: `feature maps of ${f.layer}`, class: "fmap" }));
    }
  }

  function fmt(x) {
    const a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(1) : x.toFixed(3);
  }

  // ------------------------------------------------------------------ per-model views
  async function loadModelViews() {
    const model = $("model").value;
    try {
      const info = await LV.api("/api/images/model", { model });
      $("filters").src = info.filters;
      $("filters-note").textContent = `(${info.n_filters} first-layer kernels of ${info.kernel.join("×")}; grey = 0)`;
    } catch (e) { LV.showError(e.message); }
    // one worker runs the jobs in turn; each is computed once per model and then served from the cache
    const jobs = [
      ["tsne", showTsne], ["activation-max", showAm], ["sanity", showSanity],
    ];
    // all three are submitted at once, so each panel says "queued" while it waits for the worker
    const boxes = jobs.map(([kind]) => $(`${kind === "activation-max" ? "am" : kind}-progress`));
    for (const box of boxes) LVJobs.showProgress(box, { status: "queued", done: 0, total: 0, seconds: 0 });
    await Promise.all(jobs.map(async ([kind, show], i) => {
      try {
        show(await LVJobs.run(`/api/images/${kind}`, { model }, job => LVJobs.showProgress(boxes[i], job)));
      } catch (e) {
        LV.showError(`${kind}: ${e.message}`);
      } finally {
        boxes[i].hidden = true;
      }
    }));
  }

  function showAm(r) {
    const grid = LV.clear($("am"));
    r.images.forEach((src, i) => grid.append(el("figure", { class: "image-card", dataset: { unit: i } },
      el("img", { src, alt: `input maximizing class ${r.labels[i]}` }), el("figcaption", { class: "caption" }, `class ${r.labels[i]}`))));
  }

  // the t-SNE map by keyboard: a ring on one point (a test-digit index), moved by the arrows
  let tsne = null, tsneCursor = null;

  function showTsne(r) {
    tsne = r;
    if (tsneCursor !== null && tsneCursor >= r.x.length) tsneCursor = null;
    const palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#555"];
    const traces = r.labels.map((lab, c) => {
      const idx = r.index.filter((_, i) => r.label[i] === c);
      return { type: "scatter", mode: "markers", name: LV.plotText(lab), x: idx.map(i => r.x[i]), y: idx.map(i => r.y[i]),
               customdata: idx.map(i => [i, r.label[i], r.predicted[i]]),
               marker: { color: palette[c % palette.length], size: 7,
                         symbol: idx.map(i => r.predicted[i] === r.label[i] ? "circle" : "x") },
               hovertemplate: "digit %{customdata[0]}<br>label %{customdata[1]}, predicted %{customdata[2]}<extra></extra>" };
    });
    // the keyboard's point: a ring drawn over it, the last trace
    traces.push({ type: "scatter", mode: "markers", name: "keyboard", showlegend: false, hoverinfo: "skip",
                  x: tsneCursor === null ? [] : [r.x[tsneCursor]], y: tsneCursor === null ? [] : [r.y[tsneCursor]],
                  marker: { size: 18, color: "rgba(0,0,0,0)", line: { color: "#101828", width: 2.5 } } });
    const plot = $("tsne-plot");
    // t-SNE axes have no meaning: no ticks, and no zero lines crossing the plot
    Plotly.react(plot, traces, { margin: { l: 30, r: 10, t: 10, b: 30 }, height: 460,
                                 xaxis: { showticklabels: false, zeroline: false, showgrid: false },
                                 yaxis: { showticklabels: false, zeroline: false, showgrid: false },
                                 legend: { title: { text: "label" } } }, LV.plotConfig);
    if (!plot.dataset.bound) {
      plot.on("plotly_click", ev => { const p = ev.points && ev.points[0]; if (p && p.customdata) explainIndex(p.customdata[0]); });
      plot.addEventListener("focus", () => { if (tsne) moveTsneCursor(tsneCursor ?? startingPoint()); });
      plot.addEventListener("keydown", onTsneKey);
      plot.dataset.bound = "1";
    }
  }

  /** Where the keyboard starts: the digit shown, if it is on the map, else the first. */
  function startingPoint() {
    return current && current.index !== undefined && current.index < tsne.x.length ? current.index : 0;
  }

  function onTsneKey(ev) {
    if (!tsne || tsneCursor === null || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    let next;
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      explainIndex(tsneCursor);
      return;
    }
    if (ev.key.startsWith("Arrow")) next = LVRoving.nearestToward(tsne.x, tsne.y, tsneCursor, ev.key, $("tsne-plot").clientWidth - 40, 420);
    else if (ev.key === "PageDown" || ev.key === "PageUp") next = nextMisclassified(tsneCursor, ev.key === "PageDown" ? 1 : -1);
    else return;
    ev.preventDefault();
    moveTsneCursor(next);
  }

  /** The next (``step`` 1) or previous (-1) misclassified digit after ``i``, round the end; ``i`` if none. */
  function nextMisclassified(i, step) {
    const n = tsne.x.length;
    for (let k = 1; k <= n; k++) {
      const j = ((i + step * k) % n + n) % n;
      if (tsne.predicted[j] !== tsne.label[j]) return j;
    }
    return i;
  }

  /** Put the ring on point ``i`` and announce it. */
  function moveTsneCursor(i) {
    tsneCursor = i;
    const plot = $("tsne-plot");
    Plotly.restyle(plot, { x: [[tsne.x[i]]], y: [[tsne.y[i]]] }, [plot.data.length - 1]);
    const label = tsne.labels[tsne.label[i]], predicted = tsne.labels[tsne.predicted[i]];
    $("tsne-status").textContent = `digit ${i}: label ${label}, predicted ${predicted}` +
      `${tsne.label[i] === tsne.predicted[i] ? "" : " (misclassified)"}. Enter explains it.`;
  }

  /** Both Spearman correlations per method and randomized layer: of |maps| (solid; what the check
   *  reads: a method that depends on the learned weights falls towards 0) and signed (dashed). */
  function showSanity(r) {
    const palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"];
    const methods = [...new Set(r.rows.map(x => x.method))];
    const traces = [];
    methods.forEach((m, k) => {
      const rows = r.rows.filter(x => x.method === m), color = palette[k % palette.length];
      const name = LV.plotText(m);
      traces.push({ type: "scatter", mode: "lines+markers", name: `${name} · |maps|`, legendgroup: name, x: rows.map(x => LV.plotText(x.layer)),
                    y: rows.map(x => x.spearman_abs), line: { color, width: 2 }, marker: { size: 9 - k, symbol: "circle" },
                    hovertemplate: `${name}: |Spearman| %{y:.3f} up to %{x}<extra></extra>` });
      traces.push({ type: "scatter", mode: "lines+markers", name: `${name} · signed`, legendgroup: name, x: rows.map(x => LV.plotText(x.layer)),
                    y: rows.map(x => x.spearman), line: { color, width: 1.5, dash: "dash" }, marker: { size: 7, symbol: "x" },
                    hovertemplate: `${name}: signed Spearman %{y:.3f} up to %{x}<extra></extra>` });
    });
    Plotly.react("sanity-plot", traces, {
      height: 460, margin: { l: 50, r: 10, t: 50, b: 60 },
      title: { text: "Spearman vs the trained model's maps: solid |maps| (the check's verdict uses this), dashed signed", font: { size: 13 } },
      xaxis: { title: { text: "randomized layer (cumulative)" } }, yaxis: { title: { text: "Spearman rank correlation" }, range: [-1.05, 1.05] },
    }, LV.plotConfig);
    $("sanity-note").textContent = "A method passes when its maps change as the layers are randomized: |Spearman| falling towards 0. " +
      "Where two methods' lines coincide, the markers of both stay visible; the signed correlation near 0 while |maps| stays high " +
      "means the maps keep where they are large, but their signs no longer agree with the trained model's.";
  }

  setUp();
})();
