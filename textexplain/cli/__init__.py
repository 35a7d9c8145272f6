"""The ``textexplain`` command line (console script ``textexplain = "textexplain.cli:main"``).

``textexplain "TEXT" --model sentiment-lstm --method integrated_gradients,lime,shap`` explains one
text (``explain``, the default command); ``textexplain audit`` ranks the tokens a classifier relies
on over a corpus. Each subcommand is an ``add_xxx(sub)`` function in ``SUBCOMMANDS``; models and
corpora come from ``textexplain.providers``. The library modules print nothing: this package does.
"""
from __future__ import annotations

import argparse
import sys

from .audit import add_audit
from .explain import add_explain

SUBCOMMANDS = [add_explain, add_audit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textexplain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Token-level explanations of text classifiers. A bare TEXT runs `explain`;\n"
                    "run a subcommand with --help for its options.",
        epilog='example: textexplain "a gorgeous, witty film" --method integrated_gradients,lime,shap')
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    parser.set_defaults(_commands=set(sub.choices))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = parser.get_default("_commands")
    if not argv:
        parser.print_help()
        return 2
    if argv[0] not in commands and argv[0] not in ("-h", "--help"):
        argv = ["explain", *argv]
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError, KeyError, LookupError) as exc:
        print(f"textexplain {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0


__all__ = ["SUBCOMMANDS", "build_parser", "main"]
