"""Interpretable cells in the shipped models: the numbers the README shows.

For each shipped language model that has a checkpoint: extract h and c (and gates) over its
held-out test corpus, then rank every cell of every source against the hypotheses.

* charlm-python(-gru): best cell for inside-a-string and inside-a-comment (AUROC, goal >= 0.95),
  for bracket depth, position in line and indentation (|r|); gate saturation summary.
* parens-lstm: best cell for nesting depth (|r|, goal >= 0.9), checked against the generator's
  ground-truth depth.
* ``--probe``: a linear probe over every h and c unit for the string and comment hypotheses, the
  ceiling for any single cell.
* explaining a cell (``--explain-trials``): completeness of Integrated Gradients of random
  charlm-python cells at random steps, per quadrature rule (fixed Gauss-Legendre vs the adaptive
  rule with and without refinement), with time and gradient evaluations.

    python benchmarks/bench_cells.py                 # every model that has a checkpoint
    python benchmarks/bench_cells.py --models parens-lstm --max-chars 100000
    python benchmarks/bench_cells.py --models --explain-trials 40 --threads 1   # explaining cells only
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
from lstmvis import hypotheses as hyp  # noqa: E402
from lstmvis.cells import explain_cell, gate_saturation, rank_cells  # noqa: E402
from lstmvis.extraction import extract  # noqa: E402
from lstmvis.store import StateStore  # noqa: E402

CHARLM_HYPOTHESES = [hyp.inside_quotes, hyp.inside_short_string, hyp.inside_triple_quotes, hyp.inside_comment,
                     hyp.bracket_depth, hyp.position_in_line, hyp.indentation_level]


def _store_path(out_dir: Path, name: str, *settings) -> Path:
    """Where the extraction of ``name`` is kept between runs: keyed by the checkpoint's bytes and
    the corpus settings, so a retrained model or another ``--max-chars`` extracts afresh."""
    h = hashlib.sha256(repr(settings).encode())
    with open(data.registry.CHECKPOINTS / f"{name}.pt", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return out_dir / f"{name}-{h.hexdigest()[:12]}.h5"


def _best(store, hypothesis, sources):
    """Best cell over all sources: (source, cell, score, strength, ranking seconds)."""
    out = []
    for source in sources:
        t0 = time.perf_counter()
        ranking = rank_cells(store, source, hypothesis, progress=False)
        b = ranking.best
        out.append((b["strength"], source, b["cell"], b["score"], ranking.metric, time.perf_counter() - t0))
    return max(out)


def _linear_probe(name: str, store, sources) -> list[str]:
    """How well the whole state (every h and c unit, linearly) tells the string/comment hypotheses
    apart, against the best single cell, on held-out files: a ceiling for any one cell. Logistic
    regression trained on the first half of the files (every second character), scored on the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.concatenate([np.asarray(store.states(s), np.float32) for s in sources], 1)
    mid = store.sequence_bounds(store.n_sequences // 2)[0]
    x = (x - x[:mid].mean(0)) / (x[:mid].std(0) + 1e-6)
    rows = []
    for h in (hyp.inside_quotes, hyp.inside_triple_quotes, hyp.inside_comment):
        y = np.asarray(h(store)) > 0
        probe = LogisticRegression(max_iter=2000).fit(x[:mid:2], y[:mid:2]).decision_function(x[mid:])
        single = max(max(a, 1 - a) for a in (roc_auc_score(y[mid:], x[mid:, j]) for j in range(x.shape[1])))
        rows.append(f"| {name} | {h.name}: linear probe over all {x.shape[1]} h and c units vs best single unit "
                    f"(held-out half of the files) | probe | AUROC {roc_auc_score(y[mid:], probe):.3f} vs "
                    f"{single:.3f} | a ceiling for any one cell |")
        print(rows[-1], flush=True)
        if h is hyp.inside_triple_quotes:
            rows.append(_docstring_misses(name, store, mid, y[mid:], probe))
    return rows


def _docstring_misses(name: str, store, mid: int, inside: np.ndarray, probe: np.ndarray) -> str:
    """Which docstring characters the probe misses at 5% false positives: code examples or prose."""
    lines = "".join(store.tokens(mid, store.n_tokens)).split("\n")
    missed = inside & (probe < np.quantile(probe[~inside], 0.95))
    line_of_char = np.repeat(np.arange(len(lines)), [len(line) + 1 for line in lines])[:len(inside)]
    doctest = np.array([line.lstrip().startswith((">>>", "...")) for line in lines])[line_of_char]
    parts = [f"{label} {missed[inside & sel].mean():.0%} of {int((inside & sel).sum()):,}"
             for label, sel in (("doctest lines", doctest), ("other lines", ~doctest))]
    row = f"| {name} | docstring characters the probe misses at 5% false positives | probe | {', '.join(parts)} | |"
    print(row, flush=True)
    return row


def charlm(name: str, out_dir: Path, max_chars: int, probe: bool = False) -> list[str]:
    lm = data.load_model(name)
    texts, total = [], 0
    for _, src in data.python_source("test"):
        if total >= max_chars:
            break
        texts.append(src[:max_chars - total])
        total += len(texts[-1])
    t0 = time.perf_counter()
    path = _store_path(out_dir, name, max_chars)
    if path.exists():  # a finished extraction of this checkpoint from an earlier run
        store = StateStore.open(path)
    else:
        store = extract(lm, texts, path, kinds="h,c,gates", dtype="float16", progress=True)
    print(f"{name}: extracted {store.n_tokens:,} chars of {len(texts)} held-out stdlib files in "
          f"{time.perf_counter() - t0:.0f} s; sources {', '.join(store.sources)}")
    state_sources = [s for s in store.sources if s.rsplit(".", 1)[-1] in ("h", "c")]
    rows = []
    for h in CHARLM_HYPOTHESES:
        strength, source, cell, score, metric, secs = _best(store, h, state_sources)
        if metric == "auroc":  # signed: a cell that is low inside is as good a detector
            shown = (f"AUROC {score:.3f}" if score >= 0.5 else
                     f"AUROC {score:.3f} (low inside: 1 - AUROC = {1 - score:.3f})")
            note = "goal max(AUROC, 1 - AUROC) >= 0.95"
        else:
            shown, note = f"r = {score:+.3f}", f"abs(r) = {strength:.3f}"
        rows.append(f"| {name} | {h.name} | {source} cell {cell} | {shown} | {note} |")
        print(rows[-1], f"[{secs:.1f} s per source ranking]")
    rows += _comment_vs_docstring(name, store, state_sources)
    if probe:
        rows += _linear_probe(name, store, state_sources)
    rows += _explain_string_cell(lm, name, store, state_sources)
    sat = gate_saturation(store)
    for s in sat.summary():
        rows.append(f"| {name} | gate saturation {s['source']} | {s['units']} units | mean left {s['mean_left']:.3f}, "
                    f"right {s['mean_right']:.3f} | {s['right_saturated_units']} units right-saturated > half the "
                    "time |")
        print(rows[-1])
    store.close()
    return rows


def _comment_vs_docstring(name: str, store, sources) -> list[str]:
    """Does the best comment cell tell comments from docstrings (both natural-language text)?
    AUROC of that cell over the characters inside either, comment = positive."""
    from sklearn.metrics import roc_auc_score

    _, source, cell, score, _, _ = _best(store, hyp.inside_comment, sources)
    comment, triple = hyp.inside_comment(store).astype(bool), hyp.inside_triple_quotes(store).astype(bool)
    either = comment | triple
    auc = roc_auc_score(comment[either], np.asarray(store.dataset(source)[:, cell], np.float32)[either])
    if score < 0.5:  # the cell is low inside comments: flip so that 1 = separates them
        auc = 1 - auc
    row = (f"| {name} | best comment cell on comments vs docstrings | {source} cell {cell} | AUROC {auc:.3f} | "
           f"{comment.sum():,} comment vs {triple.sum():,} docstring chars (1 = never on in docstrings) |")
    print(row)
    return [row]


def _explain_string_cell(lm, name: str, store, sources) -> list[str]:
    """IG of the best one-line-string cell at a step inside a held-out string: which input
    characters drive it (the opening quote, if it is a quote cell)."""
    _, source, cell, _, _, _ = _best(store, hyp.inside_short_string, sources)
    line = next(line for _, src in data.python_source("test") for line in src.splitlines()
                if line.count("'") == 2 and 20 <= len(line) <= 80)
    inside = line.index("'") + 4 if line.index("'") + 4 < line.rindex("'") else line.index("'") + 1
    e = explain_cell(lm, line, source, cell, step=inside)
    top = np.argsort(-np.abs(e.scores))[:3]
    shown = ", ".join(f"{line[i]!r}@{i} {e.scores[i]:+.3f}" for i in top)
    row = (f"| {name} | IG of {source}[{cell}] at char {inside} of {line.strip()[:40]!r} | top |IG|: {shown} | "
           f"completeness delta {e.delta:+.1e} |")
    print(row)
    return [row]


def parens(out_dir: Path, n_sequences: int) -> list[str]:
    lm = data.load_model("parens-lstm")
    seqs = data.parens("test", n_sequences=n_sequences)
    texts = ["".join(tokens) for tokens, _ in seqs]
    depth = np.concatenate([d for _, d in seqs])
    path = _store_path(out_dir, "parens-lstm", n_sequences)
    store = StateStore.open(path) if path.exists() else extract(lm, texts, path, kinds="h,c", dtype="float32",
                                                                 progress=True, meta={"depth": depth})
    np.testing.assert_array_equal(hyp.brackets("(", ")")(store), depth)  # the text hypothesis = ground truth
    rows = []
    for source in store.sources:
        ranking = rank_cells(store, source, "meta:depth", progress=False)
        b = ranking.best
        rows.append(f"| parens-lstm | nesting depth | {source} cell {b['cell']} | r = {b['score']:+.3f} "
                    f"(Spearman {b['spearman']:+.3f}) | goal abs(r) >= 0.9 |")
        print(rows[-1])
    print(f"parens-lstm: {store.n_tokens:,} tokens, {store.n_sequences} held-out sequences")
    store.close()
    return rows


EXPLAIN_RULES = {  # label -> explain_cell arguments
    "Gauss-Legendre, 32 nodes (the cells page's default before 2026-11-22)": {"rule": "gausslegendre", "n_steps": 32},
    "Gauss-Legendre, 256 nodes": {"rule": "gausslegendre", "n_steps": 256},
    "adaptive, 50, no refinement (max_steps=50)": {"max_steps": 50},
    "adaptive, 50, refined up to 200 (default)": {},
    "adaptive, 50, refined up to 400": {"max_steps": 400},
}


def explain_completeness(trials: int, window: int = 100, seed: int = 1) -> list[str]:
    """IG of ``trials`` random (source, cell, step) of charlm-python over the ``window`` characters
    before a random test-split position: share within 1% completeness, gaps, time, evaluations."""
    lm = data.load_model("charlm-python")
    text = data.python_source_text("test")
    rng = np.random.default_rng(seed)
    cases = [(int(rng.integers(2 * window, len(text) - 10)), ("rnn.l0.c", "rnn.l1.c", "rnn.l1.h", "rnn.l0.h")[k % 4],
              int(rng.integers(0, 256))) for k in range(trials)]
    rows = [f"charlm-python, {trials} random cells x steps, {window} characters before each, one torch thread",
            "", "| rule | within 1% | median gap | max gap | median time (s) | gradient evaluations (mean / max) |",
            "|---|---|---|---|---|---|"]
    for label, kwargs in EXPLAIN_RULES.items():
        gaps, seconds, evals = [], [], []
        for pos, source, cell in cases:
            t0 = time.perf_counter()
            e = explain_cell(lm, text[pos - window:pos], source, cell, **kwargs)
            seconds.append(time.perf_counter() - t0)
            gaps.append(e.convergence.relative_delta)
            evals.append(e.convergence.n_gradient_rows)
        gaps = np.asarray(gaps)
        rows.append(f"| {label} | {np.mean(gaps <= 0.01):.0%} | {np.median(gaps):.2%} | {gaps.max():.1%} | "
                    f"{np.median(seconds):.2f} | {np.mean(evals):.0f} / {max(evals)} |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=None, help="default: every shipped LM with a checkpoint; "
                   "--models with no names ranks none (e.g. with --explain-trials only)")
    p.add_argument("--max-chars", type=int, default=300_000, help="held-out characters for the char LMs")
    p.add_argument("--parens-sequences", type=int, default=200)
    p.add_argument("--dir", type=Path, default=Path("/tmp/lstmvis-bench-cells"))
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--probe", action="store_true", help="char LMs: also a linear probe over every h and c unit "
                   "for the string and comment hypotheses (a ceiling for any single cell)")
    p.add_argument("--explain-trials", type=int, default=0, help="explaining cells: random charlm-python cells "
                   "and steps per rule (0: skip)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.dir.mkdir(parents=True, exist_ok=True)
    available = {m["name"] for m in data.list_models() if m["card"] is not None}
    wanted = ["parens-lstm", "charlm-python", "charlm-python-gru"] if args.models is None else args.models
    rows = ["| model | hypothesis | best cell | score | note |", "|---|---|---|---|---|"]
    for name in wanted:
        if name not in available:
            print(f"{name}: no checkpoint yet (python -m data.train {name}); skipped")
            continue
        rows += (parens(args.dir, args.parens_sequences) if name == "parens-lstm" else
                 charlm(name, args.dir, args.max_chars, probe=args.probe))
    print("\n".join(rows))
    if args.explain_trials:
        print("\n".join(explain_completeness(args.explain_trials)))


if __name__ == "__main__":
    main()
