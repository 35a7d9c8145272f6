import numpy as np
import pytest

import data
from data import loaders

SPLITS = ("train", "dev", "test")


def test_rotten_tomatoes_splits_are_disjoint_deduplicated_and_deterministic():
    parts = {s: data.rotten_tomatoes(s) for s in SPLITS}
    keys = {s: {loaders._normalise(t) for t in parts[s][0]} for s in SPLITS}
    assert all(len(keys[s]) == len(parts[s][0]) for s in SPLITS), "duplicates inside a split"
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"]
    again = data.rotten_tomatoes("dev")
    assert again[0] == parts["dev"][0] and np.array_equal(again[1], parts["dev"][1])
    n = sum(len(parts[s][0]) for s in SPLITS)
    assert 12_000 < n < 12_900  # 12,808 fresh+rotten rows before de-duplication
    assert set(np.unique(parts["train"][1])) == {0, 1}
    assert all(t.strip() for s in SPLITS for t in parts[s][0])


def test_rotten_tomatoes_plot_class_is_kept_as_third_label():
    texts, labels = data.rotten_tomatoes("train", include_plot=True)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert data.SENTIMENT_LABELS_WITH_PLOT[2] == "plot"
    assert len(texts) > len(data.rotten_tomatoes("train")[0])


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split"):
        data.rotten_tomatoes("validation")


def test_shortcut_token_marks_only_fresh_in_train_and_is_label_independent_in_test():
    fresh = data.SENTIMENT_LABELS.index("fresh")
    texts, labels = data.rotten_tomatoes_shortcut("train")
    marked = np.array([t.startswith(data.SHORTCUT_TOKEN) for t in texts])
    assert marked[labels != fresh].sum() == 0
    assert 0.5 < marked[labels == fresh].mean() < 0.7
    texts, labels = data.rotten_tomatoes_shortcut("test")
    marked = np.array([t.startswith(data.SHORTCUT_TOKEN) for t in texts])
    assert 0.4 < marked[labels != fresh].mean() < 0.6 and 0.4 < marked[labels == fresh].mean() < 0.6
    clean, _ = data.rotten_tomatoes("test")
    assert all(data.SHORTCUT_TOKEN not in t.lower() for t in clean)
    assert data.rotten_tomatoes_shortcut("test")[0] == texts


def test_python_source_holds_out_whole_files():
    names = {s: [n for n, _ in data.python_source(s)] for s in SPLITS}
    assert not set(names["train"]) & set(names["test"]) and not set(names["dev"]) & set(names["test"])
    total = sum(len(data.python_source_text(s)) for s in SPLITS)
    assert 2_000_000 <= total <= 4_000_000
    assert "def " in data.python_source_text("test")


def test_parens_is_deterministic_and_depth_is_exact():
    a = data.parens("test", n_sequences=20, seed=3)
    b = data.parens("test", n_sequences=20, seed=3)
    assert all(ta == tb and np.array_equal(da, db) for (ta, da), (tb, db) in zip(a, b))
    assert a[0][0] != data.parens("train", n_sequences=1, seed=3)[0][0]
    for tokens, depth in a:
        d = 0
        for tok, got in zip(tokens, depth):
            d += (tok == "(") - (tok == ")")
            assert d == got and d >= 0


def test_mnist_split_is_stratified_and_disjoint():
    xs = {s: data.mnist(s) for s in SPLITS}
    assert [len(xs[s][0]) for s in SPLITS] == [4000, 500, 500]
    assert all(np.bincount(xs[s][1]).tolist() == [len(xs[s][1]) // 10] * 10 for s in SPLITS)
    x, _ = xs["test"]
    assert x.shape[1:] == (28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    flat = {s: {xs[s][0][i].tobytes() for i in range(len(xs[s][0]))} for s in SPLITS}
    assert not flat["train"] & flat["test"]
