"""Extraction throughput: charlm-python states of Python source into a StateStore.

Ours: ``lstmvis.extract`` over whole files (one sequence per file, exact state carried from chunk
to chunk, up to 32 parallel streams, 512-char chunks), writing float32 h (and c) of both layers
to HDF5. Baselines, plain forward of the same model over the same characters with nothing
recorded or written: (a) the same schedule of streams and chunks (``lstmvis.extraction.run_streams``
without a recorder), which isolates the cost of recording and writing; (b) the best case for
throughput, the text cut into 32 equal streams (not exact per file: files run concurrently only
as far as the corpus has files, so few long files leave streams idle). Repetitions are
interleaved; medians are reported.

    python benchmarks/bench_extract.py [--chars 200000] [--reps 3] [--threads 1] [--variants "h;h,c"] [--float16]

Goal: extraction tokens/s >= 0.8 x plain forward tokens/s (ratio columns: plain seconds / ours). Uses the trained checkpoint when
data/checkpoints/charlm-python.pt exists, else an untrained model of the same architecture
(throughput does not depend on the weights).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import lstmvis  # noqa: E402
from data.architectures import CharLM  # noqa: E402
from data.registry import CHECKPOINTS, LanguageModel  # noqa: E402
from data.train import CHARLM_CONFIGS  # noqa: E402
from textexplain.model import CharTokenizer, Vocab  # noqa: E402

from lstmvis.extraction import run_streams  # noqa: E402

VARIANTS = {"h": ("h", "fused"), "h,c": ("h,c", "fused"), "h,c unroll": ("h,c", "unroll")}


def load_lm() -> tuple[LanguageModel, str]:
    if (CHECKPOINTS / "charlm-python.pt").exists():
        return data.load_model("charlm-python"), "trained checkpoint"
    tokenizer = CharTokenizer()
    vocab = Vocab.build([tokenizer(data.python_source_text("train"))], min_freq=5)
    torch.manual_seed(0)
    module = CharLM(len(vocab), **CHARLM_CONFIGS["charlm-python"]).eval()
    return LanguageModel(module, vocab, tokenizer, name="charlm-python (untrained)"), "untrained, same architecture"


def corpus(n_chars: int) -> list[str]:
    texts, total = [], 0
    for split in ("test", "dev", "train"):
        for _, src in data.python_source(split):
            texts.append(src[: n_chars - total])
            total += len(texts[-1])
            if total >= n_chars:
                return texts
    return texts


@torch.no_grad()
def plain_same_schedule(lm: LanguageModel, id_lists: list) -> None:
    for _ in run_streams(lm.module, id_lists, 32, 512, lm.pad_id):
        pass


@torch.no_grad()
def plain_equal_streams(lm: LanguageModel, ids: torch.Tensor, streams: int = 32, chunk: int = 512) -> None:
    n = len(ids) // streams * streams
    x = ids[:n].view(streams, -1)
    state = None
    for s in range(0, x.shape[1], chunk):
        _, state = lm.module(x[:, s:s + chunk], state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help=f"extraction variants to run, separated by ';' (default: {';'.join(VARIANTS)})")
    parser.add_argument("--float16", action="store_true", help="store float16 (half the disk)")
    parser.add_argument("--tuned-allocator", action="store_true",
                        help="glibc malloc thresholds as `lstmvis extract` sets them (no page faults on oneDNN's "
                             "LSTM workspace); default: glibc's defaults, as in a plain Python process")
    args = parser.parse_args()
    if args.tuned_allocator:
        from lstmvis.extraction import tune_allocator_for_extraction
        print("allocator tuned:", tune_allocator_for_extraction())
    variants = [v.strip() for v in args.variants.split(";")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {';'.join(VARIANTS)}")
    dtype = "float16" if args.float16 else "float32"
    torch.set_num_threads(args.threads)
    lm, which = load_lm()
    texts = corpus(args.chars)
    id_lists = [lm.encode(t) for t in texts]
    ids = torch.tensor([i for x in id_lists for i in x])
    n = len(ids)
    print(f"torch {torch.__version__}, {args.threads} thread(s); {lm.name} ({which}); {n:,} characters in "
          f"{len(texts)} files; {dtype} stores; median of {args.reps} interleaved repetitions")
    times: dict[str, list[float]] = {"plain": [], "ideal": [], **{k: [] for k in variants}}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            t = time.perf_counter()
            plain_same_schedule(lm, id_lists)
            times["plain"].append(time.perf_counter() - t)
            t = time.perf_counter()
            plain_equal_streams(lm, ids)
            times["ideal"].append(time.perf_counter() - t)
            for name in variants:
                kinds, route = VARIANTS[name]
                path = Path(tmp) / f"{rep}-{name.replace(',', '').replace(' ', '-')}.h5"
                t = time.perf_counter()
                lstmvis.extract(lm, texts, path, kinds=kinds, route=route, dtype=dtype, progress=False).close()
                times[name].append(time.perf_counter() - t)
                size = path.stat().st_size
                path.unlink()
    plain, ideal = statistics.median(times["plain"]), statistics.median(times["ideal"])
    print(f"{'run':<28} {'seconds':>8} {'tokens/s':>10} {'vs (a)':>7} {'vs (b)':>7}")
    print(f"{'(a) plain, same schedule':<28} {plain:>8.2f} {n / plain:>10,.0f} {1.0:>7.2f} {ideal / plain:>7.2f}")
    print(f"{'(b) plain, 32 equal streams':<28} {ideal:>8.2f} {n / ideal:>10,.0f} {plain / ideal:>7.2f} {1.0:>7.2f}")
    for name in variants:
        sec = statistics.median(times[name])
        print(f"{'extract ' + name:<28} {sec:>8.2f} {n / sec:>10,.0f} {plain / sec:>7.2f} {ideal / sec:>7.2f}")
    print(f"(last store written: {size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
