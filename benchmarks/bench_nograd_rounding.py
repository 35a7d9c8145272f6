"""How far a float32 ``nn.LSTM`` on CPU drifts between no_grad mode (oneDNN's inference pass) and
autograd mode (its training pass, whose workspace the Recorder reads the gates from): the largest
absolute difference of h at step 1, 10, 100, ... and over all steps.

    python benchmarks/bench_nograd_rounding.py [--steps 400] [--batch 8] [--seeds 3] [--out FILE]

Rows: the shipped charlm-python (2 x 256, trained; ``--batch`` streams of ``--steps`` characters of
its test split; also c at the last step) and LSTMs with seeded random weights (PyTorch's default
init) on inputs N(0, 1). One torch thread.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402


def drift(lstm: nn.LSTM, x: torch.Tensor) -> tuple[dict[int, float], float, float]:
    """Max |h_no_grad - h_autograd| of the top layer over batch and units at each step (1-based),
    and the largest difference and magnitude of c at the last step (every layer)."""
    with torch.no_grad():
        inference, (_, c_inference) = lstm(x)
    with torch.enable_grad():
        training, (_, c_training) = lstm(x)
    diff = (inference - training.detach()).abs().amax(dim=(0, 2))
    c_diff = float((c_inference - c_training.detach()).abs().max())
    return {t + 1: float(diff[t]) for t in range(len(diff))}, c_diff, float(c_inference.abs().max())


def random_lstm(hidden: int, layers: int, steps: int, batch: int, seed: int):
    torch.manual_seed(seed)
    return nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True).eval(), torch.randn(batch, steps, hidden)


def charlm(steps: int, batch: int):
    model = data.load_model("charlm-python")
    text = "".join(src for _, src in data.python_source("test"))[:steps * batch]
    ids = torch.tensor(model.vocab.encode(text)).view(batch, steps)
    with torch.no_grad():
        return model.module.rnn, model.module.emb(ids)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    marks = [t for t in (1, 10, 100, 200, 400, 1000) if t <= args.steps]
    lines = [f"torch {torch.__version__}, one thread: max |h(no_grad) - h(autograd)| of the top layer over "
             f"{args.batch} sequences (random LSTMs: max over {args.seeds} seeds), and of c at the last step.", "",
             "| LSTM | " + " | ".join(f"h, step {t}" for t in marks) + " | h, any step | c, last step (max abs c) |",
             "|---|" + "---|" * (len(marks) + 2)]
    cases = [("charlm-python (trained, 2 x 256, Python source)", [charlm(args.steps, args.batch)])]
    cases += [(f"random {layers} x {hidden}", [random_lstm(hidden, layers, args.steps, args.batch, seed)
                                             for seed in range(args.seeds)]) for hidden, layers in ((64, 1), (256, 2))]
    for name, runs in cases:
        results = [drift(lstm, x) for lstm, x in runs]
        row = [max(r[0][t] for r in results) for t in marks] + [max(max(r[0].values()) for r in results)]
        c_diff, c_max = max(r[1] for r in results), max(r[2] for r in results)
        lines.append(f"| {name} | " + " | ".join(f"{v:.2e}" for v in row) + f" | {c_diff:.2e} ({c_max:.1f}) |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("# no_grad vs autograd rounding of a float32 LSTM on CPU\n\n"
                                  f"`python benchmarks/bench_nograd_rounding.py --steps {args.steps} --batch "
                                  f"{args.batch} --seeds {args.seeds}` · 2026-12-06\n\n" + "\n".join(lines) + "\n",
                                  encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
