"""Capture cost: a recorded forward pass against the plain forward pass of the same module.

2-layer, 256-unit nn.LSTM (and nn.GRU with ``--modules lstm,gru``), input 256, batch 32 x 200
steps, eval. Goal: recording h, c and all gates costs <= 1.25x the plain forward (bar 1.5x).

Every measurement runs in a fresh Python process per allocator setting, because glibc's
allocator state is per process and the Recorder changes it on first use:

* ``default``: a plain user process, nothing tuned beforehand (the Recorder raises glibc's mmap
  and trim thresholds itself on its first workspace, ``lstmvis.allocator.keep_heap_for``);
* ``opt-out``: the same with ``LSTMVIS_TUNE_ALLOCATOR=0``, i.e. glibc's own defaults throughout;
* ``tuned``: the allocator tuned before anything else, as ``lstmvis extract`` does.

and per autograd mode: ``no_grad`` (the module under ``torch.no_grad()``) and ``autograd``
(parameters require grad, grad mode on, forward only). In each process the plain forward and
every recorded variant run back to back for ``--reps`` repetitions (median); the processes of one
round run one after the other and rounds repeat (``--rounds``), so settings are interleaved and
the summary gives the median and range over rounds. Ratios use wall time and, less sensitive to
a shared machine, the process's CPU time; minor page faults per recorded call are counted.

    python benchmarks/bench_capture.py [--rounds 3] [--reps 5] [--modules lstm,gru] [--variants "h;all;all unroll"]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lstmvis import Recorder  # noqa: E402
from lstmvis.allocator import OPT_OUT_ENV  # noqa: E402

# name -> (kinds, route)
VARIANTS = {"h": ("h", "fused"), "h,c": ("h,c", "fused"), "all": ("h,c,gates", "fused"),
            "h,c unroll": ("h,c", "unroll"), "all unroll": ("h,c,gates", "unroll")}
SETTINGS = ("default", "opt-out", "tuned")
GRAD_MODES = ("no_grad", "autograd")
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU}


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(call) -> tuple[float, float, int]:
    faults, wall, cpu = _faults(), time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu, _faults() - faults


def measure(module: nn.Module, x: torch.Tensor, variants: list[str], reps: int, autograd: bool) -> dict:
    """Median wall and CPU seconds and page faults of the plain forward and each recorded variant."""
    module.requires_grad_(autograd)
    recorders = {name: Recorder(module, kinds=VARIANTS[name][0], route=VARIANTS[name][1]) for name in variants}

    def recorded(rec):
        with rec:
            module(x)
        rec.clear()

    runs = {"plain": lambda: module(x), **{name: (lambda rec=rec: recorded(rec)) for name, rec in recorders.items()}}
    samples: dict[str, list] = {name: [] for name in runs}
    with torch.set_grad_enabled(autograd):
        for run in runs.values():
            run()  # warm-up (the first recording may tune the allocator)
        for _ in range(reps):
            for name, run in runs.items():
                samples[name].append(_timed(run))
    return {name: [statistics.median(s[k] for s in v) for k in range(3)] for name, v in samples.items()}


def worker(args) -> None:
    """One process: one allocator setting and autograd mode; prints a JSON line of medians."""
    if args.setting == "tuned":
        from lstmvis.extraction import tune_allocator_for_extraction
        tune_allocator_for_extraction()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.hidden)
    out = {}
    for key in args.modules.split(","):
        module = MODULES[key](args.hidden, args.hidden, num_layers=2, batch_first=True).eval()
        variants = [v for v in args.variants.split(";") if key == "lstm" or not v.startswith("h,c")]
        out[key] = measure(module, x, variants, args.reps, args.grad == "autograd")
    from lstmvis.capture import workspace
    out["workspace"] = workspace.WORKSPACE["usable"]
    print(json.dumps(out))


def run_worker(setting: str, grad: str, args) -> dict:
    env = dict(os.environ)
    env.pop(OPT_OUT_ENV, None)
    if setting == "opt-out":
        env[OPT_OUT_ENV] = "0"
    cmd = [sys.executable, __file__, "--worker", "--setting", setting, "--grad", grad, "--reps", str(args.reps),
           "--threads", str(args.threads), "--batch", str(args.batch), "--steps", str(args.steps),
           "--hidden", str(args.hidden), "--modules", args.modules, "--variants", args.variants]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per setting, interleaved")
    parser.add_argument("--reps", type=int, default=5, help="repetitions inside each process (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--modules", default="lstm", help="comma-separated: lstm, gru")
    parser.add_argument("--variants", default="h;h,c;all",
                        help=f"semicolon-separated: {'; '.join(VARIANTS)} (a GRU skips those with c)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--grad-modes", default=",".join(GRAD_MODES))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--grad", default="no_grad", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    settings, grads = args.settings.split(","), args.grad_modes.split(",")
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch} x {args.steps} steps, "
          f"2 layers x {args.hidden} units; {args.rounds} rounds of fresh processes per setting, "
          f"median of {args.reps} repetitions in each")
    ratios: dict[tuple, list] = {}
    for round_ in range(args.rounds):
        load = os.getloadavg()[0]
        for grad in grads:
            for setting in settings:
                result = run_worker(setting, grad, args)
                for key in args.modules.split(","):
                    plain = result[key]["plain"]
                    for name, (wall, cpu, faults) in result[key].items():
                        if name == "plain":
                            continue
                        row = ratios.setdefault((key, name, grad, setting), [])
                        row.append((wall / plain[0], cpu / plain[1], faults, plain[0], load))
                        print(f"round {round_ + 1} (load {load:.1f}) {key} {grad:<8} {setting:<7} {name:<11} "
                              f"plain {plain[0] * 1e3:6.1f} ms  recorded {wall * 1e3:6.1f} ms  "
                              f"wall {wall / plain[0]:.2f}  cpu {cpu / plain[1]:.2f}  faults {faults:.0f}", flush=True)
        if not result["workspace"]:
            print("LSTM gates: this build's workspace failed the layout check; matmul route")

    def span(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print(f"\n{'module':<6} {'recorded':<11} {'autograd':<8} {'setting':<7} {'wall ratio':>18} {'cpu ratio':>18} "
          f"{'faults':>7} {'plain ms':>8}")
    for (key, name, grad, setting), rows in ratios.items():
        print(f"{key:<6} {name:<11} {grad:<8} {setting:<7} {span([r[0] for r in rows]):>18} "
              f"{span([r[1] for r in rows]):>18} {statistics.median(r[2] for r in rows):>7.0f} "
              f"{statistics.median(r[3] for r in rows) * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
