"""Known answers for the workbench's library: classification metrics against scikit-learn, ECE by
hand, HotFlip's minimal flips on a linear model (brute force), PCA against scikit-learn, the
projector's hook, filters and paging against plain Python, counterfactual edits and the global view."""
import itertools
import re
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.decomposition import PCA

from textexplain import TextModel, WordTokenizer, audit, metrics
from textexplain import counterfactuals as cf
from textexplain import projection
from textexplain.workbench import REGEX_CONTEXTUAL, RowFilter, Workbench

WORDS = ["<pad>", "<unk>", "good", "great", "fine", "bad", "awful", "dull", "movie", "plot", "a", "the"]


class BagLinear(torch.nn.Module):
    """Sum of token embeddings, then a linear head: the margin is linear in the embeddings."""

    def __init__(self, emb: np.ndarray, head: np.ndarray):
        super().__init__()
        self.emb = torch.nn.Embedding(*emb.shape, padding_idx=0)
        self.out = torch.nn.Linear(emb.shape[1], head.shape[0], bias=False)
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor(emb, dtype=torch.float32))
            self.emb.weight[0] = 0
            self.out.weight.copy_(torch.tensor(head, dtype=torch.float32))

    def forward(self, ids):
        return self.out(self.emb(ids).sum(dim=1))


def bag_model(seed: int = 0, dim: int = 3) -> TextModel:
    rng = np.random.default_rng(seed)
    module = BagLinear(rng.normal(size=(len(WORDS), dim)), rng.normal(size=(2, dim))).eval()
    return TextModel(module, WORDS, ["neg", "pos"], module.emb, tokenizer=WordTokenizer(), name="bag")


def sentiment_model() -> TextModel:
    """Hand-set one-dimensional weights: positive words push 'pos', negative ones 'neg'."""
    weights = {"good": 1.0, "great": 2.0, "fine": 0.5, "bad": -1.0, "awful": -2.0, "dull": -0.7}
    emb = np.array([[weights.get(w, 0.0)] for w in WORDS])
    module = BagLinear(emb, np.array([[-1.0], [1.0]])).eval()
    return TextModel(module, WORDS, ["neg", "pos"], module.emb, tokenizer=WordTokenizer(), name="sent")


# ----------------------------------------------------------------------------- metrics

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_scores_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    gold, pred = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    pred[pred == 3] = 2  # class 3 never predicted: zero_division
    out = metrics.classification_scores(gold, pred, list("abcd"))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred))
    np.testing.assert_array_equal(out["confusion"], skm.confusion_matrix(gold, pred, labels=range(4)))
    p, r, f, s = skm.precision_recall_fscore_support(gold, pred, labels=range(4), zero_division=0)
    np.testing.assert_allclose([c["precision"] for c in out["per_class"]], p)
    np.testing.assert_allclose([c["recall"] for c in out["per_class"]], r)
    np.testing.assert_allclose([c["f1"] for c in out["per_class"]], f)
    assert [c["support"] for c in out["per_class"]] == list(s)
    assert out["macro"]["f1"] == pytest.approx(skm.f1_score(gold, pred, average="macro", zero_division=0))


def test_ece_by_hand():
    conf = [0.05, 0.15, 0.55, 0.58, 0.95, 1.0]
    correct = [False, True, True, False, True, True]
    out = metrics.calibration(conf, correct, bins=10)
    # bins 0: |0-0.05|, 1: |1-0.15|, 5: 2*|0.5-0.565|, 9: 2*|1-0.975|  (1.0 falls in the last bin)
    ece = (0.05 + 0.85 + 2 * 0.065 + 2 * 0.025) / 6
    assert out["ece"] == pytest.approx(ece)
    assert [b["count"] for b in out["bins"]] == [1, 1, 0, 0, 0, 2, 0, 0, 0, 2]
    assert out["bins"][5]["confidence"] == pytest.approx(0.565) and out["bins"][5]["accuracy"] == 0.5
    assert out["bins"][2]["accuracy"] is None


# ----------------------------------------------------------------------------- table

TEXTS = ["a good movie", "a bad movie", "great great plot", "the dull plot", "fine", "awful awful movie",
         "a movie", "Good plot but bad", "the great movie is fine", "bad"]
GOLD = ["pos", "neg", "pos", "neg", "pos", "neg", "pos", "neg", "pos", "pos"]


@pytest.fixture(scope="module")
def bench():
    return Workbench(sentiment_model(), TEXTS, GOLD, meta={"source": ["x", "y"] * 5})


def test_columns(bench):
    probs = bench.model.predict_proba(TEXTS)
    np.testing.assert_allclose(bench.probs, probs, rtol=1e-6)
    gold = np.array([["neg", "pos"].index(g) for g in GOLD])
    np.testing.assert_allclose(bench.loss, -np.log(probs[np.arange(10), gold]), rtol=1e-5)
    assert bench.length.tolist() == [len(t.split()) for t in TEXTS]
    assert bench.correct.tolist() == (probs.argmax(1) == gold).tolist()


def test_filters_match_plain_python(bench):
    rows = bench.rows(range(len(TEXTS)))

    def expect(pred):
        return [r["id"] for r in rows if pred(r)]

    assert bench.select(RowFilter(regex="movie")).tolist() == expect(lambda r: "movie" in r["text"].lower())
    assert bench.select(RowFilter(regex="Good")).tolist() == expect(lambda r: "Good" in r["text"])  # case kept
    assert bench.select(RowFilter(label="neg")).tolist() == expect(lambda r: r["label"] == "neg")
    assert bench.select(RowFilter(correct=False)).tolist() == expect(lambda r: not r["correct"])
    assert bench.select(RowFilter(confidence=(0.8, None), predicted="pos")).tolist() == \
        expect(lambda r: r["confidence"] >= 0.8 and r["predicted"] == "pos")
    assert bench.select(RowFilter(length=(2, 3), meta={"source": "y"})).tolist() == \
        expect(lambda r: 2 <= r["length"] <= 3 and r["meta"]["source"] == "y")
    assert bench.select(RowFilter(token="good")).tolist() == [0, 7]
    assert bench.select(RowFilter(ids=(9, 2, 5), label="pos")).tolist() == [2, 9]
    with pytest.raises(ValueError, match="regex"):
        bench.select(RowFilter(regex="("))

    with pytest.raises(ValueError, match="unknown meta"):
        bench.select(RowFilter(meta={"nope": "1"}))


def test_a_catastrophic_regex_stops_with_a_clear_error(monkeypatch):
    """Nested repetition backtracks on a long run of x: the corpus' one time budget stops it."""
    import textexplain.workbench as workbench

    monkeypatch.setattr(workbench, "REGEX_SECONDS", 0.2)
    wb = Workbench(bag_model(), ["x" * 3000] * 3, [0, 1, 0])
    with pytest.raises(ValueError, match="ran longer than 0.2 s"):
        wb.select(RowFilter(regex="(x+x+)+y"))



@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet="ab \n", max_size=6), min_size=1, max_size=6),
       pattern=st.sampled_from(["a", "ab", "a b", r"\s+a", r"a\s+", r"b\s*a", r"\ba", r"a\b", r"\Bb", r"[ab]+",
                                r"(?s)a.b", r"a[^b]b", r"b{2}", r"^a", r"a$", r"(?<=b)a", r"a(?=b)", r"x*", r"\b", r"\B"]))
def test_the_joined_scan_finds_exactly_the_rows_a_row_by_row_search_finds(texts, pattern):
    """Rows are scanned joined by newlines where that is exact; matches that run across rows (newlines,
    whitespace) and anchored, lookaround or empty-matching patterns are searched row by row: the rows
    found are those a plain search of each text finds."""
    import regex

    wb = Workbench.__new__(Workbench)
    wb.texts, wb._joined = list(texts), None
    rx = regex.compile(pattern, regex.IGNORECASE)
    want = [rx.search(t) is not None for t in texts]
    deadline = time.monotonic() + 60
    via = wb._searched(rx, deadline) if any(c in pattern for c in REGEX_CONTEXTUAL) or rx.search("") else \
        wb._joined_matches(rx, deadline)
    assert via.tolist() == want

def test_sort_and_paging_exact(bench):
    everything = bench.rows(range(len(TEXTS)))
    by_conf = sorted(everything, key=lambda r: (-r["confidence"], r["id"]))
    page = bench.page(sort="confidence", descending=True, offset=3, limit=4)
    assert page["total"] == 10 and [r["id"] for r in page["rows"]] == [r["id"] for r in by_conf[3:7]]
    by_text = sorted(everything, key=lambda r: (r["text"].lower(), r["id"]))
    assert [r["id"] for r in bench.page(sort="text", limit=10)["rows"]] == [r["id"] for r in by_text]
    by_len = sorted(everything, key=lambda r: (r["length"], r["id"]))
    assert [r["id"] for r in bench.page(sort="length", limit=10)["rows"]] == [r["id"] for r in by_len]
    assert bench.page(RowFilter(label="neg"), offset=8, limit=5)["rows"] == []
    with pytest.raises(ValueError, match="sort"):
        bench.page(sort="nope")


def test_metrics_on_selection_and_slices(bench):
    ids = bench.select(RowFilter(meta={"source": "x"}))
    m = bench.metrics(ids)
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(bench.correct[ids].mean())
    slices = {s["slice"]: s for s in bench.slices(None, "token", tokens=["movie"])}
    assert slices["with 'movie'"]["n"] == 5 and slices["without 'movie'"]["n"] == 5
    lengths = bench.slices(None, "length", bins=2)
    assert sum(s["n"] for s in lengths) == 10
    assert [s["slice"] for s in bench.slices(None, "meta", name="source")] == ["x", "y"]


def test_threshold_moves_predictions():
    wb = Workbench(sentiment_model(), TEXTS, GOLD)
    wb.set_threshold(0.0)
    assert wb.predicted.tolist() == [1] * 10 and wb.metrics()["accuracy"] == pytest.approx(0.6)
    wb.set_threshold(None)
    assert wb.predicted.tolist() == wb.probs.argmax(1).tolist()
    with pytest.raises(ValueError):
        wb.set_threshold(1.5)


# ----------------------------------------------------------------------------- counterfactuals

def test_replace_and_delete():
    model = sentiment_model()
    assert cf.replace_words(model, "a good, GOOD movie", {"good": ["bad"]})[0]["text"] == "a bad, bad movie"
    out = cf.delete_top_tokens(model, "a great dull movie", [0.0, 2.0, -1.0, 0.5], k=2)
    assert [o["text"] for o in out] == ["a dull movie", "a dull"]
    rows = cf.with_predictions(model, out)
    assert rows[0]["predicted"] == "neg"


def test_embedding_neighbours_by_cosine():
    model = sentiment_model()  # 1-D embeddings: cosine is the sign
    names = [t for t, _ in cf.embedding_neighbours(model, "good", k=3)]
    assert sorted(names[:2]) == ["fine", "great"] and names[2] not in ("bad", "awful", "dull")


def brute_force_min_changes(model, text, max_k):
    ids = model.encode(text)
    cls = int(model.predict_proba_ids([ids])[0].argmax())
    subs = [i for i in range(2, len(WORDS))]
    for k in range(1, max_k + 1):
        for positions in itertools.combinations(range(len(ids)), k):
            for words in itertools.product(subs, repeat=k):
                if any(ids[p] == w for p, w in zip(positions, words)):
                    continue
                new = list(ids)
                for p, w in zip(positions, words):
                    new[p] = w
                if int(model.logits_ids([new])[0].argmax()) != cls:
                    return k
    return None


@pytest.mark.parametrize("seed", range(6))
def test_hotflip_is_minimal_on_a_linear_model(seed):
    model = bag_model(seed)
    text = "good great fine movie plot"
    want = brute_force_min_changes(model, text, 3)
    got = cf.hotflip(model, text, max_changes=3, beam=1, per_step=1)
    if want is None:
        assert not got.flipped
    else:
        assert got.flipped and len(got.changes) == want
        assert got.predicted != got.original and got.predicted == model.predict(got.text)[0]


def test_hotflip_leaves_the_module_alone():
    model = sentiment_model()
    before = [p.detach().clone() for p in model.module.parameters()]
    r = cf.hotflip(model, "good great great movie", max_changes=3)
    assert r.flipped and len(r.changes) == 2  # one substitution moves the sum 5 by at most 4
    assert all(p.grad is None for p in model.module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.module.parameters()))
    assert not model.module.emb._forward_hooks


# ----------------------------------------------------------------------------- projector

def test_pca_matches_sklearn():
    x = np.random.default_rng(0).normal(size=(200, 6)) @ np.diag([5, 3, 1, 1, 0.5, 0.1])
    coords, ratio = projection.pca(x)
    ref = PCA(n_components=2).fit(x)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(coords), np.abs(ref.transform(x)), atol=1e-8)


def test_penultimate_is_the_heads_input_and_unhooks():
    model = bag_model(1)
    x = projection.penultimate(model, ["good movie", "a bad plot", "fine"], batch_size=2)
    emb = model.module.emb.weight.detach().numpy()
    want = [emb[model.encode(t)].sum(0) for t in ["good movie", "a bad plot", "fine"]]
    np.testing.assert_allclose(x, want, rtol=1e-6)
    assert not model.module.out._forward_pre_hooks


# ----------------------------------------------------------------------------- global view

def test_token_importance_known_answer():
    model = sentiment_model()
    texts, gold = ["great", "great movie", "bad movie", "a plot"], ["pos", "pos", "neg", "neg"]
    removed = {r["token"]: r for r in audit.token_importance(model, texts, gold, ["great", "movie"])}
    # without 'great' the two positive texts have margin 0: argmax picks 'neg' (index 0), so both are lost
    assert removed["great"]["n_texts_with"] == 2 and removed["great"]["drop"] == pytest.approx(0.5)
    assert removed["movie"]["drop"] == 0.0


def test_global_explanations_one_view():
    model = sentiment_model()
    out = audit.global_explanations(model, TEXTS, GOLD, method="gradient_x_input", slices={"first": range(5)},
                                    importance_top=3, flip_top=1, min_count=2)
    assert out["audit"]["n_texts"] == 10
    toks = {t["token"]: t for t in out["saliency"]["tokens"]}
    assert toks["great"]["count"] == 3 and toks["great"]["mean_abs"] == pytest.approx(2.0)  # |w| * |dlogit/de| = 2 * 1
    assert out["saliency"]["slices"][0]["n_texts"] == 5
    assert {r["mode"] for r in out["importance"]} == {"remove", "permute"}


def test_literal_fast_path_equals_searching_each_row():
    rng = np.random.default_rng(0)
    alphabet = list("abgo d")
    texts = ["".join(rng.choice(alphabet, rng.integers(1, 12))) or "a" for _ in range(400)] + ["go", "od", "good"]
    wb = Workbench(sentiment_model(), texts)
    for literal in ["go", "od", "good", "a b", "Go", "oo", "d"]:
        flags = 0 if any(c.isupper() for c in literal) else re.IGNORECASE
        want = [i for i, t in enumerate(texts) if re.search(re.escape(literal), t, flags)]
        assert wb.select(RowFilter(regex=literal)).tolist() == want, literal
    assert wb.select(RowFilter(regex="g.d")).tolist() == [i for i, t in enumerate(texts) if re.search("g.d", t, re.I)]
