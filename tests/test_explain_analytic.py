"""Explanation methods against models whose exact answers are known in closed form.

Bag of embeddings + linear head: logit_c(x) = W_c . sum_t e(x_t) + b_c, with e(pad) = 0. The exact
contribution of token t to class c is W_c . e(x_t); gradient x input, Integrated Gradients (any
rule, pad or zero baseline), Shapley values (exact and KernelSHAP) and leave-one-out occlusion must
all equal it. A tanh head F = g(w . s) gives closed-form IG: (w . e_t) / (w . s) * (g(w . s) - g(0)).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import textexplain as te
from textexplain.kernel_shap import exact_shapley, kernel_coalitions

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


WORDS = ["<pad>", "<unk>", "good", "bad", "plot", "acting", "not", "great", "dull", "film", "a", "the"]
EMB = np.array([
    [0.0, 0.0, 0.0, 0.0],    # <pad>: zero, so pad baseline == zero baseline for this model
    [0.1, -0.2, 0.0, 0.3],   # <unk>
    [1.0, 0.5, -0.3, 0.2],   # good
    [-1.2, 0.1, 0.4, -0.5],  # bad
    [0.2, 0.3, 0.1, 0.0],    # plot
    [0.4, -0.6, 0.2, 0.1],   # acting
    [-0.3, 0.2, 0.9, -0.2],  # not
    [1.5, 0.2, -0.1, 0.6],   # great
    [-0.9, -0.4, 0.3, -0.1], # dull
    [0.05, 0.1, -0.2, 0.3],  # film
    [0.0, 0.1, 0.1, -0.1],   # a
    [0.1, 0.0, -0.1, 0.0],   # the
])
HEAD = np.array([[-0.8, 0.3, 0.5, -0.4], [0.9, -0.2, -0.6, 0.7], [0.1, 0.8, -0.3, -0.2]])
BIAS = np.array([0.2, -0.1, 0.05])
LABELS = ["neg", "pos", "other"]


class BagOfEmbeddings(nn.Module):
    """logits = head(sum or mean of the token embeddings); ``nonlinear`` puts 3*tanh on class 1."""

    def __init__(self, pooling: str = "sum", nonlinear: bool = False):
        super().__init__()
        self.pooling, self.nonlinear = pooling, nonlinear
        self.emb = nn.Embedding(len(WORDS), EMB.shape[1], padding_idx=0)
        self.head = nn.Linear(EMB.shape[1], len(LABELS))
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor(EMB))
            self.head.weight.copy_(torch.tensor(HEAD))
            self.head.bias.copy_(torch.tensor(BIAS))

    def forward(self, ids):
        lengths = (ids != 0).sum(1, keepdim=True).clamp(min=1)
        s = self.emb(ids).sum(1)
        if self.pooling == "mean":
            s = s / lengths
        logits = self.head(s)
        if self.nonlinear:
            logits = torch.stack([logits[:, 0], 3 * torch.tanh(logits[:, 1] - BIAS[1]), logits[:, 2]], 1)
        return logits


def make_bag_model(pooling: str = "sum", nonlinear: bool = False) -> te.TextModel:
    module = BagOfEmbeddings(pooling, nonlinear)
    return te.TextModel(module.eval(), WORDS, LABELS, embedding=module.emb, tokenizer=te.WordTokenizer(), name="bag")


TEXT = "a good plot but not great acting , a dull film"  # 'but' and ',' are unknown -> <unk>


def contributions(model: te.TextModel, text: str, target: int, pooling: str = "sum") -> np.ndarray:
    ids = model.encode(text)
    c = EMB[ids] @ HEAD[target]
    return c / len(ids) if pooling == "mean" else c


@pytest.fixture(scope="module")
def bag():
    return make_bag_model()


@pytest.mark.parametrize("target", [0, 1, 2])
def test_gradient_x_input_is_exact(bag, target):
    e = te.GradientXInput(bag).explain(TEXT, target=target)
    np.testing.assert_allclose(e.scores, contributions(bag, TEXT, target), atol=1e-5)
    assert e.signed and e.target == target and e.method == "gradient_x_input"


@pytest.mark.parametrize("rule", ["adaptive", "gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                  "riemann_trapezoid"])
@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_integrated_gradients_is_exact_for_every_rule(bag, rule, baseline):
    e = te.IntegratedGradients(bag, n_steps=7, method=rule, baseline=baseline).explain(TEXT, target="pos")
    np.testing.assert_allclose(e.scores, contributions(bag, TEXT, 1), atol=1e-5)
    assert abs(e.delta) < 1e-4


def test_integrated_gradients_custom_baseline_ids(bag):
    """Baseline = <unk> everywhere: contribution of t is W . (e(x_t) - e(unk))."""
    text = "good bad film"
    unk = WORDS.index("<unk>")
    e = te.IntegratedGradients(bag, baseline=[unk, unk, unk]).explain(text, target=1)
    expected = (EMB[bag.encode(text)] - EMB[unk]) @ HEAD[1]
    np.testing.assert_allclose(e.scores, expected, atol=1e-5)
    same = te.IntegratedGradients(bag, baseline="unk").explain(text, target=1)
    np.testing.assert_allclose(same.scores, expected, atol=1e-5)


def test_mean_pooling_keeps_length_under_pad_baseline():
    """With mean pooling over non-pad length, the pad baseline must keep the length (ids unchanged)."""
    model = make_bag_model(pooling="mean")
    e = te.IntegratedGradients(model, n_steps=5).explain(TEXT, target=1)
    np.testing.assert_allclose(e.scores, contributions(model, TEXT, 1, "mean"), atol=1e-5)
    occ = te.Occlusion(model, window=1).explain(TEXT, target=1)
    np.testing.assert_allclose(occ.scores, contributions(model, TEXT, 1, "mean"), atol=1e-5)


def test_integrated_gradients_closed_form_on_nonlinear_head():
    model = make_bag_model(nonlinear=True)
    ids = model.encode(TEXT)
    c = EMB[ids] @ HEAD[1]
    s = c.sum()
    expected = c / s * (3 * math.tanh(s) - 0.0)
    e = te.IntegratedGradients(model, n_steps=50).explain(TEXT, target=1)
    np.testing.assert_allclose(e.scores, expected, rtol=1e-4, atol=1e-5)
    assert abs(e.delta) <= 1e-4 * abs(expected.sum())
    # gradient x input is only first order here: it must differ from IG
    gxi = te.GradientXInput(model).explain(TEXT, target=1)
    np.testing.assert_allclose(gxi.scores, 3 * (1 - math.tanh(s) ** 2) * c, rtol=1e-4, atol=1e-6)
    assert not np.allclose(gxi.scores, expected, atol=1e-2)


def test_coarse_riemann_rule_reports_its_completeness_gap():
    """Left Riemann with 3 steps is inexact on a curved path: delta must say so, and match its definition."""
    model = make_bag_model(nonlinear=True)
    e = te.IntegratedGradients(model, n_steps=3, method="riemann_left").explain(TEXT, target=1)
    f_x, f_ref = e.convergence.f_input, e.convergence.f_baseline
    assert e.delta == pytest.approx(e.scores.sum() - (f_x - f_ref), abs=1e-9)
    assert abs(e.delta) > 1e-2


@pytest.mark.parametrize("target", [0, 1])
def test_exact_shapley_equals_contributions(bag, target):
    e = te.Shap(bag, algorithm="exact").explain(TEXT, target=target)
    np.testing.assert_allclose(e.scores, contributions(bag, TEXT, target), atol=1e-5)
    assert e.info["algorithm"] == "exact" and e.info["n_model_evaluations"] == 2 ** len(e.tokens)
    assert abs(e.delta) < 1e-9


def test_kernel_shap_equals_contributions(bag):
    text = TEXT + " the good acting and the bad plot , not great , not dull"  # 23 tokens: kernel by default
    e = te.Shap(bag, budget=300, seed=3).explain(text, target=1)
    assert e.info["algorithm"] == "kernel" and e.info["n_model_evaluations"] <= 300
    np.testing.assert_allclose(e.scores, contributions(bag, text, 1), atol=1e-5)
    assert abs(e.delta) < 1e-9


def test_exact_shapley_matches_permutation_definition():
    """Enumeration vs the average marginal contribution over all orders, on a non-additive game."""
    rng = np.random.default_rng(0)
    n = 5
    table = rng.normal(size=2 ** n)  # an arbitrary game v(S)

    def value(keep):
        return table[(keep.astype(int) << np.arange(n)).sum(1)]

    phi, v_none, v_all = exact_shapley(n, value)
    brute = np.zeros(n)
    for order in itertools.permutations(range(n)):
        code = 0
        for i in order:
            brute[i] += table[code | (1 << i)] - table[code]
            code |= 1 << i
    np.testing.assert_allclose(phi, brute / math.factorial(n), atol=1e-12)
    assert phi.sum() == pytest.approx(v_all - v_none)


def test_kernel_shap_with_full_budget_is_exact_on_a_non_additive_game():
    from textexplain.kernel_shap import constrained_wls

    rng = np.random.default_rng(1)
    n = 6
    table = rng.normal(size=2 ** n)

    def value(keep):
        return table[(keep.astype(int) << np.arange(n)).sum(1)]

    exact, v_none, v_all = exact_shapley(n, value)
    keep, weights = kernel_coalitions(n, 2 ** n, np.random.default_rng(0))
    assert len(keep) == 2 ** n - 2
    phi = constrained_wls(keep.astype(float), value(keep) - v_none, weights, v_all - v_none)
    np.testing.assert_allclose(phi, exact, atol=1e-10)


def test_occlusion_window_one_is_leave_one_out(bag):
    e = te.Occlusion(bag, window=1).explain(TEXT, target=1)
    np.testing.assert_allclose(e.scores, contributions(bag, TEXT, 1), atol=1e-5)
    ids = bag.encode(TEXT)
    full = bag.logits_ids([ids])[0, 1]
    loo = [full - bag.logits_ids([ids[:i] + ids[i + 1:]])[0, 1] for i in range(len(ids))]
    deleted = te.Occlusion(bag, window=1, mask="delete").explain(TEXT, target=1)
    np.testing.assert_allclose(deleted.scores, loo, atol=1e-5)


def test_occlusion_windows_average_the_covering_drops(bag):
    e = te.Occlusion(bag, window=3, stride=2).explain(TEXT, target=1)
    c = contributions(bag, TEXT, 1)
    n = len(c)
    spans = [(s, s + 3) for s in range(0, n - 2, 2)]
    if spans[-1][1] != n:
        spans.append((n - 3, n))
    expected = np.array([np.mean([c[a:b].sum() for a, b in spans if a <= i < b]) for i in range(n)])
    np.testing.assert_allclose(e.scores, expected, atol=1e-5)


def test_lime_recovers_linear_contributions(bag):
    e = te.Lime(bag, num_samples=2000, seed=0).explain(TEXT, target=1)
    c = contributions(bag, TEXT, 1)
    assert np.corrcoef(e.scores, c)[0, 1] > 0.995
    np.testing.assert_allclose(e.scores, c, atol=0.05)
    assert e.info["surrogate_r2"] > 0.99


def test_smoothgrad_on_linear_model_equals_gradient_x_input(bag):
    """The gradient of a linear model is constant, so noise must not change it."""
    sg = te.SmoothGrad(bag, n_samples=8, noise_level=0.5).explain(TEXT, target=1)
    np.testing.assert_allclose(sg.scores, contributions(bag, TEXT, 1), atol=1e-5)
    g = te.Gradient(bag).explain(TEXT, target=1)
    np.testing.assert_allclose(g.scores, np.full(len(g.tokens), np.linalg.norm(HEAD[1])), rtol=1e-5)
    assert not g.signed
    gs = te.Gradient(bag, reduce="sum").explain(TEXT, target=1)
    np.testing.assert_allclose(gs.scores, np.full(len(gs.tokens), HEAD[1].sum()), rtol=1e-5)


def test_probability_output_completeness(bag):
    """output='proba': F is the target probability; the pad baseline (zero sum) gives softmax(bias)."""
    e = te.IntegratedGradients(bag, n_steps=50, output="proba").explain(TEXT, target=1)
    assert e.convergence.f_input == pytest.approx(bag.predict_proba(TEXT)[0, 1], abs=1e-6)
    assert e.convergence.f_baseline == pytest.approx(np.exp(BIAS[1]) / np.exp(BIAS).sum(), abs=1e-6)
    assert abs(e.delta) < 1e-4
