"""``lstmvis models``: the models the model providers offer, with the metrics of their model cards."""
from __future__ import annotations

import argparse
import json

from textexplain import providers


def register(sub) -> None:
    p = sub.add_parser("models", help="list the shipped demo models and their model cards",
                       description="List the shipped demo models with the metrics from their model cards.")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    models = providers.list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for m in models:
        card = m["card"]
        if card is None:
            status = f"not trained (run: python -m data.train {m['name']})"
        else:
            metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in card["metrics"].items())
            status = f"{metrics}  [{card['architecture']['parameters']:,} parameters, " \
                     f"trained in {card['training_seconds']:.0f} s]"
        print(f"{m['name']:<20} {m['kind']:<17} {m['description']}\n{'':<20} {status}")
    return 0
