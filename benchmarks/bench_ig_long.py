"""Integrated Gradients on long texts: why the completeness gap stays above 1%, and what the default costs.

    python benchmarks/bench_ig_long.py [--models sentiment-lstm,sentiment-gru,sentiment-cnn]
        [--lengths 500,2000,5000] [--windows 25] [--sentences 40] [--steps 50,200] [--gl-windows 3]
        [--float64-windows 3] [--jsonl /tmp/ig_long.jsonl]
    python benchmarks/bench_ig_long.py --summarize /tmp/ig_long.jsonl [...]

Texts: windows of N tokens cut from the test sentences joined in order (starts spread evenly over the
joined corpus, the same first ones whatever ``--windows``; 5,000-token windows overlap), and the first ``--sentences`` test
sentences as they are (short texts). Per text and model:

- default: ``IntegratedGradients(model)`` as a user gets it (adaptive rule, 50 evaluations, refining
  up to 200 while the gap is above 1%): relative completeness gap, gradient and probe rows, seconds,
  whether the rule found a gap the path's precision cannot resolve (``unresolved_alpha``).
- gl: fixed Gauss-Legendre with each of ``--steps`` on the first ``--gl-windows`` windows, its
  gap with the attribution sum accumulated in float32 (as IG does) and in float64 from the same
  gradients: the difference is the accumulation's share of the gap.
- float64 (first ``--float64-windows`` windows whose default result names an unresolved interval):
  probes of F in float64 zooming into that interval, 8 parts at a time while one part holds more than
  half of its change: the width where F still jumps, and by how much (a jump narrower than float64
  resolves is no rounding artefact of float32).

One torch thread (the machine is shared); results as JSON lines (``--jsonl``) and a Markdown summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import textexplain as te  # noqa: E402
from textexplain.base import baseline_embeddings, embed  # noqa: E402
from textexplain.integrated_gradients import ClassOutput, gradients_at, path_rows, quadrature, values_at  # noqa: E402


SPREAD = 25  # window starts: the first --windows of this many (or of --windows) spread evenly over the corpus


def windows(model, n_tokens: int, count: int) -> list[tuple[int, str]]:
    """``count`` windows of ``n_tokens`` tokens of the joined test sentences (the same first windows
    whatever ``count`` up to ``SPREAD``)."""
    texts, _ = data.rotten_tomatoes("test")
    stream = [t for text in texts for t in model.tokenize(text)]
    starts = np.linspace(0, len(stream) - n_tokens, max(count, SPREAD)).astype(int)[:count]
    return [(int(s), " ".join(stream[s:s + n_tokens])) for s in starts]


def default_run(model, text: str) -> dict:
    start = time.perf_counter()
    e = te.IntegratedGradients(model).explain(text)
    seconds = time.perf_counter() - start
    c = e.convergence
    return {"rule": "default", "seconds": seconds, "relative_delta": c.relative_delta, "converged": c.converged,
            "gradient_rows": c.n_gradient_rows, "probe_rows": c.n_probe_rows, "target": int(e.target),
            "unresolved": list(c.unresolved_alpha) if c.unresolved_alpha else None,
            "unresolved_relative_delta": getattr(c, "unresolved_relative_delta", None),  # None before 2026-12-07
            "change": c.f_input - c.f_baseline}


def gauss_legendre_run(model, text: str, n_steps: int, target: int) -> dict:
    """IG with fixed Gauss-Legendre nodes, its sum accumulated in float32 (as ``integrate``) and float64."""
    start = time.perf_counter()
    ids = torch.tensor([model.encode(text)])
    x, x_ref = embed(model, ids)[0].detach(), baseline_embeddings(model, ids, "pad")[0]
    output = ClassOutput(model, ids, target)
    f_input, f_baseline = values_at(output, path_rows(x, x_ref, [1.0, 0.0]))
    alphas, weights = quadrature(n_steps, "gausslegendre")
    grads, _ = gradients_at(output, path_rows(x, x_ref, alphas))
    seconds = time.perf_counter() - start
    change = float(f_input - f_baseline)
    sum32 = float(((x - x_ref) * torch.einsum("k,kte->te", torch.tensor(weights, dtype=x.dtype), grads)).sum(-1).sum())
    sum64 = float(((x - x_ref).double() * torch.einsum("k,kte->te", torch.tensor(weights), grads.double())).sum())
    return {"rule": f"gl{n_steps}", "seconds": seconds, "relative_delta": abs(sum32 - change) / abs(change),
            "relative_delta_float64_sum": abs(sum64 - change) / abs(change),
            "accumulation": abs(sum32 - sum64) / abs(change), "change": change}


def float64_jump(model, text: str, target: int, interval: tuple[float, float], rounds: int = 14) -> dict:
    """Zoom into ``interval`` with float64 probes while one of 8 parts holds more than half its change."""
    double = model.float64()
    ids = torch.tensor([double.encode(text)])
    x, x_ref = embed(double, ids)[0].detach(), baseline_embeddings(double, ids, "pad")[0]
    output = ClassOutput(double, ids, target)
    lo, hi = interval
    jump = float("nan")
    for _ in range(rounds):
        alphas = np.linspace(lo, hi, 9)
        if len(np.unique(alphas)) < len(alphas):  # float64 has no more alphas in between
            break
        f = values_at(output, path_rows(x, x_ref, alphas))
        steps = np.abs(np.diff(f))
        i = int(np.argmax(steps))
        if steps[i] <= 0.5 * steps.sum():  # the change spreads: steep but resolved at this width
            return {"float64_width": hi - lo, "float64_jump": float(f[-1] - f[0]), "float64_resolved": True}
        lo, hi, jump = alphas[i], alphas[i + 1], float(f[i + 1] - f[i])
    return {"float64_width": hi - lo, "float64_jump": jump, "float64_resolved": False}


def summary(rows: list[dict]) -> str:
    out = ["| model | tokens | rule | texts | within 1% | median gap | 90th pct gap | unresolved | gradient rows "
           "(median / max) | probe rows (median) | s (median / max) | float32 - float64 sum, share of the change (max) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["tokens"], r["rule"]) for r in rows if "relative_delta" in r},
                  key=lambda k: (k[0], k[1], k[2]))
    for model, tokens, rule in keys:
        group = [r for r in rows if (r["model"], r["tokens"], r["rule"]) == (model, tokens, rule)]
        gaps = np.array([r["relative_delta"] for r in group])
        line = [model, "sentences" if tokens == 0 else f"{tokens:,}", rule, str(len(group)),
                f"{np.mean(gaps <= 0.01):.0%}", f"{np.median(gaps):.3g}", f"{np.quantile(gaps, 0.9):.3g}"]
        line.append(f"{np.mean([r['unresolved'] is not None for r in group]):.0%}" if rule == "default" else "")
        if rule == "default":
            grad = [r["gradient_rows"] for r in group]
            line += [f"{statistics.median(grad):.0f} / {max(grad)}",
                     f"{statistics.median([r['probe_rows'] for r in group]):.0f}"]
        else:
            line += ["", ""]
        secs = [r["seconds"] for r in group]
        line.append(f"{statistics.median(secs):.2f} / {max(secs):.2f}")
        line.append(f"{max(r['accumulation'] for r in group):.2g}" if "accumulation" in group[0] else "")
        out.append("| " + " | ".join(line) + " |")
    jumps = [r for r in rows if "float64_width" in r]
    if jumps:
        out += ["", "| model | tokens | window start | float32 unresolved interval | float64: width still jumping | "
                "jump (logits) | resolved in float64 |", "|---|---|---|---|---|---|---|"]
        for r in jumps:
            out.append(f"| {r['model']} | {r['tokens']:,} | {r['start']} | {r['unresolved'][0]:.9f}.. "
                       f"(width {r['unresolved'][1] - r['unresolved'][0]:.2g}) | {r['float64_width']:.2g} | "
                       f"{r['float64_jump']:+.3g} | {'yes' if r['float64_resolved'] else 'no'} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sentiment-lstm,sentiment-gru,sentiment-cnn")
    parser.add_argument("--lengths", default="500,2000,5000")
    parser.add_argument("--windows", type=int, default=25)
    parser.add_argument("--sentences", type=int, default=40, help="short texts: the first test sentences (0: none)")
    parser.add_argument("--steps", default="50,200", help="Gauss-Legendre steps ('': none)")
    parser.add_argument("--gl-windows", type=int, default=3, help="Gauss-Legendre on the first this many windows")
    parser.add_argument("--float64-windows", type=int, default=3)
    parser.add_argument("--jsonl", default=None, help="append one JSON line per result here")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSONL",
                        help="only print the summary of earlier runs' JSON lines (runs split over processes)")
    args = parser.parse_args()
    if args.summarize:
        print(summary([json.loads(line) for path in args.summarize for line in open(path)]))
        return
    torch.set_num_threads(1)
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        if args.jsonl:
            with open(args.jsonl, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    texts, _ = data.rotten_tomatoes("test")
    for name in args.models.split(","):
        model = data.load_model(name)
        model.max_tokens = 10**6
        for i, text in enumerate(texts[:args.sentences]):
            record({"model": name, "tokens": 0, "start": i, **default_run(model, text)})
        for n in [int(v) for v in args.lengths.split(",") if v]:
            n_float64 = 0
            for k, (start, text) in enumerate(windows(model, n, args.windows)):
                base = {"model": name, "tokens": n, "start": start}
                result = default_run(model, text)
                record({**base, **result})
                for steps in [int(v) for v in args.steps.split(",") if v]:
                    if k < args.gl_windows:
                        record({**base, **gauss_legendre_run(model, text, steps, result["target"])})
                if result["unresolved"] and n_float64 < args.float64_windows:
                    n_float64 += 1
                    record({**base, "rule": "float64 zoom", "unresolved": result["unresolved"],
                            **float64_jump(model, text, result["target"], tuple(result["unresolved"]))})
    print(summary(rows))


if __name__ == "__main__":
    main()
