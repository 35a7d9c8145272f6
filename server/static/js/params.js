// Hyperparameter inputs built from the methods' declarations (textexplain.hyperparameters, sent by the
// server as page data): one input per parameter the server offers, with its type, bounds, choices and help.
"use strict";

const LVParams = (() => {
  const el = LV.el;

  /** One fieldset per method into `host`: methods = [{name, title, params: [declaration], presets: {}}]. */
  function build(host, methods) {
    for (const method of methods) {
      if (!method.params.length) continue;
      const presets = method.presets || {};
      const box = el("fieldset", { class: "controls", dataset: { method: method.name } }, el("legend", {}, method.title));
      for (const p of method.params) {
        const start = p.name in presets ? presets[p.name] : p.default;
        const id = `p-${method.name}-${p.name}`;
        let input;
        if (p.choices) {
          input = el("select", { id });
          for (const c of p.choices) input.append(el("option", { value: String(c) }, String(c)));
          input.value = String(start === null ? p.choices[0] : start);
        } else if (p.type === "bool") {
          input = el("input", { type: "checkbox", id, checked: Boolean(start) });
        } else {
          input = el("input", { type: p.type === "str" ? "text" : "number", id, placeholder: start === null ? "default" : undefined,
                                step: p.type === "int" ? "1" : "any", min: p.ge ?? p.gt, max: p.le });
          if (start !== null) input.value = start;
        }
        Object.assign(input.dataset, { method: method.name, param: p.name, type: p.type, default: JSON.stringify(p.default) });
        box.append(el("label", { title: p.help || "" }, `${p.name} `, input));
      }
      host.append(box);
    }
  }

  /** The values set in `host` that differ from the library's defaults: {method: {param: value}}. */
  function values(host) {
    const out = {};
    for (const input of host.querySelectorAll("[data-param]")) {
      let v = input.type === "checkbox" ? input.checked : input.value;
      if (v === "") continue;
      if (input.dataset.type === "int" || input.dataset.type === "float") v = Number(v);
      if (JSON.stringify(v) === input.dataset.default) continue;
      (out[input.dataset.method] = out[input.dataset.method] || {})[input.dataset.param] = v;
    }
    return out;
  }

  return { build, values };
})();
