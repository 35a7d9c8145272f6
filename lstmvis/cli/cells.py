"""``lstmvis cells``: rank a store's cells against a hypothesis, show gate saturation, or explain one cell."""
from __future__ import annotations

import argparse
import json
import textwrap

from textexplain import providers
from textexplain.render import terminal, write_html

from ..cells import METHODS, explain_stored_cell, gate_saturation, gate_sources, rank_cells, top_contexts
from ..store import StateStore


def register(sub) -> None:
    p = sub.add_parser(
        "cells", help="rank cells against a hypothesis (quotes, comments, depth, ...) or show gate saturation",
        description=textwrap.fill("Rank every cell of a store's sources against a per-token hypothesis computed from the "
                    "store's text: AUROC for binary hypotheses (inside quotes, inside a comment, regex, token "
                    "set, 0/1 meta track), Pearson or Spearman correlation for scalar ones (bracket depth, "
                    "position in line, indentation, numeric meta track). Scores are signed: AUROC near 0 or r "
                    "near -1 is a cell that is low where the hypothesis holds. With --saturation, print "
                    "Karpathy's gate saturation per gate source instead; with --explain CELL --position P, "
                    "Integrated Gradients of that cell at that step over the input tokens.", 88),
        epilog="examples:\n  lstmvis cells states.h5 --source rnn.l1.c --hypothesis quotes --top 10\n"
               "  lstmvis cells states.h5 --hypothesis regex:'def ' --method auroc\n"
               "  lstmvis cells states.h5 --saturation\n"
               "  lstmvis cells states.h5 --source rnn.l1.c --explain 239 --position 15478   # what drives it there",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="state store (.h5) written by `lstmvis extract`")
    p.add_argument("--source", action="append", help="source to rank, e.g. rnn.l1.c (repeatable; default: "
                                                     "every non-gate source)")
    p.add_argument("--hypothesis", help="quotes, comment, depth, parens, line, indent, regex:PATTERN, "
                                        "tokens:a,b,c, meta:TRACK or meta:TRACK=VALUE")
    p.add_argument("--method", choices=METHODS, help="default: auroc for binary, pearson for scalar hypotheses")
    p.add_argument("--top", type=int, default=10, help="cells to show per source (default 10)")
    p.add_argument("--contexts", type=int, default=3, help="show the top activating context of the first N cells")
    p.add_argument("--start", type=int, help="first token position (default 0)")
    p.add_argument("--stop", type=int, help="end token position (default: the whole store)")
    p.add_argument("--saturation", action="store_true", help="gate saturation (< 0.1 / > 0.9) per gate source")
    p.add_argument("--explain", type=int, metavar="CELL", help="explain this cell of --source at --position: "
                   "Integrated Gradients of its activation over the input tokens (runs the store's model)")
    p.add_argument("--position", type=int, help="--explain: global token position of the step")
    p.add_argument("--window", type=int, default=100, help="--explain: at most this many tokens up to the step are "
                   "fed to the model, from a zero state (default 100)")
    p.add_argument("--max-steps", type=int, default=None, help="--explain: refine Integrated Gradients up to this "
                   "many gradient evaluations while the completeness gap is above 1%% (default 200)")
    p.add_argument("--model", help="--explain: the model to run (default: the one named in the store's card)")
    p.add_argument("--html", help="--explain: also write the highlighted text to this HTML file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with StateStore.open(args.store) as store:
        if args.explain is not None:
            return explain(args, store)
        if args.saturation:
            return saturation(args, store)
        return rank(args, store)


def rank(args: argparse.Namespace, store: StateStore) -> int:
    """The top cells of each source against ``--hypothesis``, with the top context of the first few."""
    if not args.hypothesis:
        raise ValueError("give --hypothesis (e.g. quotes, comment, depth, line, indent, regex:PATTERN, "
                         "tokens:a,b, meta:TRACK) or --saturation")
    sources = args.source or [s for s in store.sources if s not in gate_sources(store)]
    results = []
    for source in sources:
        ranking = rank_cells(store, source, args.hypothesis, method=args.method, start=args.start, stop=args.stop)
        rows = ranking.top(args.top)
        for row in rows[:args.contexts]:
            ctx = top_contexts(store, source, row["cell"], k=1, direction=row["direction"] or 1)[0]
            row["context"] = ctx.text()
        results.append((ranking, rows))
    if args.json:
        print(json.dumps([{**r.to_dict(k=0), "top": rows} for r, rows in results]))
        return 0
    for ranking, rows in results:
        extra = f", {ranking.positive_rate:.1%} positive" if ranking.positive_rate is not None else ""
        print(f"{ranking.source} vs {ranking.hypothesis} ({ranking.kind}, {ranking.metric}) over "
              f"{ranking.n_tokens:,} tokens{extra}")
        print(f"  {'rank':>4} {'cell':>6} {ranking.metric:>9} dir  top context")
        for row in rows:
            context = repr(row.get("context", ""))[1:-1][-60:] if "context" in row else ""
            print(f"  {row['rank']:>4} {row['cell']:>6} {row['score']:>9.4f}  {'+' if row['direction'] >= 0 else '-'}"
                  f"   {context}")
    return 0


def saturation(args: argparse.Namespace, store: StateStore) -> int:
    """Karpathy's gate saturation per gate source (``--saturation``)."""
    sat = gate_saturation(store, args.source or None)
    if args.json:
        print(json.dumps({"summary": sat.summary(), **sat.to_dict()}))
        return 0
    print(f"gate saturation over {sat.n_tokens:,} steps (left < {sat.low:g}, right > {sat.high:g})")
    for s in sat.summary():
        print(f"  {s['source']:<24} {s['units']:>5} units  mean left {s['mean_left']:.3f}  mean right "
              f"{s['mean_right']:.3f}  right-saturated > half the time: {s['right_saturated_units']}")
    return 0


def explain(args: argparse.Namespace, store: StateStore) -> int:
    """``--explain CELL --position P``: which input tokens drive the cell there (the model comes from a provider)."""
    if args.position is None or not args.source or len(args.source) != 1:
        raise ValueError("--explain CELL needs --position P (a global token position) and one --source, e.g. "
                         "--source rnn.l1.c")
    name = args.model or store.card.get("name")
    if not name:
        raise ValueError("the store does not name the model it came from: give --model NAME")
    model = providers.load_model(name)
    e, where = explain_stored_cell(store, model, args.source[0], args.explain, args.position, window=args.window,
                                   max_steps=args.max_steps)
    if args.json:
        print(json.dumps({**e.to_dict(), **where}))
        return 0
    fed = "the whole sequence" if where["whole_sequence"] else (f"the {where['stop'] - where['start']} tokens up "
                                                                 "to the step, from a zero state")
    print(f"{args.source[0]}[{args.explain}] at position {args.position} ({name}, {fed}): activation "
          f"{e.info['activation']:.4f} (stored {where['stored_activation']:.4f}), baseline "
          f"{e.info['activation_baseline']:.4f}; {e.convergence.n_gradient_rows} gradient evaluations")
    print(terminal(e))
    if args.html:
        print(f"wrote {write_html(args.html, e.to_html(), title=f'{args.source[0]}[{args.explain}]')}")
    return 0
