// One Tab stop for a grid of items (the images page's digit picker, the text-CNN page's filter cards):
// the arrows move along it (Up/Down by a row of the grid as laid out), Home/End to either end, and
// Enter or Space activates the item in focus (a <button> does this itself). The item Tab lands on is the
// current one, else the first (a "roving tabindex").
// A scatter plot that is one Tab stop (the images page's t-SNE map, the workbench's projector) moves a
// ring between its points with the arrows: nearestToward picks the point the arrow goes to.
"use strict";

const LVRoving = (() => {
  const KEYS = new Set(["ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp", "Home", "End"]);

  /** The number of items in the grid's first row, as laid out now (1 when hidden). */
  function columns(items) {
    if (!items.length || !items[0].offsetParent) return 1;
    const top = items[0].offsetTop;
    const n = items.findIndex(e => e.offsetTop !== top);
    return n === -1 ? items.length : n;
  }

  /** Make ``container``'s ``selector`` items one Tab stop; ``activate(item)`` on Enter/Space for items that are no button. */
  function wire(container, selector, activate) {
    const items = () => [...container.querySelectorAll(selector)];
    container.addEventListener("keydown", ev => {
      const list = items(), i = list.indexOf(ev.target);
      if (i === -1 || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      if ((ev.key === "Enter" || ev.key === " ") && ev.target.tagName !== "BUTTON") {
        ev.preventDefault();
        activate(ev.target);
        return;
      }
      if (!KEYS.has(ev.key)) return;
      ev.preventDefault();
      const cols = columns(list);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, ArrowDown: i + cols, ArrowUp: i - cols,
                     Home: 0, End: list.length - 1 }[ev.key];
      move(list, Math.max(0, Math.min(list.length - 1, next)));
    });
    container.addEventListener("focusin", ev => {
      const list = items();
      if (list.includes(ev.target)) list.forEach(e => { e.tabIndex = e === ev.target ? 0 : -1; });
    });
    refresh(container, selector);
  }

  function move(list, i) {
    list.forEach((e, k) => { e.tabIndex = k === i ? 0 : -1; });
    list[i].focus();
    list[i].scrollIntoView({ block: "nearest" });
  }

  /** After the items were drawn again: the Tab stop on ``current`` (an item), else on the first. */
  function refresh(container, selector, current) {
    const list = [...container.querySelectorAll(selector)];
    const stop = list.includes(current) ? current : list.find(e => e.classList.contains("current")) || list[0];
    list.forEach(e => { e.tabIndex = e === stop ? 0 : -1; });
  }

  const DIRECTIONS = { ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };

  /** The point nearest to point ``i`` of ``xs``/``ys`` in the direction of the arrow ``key``, measured on
   *  the screen (the data's spans scaled to ``width`` x ``height`` pixels of the plot's area): within 45
   *  degrees of the direction if any, else anywhere on that side; ``i`` itself at the edge. */
  function nearestToward(xs, ys, i, key, width, height) {
    const [dx, dy] = DIRECTIONS[key];
    const span = v => (Math.max(...v) - Math.min(...v)) || 1;
    const sx = Math.max(1, width) / span(xs), sy = Math.max(1, height) / span(ys);
    let best = i, bestCone = Infinity, bestSide = Infinity;
    for (let j = 0; j < xs.length; j++) {
      const ex = (xs[j] - xs[i]) * sx, ey = (ys[j] - ys[i]) * sy;
      const along = ex * dx + ey * dy, across = Math.abs(ex * dy - ey * dx);
      if (along <= 0) continue;
      if (across <= along) {
        const d = Math.hypot(ex, ey);
        if (d < bestCone) { bestCone = d; best = j; }
      } else if (bestCone === Infinity && along + 2 * across < bestSide) {
        bestSide = along + 2 * across;
        best = j;
      }
    }
    return best;
  }

  return { wire, refresh, nearestToward };
})();
