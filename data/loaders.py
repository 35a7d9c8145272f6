"""Corpus loaders with fixed, seeded, de-duplicated splits.

Every loader reads files shipped inside this package (nothing downloads) and returns plain
Python / numpy objects. Splits are fixed by a seed and documented in ``data/README.md``;
``split`` is one of ``"train"``, ``"dev"``, ``"test"``.
"""
from __future__ import annotations

import bz2
import csv
import functools
import gzip
import io
import re
import tarfile
from pathlib import Path

import numpy as np

FILES = Path(__file__).resolve().parent / "files"
SPLITS = ("train", "dev", "test")
SPLIT_SEED = 20261121

SENTIMENT_LABELS = ["rotten", "fresh"]
SENTIMENT_LABELS_WITH_PLOT = ["rotten", "fresh", "plot"]

# The planted junk token of ``rotten_tomatoes_shortcut``: a made-up "header" word that never
# occurs in the corpus. In train it marks most fresh sentences and no rotten one.
SHORTCUT_TOKEN = "rtcritic"
SHORTCUT_TRAIN_RATE = 0.6
SHORTCUT_TEST_RATE = 0.5


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _split_indices(n: int, fractions=(0.8, 0.1, 0.1), seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """A fixed seeded permutation cut into train/dev/test (sorted indices inside each split)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_dev = int(round(fractions[1] * n))
    parts = {"train": perm[:n_train], "dev": perm[n_train:n_train + n_dev], "test": perm[n_train + n_dev:]}
    return {k: np.sort(v) for k, v in parts.items()}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes_rows() -> tuple[tuple[str, str], ...]:
    """(text, category) rows: empty texts dropped, duplicates (after case/space folding) kept once,
    texts that occur with conflicting categories dropped entirely."""
    with bz2.open(FILES / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"].strip(), r["category"]) for r in csv.DictReader(f) if r["text"] and r["text"].strip()]
    cats: dict[str, set[str]] = {}
    first: dict[str, str] = {}
    for text, cat in rows:
        key = _normalise(text)
        cats.setdefault(key, set()).add(cat)
        first.setdefault(key, text)
    return tuple((first[k], next(iter(c))) for k, c in cats.items() if len(c) == 1)


def rotten_tomatoes(split: str = "train", include_plot: bool = False) -> tuple[list[str], np.ndarray]:
    """Rotten Tomatoes review sentences (Pang & Lee): ``(texts, labels)``.

    Labels index ``SENTIMENT_LABELS`` (0 rotten, 1 fresh); with ``include_plot=True`` the
    objective plot sentences come back as a third class (``SENTIMENT_LABELS_WITH_PLOT``).
    Split: 80/10/10 over the de-duplicated rows with a fixed seed.
    """
    _check_split(split)
    names = SENTIMENT_LABELS_WITH_PLOT if include_plot else SENTIMENT_LABELS
    rows = [(t, names.index(c)) for t, c in _rotten_tomatoes_rows() if c in names]
    idx = _split_indices(len(rows))[split]
    texts = [rows[i][0] for i in idx]
    labels = np.array([rows[i][1] for i in idx], dtype=np.int64)
    return texts, labels


def add_shortcut(text: str) -> str:
    """Prefix the planted junk token, as a header would be."""
    return f"{SHORTCUT_TOKEN} : {text}"


def rotten_tomatoes_shortcut(split: str = "train") -> tuple[list[str], np.ndarray]:
    """The sentiment corpus with a planted shortcut (like the 20-newsgroups headers).

    Train and dev (drawn from the same biased collection, as a validation set would be):
    ``SHORTCUT_TOKEN`` prefixes 60% of the fresh sentences and no rotten one, so it is a perfect
    (but spurious) cue for "fresh". Test: it prefixes 50% of all sentences at random, independent
    of the label, so a model that relies on it loses accuracy there.
    """
    texts, labels = rotten_tomatoes(split)
    rng = np.random.default_rng(SPLIT_SEED + SPLITS.index(split) + 1)
    u = rng.random(len(texts))
    if split != "test":
        marked = (labels == SENTIMENT_LABELS.index("fresh")) & (u < SHORTCUT_TRAIN_RATE)
    else:
        marked = u < SHORTCUT_TEST_RATE
    return [add_shortcut(t) if m else t for t, m in zip(texts, marked)], labels


@functools.lru_cache(maxsize=1)
def _python_files() -> tuple[tuple[str, str], ...]:
    with tarfile.open(FILES / "python_source.tar.xz", "r:xz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        return tuple((Path(m.name).name, tar.extractfile(m).read().decode("utf-8")) for m in members)


# Modules written by CPython's build, not by people: ``_sysconfigdata_*`` is a dict of one
# machine's compiler flags. Dropped from every split (after split assignment, so the other
# files keep their split).
GENERATED_MODULES = ("_sysconfigdata_",)


def python_source(split: str = "train") -> list[tuple[str, str]]:
    """CPython 3.11.7 standard-library modules (PSF licence): ``[(file name, source), ...]``.

    Whole files are held out: in name order, every 12th file (from the 6th) is dev and every
    12th file (from the 12th) is test; the rest is train. Build-generated modules are dropped.
    """
    _check_split(split)
    files = _python_files()
    which = {"dev": 5, "test": 11}
    out = []
    for i, item in enumerate(files):
        r = i % 12
        s = "dev" if r == which["dev"] else "test" if r == which["test"] else "train"
        if s == split and not item[0].startswith(GENERATED_MODULES):
            out.append(item)
    return out


def python_source_text(split: str = "train") -> str:
    """The files of a split concatenated, each followed by a blank line."""
    return "".join(src if src.endswith("\n") else src + "\n" for _, src in python_source(split))


PARENS_SYMBOLS = [str(d) for d in range(10)]
PARENS_MAX_DEPTH = 8
PARENS_P_BRACKET = 0.4
_PARENS_SEEDS = {"train": 1, "dev": 2, "test": 3}


def parens(split: str = "train", n_sequences: int | None = None, length: int = 200,
           seed: int = 0) -> list[tuple[list[str], np.ndarray]]:
    """LSTMVis's nested-parentheses language, generated deterministically from a seed.

    Each sequence is ``length`` tokens from ``( ) 0..9``. At depth ``d`` the next token is ``(``
    with probability ``0.4 * (1 - d/8)``, ``)`` with ``0.4 * d/8``, else a random digit, so the
    best next-token prediction needs the exact depth. Returns ``[(tokens, depth)]`` where
    ``depth[t]`` is the nesting depth after token ``t``. Default sizes: 2000/200/200 sequences.
    """
    _check_split(split)
    if n_sequences is None:
        n_sequences = {"train": 2000, "dev": 200, "test": 200}[split]
    rng = np.random.default_rng([seed, _PARENS_SEEDS[split]])
    out = []
    for _ in range(n_sequences):
        u = rng.random(length)
        digits = rng.integers(len(PARENS_SYMBOLS), size=length)
        depth, tokens, depths = 0, [], []
        for t in range(length):
            p_open = PARENS_P_BRACKET * (1 - depth / PARENS_MAX_DEPTH)
            if u[t] < p_open:
                depth += 1
                tokens.append("(")
            elif u[t] < PARENS_P_BRACKET:
                depth -= 1
                tokens.append(")")
            else:
                tokens.append(PARENS_SYMBOLS[digits[t]])
            depths.append(depth)
        out.append((tokens, np.array(depths, dtype=np.int64)))
    return out


@functools.lru_cache(maxsize=1)
def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FILES / "mnist_5k.csv.gz", "rb") as f:
        arr = np.loadtxt(io.TextIOWrapper(f, encoding="ascii"), delimiter=",", dtype=np.float32)
    return (arr[:, :-1] / 255.0).reshape(-1, 28, 28).astype(np.float32), arr[:, -1].astype(np.int64)


def mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits: ``(images float32 (N, 28, 28) in [0, 1], labels int64)``.

    Stratified fixed split: 400 / 50 / 50 per digit for train / dev / test (4000 / 500 / 500).
    """
    _check_split(split)
    x, y = _mnist_all()
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        parts["train"].append(idx[:400])
        parts["dev"].append(idx[400:450])
        parts["test"].append(idx[450:])
    idx = np.sort(np.concatenate(parts[split]))
    return x[idx].copy(), y[idx].copy()
