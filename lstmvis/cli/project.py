"""``lstmvis import-lstmvis`` and ``lstmvis export-lstmvis``: state stores to and from LSTMVis project folders."""
from __future__ import annotations

import argparse

from ..project import export_lstmvis, import_lstmvis


def register(sub) -> None:
    p = sub.add_parser("import-lstmvis", help="read an LSTMVis project folder into a state store",
                       description="Read an LSTMVis project (lstm.yml, states.h5, the word-id file and words.dict) "
                                   "into a state store that lstmvis serve, select/match and cells use.")
    p.add_argument("folder", help="the LSTMVis project folder holding lstm.yml")
    p.add_argument("--out", required=True, help="the store file to write, e.g. states.h5")
    p.add_argument("--float16", action="store_true", help="store states as float16 (half the disk)")
    p.set_defaults(func=run_import)

    p = sub.add_parser("export-lstmvis", help="write a state store as an LSTMVis project folder",
                       description="Write a state store as an LSTMVis project folder (lstm.yml, states.h5, train.h5, "
                                   "words.dict, meta.h5) that LSTMVis's own server loads.")
    p.add_argument("store", help="the state store file")
    p.add_argument("folder", help="the project folder to create (new or empty)")
    p.add_argument("--name", help="project name shown by LSTMVis (default: the model name)")
    p.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    with import_lstmvis(args.folder, args.out, dtype="float16" if args.float16 else "float32") as store:
        print(f"imported {args.folder} -> {store.path}: {store.n_tokens} tokens, {store.n_sequences} sequences, "
              f"sources {', '.join(store.sources)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    folder = export_lstmvis(args.store, args.folder, name=args.name)
    print(f"exported {args.store} -> {folder} (open it with LSTMVis: python lstm_server.py -dir {folder.parent})")
    return 0
