"""Long texts: seconds per 1,000 tokens for occlusion and Integrated Gradients, ours vs captum's.

    python benchmarks/bench_long.py [--repeats 3] [--occlusion 250,500,1000] [--ig 500,2000,5000]

On sentiment-lstm, texts of N tokens built from the test sentences (concatenated in order).
- occlusion: ours (``textexplain.Occlusion``, window 1, pad mask) against captum's ``Occlusion`` on
  the embedding output with the pad embedding as baseline, ``perturbations_per_eval=8`` (our row
  floor per call); the cost is quadratic in N (N masked texts of N tokens), so seconds per 1,000
  tokens grow with N.
- ig: ours with 50 Gauss-Legendre steps and with the default adaptive rule (up to 200 gradient
  rows), against captum's ``LayerIntegratedGradients`` on the embedding layer, pad-id baselines, 50
  Gauss-Legendre steps.
Interleaved repetitions, medians, one thread (the machine is shared).
"""
from __future__ import annotations

import argparse
import statistics
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
    parser.add_argument("--occlusion", default="250,500,1000")
    parser.add_argument("--ig", default="500,2000,5000")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from captum.attr import LayerIntegratedGradients, Occlusion as CaptumOcclusion

    import data
    import textexplain as te
    from textexplain.base import embed, forward_at_embeddings

    model = data.load_model("sentiment-lstm")
    model.max_tokens = 10**6
    texts, _ = data.rotten_tomatoes("test")

    def captum_occlusion(text):
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

    def captum_ig(text):
        ids = torch.tensor([model.encode(text)])
        with torch.no_grad():
            target = int(model.module(ids).argmax())
        lig = LayerIntegratedGradients(model.module, model.embedding)
        attr = lig.attribute(ids, baselines=torch.full_like(ids, model.pad_id), target=target, n_steps=50,
                             method="gausslegendre")
        return attr[0].sum(-1).detach().double().numpy()

    runs = []
    for n in [int(v) for v in args.occlusion.split(",") if v]:
        text = _text(model, texts, n)
        runs += [("occlusion", "ours", n, lambda t=text: te.Occlusion(model).explain(t).scores),
                 ("occlusion", "captum Occlusion", n, lambda t=text: captum_occlusion(t))]
    for n in [int(v) for v in args.ig.split(",") if v]:
        text = _text(model, texts, n)
        runs += [("IG", "ours, 50 Gauss-Legendre", n,
                  lambda t=text: te.IntegratedGradients(model, n_steps=50, method="gausslegendre").explain(t).scores),
                 ("IG", "ours, adaptive (default)", n, lambda t=text: te.IntegratedGradients(model).explain(t).scores),
                 ("IG", "captum LayerIntegratedGradients, 50 Gauss-Legendre", n, lambda t=text: captum_ig(t))]
    times: dict[tuple, list[float]] = {}
    scores: dict[tuple, np.ndarray] = {}
    for _ in range(args.repeats):
        for method, who, n, fn in runs:
            seconds, out = _timed(fn)
            times.setdefault((method, who, n), []).append(seconds)
            scores[(method, who, n)] = np.asarray(out, dtype=np.float64)
    print("| method | implementation | tokens | median s | s per 1,000 tokens | runs (s) | cosine vs ours |")
    print("|---|---|---|---|---|---|---|")
    for (method, who, n), ts in times.items():
        ours = scores[(method, "ours" if method == "occlusion" else "ours, 50 Gauss-Legendre", n)]
        mine = scores[(method, who, n)]
        cosine = float(ours @ mine / (np.linalg.norm(ours) * np.linalg.norm(mine) + 1e-300))
        med = statistics.median(ts)
        print(f"| {method} | {who} | {n:,} | {med:.2f} | {med / n * 1000:.2f} | {', '.join(f'{t:.1f}' for t in ts)} "
              f"| {cosine:.4f} |")


if __name__ == "__main__":
    main()
