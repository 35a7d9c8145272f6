"""Long texts: seconds per 1,000 tokens for occlusion and Integrated Gradients, ours vs captum's.

    python benchmarks/bench_long.py [--repeats 3] [--occlusion 1000,2000,5000] [--ig 500,2000,5000]
        [--models sentiment-lstm,sentiment-gru,sentiment-cnn] [--implementations plain,incremental,captum]
        [--ig-models sentiment-lstm] [--ig-implementations gausslegendre,adaptive,captum]

Texts of N tokens built from the test sentences (concatenated in order).
- occlusion (window 1, pad mask), on each of ``--models``: ours on the plain path
  (``Occlusion(evaluation="plain")``: N masked texts of N tokens, quadratic), ours on the incremental
  path (the default ``evaluation="auto"``, ``textexplain.incremental``: each masked text recomputes only
  what its window changes), and captum's ``Occlusion`` on the embedding output with the pad embedding
  as baseline, ``perturbations_per_eval=8`` (our plain path's row floor per call). Each row reports the
  max |difference| of its scores from ours plain, relative to ours plain's max |score| too.
- ig, on each of ``--ig-models``: ours with 50 Gauss-Legendre steps ("gausslegendre") and with the
  default adaptive rule ("adaptive"), against captum's ``LayerIntegratedGradients`` on the embedding
  layer, pad-id baselines, 50 Gauss-Legendre steps ("captum"); ``--ig-implementations`` picks;
  ``gausslegendre@B`` runs ours in gradient passes of B rows (``internal_batch_size``: rows per pass).
- ``--sample-check K``: for each model and length, the incremental path's scores against the plain
  path on K evenly spaced windows (each masked text run in full by ``MaskedModel(evaluation="plain")``):
  max |difference|, also relative to the largest |score| there; cheap where the full plain run is not.
- ``--profile MODEL:N``: one incremental occlusion run of MODEL on N tokens under cProfile (CPU time),
  its top calls, and how many steps the recurrent rows ran (per row and direction: mean, median,
  90th percentile, max; all row-steps).
Interleaved repetitions, medians, one thread (the machine is shared). Each run is also logged to
stderr as it ends, with its difference from the first implementation of its row group.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch


def _text(model, texts, n_tokens: int) -> str:
    words: list[str] = []
    for t in texts:
        words += model.tokenize(t)
        if len(words) >= n_tokens:
            break
    return " ".join(words[:n_tokens])


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--occlusion", default="1000,2000,5000")
    parser.add_argument("--ig", default="500,2000,5000")
    parser.add_argument("--models", default="sentiment-lstm,sentiment-gru,sentiment-cnn",
                        help="classifiers for the occlusion runs")
    parser.add_argument("--implementations", default="plain,incremental,captum",
                        help="occlusion implementations: plain, incremental, captum")
    parser.add_argument("--ig-models", default="sentiment-lstm", help="classifiers for the IG runs")
    parser.add_argument("--ig-implementations", default="gausslegendre,adaptive,captum",
                        help="IG implementations: gausslegendre, adaptive, captum, gausslegendre@B (B rows per pass)")
    parser.add_argument("--sample-check", type=int, default=0,
                        help="check the incremental path against the plain one on this many windows per text")
    parser.add_argument("--profile", default="", help="MODEL:N, e.g. sentiment-lstm:5000: profile one incremental run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        name, n = args.profile.split(":")
        _profile(name, int(n))
        return
    from captum.attr import LayerIntegratedGradients, Occlusion as CaptumOcclusion

    import data
    import textexplain as te
    from textexplain.base import embed, forward_at_embeddings

    texts, _ = data.rotten_tomatoes("test")
    models = {}
    ig_names = [m for m in args.ig_models.split(",") if m]
    for name in dict.fromkeys([*[m for m in args.models.split(",") if m], *ig_names]):
        models[name] = data.load_model(name)
        models[name].max_tokens = 10**6

    def captum_occlusion(model, text):
        ids = torch.tensor([model.encode(text)])
        x = embed(model, ids).detach()
        pad = embed(model, torch.tensor([[model.pad_id]])).detach()[0, 0]
        with torch.no_grad():
            target = int(model.module(ids).argmax())

            def forward(e):
                return forward_at_embeddings(model, ids.expand(e.shape[0], -1), e)

            attr = CaptumOcclusion(forward).attribute(x, sliding_window_shapes=(1, x.shape[-1]), baselines=pad,
                                                      target=target, perturbations_per_eval=8)
        return attr[0].sum(-1).double().numpy() / x.shape[-1]

    def incremental(model, text):
        e = te.Occlusion(model).explain(text)
        assert e.info["evaluation"] == "incremental", e.info
        return e.scores

    def captum_ig(model, text):
        ids = torch.tensor([model.encode(text)])
        with torch.no_grad():
            target = int(model.module(ids).argmax())
        lig = LayerIntegratedGradients(model.module, model.embedding)
        attr = lig.attribute(ids, baselines=torch.full_like(ids, model.pad_id), target=target, n_steps=50,
                             method="gausslegendre")
        return attr[0].sum(-1).detach().double().numpy()

    occlusion = {"plain": ("ours, plain", lambda m, t: te.Occlusion(m, evaluation="plain").explain(t).scores),
                 "incremental": ("ours, incremental (default)", incremental),
                 "captum": ("captum Occlusion", captum_occlusion)}
    runs = []

    def _ig_run(ig, key):
        """``gausslegendre@B``: 50 Gauss-Legendre steps in gradient passes of B rows (``internal_batch_size``)."""
        if "@" not in key:
            return ig[key]
        rows = int(key.split("@")[1])
        return (f"ours, 50 Gauss-Legendre, {rows} rows per pass",
                lambda m, t: te.IntegratedGradients(m, n_steps=50, method="gausslegendre",
                                                    internal_batch_size=rows).explain(t).scores)

    for name in [m for m in args.models.split(",") if m]:
        for n in [int(v) for v in args.occlusion.split(",") if v]:
            text = _text(models[name], texts, n)
            runs += [("occlusion", name, occlusion[k][0], n, lambda m=models[name], t=text, f=occlusion[k][1]: f(m, t))
                     for k in args.implementations.split(",") if k]
    ig = {"gausslegendre": ("ours, 50 Gauss-Legendre",
                            lambda m, t: te.IntegratedGradients(m, n_steps=50, method="gausslegendre").explain(t).scores),
          "adaptive": ("ours, adaptive (default)", lambda m, t: te.IntegratedGradients(m).explain(t).scores),
          "captum": ("captum LayerIntegratedGradients, 50 Gauss-Legendre", captum_ig)}
    for name in ig_names:
        for n in [int(v) for v in args.ig.split(",") if v]:
            text = _text(models[name], texts, n)
            for k in [k for k in args.ig_implementations.split(",") if k]:
                who, f = _ig_run(ig, k)
                runs.append(("IG", name, who, n, lambda m=models[name], t=text, f=f: f(m, t)))
    times: dict[tuple, list[float]] = {}
    scores: dict[tuple, np.ndarray] = {}
    for _ in range(args.repeats):
        for method, name, who, n, fn in runs:
            seconds, out = _timed(fn)
            times.setdefault((method, name, who, n), []).append(seconds)
            scores[(method, name, who, n)] = np.asarray(out, dtype=np.float64)
            first = next(v for (m, nm, _, k), v in scores.items() if (m, nm, k) == (method, name, n))
            print(f"# {method} {name} {who} {n}: {seconds:.2f} s, max abs diff vs the first "
                  f"{np.abs(first - scores[(method, name, who, n)]).max():.2g}", file=sys.stderr, flush=True)
    print("| method | model | implementation | tokens | median s | s per 1,000 tokens | runs (s) "
          "| max abs diff vs the first (relative to its max abs score) | cosine vs the first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (method, name, who, n), ts in times.items():
        first = next(v for (m, nm, _, k), v in scores.items() if (m, nm, k) == (method, name, n))
        mine = scores[(method, name, who, n)]
        cosine = float(first @ mine / (np.linalg.norm(first) * np.linalg.norm(mine) + 1e-300))
        gap = float(np.abs(first - mine).max())
        med = statistics.median(ts)
        print(f"| {method} | {name} | {who} | {n:,} | {med:.2f} | {med / n * 1000:.2f} | "
              f"{', '.join(f'{t:.1f}' for t in ts)} | {gap:.2g} ({gap / np.abs(first).max():.2g}) | {cosine:.6f} |")
    if args.sample_check:
        _sample_check(models, texts, [m for m in args.models.split(",") if m],
                      [int(v) for v in args.occlusion.split(",") if v], args.sample_check)


def _profile(name: str, n: int) -> None:
    """One incremental occlusion run under cProfile on CPU time, and the recurrent rows' steps."""
    import cProfile
    import pstats

    import data
    import textexplain as te
    import textexplain.incremental as incremental

    model = data.load_model(name)
    model.max_tokens = 10**6
    text = _text(model, data.rotten_tomatoes("test")[0], n)
    te.Occlusion(model).explain(" ".join(text.split()[:400]))  # first-use imports out of the profile
    steps: list[np.ndarray] = []
    direction = incremental._direction

    def counted(*args, **kwargs):
        out = direction(*args, **kwargs)
        steps.append(out[2].numpy())
        return out

    incremental._direction = counted
    try:
        profiler = cProfile.Profile(time.process_time)
        start = time.process_time()
        e = profiler.runcall(te.Occlusion(model).explain, text)
        seconds = time.process_time() - start
    finally:
        incremental._direction = direction
    print(f"{name}, {n:,} tokens, {e.info['evaluation']}: {seconds:.2f} s CPU (profiled)")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(16)
    if steps:
        s = np.concatenate(steps)
        print(f"recurrent steps per row and direction: mean {s.mean():.1f}, median {np.median(s):.0f}, "
              f"90th percentile {np.percentile(s, 90):.0f}, max {s.max()}; row-steps {s.sum():,} in {len(steps)} "
              "direction calls")


def _sample_check(models, texts, names, lengths, k) -> None:
    """The incremental path's window-1 scores against the plain path's on ``k`` evenly spaced windows."""
    import textexplain as te
    from textexplain.perturb import MaskedModel

    print("\n| model | tokens | windows checked | max abs diff | max abs score there | relative |")
    print("|---|---|---|---|---|---|")
    for name in names:
        model = models[name]
        for n in lengths:
            text = _text(model, texts, n)
            e = te.Occlusion(model).explain(text)
            assert e.info["evaluation"] == "incremental", e.info
            picks = np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))
            keep = np.ones((len(picks) + 1, n), dtype=bool)
            keep[np.arange(1, len(picks) + 1), picks] = False
            with torch.no_grad():
                logits = MaskedModel(model, e.token_ids, evaluation="plain").logits(keep)
            drops = logits[0, e.target] - logits[1:, e.target]
            gap = float(np.abs(drops - e.scores[picks]).max())
            size = float(np.abs(drops).max())
            print(f"| {name} | {n:,} | {len(picks)} | {gap:.2g} | {size:.3g} | {gap / size:.2g} |", flush=True)


if __name__ == "__main__":
    main()
