"""``lstmvis convert``: copy a state store between backends (HDF5 file, Zarr folder or URL), exactly."""
from __future__ import annotations

import argparse

from ..convert import convert
from ..zarr_backend import PART_TOKENS


def register(sub) -> None:
    p = sub.add_parser("convert", help="copy a state store to another backend (HDF5 <-> Zarr, local <-> s3://)",
                       description="Copy a state store exactly: the backend of each side is chosen by its address "
                                   "(*.zarr folders and URLs such as s3://bucket/states.zarr are Zarr, anything else "
                                   "HDF5).")
    p.add_argument("source", help="the store to read, e.g. states.h5")
    p.add_argument("target", help="the store to write, e.g. states.zarr or s3://bucket/states.zarr")
    p.add_argument("--part-tokens", type=int, default=PART_TOKENS,
                   help=f"tokens per part of a Zarr target, in whole sequences (default {PART_TOKENS:,})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with convert(args.source, args.target, args.part_tokens) as store:
        print(f"wrote {store.url}: {store.n_tokens} tokens, {store.n_sequences} sequences, "
              f"sources {', '.join(store.sources)}")
    return 0
