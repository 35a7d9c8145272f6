// Shared helpers for every page: JSON API calls, error banner, safe DOM building, URL state.
// Text from stores and users only ever reaches the page through textContent, never innerHTML.
"use strict";

const LV = (() => {
  const banner = () => document.getElementById("error-banner");

  function showError(message) {
    const b = banner();
    if (!b) return;
    b.textContent = message;
    b.hidden = false;
  }

  function clearError() {
    const b = banner();
    if (b) { b.hidden = true; b.textContent = ""; }
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

  function writeUrl(state) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) {
      if (v === undefined || v === null || v === "" || (Array.isArray(v) && !v.length)) continue;
      q.set(k, Array.isArray(v) ? v.join(",") : String(v));
    }
    const url = `${window.location.pathname}?${q.toString().replace(/%2C/g, ",")}`;
    if (url !== window.location.pathname + window.location.search) history.replaceState(null, "", url);
  }

  function intList(s) {
    if (!s) return [];
    return String(s).split(",").map(x => parseInt(x, 10)).filter(x => Number.isFinite(x));
  }

  // ---- colours
  /** White -> blue for counts / unsigned values in [0, 1]. */
  function sequential(t) {
    t = Math.max(0, Math.min(1, t || 0));
    const r = Math.round(255 + (19 - 255) * t), g = Math.round(255 + (153 - 255) * t), b = Math.round(255 + (228 - 255) * t);
    return `rgb(${r},${g},${b})`;
  }

  /** Red (negative) - white - green (positive) for signed values in [-1, 1]. */
  function diverging(t) {
    t = Math.max(-1, Math.min(1, t || 0));
    if (t >= 0) return `rgb(${Math.round(255 - 200 * t)},${Math.round(255 - 80 * t)},${Math.round(255 - 170 * t)})`;
    const u = -t;
    return `rgb(${Math.round(255 - 30 * u)},${Math.round(255 - 190 * u)},${Math.round(255 - 170 * u)})`;
  }

  function textColorFor(t) { return Math.abs(t) > 0.65 ? "#fff" : "#111"; }

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
           sequential, diverging, textColorFor, plotConfig, fillSelect, readyStores, pendingStoresNote };
})();
