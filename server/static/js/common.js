// Shared helpers for every page: JSON API calls, error banner, safe DOM building, URL state.
// Text from stores and users only ever reaches the page through textContent, never innerHTML.
"use strict";

const LV = (() => {
  const banner = () => document.getElementById("error-banner");

  /** Show `message` in the page's error banner and mark every result on the page (elements with
   *  data-result) stale: greyed out, so an old answer is never read as the answer to the failed request. */
  function showError(message) {
    const b = banner();
    if (!b) return;
    const results = [...document.querySelectorAll("[data-result]")].filter(n => n.childElementCount || n.textContent.trim());
    results.forEach(n => markStale(n));
    b.textContent = message + (results.length ? " (the results shown are from an earlier request and out of date)" : "");
    b.hidden = false;
  }

  function clearError() {
    const b = banner();
    if (b) { b.hidden = true; b.textContent = ""; }
    document.querySelectorAll("[data-result].stale").forEach(clearStale);
  }

  /** Call the JSON API. GET params go in the query string; pass {body} to POST JSON.
   *  Rejects with an Error whose message is the server's explanation. */
  async function api(path, params = {}, { body = undefined, signal = undefined } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined || v === null || v === "") continue;
      url.searchParams.set(k, Array.isArray(v) ? v.join(",") : String(v));
    }
    const init = { signal, headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(url, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = data && data.error ? data.error.message : `${resp.status} ${resp.statusText}`;
      const err = new Error(msg);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  /** Build an element: el("td", {class: "num", title: "x"}, "text", childNode, ...). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "style") Object.assign(node.style, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  /** Plotly renders a subset of HTML in names, titles and hover templates: neutralise it for data strings. */
  function plotText(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
                    .replace(/%\{/g, "%\u200b{");
  }

  /** A figure built by the server (``fig.to_json()``) with every string escaped as {@link plotText} does,
   *  except hover and text templates (the figure's own formatting): its strings include labels, tokens
   *  and model names. */
  function plotFigure(figure) {
    const escape = (v, key) => typeof v === "string" ? (/template$/i.test(key) ? v : plotText(v))
      : Array.isArray(v) ? v.map(x => escape(x, key))
      : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, escape(x, k)]))
      : v;
    return { data: escape(figure.data || [], "data"), layout: escape(figure.layout || {}, "layout") };
  }

  /** Resolves with plotly once its (deferred, 4.8 MB) script has run: pages load plotly after their own
   *  script, so their first API requests overlap plotly's parsing. */
  function plotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    return new Promise(resolve => document.addEventListener("DOMContentLoaded", () => resolve(window.Plotly), { once: true }));
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function pageData() {
    const s = document.getElementById("page-data");
    return s ? JSON.parse(s.textContent) : {};
  }

  /** Whitespace made visible, so character-level tokens can be read. */
  function tokenLabel(tok) {
    if (tok === " ") return "\u2423";
    if (tok === "\n") return "\u21b5";
    if (tok === "\t") return "\u21e5";
    if (tok === "") return "\u2205";
    return tok.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }

  // ---- view state in the URL, so any view can be shared by copying the address
  function readUrl() {
    const out = {};
    for (const [k, v] of new URLSearchParams(window.location.search)) out[k] = v;
    return out;
  }

  /** Put the view state in the address: replacing the current history entry (small edits), or with
   *  {push: true} adding one (navigation jumps), so Back undoes the jump. */
  function writeUrl(state, { push = false } = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) {
      if (v === undefined || v === null || v === "" || (Array.isArray(v) && !v.length)) continue;
      q.set(k, Array.isArray(v) ? v.join(",") : String(v));
    }
    const url = `${window.location.pathname}?${q.toString().replace(/%2C/g, ",")}`;
    if (url === window.location.pathname + window.location.search) return;
    if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
  }

  function intList(s) {
    if (!s) return [];
    return String(s).split(",").map(x => parseInt(x, 10)).filter(x => Number.isFinite(x));
  }

  // ---- colours: the one convention of the whole tool, textexplain/render.py's. Blue = positive /
  // evidence for the explained class, red = negative / against, white = 0, purples = unsigned
  // magnitudes; interpolated in CIELAB from white to the end colour, as render.score_color does.
  const POSITIVE = [20, 96, 165], NEGATIVE = [183, 31, 47], SEQUENTIAL = [84, 39, 143], WHITE = [255, 255, 255];
  const WHITE_XYZ = [0.95047, 1.0, 1.08883];

  function srgbToLab(rgb) {
    const c = rgb.map(v => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    const xyz = [0.4124564 * c[0] + 0.3575761 * c[1] + 0.1804375 * c[2],
                 0.2126729 * c[0] + 0.7151522 * c[1] + 0.0721750 * c[2],
                 0.0193339 * c[0] + 0.1191920 * c[1] + 0.9503041 * c[2]].map((v, i) => v / WHITE_XYZ[i]);
    const f = xyz.map(v => v > (6 / 29) ** 3 ? Math.cbrt(v) : v / (3 * (6 / 29) ** 2) + 4 / 29);
    return [116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])];
  }

  function labToSrgb(lab) {
    const fy = (lab[0] + 16) / 116, f = [fy + lab[1] / 500, fy, fy - lab[2] / 200];
    const xyz = f.map((v, i) => (v > 6 / 29 ? v ** 3 : 3 * (6 / 29) ** 2 * (v - 4 / 29)) * WHITE_XYZ[i]);
    const lin = [3.2404542 * xyz[0] - 1.5371385 * xyz[1] - 0.4985314 * xyz[2],
                 -0.9692660 * xyz[0] + 1.8760108 * xyz[1] + 0.0415560 * xyz[2],
                 0.0556434 * xyz[0] - 0.2040259 * xyz[1] + 1.0572252 * xyz[2]];
    return lin.map(v => { v = Math.max(0, Math.min(1, v)); v = v <= 0.0031308 ? 12.92 * v : 1.055 * v ** (1 / 2.4) - 0.055;
                          return Math.round(Math.max(0, Math.min(255, v * 255))); });
  }

  const LAB = { white: srgbToLab(WHITE), pos: srgbToLab(POSITIVE), neg: srgbToLab(NEGATIVE), seq: srgbToLab(SEQUENTIAL) };
  const mix = (end, s) => { const [r, g, b] = labToSrgb(LAB.white.map((w, i) => w + s * (end[i] - w))); return `rgb(${r},${g},${b})`; };

  /** White -> purple for unsigned values (counts, magnitudes) in [0, 1]. */
  function sequential(t) {
    return mix(LAB.seq, Math.max(0, Math.min(1, t || 0)));
  }

  /** Red (negative, against) - white (0) - blue (positive, for) for signed values in [-1, 1]. */
  function diverging(t) {
    t = Math.max(-1, Math.min(1, t || 0));
    return mix(t >= 0 ? LAB.pos : LAB.neg, Math.abs(t));
  }

  /** [r, g, b] of a CSS colour "rgb(r,g,b)" or "#rrggbb". */
  function parseColor(css) {
    const m = /rgba?\(\s*(\d+)[,\s]+(\d+)[,\s]+(\d+)/.exec(css);
    if (m) return [+m[1], +m[2], +m[3]];
    const h = /^#([0-9a-f]{6})$/i.exec(css);
    if (h) return [0, 2, 4].map(i => parseInt(h[1].slice(i, i + 2), 16));
    const s = /^#([0-9a-f]{3})$/i.exec(css);
    if (s) return [0, 1, 2].map(i => parseInt(s[1][i] + s[1][i], 16));
    return [255, 255, 255];
  }

  /** WCAG relative luminance and contrast ratio of two colours (CSS strings or [r, g, b]). */
  function luminance(color) {
    const c = (Array.isArray(color) ? color : parseColor(color))
      .map(v => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  }
  function contrast(a, b) {
    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  }

  /** White or black text, whichever contrasts more with the background (always at least 4.58:1). */
  function textOn(background) {
    return contrast(background, "#fff") >= contrast(background, "#000") ? "#fff" : "#000";
  }

  /** The text colour for a cell coloured {@link diverging}(t). */
  function textColorFor(t) { return textOn(diverging(t)); }

  /** A legend: "<low label> [colour bar] <high label>", the bar drawn from `colorOf` over [lo, hi],
   *  with numbered ticks below it; `caption` says what the colour means. */
  function legend({ lo, hi, colorOf, caption, lowLabel = "", highLabel = "", ticks = 5, digits = 3 }) {
    const stops = Array.from({ length: 11 }, (_, i) => colorOf(lo + (hi - lo) * i / 10));
    const bar = el("span", { class: "legend-bar", role: "img",
                             "aria-label": `colour scale from ${fmtNum(lo, digits)} to ${fmtNum(hi, digits)}` });
    bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
    const tickRow = el("span", { class: "legend-ticks" });
    for (let i = 0; i < ticks; i++) tickRow.append(el("span", {}, fmtNum(lo + (hi - lo) * i / (ticks - 1), digits)));
    return el("span", { class: "lv-legend" }, caption ? el("span", { class: "legend-caption" }, caption) : null,
              lowLabel ? el("span", { class: "legend-end" }, lowLabel) : null,
              el("span", { class: "legend-scale" }, bar, tickRow),
              highLabel ? el("span", { class: "legend-end" }, highLabel) : null);
  }

  function fmtNum(v, digits = 3) {
    if (v === 0) return "0";
    const s = Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ? v.toExponential(1) : String(+v.toPrecision(digits));
    return s;
  }

  /** Plotly colour scales on the same convention: signed (red - white - blue, use with zmid 0) and
   *  unsigned (white - purple). */
  const divergingScale = Array.from({ length: 11 }, (_, i) => [i / 10, diverging(i / 5 - 1)]);
  const sequentialScale = Array.from({ length: 6 }, (_, i) => [i / 5, sequential(i / 5)]);

  /** Grey out a result whose request failed, and say so: `node` keeps its content, marked stale. */
  function markStale(node, message = "out of date: the last request failed") {
    if (!node) return;
    node.classList.add("stale");
    node.setAttribute("aria-disabled", "true");
    node.dataset.staleNote = message;
    node.setAttribute("title", message);
  }
  function clearStale(node) {
    if (!node || !node.classList.contains("stale")) return;
    node.classList.remove("stale");
    node.removeAttribute("aria-disabled");
    node.removeAttribute("title");
    delete node.dataset.staleNote;
  }

  const plotConfig = { displaylogo: false, responsive: true,
                       modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };

  /** Fill a <select> with options [{value, label}], keeping `selected` if present. */
  function fillSelect(select, options, selected) {
    clear(select);
    for (const o of options) select.append(el("option", { value: o.value }, o.label ?? o.value));
    if (selected !== undefined && options.some(o => String(o.value) === String(selected))) select.value = String(selected);
    return select.value;
  }

  function readyStores(status) { return (status.stores || []).filter(s => s.status === "ready"); }

  /** A message for pages that need stores which are still being built. */
  function pendingStoresNote(status) {
    const pending = (status.stores || []).filter(s => s.status === "queued" || s.status === "building");
    return pending.length ? `Demo stores still building: ${pending.map(s => s.name).join(", ")}. ` +
                            "They appear here when ready (reload)." : "";
  }

  return { api, el, clear, plotText, plotFigure, plotly, pageData, tokenLabel, readUrl, writeUrl, intList, showError, clearError,
           sequential, diverging, textColorFor, textOn, contrast, parseColor, legend, fmtNum, divergingScale, sequentialScale,
           markStale, clearStale, plotConfig, fillSelect, readyStores, pendingStoresNote };
})();
