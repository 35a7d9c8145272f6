"""``textexplain audit``: the tokens a classifier relies on over a whole corpus (shortcut detection)."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from .. import providers
from ..audit import FLIP_TOP, NORMALIZE, RANK_BY, TARGETS, audit
from ..methods import METHODS
from .options import load_text_model, methods_help, parse_settings, write_atomic

SHORTCUT_MODEL, SHORTCUT_CORPUS, DEFAULT_CORPUS = "sentiment-shortcut", "rotten_tomatoes_shortcut", "rotten_tomatoes"


def read_corpus(path: str) -> tuple[list[str], list[str] | None]:
    """A text file (one text per line) or a CSV with a ``text`` column (and optional ``label``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "text" not in rows[0]:
            raise ValueError(f"{path}: a CSV corpus needs a header with a 'text' column (and optionally 'label')")
        texts = [r["text"] for r in rows if r["text"].strip()]
        labels = [r["label"] for r in rows if r["text"].strip()] if "label" in rows[0] else None
        return texts, labels
    texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts, None


def _cmd_audit(args: argparse.Namespace) -> int:
    model = load_text_model(args.model)
    params = parse_settings(list(args.set or []), [args.method])[args.method]
    if args.file:
        texts, labels = read_corpus(args.file)
        source = args.file
    else:
        corpus = args.data or (SHORTCUT_CORPUS if model.name == SHORTCUT_MODEL else DEFAULT_CORPUS)
        texts, labels = providers.load_labelled_corpus(f"{corpus}:{args.split}")
        source = f"{corpus}/{args.split}"
    if args.limit and args.limit < len(texts):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(texts), args.limit, replace=False))
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep] if labels is not None else None
    report = audit(model, texts, labels, method=args.method, target=args.target, rank_by=args.rank_by,
                   normalize=args.normalize, min_count=args.min_count, flip_top=args.flip,
                   batch_size=args.batch_size, progress=not args.quiet, options=params)
    print(f"source: {source}")
    print(report.to_markdown(top=args.top, examples=args.examples))
    if args.json:
        write_atomic(Path(args.json), json.dumps(report.to_dict(top=max(args.top, 20)), indent=2))
        print(f"\nwrote {args.json}")
    if args.figure:
        write_atomic(Path(args.figure), report.figure().to_html(include_plotlyjs=True, full_html=True))
        print(f"wrote {args.figure}")
    return 0


def add_audit(sub) -> None:
    """Register ``textexplain audit``."""
    p = sub.add_parser(
        "audit", help="find the tokens a classifier relies on over a whole corpus (shortcut detection)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Explain every text of a corpus split, aggregate the token scores per class and rank the "
                    "tokens the model relies on (by their reliance: a lower confidence bound of the mean "
                    "contribution per text, so rare tokens cannot win by chance), with example sentences; then "
                    "flip-test the top tokens of each class and list first those whose flip costs the most "
                    "accuracy. "
                    "Example: textexplain audit --model sentiment-shortcut --split test "
                    "--method integrated_gradients",
        epilog=methods_help())
    p.add_argument("--model", required=True,
                   help="a shipped classifier (see `lstmvis models`) or a .pt checkpoint")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"), help="corpus split (default: test)")
    p.add_argument("--data", default=None,
                   help="a labelled corpus of the model providers, e.g. rotten_tomatoes or rotten_tomatoes_shortcut "
                        "(default: the one the model was trained on)")
    p.add_argument("--file", default=None, help="audit your own corpus instead: a .txt file (one text per line) "
                                                "or a .csv with a 'text' and optional 'label' column")
    p.add_argument("--method", default="integrated_gradients", choices=sorted(METHODS),
                   help="explanation method (default: integrated_gradients)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a method hyperparameter, repeatable (e.g. --set n_steps=20, --set num_samples=500)")
    p.add_argument("--target", default="predicted", choices=TARGETS,
                   help="explain each text for the predicted class (default) or for its gold label")
    p.add_argument("--rank-by", default="reliance", choices=RANK_BY,
                   help="ranking statistic: reliance (default; lower 95%% bound of the mean contribution per text "
                        "of the class), total, or per occurrence (mean, lower_bound)")
    p.add_argument("--normalize", default="none", choices=NORMALIZE,
                   help="rescale each explanation first (default: none)")
    p.add_argument("--min-count", type=int, default=None,
                   help="rank only tokens seen at least this often for a class (default: one per 100 texts, "
                        "at least 3)")
    p.add_argument("--limit", type=int, default=None, help="audit a seeded random sample of this many texts")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="texts explained per batch (default: 64)")
    p.add_argument("--top", type=int, default=10, help="tokens shown per class (default: 10)")
    p.add_argument("--examples", type=int, default=1, help="example sentences shown per top-3 token (default: 1)")
    p.add_argument("--flip", type=int, default=FLIP_TOP,
                   help="flip-test the top N tokens of each class, against the gold labels or else the model's "
                        "own predictions (0: none; default: %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    p.add_argument("--figure", default=None, metavar="PATH", help="also write a plotly HTML figure")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_audit)
