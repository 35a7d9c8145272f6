"""The ``lstmvis`` command line: serve the browser tool, extract states, inspect stores and cells.

Each subcommand is defined by an ``add_*`` function below that registers its parser and handler.
"""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_models(args: argparse.Namespace) -> int:
    from textexplain import providers

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


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the shipped demo models and their model cards",
                       description="List the shipped demo models with the metrics from their model cards.")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=_cmd_models)


def add_state_commands(sub) -> None:
    """extract, info, import-lstmvis, export-lstmvis (handlers in lstmvis.extraction/store/project)."""
    from .extraction import add_extract
    from .project import add_export_lstmvis, add_import_lstmvis
    from .store import add_info

    for add in (add_extract, add_info, add_import_lstmvis, add_export_lstmvis):
        add(sub)


def add_cells(sub) -> None:
    from .cells import add_cells as add

    add(sub)


SUBCOMMANDS = [add_models, add_state_commands, add_cells]
COMMANDS_GROUP = "lstmvis.commands"  # entry points of other packages' subcommands: ``add(subparsers)``


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmvis",
        description="Explore LSTM/GRU hidden states, find interpretable cells and explain text classifiers. "
                    "Run a subcommand with --help for its options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from importlib.metadata import entry_points

    for add in SUBCOMMANDS + [ep.load() for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)]:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `lstmvis` opens the bundled demo in the browser
        args = parser.parse_args(["serve"])
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, LookupError) as exc:
        print(f"lstmvis {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
