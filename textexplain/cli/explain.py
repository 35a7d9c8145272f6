"""``textexplain explain`` (the default command): one text, one or more methods, printed highlighted."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..methods import METHODS, make_explainer
from ..render import side_by_side_html, terminal, write_html
from .options import load_text_model, methods_help, parse_settings, seeded_methods, write_atomic


def _cmd_explain(args: argparse.Namespace) -> int:
    text = _read_text(args)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(f"unknown method {', '.join(unknown) or '(none)'}: choose from {', '.join(METHODS)}")
    settings = list(args.set or [])
    if args.seed is not None:
        settings += [f"{m}.seed={args.seed}" for m in seeded_methods(methods)]
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
        write_atomic(Path(args.json), payload)
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


def add_explain(sub) -> None:
    """Register ``textexplain explain``."""
    p = sub.add_parser(
        "explain", help="explain one text with one or more methods (the default command)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Explain a classifier's decision on TEXT token by token. Each method's scores are printed\n"
                    "as highlighted text (blue = for the target class, red = against; unsigned methods in\n"
                    "purple); --html writes all methods side by side, one per row.",
        epilog=methods_help() + "\n"
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
    p.add_argument("--seed", type=int, help="seed of the sampling methods ("
                   + ", ".join(m for m, cls in METHODS.items() if cls.seeded) + ")")
    p.add_argument("--words", action="store_true", help="merge sub-tokens / characters into words (sum)")
    p.add_argument("--normalize", default="max_abs",
                   help="colour scale: max_abs (default), sum_abs or a fixed positive number")
    p.add_argument("--color", default="auto", choices=["auto", "truecolor", "256", "none"],
                   help="terminal colours (auto: only on a terminal; honours NO_COLOR)")
    p.add_argument("--html", metavar="PATH", help="write a side-by-side HTML page of all methods")
    p.add_argument("--json", metavar="PATH", help="write the explanations as JSON")
    p.set_defaults(func=_cmd_explain)
