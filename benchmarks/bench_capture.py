"""Capture cost: a recorded forward pass against the plain forward pass of the same module.

2-layer, 256-unit nn.LSTM and nn.GRU (input 256, batch 32 x 200 steps, eval, no_grad). Each
repetition runs the plain forward and every recorded variant back to back (interleaved), so the
ratios compare runs under the same machine load; medians are reported.

    python benchmarks/bench_capture.py [--reps 7] [--threads 1]

Goal: recording h, c and all gates costs <= 1.25x the plain forward (bar 1.5x). Rows: the
default ``fused`` route (kernel h; an LSTM's gates read from oneDNN's training-mode workspace, a
GRU's by matmul) and the ``unroll`` route (one pass of our own; outputs equal to ~1e-6). The plain
forward is the module under no_grad, as a user runs it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lstmvis import Recorder  # noqa: E402

# name -> (kinds, route)
VARIANTS = {"h": ("h", "fused"), "h,c": ("h,c", "fused"), "all": ("h,c,gates", "fused"),
            "h,c unroll": ("h,c", "unroll"), "all unroll": ("h,c,gates", "unroll")}


def bench(module: nn.Module, x: torch.Tensor, reps: int) -> dict[str, float]:
    recorders = {name: Recorder(module, kinds=kinds, route=route) for name, (kinds, route) in VARIANTS.items()}
    times: dict[str, list[float]] = {"plain": [], **{name: [] for name in recorders}}
    with torch.no_grad():
        module(x)  # warm-up
        for rec in recorders.values():
            with rec:
                module(x)
            rec.clear()
        for _ in range(reps):
            t = time.perf_counter()
            module(x)
            times["plain"].append(time.perf_counter() - t)
            for name, rec in recorders.items():
                t = time.perf_counter()
                with rec:
                    module(x)
                times[name].append(time.perf_counter() - t)
                rec.clear()
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--tuned-allocator", action="store_true",
                        help="glibc malloc thresholds as `lstmvis extract` sets them (no page faults on oneDNN's "
                             "LSTM workspace); default: glibc's defaults, as in a plain Python process")
    args = parser.parse_args()
    if args.tuned_allocator:
        from lstmvis.extraction import tune_allocator_for_extraction
        print("allocator tuned:", tune_allocator_for_extraction())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.hidden)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch} x {args.steps} steps, "
          f"2 layers x {args.hidden} units, median of {args.reps} interleaved repetitions")
    print(f"{'module':<6} {'recorded':<16} {'plain ms':>9} {'recorded ms':>12} {'ratio':>6}")
    for cls in (nn.LSTM, nn.GRU):
        module = cls(args.hidden, args.hidden, num_layers=2, batch_first=True).eval()
        med = bench(module, x, args.reps)
        for name in VARIANTS:
            if cls is nn.GRU and name.startswith("h,c"):
                continue
            label = name if cls is nn.LSTM else name.replace("all", "h,gates")
            print(f"{cls.__name__:<6} {label:<16} {med['plain'] * 1e3:>9.1f} {med[name] * 1e3:>12.1f} "
                  f"{med[name] / med['plain']:>6.2f}")
    from lstmvis.capture import workspace
    print("LSTM gates read from oneDNN's workspace:", "yes" if workspace.WORKSPACE["usable"] else
          "no (this build's workspace failed the layout check; matmul route)")


if __name__ == "__main__":
    main()
