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
    r = audit.audit(model, texts, method="gradient_x_input", min_count=2, progress=False)
    # default: total score for the class (junk 3 x 2.0, good 5 x 0.5, fine 2 x 0.1)
    assert [(s.token, s.total) for s in r.stats["pos"]][:3] == [("junk", pytest.approx(6.0)),
                                                              ("good", pytest.approx(2.5)),
                                                              ("fine", pytest.approx(0.2))]
    fine = next(s for s in r.stats["pos"] if s.token == "fine")
    values = np.array([0.1, 0.1])  # "fine bad" is predicted neg, so two occurrences count for pos
    assert fine.count == 2
    assert fine.lower_bound == pytest.approx(values.mean() - 1.96 * values.std(ddof=1) / math.sqrt(2))
    texts = ["junk film"] * 3 + ["fine film"] * 70
    by_total = audit.audit(model, texts, method="gradient_x_input", progress=False)
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


def test_shortcut_found_by_gradient_and_perturbation_methods():
    texts, labels = data.rotten_tomatoes_shortcut("test")
    texts, labels = texts[:150], labels[:150]
    shortcut, clean = data.load_model("sentiment-shortcut"), data.load_model("sentiment-lstm")
    for method, params in [("gradient_x_input", {}), ("integrated_gradients", {"n_steps": 8}), ("occlusion", {})]:
        r = audit.audit(shortcut, texts, labels, method=method, progress=False, **params)
        assert r.rank_of(data.SHORTCUT_TOKEN, "fresh") == 1, (method, [s.token for s in r.top("fresh", 5)])
        assert r.rank_of(data.SHORTCUT_TOKEN, "rotten") != 1
    c = audit.audit(clean, texts, labels, method="gradient_x_input", progress=False)
    # the clean model never saw the junk token: it is one more unknown word, pooled under <unk>
    assert c.rank_of(data.SHORTCUT_TOKEN, "fresh") is None and c.rank_of(data.SHORTCUT_TOKEN, "rotten") is None
    assert all(data.SHORTCUT_TOKEN in s.forms for lab in c.labels for s in c.stats[lab] if s.token == "<unk>")
    drop_shortcut = audit.flip_test(shortcut, texts, labels, data.SHORTCUT_TOKEN, "fresh")["drop"]
    drop_clean = audit.flip_test(clean, texts, labels, data.SHORTCUT_TOKEN, "fresh")["drop"]
    assert drop_shortcut > 0.15 and abs(drop_clean) < 0.05


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
                 "--limit", "120", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rotten_tomatoes_shortcut/test" in printed and "Flip test `rtcritic`" in printed
    report = json.loads(out.read_text())
    assert report["tokens"]["fresh"][0]["token"] == "rtcritic" and report["n_texts"] == 120
    assert report["flips"][1]["token"] == "rtcritic" and report["flips"][1]["drop"] > 0.1
    assert main(["audit", "--model", "sentiment-lstm", "--method", "occlusion", "--set", "n_steps=3"]) == 2
    assert "no parameter 'n_steps'" in capsys.readouterr().err
    assert main(["audit", "--model", "mnist-cnn"]) == 2
    assert "not a text classifier" in capsys.readouterr().err
