"""``lstmvis extract``: record a model's hidden states over a corpus into a state store."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from textexplain import providers

from ..extraction import extract, tune_allocator_for_extraction
from ..backend import backend_kind
from ..store import partial_path_for
from ..zarr_backend import PART_TOKENS

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # stop like Ctrl+C: the partial store is checkpointed for a resume


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds the extraction as Ctrl+C does."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame) -> None:
    raise Stopped(signum)


def register(sub) -> None:
    p = sub.add_parser("extract", help="record a model's hidden states over a corpus into a state store",
                       description="Run a shipped model over a corpus and write h, c, gates or Conv1D outputs of every "
                                   "layer, or any submodule's per-token output (--modules), one row per token, to "
                                   "a state store (atomic; rerun to resume).")
    p.add_argument("--model", required=True, help="a shipped text model, e.g. charlm-python or sentiment-lstm "
                                                  "(see `lstmvis models`)")
    p.add_argument("--corpus", required=True,
                   help="python_source:SPLIT, rotten_tomatoes:SPLIT, parens:SPLIT (SPLIT = train/dev/test) or a "
                        ".txt file")
    p.add_argument("--out", required=True, help="the store to write: states.h5 (HDF5), states.zarr or a URL such as "
                                                "s3://bucket/states.zarr (Zarr)")
    p.add_argument("--scheduler", help="a Dask scheduler address (tcp://HOST:8786): the corpus runs in shards on its "
                                       "workers (a Zarr --out only)")
    p.add_argument("--part-tokens", type=int, default=PART_TOKENS,
                   help=f"tokens per shard, in whole sequences (default {PART_TOKENS:,})")
    p.add_argument("--kinds", default="h,c", help="what to record: h, c, gates (or gate_i, gate_f, ...), conv, "
                                                  "all (default: h,c)")
    p.add_argument("--modules", action="append", default=[], metavar="NAMES",
                   help="record these submodules' per-token (B, T, D) outputs too, e.g. a transformer's layers: "
                        "qualified names (encoder.0), glob patterns (encoder.*.activation) or module types by "
                        "dotted name (torch.nn.Linear); comma-separated or repeated. With --modules, recurrent "
                        "layers are recorded only when named too. A pattern that matches nothing is an error "
                        "that lists the model's modules")
    p.add_argument("--float16", action="store_true", help="store states as float16 (half the disk)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences run in parallel (default 32)")
    p.add_argument("--chunk-size", type=int, default=512,
                   help="tokens per step for language models; state is carried across chunks (default 512)")
    p.add_argument("--unroll", action="store_true",
                   help="compute c and gates of unidirectional LSTM/GRU layers in one pass of our own (faster for GRUs "
                        "on CPU; states equal the fused kernel's to ~1e-6 instead of bitwise)")
    p.add_argument("--limit", type=int, help="only the first N sequences of the corpus")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def module_selectors(entries: list[str]) -> list[str | type] | None:
    """``--modules`` values as ``Recorder(modules=...)`` takes them: names and globs as given, a dotted
    name of an ``nn.Module`` subclass (``torch.nn.Linear``) as that type; ``None`` when none is given."""
    names = [x.strip() for entry in entries for x in entry.split(",") if x.strip()]
    return [_module_type(name) or name for name in names] or None


def _module_type(name: str) -> type | None:
    """The ``nn.Module`` subclass ``name`` denotes (``package.module.Class``), else None (a module name)."""
    where, _, attr = name.rpartition(".")
    if not where or not attr[:1].isupper() or not attr.isidentifier() or any(c in name for c in "*?["):
        return None
    try:
        found = getattr(importlib.import_module(where), attr, None)
    except ImportError:
        return None
    return found if isinstance(found, type) and issubclass(found, nn.Module) else None


def run(args: argparse.Namespace) -> int:
    tune_allocator_for_extraction()
    modules = module_selectors(args.modules)
    model = providers.load_model(args.model)
    if isinstance(model, nn.Module):
        text_models = [m["name"] for m in providers.list_models() if m["kind"] != "image-classifier"]
        raise ValueError(f"{args.model} is an image model: extract works on text models ({', '.join(text_models)})")
    texts, meta, name = providers.load_corpus(args.corpus, model)
    if args.limit:
        texts = texts[:args.limit]
        meta = {k: v[:args.limit] for k, v in meta.items()}
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
    client = bar = None
    zarr = backend_kind(args.out) == "zarr"
    try:
        if args.scheduler:
            from distributed import Client
            from tqdm.auto import tqdm

            client = Client(args.scheduler)
            bar = tqdm(unit="tok", disable=args.quiet, desc="extract on the cluster")
        store = extract(args.model if args.scheduler else model, texts, args.out, kinds=args.kinds, modules=modules,
                        batch_size=args.batch_size, chunk_size=args.chunk_size,
                        dtype="float16" if args.float16 else "float32", progress=not args.quiet, meta=meta,
                        corpus_name=name, route="unroll" if args.unroll else "fused", part_tokens=args.part_tokens,
                        client=client, report=None if bar is None else lambda done, total: _show(bar, done, total))
    except KeyboardInterrupt as exc:
        partial = Path(args.out) if zarr else partial_path_for(Path(args.out))
        kept = (f"the finished {'parts' if zarr else 'sequences'} are kept in {args.out if zarr else partial}: "
                "rerun the same command to resume" if zarr or partial.exists() else "nothing was kept")
        print(f"lstmvis extract: stopped by {str(exc) or 'Ctrl+C'}; {kept}", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    with store:
        print(f"wrote {store.url}: {store.n_tokens} tokens, {store.n_sequences} sequences, "
              f"sources {', '.join(store.sources)}")
    return 0


def _show(bar, done: int, total: int) -> None:
    """The cluster's progress (tokens in finished shards) on the progress bar."""
    bar.total = total
    bar.update(done - bar.n)
