"""The ``lstmvis`` command line: serve the browser tool, extract states, inspect stores and cells.

One module per command, each with ``register(subparsers)`` that adds its parser and handler; the
libraries they call return data and print nothing. Other packages add commands through the
``lstmvis.commands`` entry points (``lstmvis serve`` comes from the server that way), so the
command line never imports them.
"""
from __future__ import annotations

import argparse
import sys

from textexplain.providers import load_entry_points

from . import cells, convert, extract, info, models, project

SUBCOMMANDS = [models.register, extract.register, info.register, project.register, cells.register, convert.register]
COMMANDS_GROUP = "lstmvis.commands"  # entry points of other packages' subcommands: ``add(subparsers)``


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, this package's and the ``lstmvis.commands`` entry points'."""
    parser = argparse.ArgumentParser(
        prog="lstmvis",
        description="Explore LSTM/GRU hidden states, find interpretable cells and explain text classifiers. "
                    "Run a subcommand with --help for its options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = load_entry_points(COMMANDS_GROUP)  # a user's own server.py in the working folder cannot shadow them
    for add in SUBCOMMANDS + plugins:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a usage error (bad value, missing file, unknown name) exits 2 with its message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `lstmvis` opens the bundled demo in the browser
        args = parser.parse_args(["serve"])
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, LookupError) as exc:
        print(f"lstmvis {args.command}: error: {exc}", file=sys.stderr)
        return 2
