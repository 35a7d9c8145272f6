"""Faithfulness metrics against an analytic bag-of-weights model whose exact token ranking is known."""
import numpy as np
import pytest
import torch

from textexplain import Explanation, metrics

pytestmark = pytest.mark.usefixtures("single_thread")

WEIGHTS = {"a": 3.0, "b": 1.0, "c": -1.0, "d": 0.5, "e": 2.0, "f": -2.5, "g": 0.25, "h": -0.1,
           "i": 1.5, "j": -0.7}


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture
def model(bag_model):
    return bag_model(WEIGHTS)


def true_scores(model, text):
    ids = model.encode(text)
    return ids, np.array([WEIGHTS[t] for t in model.tokenize(text)])


def test_exact_values_on_four_tokens(model):
    ids, scores = true_scores(model, "a b c d")  # ranking a, b, d, c; ceil bins -> k = 1, 1, 2, 2, 2
    r = metrics.faithfulness_scores(model, ids, scores, target=1)
    p = sigmoid(3.5)
    assert r["bin_sizes"] == [1, 1, 2, 2, 2]
    assert r["prob"] == pytest.approx(p, abs=1e-6)
    want_comp = np.mean([p - sigmoid(0.5)] * 2 + [p - sigmoid(-0.5)] * 3)
    want_suff = np.mean([p - sigmoid(3.0)] * 2 + [p - sigmoid(4.0)] * 3)
    assert r["comprehensiveness"] == pytest.approx(want_comp, abs=1e-6)
    assert r["sufficiency"] == pytest.approx(want_suff, abs=1e-6)
    deletion = sigmoid(np.array([3.5, 0.5, -0.5, -1.0, 0.0]))  # all removed = the pad token alone
    insertion = sigmoid(np.array([0.0, 3.0, 4.0, 4.5, 3.5]))
    x = np.linspace(0, 1, 5)
    np.testing.assert_allclose(r["deletion_curve"], deletion, atol=1e-6)
    np.testing.assert_allclose(r["insertion_curve"], insertion, atol=1e-6)
    assert r["deletion_auc"] == pytest.approx(np.trapezoid(deletion, x), abs=1e-6)
    assert r["insertion_auc"] == pytest.approx(np.trapezoid(insertion, x), abs=1e-6)
    np.testing.assert_allclose(r["leave_one_out"], p - sigmoid(3.5 - scores), atol=1e-6)
    assert r["loo_kendall_tau"] == pytest.approx(1.0)


def test_true_ranking_beats_reversed_and_random(model):
    text = "a b c d e f g h i j"
    ids, scores = true_scores(model, text)
    best = metrics.faithfulness_scores(model, ids, scores, target=1)
    worst = metrics.faithfulness_scores(model, ids, -scores, target=1)
    assert best["comprehensiveness"] > worst["comprehensiveness"]
    assert best["sufficiency"] < worst["sufficiency"]
    assert best["deletion_auc"] < worst["deletion_auc"]
    assert best["insertion_auc"] > worst["insertion_auc"]
    assert worst["loo_kendall_tau"] == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rand = metrics.faithfulness_scores(model, ids, rng.standard_normal(len(ids)), target=1)
        # removing the k largest weights is the largest possible drop for every k (additive logit)
        assert best["comprehensiveness"] >= rand["comprehensiveness"] - 1e-9
        assert best["sufficiency"] <= rand["sufficiency"] + 1e-9
        assert best["deletion_auc"] <= rand["deletion_auc"] + 1e-9
        assert best["insertion_auc"] >= rand["insertion_auc"] - 1e-9
        assert rand["loo_kendall_tau"] < 1


def test_target_class_zero_mirrors_class_one(model):
    ids, scores = true_scores(model, "a b c d e")
    r1 = metrics.faithfulness_scores(model, ids, scores, target=1)
    r0 = metrics.faithfulness_scores(model, ids, -scores, target=0)
    # p(0) = 1 - p(1) and the ranking for class 0 is the reverse: comprehensiveness is the same
    assert r0["comprehensiveness"] == pytest.approx(
        metrics.faithfulness_scores(model, ids, -scores, target=1)["comprehensiveness"] * -1, abs=1e-6)
    assert r0["loo_kendall_tau"] == pytest.approx(1.0)
    assert r0["prob"] == pytest.approx(1 - r1["prob"], abs=1e-6)


def test_leave_one_out_with_itself_has_tau_one(model):
    ids, _ = true_scores(model, "a b c d e f")
    loo = metrics.leave_one_out(model, ids, target=1)
    assert metrics.kendall_tau(loo, loo) == pytest.approx(1.0)
    r = metrics.faithfulness_scores(model, ids, loo, target=1)
    assert r["loo_kendall_tau"] == pytest.approx(1.0)
    np.testing.assert_allclose(r["leave_one_out"], loo, atol=1e-7)


def test_kendall_tau_undefined_cases():
    assert np.isnan(metrics.kendall_tau([1.0], [2.0]))
    assert np.isnan(metrics.kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert metrics.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_masks_agree_when_unk_and_pad_weigh_zero(model, bag_model):
    ids, scores = true_scores(model, "a b c d e f")
    d = metrics.faithfulness_scores(model, ids, scores, target=1, mask="delete")
    for mask in ("unk", "pad", "<unk>"):
        u = metrics.faithfulness_scores(model, ids, scores, target=1, mask=mask)
        for key in metrics.METRICS:
            assert d[key] == pytest.approx(u[key], abs=1e-6)
    heavy_unk = bag_model(WEIGHTS)
    with torch.no_grad():
        heavy_unk.embedding.weight[heavy_unk.unk_id] = -5.0
    u2 = metrics.faithfulness_scores(heavy_unk, ids, scores, target=1, mask="unk")
    assert u2["comprehensiveness"] > d["comprehensiveness"]  # each unk now pulls p(1) down further


def test_explanation_gets_metrics_stored(model):
    ids, scores = true_scores(model, "a b c")
    e = Explanation(text="a b c", tokens=["a", "b", "c"], token_ids=ids, scores=scores, method="hand",
                    target=1, labels=model.labels, probs=model.predict_proba_ids([ids])[0])
    r = metrics.faithfulness(model, e)
    assert set(metrics.METRICS) <= set(r)
    assert e.metrics["comprehensiveness"] == r["comprehensiveness"]
    e2 = Explanation(text="a b c", tokens=["a", "b", "c"], token_ids=ids, scores=scores, method="hand",
                     target=1, labels=model.labels, probs=e.probs)
    metrics.faithfulness(model, e2, store=False)
    assert e2.metrics == {}


def test_one_batched_pass_per_explanation(model):
    calls = []
    forward = model.module.forward
    model.module.forward = lambda ids: (calls.append(ids.shape), forward(ids))[1]
    ids, scores = true_scores(model, "a b c d e f g h")
    r = metrics.faithfulness_scores(model, ids, scores, target=1, max_batch_tokens=100_000)
    assert len(calls) == 1
    assert calls[0][0] == r["n_model_evaluations"]
    assert r["n_model_evaluations"] < 1 + 2 * 5 + 2 * 9 + 8  # duplicates (e.g. the full text) scored once
    texts = ("a b c d", "e f g", "h i j a b")
    expls = [Explanation(text=t, tokens=t.split(), token_ids=true_scores(model, t)[0],
                         scores=true_scores(model, t)[1], method="hand", target=1, labels=model.labels,
                         probs=[0.5, 0.5]) for t in texts]
    calls.clear()
    results = metrics.evaluate(model, expls, max_batch_tokens=100_000)
    assert len(calls) == len(texts)
    assert [e.metrics["comprehensiveness"] for e in expls] == [r["comprehensiveness"] for r in results]


def test_curve_points_subsample(model):
    ids, scores = true_scores(model, "a b c d e f g h i j")
    full = metrics.faithfulness_scores(model, ids, scores, target=1)
    few = metrics.faithfulness_scores(model, ids, scores, target=1, curve_points=6)
    assert few["curve_fractions"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert few["deletion_curve"] == full["deletion_curve"][::2]
    assert few["deletion_auc"] == pytest.approx(full["deletion_auc"], abs=0.05)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=[1.0, 2.0]), "one score per token"),
    (dict(scores=[1.0, np.nan, 0.0]), "NaN"),
    (dict(target=5), "out of range"),
    (dict(mask="mask"), "mask="),
    (dict(bins=(0.0, 0.5)), "fractions"),
])
def test_bad_input_is_refused(model, kwargs, match):
    args = dict(token_ids=model.encode("a b c"), scores=[1.0, 2.0, 3.0], target=1) | kwargs
    with pytest.raises(ValueError, match=match):
        metrics.faithfulness_scores(model, **args)


def test_shipped_model_leave_one_out_beats_random(sentiment_lstm):
    text = "a gorgeous , witty and moving film , though the ending drags a bit"
    ids = sentiment_lstm.encode(text)
    target = int(sentiment_lstm.predict_proba_ids([ids])[0].argmax())
    loo = metrics.leave_one_out(sentiment_lstm, ids, target)
    oracle = metrics.faithfulness_scores(sentiment_lstm, ids, loo, target)
    rng = np.random.default_rng(1)
    rand = [metrics.faithfulness_scores(sentiment_lstm, ids, rng.standard_normal(len(ids)), target)
            for _ in range(5)]
    assert oracle["loo_kendall_tau"] == pytest.approx(1.0)
    assert oracle["comprehensiveness"] > max(r["comprehensiveness"] for r in rand)
    assert oracle["deletion_auc"] < np.mean([r["deletion_auc"] for r in rand])


def test_report_over_a_sample(model):
    texts = ["a b c d e f", "g h i j a", "c f j b", "e e a h i", "b d f h j g"]
    report = metrics.faithfulness_report(model, texts, ["gradient_x_input", "occlusion"], progress=False,
                                         method_params={"occlusion": {"mask": "delete"}})
    assert report.methods == ["gradient_x_input", "occlusion", "random"]
    summary = {(s["method"], s["metric"]): s for s in report.summary()}
    for method in ("gradient_x_input", "occlusion"):  # both rank by the true weights on this model
        assert summary[method, "loo_kendall_tau"]["mean"] == pytest.approx(1.0)
        assert summary[method, "comprehensiveness"]["mean"] > summary["random", "comprehensiveness"]["mean"]
        assert summary[method, "deletion_auc"]["mean"] < summary["random", "deletion_auc"]["mean"]
        assert summary[method, "comprehensiveness"]["n"] == len(texts)
    table = report.to_markdown()
    assert table.count("\n") == 2 + 3 - 1 and "comprehensiveness ↑" in table and "sufficiency ↓" in table
    assert len(report.figure().data) == 3 * len(metrics.METRICS)
    with pytest.raises(ValueError, match="not in methods"):
        metrics.faithfulness_report(model, texts, ["occlusion"], method_params={"lime": {}}, progress=False)


def test_random_floor_is_the_mean_of_seeded_draws_with_their_spread(model):
    ids, scores = true_scores(model, "a b c d e f g h i j")
    floor = metrics.random_floor(model, ids, target=1, draws=8, seed=3)
    rng = np.random.default_rng(3)
    one_by_one = [metrics.faithfulness_scores(model, ids, metrics.random_scores(len(ids), rng), target=1)
                  for _ in range(8)]
    for key in metrics.RANDOM_FLOOR_METRICS:
        values = [r[key] for r in one_by_one]
        assert floor[key] == pytest.approx(np.mean(values)) and floor[f"{key}_std"] == pytest.approx(np.std(values))
    assert floor["loo_kendall_tau_std"] > 0 and abs(floor["loo_kendall_tau"]) < 0.5  # random: tau near 0 on average
    np.testing.assert_allclose(floor["deletion_curve"], np.mean([r["deletion_curve"] for r in one_by_one], axis=0))
    assert floor == metrics.random_floor(model, ids, target=1, draws=8, seed=3)  # seeded
    true = metrics.faithfulness_scores(model, ids, scores, target=1)
    assert true["loo_kendall_tau"] > floor["loo_kendall_tau"] + 3 * floor["loo_kendall_tau_std"]
    with pytest.raises(ValueError, match="draws"):
        metrics.random_floor(model, ids, target=1, draws=0)
