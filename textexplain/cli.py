"""The ``textexplain`` command line.

``textexplain "TEXT" --model sentiment-lstm --method integrated_gradients,lime,shap`` explains one
text with several methods, prints them highlighted in the terminal and can write a side-by-side
HTML page. A bare text runs the ``explain`` subcommand; other subcommands register themselves in
``SUBCOMMANDS`` as ``add_xxx(sub)`` functions, like ``lstmvis``'s CLI.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load_text_model(spec: str):
    """A text classifier by name or checkpoint path, from the registered model providers."""
    from . import providers
    from .model import TextModel

    classifiers = ", ".join(m["name"] for m in providers.list_models("classifier"))
    try:
        model = providers.load_model(spec)
    except LookupError:
        raise ValueError(f"unknown model {spec!r}: give a text classifier ({classifiers}) "
                         "or the path of a .pt checkpoint") from None
    if not isinstance(model, TextModel):
        raise ValueError(f"{spec} is not a text classifier: explanations need one of {classifiers}")
    return model


def parse_settings(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--set method.param=value`` or ``--set param=value`` (every method that takes it) -> params."""
    import inspect

    from .explain import method_class

    accepted = {m: [p for p in inspect.signature(method_class(m).__init__).parameters if p not in ("self", "model")]
                for m in methods}
    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: write NAME=VALUE or METHOD.NAME=VALUE, e.g. n_steps=100")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        method, _, name = key.rpartition(".")
        targets = [method] if method else [m for m in methods if name in accepted[m]]
        if method and method not in methods:
            raise ValueError(f"--set {item!r}: {method!r} is not among the chosen methods {', '.join(methods)}")
        if not targets or any(name not in accepted[m] for m in targets):
            where = method or "any chosen method"
            raise ValueError(f"--set {item!r}: {where} has no parameter {name!r}; parameters: "
                             + "; ".join(f"{m}: {', '.join(accepted[m])}" for m in (targets or methods)))
        for m in targets:
            params[m][name] = value
    return params


def _cmd_explain(args: argparse.Namespace) -> int:
    from .explain import METHODS, make_explainer
    from .render import side_by_side_html, terminal, write_html

    text = _read_text(args)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(f"unknown method {', '.join(unknown) or '(none)'}: choose from {', '.join(METHODS)}")
    settings = list(args.set or [])
    if args.seed is not None:
        settings += [f"{m}.seed={args.seed}" for m in methods if m in ("smoothgrad", "lime", "shap")]
    params = parse_settings(settings, methods)
    model = load_text_model(args.model)
    target: Any = args.target
    if target is not None and target.lstrip("-").isdigit() and target not in model.labels:
        target = int(target)
    normalize: Any = args.normalize
    if normalize not in ("max_abs", "sum_abs"):
        try:
            normalize = float(normalize)
        except ValueError:
            raise ValueError(f"--normalize {args.normalize!r}: use max_abs, sum_abs or a positive number") from None
    words = args.words
    explanations = [make_explainer(model, m, **params[m]).explain(text, target) for m in methods]
    first = explanations[0]
    probs = ", ".join(f"{lab} {p:.3f}" for lab, p in zip(first.labels, first.probs))
    out = sys.stdout
    print(f"model {model.name}: predicted {first.predicted_label} ({probs})", file=out)
    for e in explanations:
        print(file=out)
        print(terminal(e, normalize=normalize, color=args.color, words=words, stream=out), file=out)
    if args.html:
        path = write_html(args.html, side_by_side_html(explanations, normalize=normalize, words=words),
                          title=f"textexplain: {text[:60]}")
        print(f"\nwrote {path}", file=out)
    if args.json:
        payload = json.dumps([e.to_dict() for e in explanations], ensure_ascii=False, indent=1)
        _write_atomic(Path(args.json), payload)
        print(f"wrote {args.json}", file=out)
    return 0


def _read_text(args: argparse.Namespace) -> str:
    if args.file and args.text:
        raise ValueError("give the text either as an argument or with --file, not both")
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        return text.strip()
    if not args.text:
        raise ValueError('no text given: textexplain "a gorgeous, witty film" (or --file PATH, --file - for stdin)')
    return args.text


def _write_atomic(path: Path, text: str) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="explain one text with one or more methods (the default command)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Explain a classifier's decision on TEXT token by token. Each method's scores are printed\n"
                    "as highlighted text (blue = for the target class, red = against; unsigned methods in\n"
                    "purple); --html writes all methods side by side, one per row.",
        epilog="methods: gradient, gradient_x_input, integrated_gradients, smoothgrad, occlusion, lime, shap\n"
               "examples:\n"
               '  textexplain "a gorgeous, witty film" --method integrated_gradients,lime,shap --html out.html\n'
               '  textexplain "a dull mess" --target fresh --set integrated_gradients.max_steps=200\n'
               '    (IG refines until |delta| is within 1% of F(x) - F(x\'), up to 200 gradient evaluations)\n'
               '  textexplain "not bad at all" --method occlusion --set window=2 --set mask=unk')
    p.add_argument("text", nargs="?", help="the text to explain (or use --file)")
    p.add_argument("--file", metavar="PATH", help="read the text from a file ('-' = standard input)")
    p.add_argument("--model", default="sentiment-lstm",
                   help="shipped classifier name or a .pt checkpoint path (default: sentiment-lstm)")
    p.add_argument("--method", default="integrated_gradients",
                   help="comma-separated methods (default: integrated_gradients)")
    p.add_argument("--target", help="class to explain, label or index (default: the predicted class)")
    p.add_argument("--set", action="append", metavar="[METHOD.]NAME=VALUE",
                   help="a method hyperparameter, e.g. n_steps=100 or lime.num_samples=2000 (repeatable)")
    p.add_argument("--seed", type=int, help="seed of the sampling methods (smoothgrad, lime, shap)")
    p.add_argument("--words", action="store_true", help="merge sub-tokens / characters into words (sum)")
    p.add_argument("--normalize", default="max_abs",
                   help="colour scale: max_abs (default), sum_abs or a fixed positive number")
    p.add_argument("--color", default="auto", choices=["auto", "truecolor", "256", "none"],
                   help="terminal colours (auto: only on a terminal; honours NO_COLOR)")
    p.add_argument("--html", metavar="PATH", help="write a side-by-side HTML page of all methods")
    p.add_argument("--json", metavar="PATH", help="write the explanations as JSON")
    p.set_defaults(func=_cmd_explain)


def add_audit(sub) -> None:
    from .audit import add_audit as register

    register(sub)


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
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        print(f"textexplain {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
