"""Corpus audit: exact aggregation on an analytic model, shortcut detection on the shipped models."""
import json
import math

import numpy as np
import pytest

import data
from textexplain import audit

pytestmark = pytest.mark.usefixtures("single_thread")

WEIGHTS = {"junk": 4.0, "good": 1.0, "bad": -1.0, "fine": 0.2, "dull": -0.3, "film": 0.0}


@pytest.fixture
def model(bag_model):
    return bag_model(WEIGHTS)


def test_exact_aggregation_on_bag_model(model):
    # gradient x input on this model is exact: score = +w/2 for class 1 ("pos"), -w/2 for class 0
    texts = ["junk good film", "junk fine film", "junk bad good", "bad dull film", "bad film", "bad dull",
             "good good fine", "mystery junk good"]
    report = audit.audit(model, texts, method="gradient_x_input", min_count=2, progress=False)
    p = model.predict_proba(texts)
    assert report.predictions == list(p.argmax(1)) == report.targets
    pos = {s.token: s for s in report.stats["pos"]}
    junk = pos["junk"]
    assert junk.count == 4 and junk.n_texts == 4
    assert junk.mean == pytest.approx(2.0) and junk.std == pytest.approx(0.0, abs=1e-6)
    assert junk.lower_bound == pytest.approx(2.0)
    good = pos["good"]  # "good" occurs 5 times in 4 texts, all predicted pos
    assert (good.count, good.n_texts, good.mean) == (5, 4, pytest.approx(0.5))
    assert report.rank_of("junk", "pos") == 1
    neg = {s.token: s for s in report.stats["neg"]}
    assert neg["bad"].mean == pytest.approx(0.5) and neg["bad"].count == 3
    assert report.rank_of("bad", "neg") == 1
    assert report.examples_for("junk", "pos")[0]["score"] == pytest.approx(2.0)
    assert report.examples_for("junk", "pos")[0]["text"] == "junk good film"  # ties: earliest text first


def test_rankings_and_normalization(model):
    texts = ["junk film"] * 3 + ["good film"] * 2 + ["fine film", "fine good", "fine bad", "good good"]
    r = audit.audit(model, texts, method="gradient_x_input", min_count=2, rank_by="total", progress=False)
    # total score for the class (junk 3 x 2.0, good 5 x 0.5, fine 2 x 0.1)
    assert [(s.token, s.total) for s in r.stats["pos"]][:3] == [("junk", pytest.approx(6.0)),
                                                              ("good", pytest.approx(2.5)),
                                                              ("fine", pytest.approx(0.2))]
    fine = next(s for s in r.stats["pos"] if s.token == "fine")
    values = np.array([0.1, 0.1])  # "fine bad" is predicted neg, so two occurrences count for pos
    assert fine.count == 2
    assert fine.lower_bound == pytest.approx(values.mean() - 1.96 * values.std(ddof=1) / math.sqrt(2))
    texts = ["junk film"] * 3 + ["fine film"] * 70
    by_total = audit.audit(model, texts, method="gradient_x_input", rank_by="total", progress=False)
    by_mean = audit.audit(model, texts, method="gradient_x_input", rank_by="mean", progress=False)
    assert [s.token for s in by_total.stats["pos"]][:2] == ["fine", "junk"]  # 70 x 0.1 > 3 x 2.0
    assert [s.token for s in by_mean.stats["pos"]][:2] == ["junk", "fine"]  # 2.0 > 0.1 per occurrence
    rare = audit.audit(model, texts[1:], method="gradient_x_input", rank_by="mean", progress=False)
    assert rare.rank_of("junk", "pos") is None  # seen twice: below min_count=3
    l1 = audit.audit(model, ["junk good"], method="gradient_x_input", min_count=2, normalize="l1", progress=False)
    assert l1.stats["pos"] == []  # every token seen once: not ranked
    l1 = audit.audit(model, ["junk good"] * 2, method="gradient_x_input", min_count=2, normalize="l1",
                     progress=False)
    assert {s.token: s.mean for s in l1.stats["pos"]} == pytest.approx({"junk": 0.8, "good": 0.2})


def test_reliance_is_a_lower_bound_per_text_that_rare_tokens_cannot_win_by_chance(model):
    """A token twice as strong in 2 texts loses to one in every text; the bound matches a t interval
    over the class's texts with zeros where the token is absent; min_count grows with the corpus."""
    texts = ["junk junk good"] * 2 + ["good fine"] * 38
    r = audit.audit(model, texts, method="gradient_x_input", min_count=2, flip_top=0, progress=False)
    assert [s.token for s in r.stats["pos"]] == ["good", "fine", "junk"]
    per_occurrence = audit.audit(model, texts, method="gradient_x_input", min_count=2, rank_by="lower_bound",
                                 flip_top=0, progress=False)
    assert per_occurrence.rank_of("junk", "pos") == 1  # per occurrence the rare one is stronger (2.0 vs 0.5)
    junk = next(s for s in r.stats["pos"] if s.token == "junk")
    per_text = np.zeros(40)
    per_text[:2] = 4.0  # two occurrences of +2.0 in each of the two texts
    from scipy import stats as st
    expected = per_text.mean() - st.t.ppf(0.975, 39) * per_text.std(ddof=1) / math.sqrt(40)
    assert junk.reliance == pytest.approx(expected) and junk.reliance < 0 < junk.total
    good = next(s for s in r.stats["pos"] if s.token == "good")
    assert good.reliance == pytest.approx(0.5)  # 0.5 in every text: no spread
    assert r.min_count == 2 and audit.audit(model, texts, method="gradient_x_input", flip_top=0,
                                             progress=False).min_count == 3
    assert [audit.default_min_count(n) for n in (10, 300, 301, 1000, 5000)] == [3, 3, 4, 10, 50]
    assert "Student's t" in r.to_markdown() and r.to_dict()["statistic"].startswith("reliance")


def test_target_label_and_unknown_words_pooled(model):
    texts = ["zzz good", "qqq good", "zzz bad", "zzz film"]
    r = audit.audit(model, texts, labels=["pos", "pos", "pos", "pos"], target="label", min_count=2,
                    method="gradient_x_input", progress=False)
    assert r.targets == [1, 1, 1, 1]
    unk = next(s for s in r.stats["pos"] if s.token == "<unk>")
    assert not unk.in_vocab and unk.count == 4 and unk.forms == {"zzz": 3, "qqq": 1}
    assert r.rank_of("zzz", "pos") is None
    assert "out of vocabulary: zzz ×3, qqq ×1" in r.to_markdown()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(texts=[]), ValueError, "empty"),
    (dict(texts="good film"), TypeError, "list of texts"),
    (dict(target="label"), ValueError, "needs labels"),
    (dict(labels=["pos"]), ValueError, "one label per text"),
    (dict(rank_by="median"), ValueError, "rank_by"),
    (dict(normalize="z"), ValueError, "normalize"),
    (dict(min_count=1), ValueError, "min_count"),
    (dict(flip_top=-1), ValueError, "flip_top"),
    (dict(method="magic"), ValueError, "unknown method"),
])
def test_bad_input(model, kwargs, error, match):
    args = dict(texts=["good film", "bad film"]) | kwargs
    with pytest.raises(error, match=match):
        audit.audit(model, progress=False, **args)


def test_remove_token_and_flip_test(model):
    assert audit.remove_token(model, "rtcritic : a fine film", "rtcritic") == ": a fine film"
    assert audit.remove_token(model, "junk good junk", "junk") == "good"
    texts = ["junk good", "good fine", "bad film", "dull bad"]
    labels = ["pos", "pos", "neg", "neg"]
    f = audit.flip_test(model, texts, labels, "junk", "pos")
    assert f["accuracy"] == 1.0 and f["accuracy_removed"] == 1.0
    assert f["accuracy_flipped"] == 0.5  # "junk bad film" and "junk dull bad" now look positive
    assert f["drop"] == 0.5
    # the drop is measured from the token's absence: here "junk" already misleads a neg text as is
    texts, labels = ["junk good", "good fine", "junk bad", "dull bad"], ["pos", "pos", "neg", "neg"]
    f = audit.flip_test(model, texts, labels, "junk", "pos")
    assert (f["accuracy"], f["accuracy_removed"], f["accuracy_flipped"]) == (0.75, 1.0, 0.5) and f["drop"] == 0.5
    f = audit.flip_test(model, ["junk", "junk good", "bad"], ["pos", "pos", "neg"], "junk", "pos")
    assert f["n"] == 2 and f["drop"] == 0.5  # "junk" alone has nothing left without it: left out


def test_audit_flip_tests_its_top_candidates_and_ranks_the_headline_by_the_drop(model):
    texts = ["junk good"] * 4 + ["fine film"] * 4 + ["bad film"] * 4 + ["dull bad"] * 4
    labels = ["pos"] * 8 + ["neg"] * 8
    r = audit.audit(model, texts, labels, method="gradient_x_input", min_count=2, flip_top=3, progress=False)
    assert r.flip_reference == "gold labels"
    pos = r.headline("pos")
    assert {f["token"] for f in pos} == {s.token for s in r.top("pos", 3)}
    assert [f["token"] for f in pos][0] == "junk" and pos[0]["drop"] == 0.5  # all 8 neg texts look positive
    drops = [f["drop"] for f in r.headline()]
    assert drops == sorted(drops, reverse=True) and len(r.flips) == 6
    assert pos[0] == dict(audit.flip_test(model, texts, labels, "junk", "pos"), rank=pos[0]["rank"])
    assert "Removing these tokens changes the predictions most" in r.to_markdown()
    unlabelled = audit.audit(model, texts, method="gradient_x_input", min_count=2, flip_top=1, progress=False)
    assert unlabelled.flip_reference == "model's own predictions"
    assert unlabelled.headline("pos")[0]["accuracy"] == 1.0  # agreement with its own predictions
    assert audit.audit(model, texts, labels, method="gradient_x_input", flip_top=0, progress=False).flips == []


def page_sample(n=200, seed=0):
    """The explanations page's default audit sample: 200 shortcut test texts drawn with seed 0."""
    texts, gold = data.rotten_tomatoes_shortcut("test")
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
    return [texts[i] for i in keep], [data.SENTIMENT_LABELS[int(gold[i])] for i in keep]


# sampling budgets cut to keep the test short (the page's: IG max_steps 200, LIME 1000 samples, SHAP's default)
TEST_BUDGETS = {"integrated_gradients": {"n_steps": 16}, "smoothgrad": {"n_samples": 10},
                "lime": {"num_samples": 300}, "shap": {"budget": 128}}
SHORTCUT_DROP = 0.15  # rtcritic's flip costs 0.175 on this sample (35 of 200 texts)
CLEAN_DROP = 0.14  # the clean model's largest, "too" for rotten, costs 0.125 (a real cue of sentiment)


@pytest.mark.parametrize("method", ["gradient_x_input", "integrated_gradients", "smoothgrad", "occlusion",
                                    "lime", "shap"])
def test_shortcut_leads_the_ranking_and_the_flip_headline_on_the_page_defaults(method):
    """The issue-19 case: 200 texts of seed 0, reliance ranking, min_count and flip tests by default.
    (Ranked by the per-occurrence lower bound, rtcritic came 4th behind "face", 3 times in 2 texts.)"""
    texts, labels = page_sample()
    shortcut = data.load_model("sentiment-shortcut")
    r = audit.audit(shortcut, texts, labels, method=method, progress=False, **TEST_BUDGETS.get(method, {}))
    assert r.min_count == 3 and r.rank_by == "reliance"
    assert r.rank_of(data.SHORTCUT_TOKEN, "fresh") == 1, [s.token for s in r.top("fresh", 5)]
    head = r.headline("fresh")[0]
    assert head["token"] == data.SHORTCUT_TOKEN and head["drop"] >= SHORTCUT_DROP, r.headline("fresh")
    assert r.headline()[0]["token"] == data.SHORTCUT_TOKEN


@pytest.mark.parametrize("method", ["gradient_x_input", "occlusion"])
def test_no_token_of_the_clean_model_costs_a_comparable_drop(method):
    texts, labels = page_sample()
    clean = data.load_model("sentiment-lstm")
    c = audit.audit(clean, texts, labels, method=method, progress=False)
    # the clean model never saw the junk token: it is one more unknown word, pooled under <unk>
    assert c.rank_of(data.SHORTCUT_TOKEN, "fresh") is None and c.rank_of(data.SHORTCUT_TOKEN, "rotten") is None
    assert all(data.SHORTCUT_TOKEN in s.forms for lab in c.labels for s in c.stats[lab] if s.token == "<unk>")
    assert len(c.flips) == 10 and max(f["drop"] for f in c.flips) <= CLEAN_DROP, c.headline()[:3]
    assert audit.flip_test(clean, texts, labels, data.SHORTCUT_TOKEN, "fresh")["drop"] <= 0.02


def test_report_outputs(model):
    r = audit.audit(model, ["junk <b>good</b> film"] * 3, method="gradient_x_input", progress=False)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["tokens"]["pos"][0]["token"] == "junk" and d["tokens"]["pos"][0]["rank"] == 1
    page = r._repr_html_()
    assert "<b>good" not in page and "&lt;b&gt;" in page
    fig = r.figure(top=5)
    assert len(fig.data) == 2 and list(fig.data[1].y)[-1] == "junk"


def test_cli_audit(tmp_path, capsys):
    from textexplain.cli import main

    out = tmp_path / "report.json"
    assert main(["audit", "--model", "sentiment-shortcut", "--split", "test", "--method", "gradient_x_input",
                 "--limit", "200", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rotten_tomatoes_shortcut/test" in printed and "Removing these tokens changes the predictions most" in printed
    report = json.loads(out.read_text())
    assert report["tokens"]["fresh"][0]["token"] == "rtcritic" and report["n_texts"] == 200
    assert report["min_count"] == 3 and report["rank_by"] == "reliance" and len(report["flips"]) == 10
    assert report["flips"][0]["token"] == "rtcritic" and report["flips"][0]["drop"] >= SHORTCUT_DROP
    assert main(["audit", "--model", "sentiment-lstm", "--method", "occlusion", "--set", "n_steps=3"]) == 2
    assert "no parameter 'n_steps'" in capsys.readouterr().err
    assert main(["audit", "--model", "mnist-cnn"]) == 2
    assert "not a text classifier" in capsys.readouterr().err
