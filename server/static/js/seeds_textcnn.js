// Text-CNN page, seed view (server/seeds_api.py): for a filter's top n-grams, the deconvnet reconstruction
// of its activation summed per token, as coloured bars with numbers (tokens via textContent only).
"use strict";

(() => {
  const $ = id => document.getElementById(id);

  async function show(ev) {
    if (ev) ev.preventDefault();
    const rows = LV.clear($("tdeconv-rows"));
    try {
      const body = { filter: +$("tdeconv-filter").value, k: +($("k") ? $("k").value : 9) };
      if ($("model") && $("model").value) body.model = $("model").value;
      if ($("store") && $("store").value) body.store = $("store").value;
      if ($("layer") && $("layer").value) body.layer = $("layer").value;
      const res = await LV.api("/api/textcnn/deconv", {}, { body });
      const top = Math.max(...res.items.flatMap(it => it.per_token.map(Math.abs))) || 1;
      rows.append(LV.el("p", { class: "muted small" }, `${res.layer} filter ${res.filter}; colour scale ±${top.toFixed(3)} ` +
                        "(blue = positive, red = negative, white = 0); the n-gram under the receptive field is underlined"));
      for (const it of res.items) {
        const line = LV.el("div", { class: "salience", role: "list" },
                           LV.el("span", { class: "muted small" }, `activation ${it.activation.toFixed(2)}: `));
        it.tokens.forEach((tok, i) => {
          const t = it.per_token[i] / top;
          line.append(LV.el("span", { role: "listitem", class: "token", title: `${it.per_token[i].toFixed(4)} (share ${it.share[i].toFixed(4)})`,
            style: { background: LV.diverging(t), color: LV.textColorFor(t), padding: "1px 3px", margin: "1px",
                     textDecoration: i >= it.start && i < it.stop ? "underline" : "none" } },
            LV.tokenLabel(tok), LV.el("sub", {}, it.per_token[i].toFixed(2))));
        });
        rows.append(line);
      }
      LV.writeUrl({ ...LV.readUrl(), zf_filter: body.filter });
    } catch (e) { LV.showError(e.message); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!$("tdeconv-panel")) return;
    const f = LV.readUrl().zf_filter;
    if (f !== undefined) $("tdeconv-filter").value = f;
    $("tdeconv-form").addEventListener("submit", show);
  });
})();
