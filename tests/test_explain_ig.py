"""Integrated Gradients' quadrature rules: the adaptive rule against known integrals, row accounting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import textexplain as te
from textexplain import integrated_gradients as igm
from textexplain.integrated_gradients import FIXED_RULES, RULES, adaptive_nodes, quadrature
from test_explain_analytic import TEXT, contributions, make_bag_model


def steep_step(alpha, at=0.05, width=2e-4, height=3.0):
    """F(alpha) = height * (1 + tanh((alpha - at) / width)) / 2 + alpha: an RNN-like state flip."""
    return height * (1 + np.tanh((np.asarray(alpha) - at) / width)) / 2 + np.asarray(alpha)


def steep_step_rate(alpha, at=0.05, width=2e-4, height=3.0):
    t = np.minimum(np.abs(np.asarray(alpha) - at) / width, 300.0)  # cosh overflows beyond
    return height / (2 * width) / np.cosh(t) ** 2 + 1.0


def run_adaptive(n_steps, f, rate, max_steps=None, resolution=0.0, origin=0.0):
    """adaptive_nodes on a scalar F: 'gradients' are dF/dalpha in a (K, 1, 1) tensor."""
    calls = {"probes": 0, "gradients": 0}

    def probe(alphas):
        calls["probes"] += len(alphas)
        return f(alphas)

    def gradients(alphas):
        calls["gradients"] += len(alphas)
        return torch.tensor(rate(alphas), dtype=torch.float64)[:, None, None]

    start = np.linspace(0.0, 1.0, 9)
    calls["probes"] += len(start)
    nodes, weights, grads, calls["unresolved"], calls["jumps"] = adaptive_nodes(
        n_steps, start, f(start), probe, gradients, lambda g: g[:, 0, 0].numpy(), max_steps, resolution, origin)
    return nodes, weights, grads[:, 0, 0].numpy(), calls


@pytest.mark.parametrize("n_steps", [1, 3, 9, 10, 50, 101])
@pytest.mark.parametrize("early_exit", [0.0, 1.0])
def test_adaptive_rule_is_a_quadrature_rule_with_n_steps_gradient_evaluations(monkeypatch, n_steps, early_exit):
    monkeypatch.setattr(igm, "EARLY_EXIT", early_exit)
    nodes, weights, rates, calls = run_adaptive(n_steps, steep_step, steep_step_rate)
    n_first = n_steps - (int(n_steps * igm.SECOND_PASS) if n_steps >= 10 else 0)
    # the budget is the number of gradient evaluations; the second pass is skipped when the first
    # already closes the completeness gap (always with EARLY_EXIT = 1, never with 0)
    assert calls["gradients"] == (n_steps if early_exit == 0.0 else n_first)
    assert len(nodes) <= n_steps and len(nodes) == len(weights) == len(rates)
    assert ((nodes > 0) & (nodes < 1)).all() and (weights > 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(rates, steep_step_rate(nodes))  # gradients stay paired with their nodes
    # exact for polynomials up to degree 2 * (nodes per segment) - 1 >= 1 (every segment has a node)
    for degree in range(2):
        assert (weights * (degree + 1) * nodes ** degree).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("width", [1e-3, 2e-4, 5e-5])
def test_adaptive_rule_integrates_a_state_flip_that_gauss_legendre_misses(width):
    f = lambda a: steep_step(a, width=width)  # noqa: E731
    rate = lambda a: steep_step_rate(a, width=width)  # noqa: E731
    exact = f(1.0) - f(0.0)
    nodes, weights, rates, calls = run_adaptive(50, f, rate)
    adaptive_error = abs((weights * rates).sum() - exact) / exact
    gl_nodes, gl_weights = quadrature(50, "gausslegendre")
    gl_error = abs((gl_weights * rate(gl_nodes)).sum() - exact) / exact
    assert gl_error > 0.1, gl_error  # the fixed rule's nodes straddle the step
    assert adaptive_error < 0.005, adaptive_error  # within the 1% completeness tolerance
    assert calls["probes"] <= 9 + 4 * 3 + 6


FLIPS = ((0.05, 3.0), (0.2, -2.0), (0.37, 2.5), (0.61, -1.5))


def four_flips(alpha, width):
    """Four state flips up and down (total variation 3x the net change), like the shipped LSTM's paths."""
    return sum(steep_step(alpha, at, width, height) for at, height in FLIPS) - 3 * np.asarray(alpha)


def four_flips_rate(alpha, width):
    return sum(steep_step_rate(alpha, at, width, height) for at, height in FLIPS) - 3


@pytest.mark.parametrize("width", [1e-3, 2e-4, 5e-5])
@pytest.mark.parametrize("n_steps", [10, 20, 50])
def test_max_steps_refines_until_the_completeness_gap_is_within_tolerance(width, n_steps):
    f = lambda a: four_flips(a, width)  # noqa: E731
    rate = lambda a: four_flips_rate(a, width)  # noqa: E731
    exact = f(1.0) - f(0.0)
    nodes, weights, rates, calls = run_adaptive(n_steps, f, rate)
    assert abs((weights * rates).sum() - exact) > 0.01 * abs(exact)  # n_steps alone is not enough here
    nodes, weights, rates, calls = run_adaptive(n_steps, f, rate, max_steps=400)
    assert abs((weights * rates).sum() - exact) <= igm.COMPLETENESS_TOLERANCE * abs(exact)
    assert n_steps < calls["gradients"] <= 400
    assert ((nodes > 0) & (nodes < 1)).all() and (weights > 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12) and (weights * nodes).sum() == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(rates, rate(nodes))  # gradients stay paired with their nodes


def test_refinement_stops_at_a_jump_narrower_than_the_precision_resolves():
    """F jumps by 3 at alpha = 0.05 while its derivative never shows it -- what float32 makes of an RNN state
    flip narrower than its resolution. Refining cannot close that gap: with the precision known, refinement
    stops once the jump sits in a segment a few ulps wide and names it; without, it spends max_steps."""
    def jump(alpha):
        return 3.0 * (np.asarray(alpha) >= 0.05) + np.asarray(alpha)

    def rate(alpha):
        return np.ones_like(np.asarray(alpha, dtype=np.float64))

    eps = float(torch.finfo(torch.float32).eps)
    *_, stopped = run_adaptive(50, jump, rate, max_steps=1000, resolution=eps)
    lo, hi = stopped["unresolved"]
    assert lo < 0.05 <= hi and hi - lo <= igm.SPLIT_ULPS * eps * hi
    assert stopped["gradients"] < 500
    *_, blind = run_adaptive(50, jump, rate, max_steps=1000)
    assert blind["unresolved"] is None and blind["gradients"] == 1000
    # a steep but resolvable flip is refined as before: the precision only bounds how far
    *_, smooth = run_adaptive(50, steep_step, steep_step_rate, max_steps=1000, resolution=eps)
    assert smooth["unresolved"] is None

    # the jump does not stop refinement elsewhere: a resolvable flip at 0.6 is integrated as if alone
    def both(alpha):
        return jump(alpha) + steep_step(alpha, at=0.6, width=2e-3) - np.asarray(alpha)

    def both_rate(alpha):
        return steep_step_rate(alpha, at=0.6, width=2e-3)

    nodes, weights, rates, calls = run_adaptive(50, both, both_rate, max_steps=1000, resolution=eps)
    assert calls["unresolved"][0] < 0.05 <= calls["unresolved"][1]
    flip_alone = steep_step(1.0, at=0.6, width=2e-3) - steep_step(0.0, at=0.6, width=2e-3)
    assert abs(weights @ rates - flip_alone) <= 1e-3 * abs(flip_alone)  # all that is missing is the jump's 3
    # near alpha 0 a nonzero baseline sets the precision (inputs x' + alpha dx): with origin 1 a jump at 3e-6
    # is final at a width of about 64 eps, not 64 eps x 3e-6
    def early(alpha):
        return 3.0 * (np.asarray(alpha) >= 3e-6) + np.asarray(alpha)

    *_, near_zero = run_adaptive(50, early, rate, max_steps=1000, resolution=eps, origin=1.0)
    lo, hi = near_zero["unresolved"]
    assert lo < 3e-6 <= hi and hi - lo >= eps and near_zero["gradients"] < 300


# F along the path of an RNN on a long text: many state flips, each narrower than float32 resolves (sentiment-lstm,
# 500-5,000 tokens: jumps of 0.05-6 logits; benchmarks/bench_ig_long.py), on a smooth part.
STAIR_AT = np.random.default_rng(3).uniform(0.02, 0.98, 24)
STAIR_HEIGHTS = np.random.default_rng(4).normal(0.0, 0.5, 24)


def staircase(alpha):
    a = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    return (STAIR_HEIGHTS * (a[:, None] >= STAIR_AT)).sum(1) + np.sin(a)


def staircase_rate(alpha):
    return np.cos(np.atleast_1d(np.asarray(alpha, dtype=np.float64)))


def test_refinement_stops_early_when_the_gap_keeps_turning_out_to_be_jumps():
    """The default budget (max_steps = 4 x n_steps) is not spent chasing jump after jump: once the jumps found
    miss the tolerance and refinement keeps finding only more of them, it stops, and says how much of the gap
    they hold. What the gradients can integrate, they do."""
    eps = float(torch.finfo(torch.float32).eps)
    nodes, weights, rates, calls = run_adaptive(50, staircase, staircase_rate, max_steps=200, resolution=eps)
    assert calls["gradients"] <= 70, calls  # 200 before: every refinement round found one more jump
    lo, hi = calls["unresolved"]
    assert hi - lo <= igm.SPLIT_ULPS * eps * hi and np.isin(STAIR_AT, [lo, hi], invert=True).all()
    assert any(lo < at <= hi for at in STAIR_AT)
    gap = weights @ rates - (staircase(1.0) - staircase(0.0))[0]
    assert abs(weights @ rates - np.sin(1.0)) < 1e-5  # the smooth part
    assert abs(gap) > 0.01 * abs(staircase(1.0) - staircase(0.0))[0]  # not complete, and not claimed to be
    assert calls["jumps"] != 0.0 and abs(calls["jumps"]) <= abs(gap) + abs(STAIR_HEIGHTS).max()
    # without the precision known every jump is a steep change to refine: the whole budget goes
    *_, blind = run_adaptive(50, staircase, staircase_rate, max_steps=200)
    assert blind["gradients"] == 200 and blind["unresolved"] is None


def _window(model, n_tokens):
    """The first ``n_tokens`` tokens of the test sentences joined in order (benchmarks/bench_ig_long.py)."""
    import data

    texts, _ = data.rotten_tomatoes("test")
    tokens = []
    for text in texts:
        tokens += model.tokenize(text)
        if len(tokens) >= n_tokens:
            return " ".join(tokens[:n_tokens])


@pytest.mark.usefixtures("single_thread")
def test_default_on_a_long_text_stops_at_the_jumps_and_reports_its_gap(sentiment_lstm):
    """sentiment-lstm on 500 tokens: F jumps by logits between neighbouring inputs along the path (in float64
    too). The default stops refining instead of spending 200 gradient rows, warns, and its stated gap is the
    gap of its scores against a forward pass of the input and of the baseline."""
    from textexplain.base import baseline_embeddings, embed, forward_at_embeddings
    from textexplain.convergence import IncompleteIntegralWarning

    text = _window(sentiment_lstm, 500)
    with pytest.warns(IncompleteIntegralWarning, match="no number of steps resolves"):
        e = te.IntegratedGradients(sentiment_lstm).explain(text)
    c = e.convergence
    assert c.n_gradient_rows <= 100 and not c.converged and c.unresolved_alpha is not None
    ids = torch.tensor([sentiment_lstm.encode(text)])
    with torch.no_grad():
        ends = forward_at_embeddings(sentiment_lstm, ids.expand(2, -1), torch.cat(
            [embed(sentiment_lstm, ids), baseline_embeddings(sentiment_lstm, ids, "pad")]))[:, e.target].double()
    change = float(ends[0] - ends[1])
    assert c.f_input - c.f_baseline == pytest.approx(change, abs=1e-5)
    assert e.delta == pytest.approx(float(e.scores.sum()) - change, abs=1e-4)
    assert c.relative_delta == pytest.approx(abs(e.delta) / abs(change), rel=1e-6) and c.relative_delta > 0.01
    assert 0.01 < c.unresolved_relative_delta and e.to_dict()["info"]["unresolved_relative_delta"] == \
        c.unresolved_relative_delta
    # precision="auto" (the page's) asks float64 probes first: F jumps there too, so no float64 rerun
    with pytest.warns(IncompleteIntegralWarning):
        auto = te.IntegratedGradients(sentiment_lstm, precision="auto").explain(text)
    np.testing.assert_array_equal(auto.scores, e.scores)
    assert auto.convergence.precision == "float32" and auto.convergence.n_gradient_rows == c.n_gradient_rows
    assert auto.convergence.n_probe_rows > c.n_probe_rows
    assert "so does float64" in te.render.convergence_fix(auto)


def test_jump_persists_tells_a_jump_from_a_steep_change_at_the_path_precision():
    x, x_ref = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)  # alpha is the input

    def jump(rows):
        return 3.0 * (rows[:, 0, 0] >= 0.3).double()

    def steep(rows):  # 1e-9 wide: far narrower than float32 resolves near 0.3, resolvable in float64
        return 3.0 * torch.tanh((rows[:, 0, 0] - 0.3) / 1e-9)

    persists, rows = igm.jump_persists(jump, x, x_ref, (0.29, 0.31))
    assert persists and rows > 2
    assert igm.jump_persists(steep, x, x_ref, (0.29, 0.31))[0] is False
    assert igm.jump_persists(steep, x.float(), x_ref.float(), (0.29, 0.31))[0] is True


# A 50-token text (consecutive Rotten Tomatoes test sentences, as benchmarks/bench_server.py builds them)
# along whose IG path sentiment-lstm's state flips near alpha = 0.0515 over about 1e-7: in float32, F jumps
# by 0.14 between neighbouring inputs there (measured 2026-11-22).
FLIP_TEXT = ("The rich and surprising series of 'impressions' that comprise ABC Africa celebrate the orphans' "
             "resilience and, even amid such destitution, the richness of human experience. A thoroughly "
             "entertaining comedy that uses Grant's own twist of acidity to prevent itself from succumbing to its own")


@pytest.mark.usefixtures("single_thread")
def test_float64_closes_the_gap_float32_cannot(sentiment_lstm):
    assert len(sentiment_lstm.tokenize(FLIP_TEXT)) == 50
    params = {"n_steps": 50, "max_steps": 1000}
    low = te.IntegratedGradients(sentiment_lstm, **params).explain(FLIP_TEXT)
    assert low.convergence.precision == "float32" and not low.convergence.converged
    lo, hi = low.convergence.unresolved_alpha
    assert 0.05 < lo < hi < 0.053 and low.convergence.n_gradient_rows < 300  # stopped, not 1000 spent
    assert "precision='float64'" in te.render.convergence_fix(low)
    high = te.IntegratedGradients(sentiment_lstm, precision="float64", **params).explain(FLIP_TEXT)
    assert high.convergence.precision == "float64" and high.convergence.converged
    assert high.convergence.unresolved_alpha is None and "unresolved_alpha" not in high.to_dict()["info"]
    assert high.target == low.target
    np.testing.assert_allclose(high.probs, low.probs, atol=1e-6)
    auto = te.IntegratedGradients(sentiment_lstm, precision="auto", **params).explain(FLIP_TEXT)
    np.testing.assert_array_equal(auto.scores, high.scores)
    assert auto.convergence.precision == "float64"
    assert auto.convergence.model_precision_relative_delta == low.convergence.relative_delta
    assert auto.convergence.n_gradient_rows == low.convergence.n_gradient_rows + high.convergence.n_gradient_rows
    assert auto.to_dict()["info"]["model_precision_relative_delta"] == low.convergence.relative_delta
    # a miss that more steps would fix is not a reason for float64: auto keeps the float32 result
    budget_miss = "Offers a guilt-free trip into feel-good territory."  # 1.1% at 50 evaluations, no refinement
    off = {"n_steps": 50, "max_steps": 50}
    short = te.IntegratedGradients(sentiment_lstm, **off).explain(budget_miss)
    assert not short.convergence.converged and short.convergence.unresolved_alpha is None
    kept = te.IntegratedGradients(sentiment_lstm, **off, precision="auto").explain(budget_miss)
    np.testing.assert_array_equal(kept.scores, short.scores)
    assert kept.convergence.precision == "float32"
    assert kept.convergence.n_gradient_rows == short.convergence.n_gradient_rows
    # where float32 converges, auto is the float32 result itself, and float64 agrees with it
    easy = "a gorgeous , witty , seductive movie ."
    plain = te.IntegratedGradients(sentiment_lstm, **params).explain(easy)
    assert plain.convergence.converged
    same = te.IntegratedGradients(sentiment_lstm, precision="auto", **params).explain(easy)
    np.testing.assert_array_equal(same.scores, plain.scores)
    assert same.convergence.precision == "float32"
    assert same.convergence.n_gradient_rows == plain.convergence.n_gradient_rows
    double = te.IntegratedGradients(sentiment_lstm, precision="float64", **params).explain(easy)
    np.testing.assert_allclose(double.scores, plain.scores, atol=0.02 * np.abs(plain.scores).max())
    assert sentiment_lstm.module.emb.weight.dtype == torch.float32
    twin = sentiment_lstm.float64().module
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in twin.modules())
    assert all(p.grad is None for p in twin.parameters())
    with pytest.raises(ValueError, match="precision"):
        te.IntegratedGradients(sentiment_lstm, precision="half")


def test_max_steps_costs_nothing_where_n_steps_suffice():
    smooth = (lambda a: np.sin(np.asarray(a)), lambda a: np.cos(np.asarray(a)))
    for fn, rt, n_steps in ((steep_step, steep_step_rate, 50), (*smooth, 50), (*smooth, 9)):
        plain, refined = run_adaptive(n_steps, fn, rt), run_adaptive(n_steps, fn, rt, max_steps=4 * n_steps)
        assert refined[3] == plain[3]  # same probes and gradient evaluations
        for a, b in zip(plain[:3], refined[:3]):
            np.testing.assert_array_equal(a, b)


def test_max_steps_is_checked():
    model = make_bag_model()
    with pytest.raises(ValueError, match="at least n_steps"):
        te.IntegratedGradients(model, n_steps=50, max_steps=20)
    with pytest.raises(ValueError, match="method='adaptive'"):
        te.IntegratedGradients(model, method="gausslegendre", max_steps=200)
    e = te.IntegratedGradients(model, n_steps=20, max_steps=80).explain(TEXT)
    assert e.params["max_steps"] == 80 and e.convergence.n_gradient_rows <= 80


def test_adaptive_rule_on_smooth_paths_matches_gauss_legendre():
    f = lambda a: np.sin(np.asarray(a)) + np.asarray(a) ** 2  # noqa: E731
    rate = lambda a: np.cos(np.asarray(a)) + 2 * np.asarray(a)  # noqa: E731
    nodes, weights, rates, calls = run_adaptive(50, f, rate)
    assert (weights * rates).sum() == pytest.approx(f(1.0) - f(0.0), abs=1e-10)
    # nothing to zoom into, and the first pass is already exact: no second pass, no probes for it
    assert calls["probes"] == 9 and calls["gradients"] == 40
    flat = run_adaptive(20, lambda a: np.zeros(len(np.atleast_1d(a))), lambda a: np.zeros(len(np.atleast_1d(a))))
    assert flat[1].sum() == pytest.approx(1.0, abs=1e-12)  # F constant: uniform segments, no division by zero


@pytest.mark.parametrize("method", RULES)
def test_row_accounting_and_exactness_per_rule(method):
    model = make_bag_model()
    e = te.IntegratedGradients(model, n_steps=12, method=method).explain(TEXT, target=1)
    np.testing.assert_allclose(e.scores, contributions(model, TEXT, 1), atol=1e-5)
    # linear path: no zoom, and the adaptive rule's first pass is exact, so it skips the second
    c = e.convergence
    assert c.n_gradient_rows == (12 if method in FIXED_RULES else 12 - 2)
    assert c.n_forward_rows == c.n_gradient_rows + c.n_probe_rows
    assert c.n_probe_rows == (2 if method in FIXED_RULES else 9)
    assert e.params["method"] == method


def test_default_is_adaptive_and_gauss_legendre_stays_available():
    model = make_bag_model(nonlinear=True)
    ig = te.IntegratedGradients(model)
    assert ig.method == "adaptive" and ig.n_steps == 50
    ids = model.encode(TEXT)
    for method in ("adaptive", "gausslegendre"):
        e = te.IntegratedGradients(model, method=method).explain(TEXT, target=1)
        assert abs(e.delta) <= 1e-4 * abs(e.convergence.f_input - e.convergence.f_baseline)
        assert e.convergence.converged and len(e.scores) == len(ids)


def test_quadrature_refuses_the_adaptive_rule_with_a_clear_message():
    with pytest.raises(ValueError, match="no fixed quadrature"):
        quadrature(10, "adaptive")
    with pytest.raises(ValueError, match="method"):
        quadrature(10, "simpson")
    nodes, weights = quadrature(5, "gausslegendre")
    assert weights.sum() == pytest.approx(1.0) and (nodes * weights).sum() == pytest.approx(0.5)
    assert math.isclose(float((weights * nodes ** 9).sum()), 0.1, rel_tol=1e-12)  # exact to degree 2n - 1


@pytest.mark.parametrize("seed", range(8))
def test_adaptive_rule_stays_a_valid_rule_on_random_paths(seed):
    """Random steps (some far steeper than the probes resolve), kinks and flat stretches."""
    rng = np.random.default_rng(seed)
    at, width, height = rng.uniform(0, 1, 4), 10.0 ** rng.uniform(-6, -1, 4), rng.normal(0, 3, 4)
    kink = rng.uniform(0, 1)

    def f(a):
        a = np.atleast_1d(np.asarray(a, dtype=np.float64))
        return (height * (1 + np.tanh((a[:, None] - at) / width)) / 2).sum(1) + np.maximum(a - kink, 0)

    def rate(a):
        a = np.atleast_1d(np.asarray(a, dtype=np.float64))
        t = np.minimum(np.abs(a[:, None] - at) / width, 300.0)
        return (height / (2 * width) / np.cosh(t) ** 2).sum(1) + (a > kink)

    for n_steps in (1, 2, 5, 10, 17, 50):
        nodes, weights, rates, calls = run_adaptive(n_steps, f, rate)
        assert calls["gradients"] == n_steps
        assert weights.sum() == pytest.approx(1.0, abs=1e-12) and (weights > 0).all()
        assert ((nodes > 0) & (nodes < 1)).all() and len(np.unique(nodes)) == len(nodes)


def test_the_quadrature_method_reaches_ig_through_explain_and_audit_options():
    """IG's ``method`` clashes with the ``method=`` of explain/explain_batch/audit: ``options`` carries it."""
    model = make_bag_model(nonlinear=True)
    direct = te.IntegratedGradients(model, method="riemann_left", n_steps=7).explain(TEXT, target=1)
    via = te.explain(model, TEXT, "integrated_gradients", target=1, options={"method": "riemann_left"}, n_steps=7)
    assert via.params["method"] == "riemann_left" and via.params["n_steps"] == 7
    np.testing.assert_array_equal(via.scores, direct.scores)
    batch = te.explain_batch(model, [TEXT], "integrated_gradients", target=1, options={"method": "riemann_left",
                                                                                         "n_steps": 7})
    np.testing.assert_array_equal(batch[0].scores, direct.scores)
    report = te.audit.audit(model, [TEXT, TEXT], method="integrated_gradients", min_count=2, progress=False,
                      options={"method": "riemann_left", "n_steps": 7})
    assert report.params == {"method": "riemann_left", "n_steps": 7}
    with pytest.raises(TypeError, match="both in options and as keyword"):
        te.explain(model, TEXT, options={"n_steps": 7}, n_steps=8)
    with pytest.raises(TypeError, match="options must be a dict"):
        te.explain(model, TEXT, options=["method"])


def test_integrate_explains_any_scalar_output():
    """The engine takes any differentiable F of the embeddings: on a separable F = sum w * tanh(e), IG gives
    each coordinate exactly w * (tanh(x) - tanh(x')); the first row it evaluates is the input itself."""
    gen = torch.Generator().manual_seed(0)
    x, x_ref, w = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    first_rows = []

    def output(rows):
        first_rows.append(rows[0].clone())
        return (w * torch.tanh(rows)).sum((1, 2))

    expected = (w * (torch.tanh(x) - torch.tanh(x_ref))).numpy()
    for rule in ("adaptive", "gausslegendre"):
        first_rows.clear()
        path = igm.integrate(output, x, x_ref, n_steps=20, rule=rule)
        torch.testing.assert_close(first_rows[0], x, rtol=0, atol=0)
        np.testing.assert_allclose(path.attributions.numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(path.scores(), expected.sum(1), atol=1e-6)
        np.testing.assert_allclose(path.scores("l2"), np.linalg.norm(expected, axis=1), atol=1e-6)
        c = path.convergence
        assert c.f_input == pytest.approx(float(output(x[None])[0])) and c.precision == "float64"
        assert c.f_baseline == pytest.approx(float(output(x_ref[None])[0]))
        assert abs(path.delta) < 1e-6 and c.converged and c.relative_delta < 1e-6
        assert (c.n_probe_rows >= igm.PROBES if rule == "adaptive" else c.n_probe_rows == 2)  # forward only
        assert c.n_gradient_rows <= 20
