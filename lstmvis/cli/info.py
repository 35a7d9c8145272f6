"""``lstmvis info``: summarise a state store (sizes, sources, meta tracks, the model it came from)."""
from __future__ import annotations

import argparse
import json

from ..store import StateStore


def register(sub) -> None:
    p = sub.add_parser("info", help="summarise a state store (sizes, sources, model card)",
                       description="Open a state store (validating it) and print its sizes, sources with their cell "
                                   "counts, meta tracks and the model it came from.")
    p.add_argument("store", help="the state store file")
    p.add_argument("--json", action="store_true", help="print everything, including the model card, as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with StateStore.open(args.store) as store:
        info = store.info()
        if args.json:
            info["card"] = store.card
            print(json.dumps(info, indent=2))
            return 0
        print(f"{store.path}: {store.n_tokens:,} tokens in {store.n_sequences:,} sequences, "
              f"vocabulary {len(store.vocab):,}")
        model = store.card.get("name")
        extraction = store.card.get("extraction", {})
        if model or extraction:
            print(f"model: {model or '?'}  corpus: {extraction.get('corpus') or '?'}")
        print("sources:")
        for source, s in info["sources"].items():
            print(f"  {source:<32} {s['cells']:>6} cells  {s['dtype']}")
        if store.meta_names:
            print(f"meta tracks: {', '.join(store.meta_names)}")
        print(f"texts stored: {'yes' if store.has_texts else 'no (tokens joined by spaces)'}")
    return 0
