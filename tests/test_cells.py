"""Cell ranking, top contexts, gate saturation and cell explanations on planted and analytic cells."""
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score

from data import LanguageModel
from lstmvis import hypotheses as hyp
from lstmvis.cells import average_ranks, explain_cell, gate_saturation, rank_cells, top_contexts
from lstmvis.store import StateStore
from textexplain.model import CharTokenizer, Vocab


def _planted(tmp_path, dtype, n=3000, d=12, seed=0):
    """Cell 3 tracks a binary label, cell 5 its negation, cell 7 a depth-like scalar; the rest noise."""
    rng = np.random.default_rng(seed)
    label = (np.cumsum(rng.random(n) < 0.05) % 2).astype(float)
    depth = np.cumsum(rng.choice([-1, 0, 1], size=n)) % 7
    x = rng.normal(0, 0.4, size=(n, d))
    x[:, 3] += 0.8 * label
    x[:, 5] -= 0.9 * label
    x[:, 7] += 0.3 * depth
    x = np.tanh(x).astype(dtype)
    offsets = [0, 1000, 2200, n]
    store = StateStore.from_arrays(tmp_path / f"p{np.dtype(dtype).name}.h5", {"rnn.l0.c": x},
                                   tokens=["a"] * n, offsets=offsets, meta={"label": label, "depth": depth})
    return store, x.astype(np.float64), label, depth


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_rank_cells_matches_sklearn_and_scipy(tmp_path, dtype):
    store, x, label, depth = _planted(tmp_path, dtype)
    with store:
        ranking = rank_cells(store, "rnn.l0.c", hyp.meta("label"))
        assert ranking.metric == "auroc" and ranking.kind == "binary"
        expected = [roc_auc_score(label, x[:, c]) for c in range(x.shape[1])]
        np.testing.assert_allclose(ranking.scores, expected, rtol=0, atol=1e-12)
        top = ranking.top(2)
        assert {top[0]["cell"], top[1]["cell"]} == {3, 5}
        assert ranking.direction[3] == 1 and ranking.direction[5] == -1 and ranking.scores[5] < 0.1
        scalar = rank_cells(store, "rnn.l0.c", "meta:depth")
        assert scalar.metric == "pearson" and scalar.best["cell"] == 7 and scalar.best["score"] > 0.7
        np.testing.assert_allclose(scalar.pearson, [pearsonr(x[:, c], depth)[0] for c in range(12)], atol=1e-9)
        np.testing.assert_allclose(scalar.spearman, [spearmanr(x[:, c], depth)[0] for c in range(12)], atol=1e-9)
        part = rank_cells(store, "rnn.l0.c", label, start=1000, stop=2200)  # a plain array works too
        np.testing.assert_allclose(part.scores[3], roc_auc_score(label[1000:2200], x[1000:2200, 3]), atol=1e-12)
        assert "cell" in ranking._repr_html_() and ranking.plot().data


def test_average_ranks_equal_scipy():
    from scipy.stats import rankdata

    from lstmvis.index import float_keys

    rng = np.random.default_rng(1)
    for dtype in (np.float16, np.float32):
        v = np.round(rng.normal(size=5000), 1).astype(dtype)
        np.testing.assert_allclose(average_ranks(float_keys(v)), rankdata(v))


def test_rank_cells_errors(tmp_path):
    store, _, label, _ = _planted(tmp_path, np.float16)
    with store:
        with pytest.raises(ValueError, match="constant"):
            rank_cells(store, "rnn.l0.c", np.zeros(store.n_tokens))
        with pytest.raises(ValueError, match="one value per token"):
            rank_cells(store, "rnn.l0.c", np.zeros(5))
        with pytest.raises(ValueError, match="not binary"):
            rank_cells(store, "rnn.l0.c", "meta:depth", method="auroc")
        with pytest.raises(KeyError, match="unknown source"):
            rank_cells(store, "rnn.l5.c", label)


def test_top_contexts_find_planted_peaks_distinct_and_inside_sequences(tmp_path):
    n, d = 400, 3
    x = np.zeros((n, d), dtype=np.float32)
    peaks = {101: 0.9, 120: 0.95, 123: 0.99, 398: 0.8, 250: 0.7}
    for p, v in peaks.items():
        x[p, 1] = v
    x[300, 1] = -0.99
    tokens = [f"w{i}" for i in range(n)]
    with StateStore.from_arrays(tmp_path / "t.h5", {"rnn.l0.h": x}, tokens=tokens, offsets=[0, 100, n]) as store:
        ctx = top_contexts(store, "rnn.l0.h", 1, k=4, before=3, after=2)
        assert [c.position for c in ctx] == [123, 101, 398, 250]  # 120 is within 5 steps of 123
        # windows stop at sequence bounds (sequence 1 starts at 100) and at the end of the store
        assert (ctx[1].start, ctx[1].stop) == (100, 104) and (ctx[2].start, ctx[2].stop) == (395, 400)
        assert ctx[0].tokens == tokens[120:126] and ctx[0].value == pytest.approx(0.99)
        low = top_contexts(store, "rnn.l0.h", 1, k=1, direction=-1)
        assert low[0].position == 300 and low[0].value == pytest.approx(-0.99)
        assert "<span" in ctx[0]._repr_html_()
        with pytest.raises(ValueError, match="cell"):
            top_contexts(store, "rnn.l0.h", 3)


def test_gate_saturation_fractions(tmp_path):
    rng = np.random.default_rng(2)
    gates = {"rnn.l0.gate_f": rng.random((500, 6)).astype(np.float32) ** 3,
             "rnn.l0.gate_i": rng.random((500, 4)).astype(np.float16),
             "rnn.l0.gate_g": rng.uniform(-1, 1, (500, 4)).astype(np.float32),  # tanh: not a gate here
             "rnn.l0.h": rng.normal(size=(500, 4)).astype(np.float32)}
    gates["rnn.l0.gate_f"][:, 0] = 0.1  # exactly at the threshold: not left-saturated
    with StateStore.from_arrays(tmp_path / "g.h5", gates, tokens=["a"] * 500) as store:
        sat = gate_saturation(store)
        assert sat.sources == ["rnn.l0.gate_f", "rnn.l0.gate_i"]
        for s in sat.sources:
            v = gates[s].astype(np.float64)
            np.testing.assert_allclose(sat.left[s], (v < 0.1).mean(0))
            np.testing.assert_allclose(sat.right[s], (v > 0.9).mean(0))
        assert sat.left["rnn.l0.gate_f"][0] == 0.0
        assert sat.plot().data and len(sat.summary()) == 2
    with StateStore.from_arrays(tmp_path / "h.h5", {"rnn.l0.h": gates["rnn.l0.h"]}, tokens=["a"] * 500) as store:
        with pytest.raises(ValueError, match="no sigmoid gate sources"):
            gate_saturation(store)


class _TinyLM(torch.nn.Module):
    def __init__(self, vocab_size, emb_dim=3, hidden=2, layers=1):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, emb_dim)
        self.rnn = torch.nn.LSTM(emb_dim, hidden, num_layers=layers, batch_first=True)
        self.out = torch.nn.Linear(hidden, vocab_size)

    def forward(self, ids, state=None):
        h, state = self.rnn(self.emb(ids), state)
        return self.out(h), state


def _lm(**kw):
    vocab = Vocab(["<pad>", "<unk>", *"abcdef"])
    module = _TinyLM(len(vocab.itos), **kw).eval()
    return LanguageModel(module, vocab, CharTokenizer(), name="tiny"), module


def test_explain_cell_on_an_analytic_integrator():
    """Input and forget gates saturated open: c_t = sum_{s<=t} tanh(w . x_s), so IG of c_t gives each
    token exactly tanh(w . x_s) - tanh(w . x'_s), and nothing to tokens after t."""
    lm, module = _lm(hidden=1)
    w = torch.tensor([0.7, -0.4, 0.3])
    with torch.no_grad():
        module.rnn.weight_hh_l0.zero_()
        module.rnn.weight_ih_l0.zero_()
        module.rnn.weight_ih_l0[2] = w
        module.rnn.bias_ih_l0.copy_(torch.tensor([30.0, 30.0, 0.0, 30.0]))
        module.rnn.bias_hh_l0.zero_()
    text, step = "abcafed", 4
    e = explain_cell(lm, text, "rnn.l0.c", 0, step=step, n_steps=20)
    ids = torch.tensor(lm.encode(text))
    with torch.no_grad():
        g = torch.tanh(module.emb(ids) @ w).double().numpy()
        g_ref = float(torch.tanh(module.emb.weight[lm.vocab.pad_id] @ w))
    expected = np.where(np.arange(len(text)) <= step, g - g_ref, 0.0)
    np.testing.assert_allclose(e.scores, expected, atol=1e-6)
    assert e.info["activation"] == pytest.approx(g[:step + 1].sum(), abs=1e-6)
    assert abs(e.delta) < 1e-6 and e.signed and e.labels == ["rnn.l0.c[0] at step 4"]
    assert e.tokens == list(text)


@pytest.mark.parametrize("source", ["rnn.l1.h", "rnn.l0.gate_f", "rnn.l1.c"])
def test_explain_cell_completeness_and_causality(source):
    torch.manual_seed(0)
    lm, module = _lm(hidden=4, layers=2)
    text = "abcdefab"
    e = explain_cell(lm, text, source, 2, step=5)
    assert abs(e.delta) < 1e-4 * max(1.0, abs(e.info["activation"]))
    assert np.all(e.scores[6:] == 0) and np.any(e.scores[:6] != 0)
    grad = explain_cell(lm, text, source, 2, step=5, method="gradient")
    assert not grad.signed and np.all(grad.scores[6:] == 0) and np.all(grad.scores >= 0)
    # the activation is the one the module itself computes (last layer h: from its own output)
    if source == "rnn.l1.h":
        with torch.no_grad():
            h, _ = module.rnn(module.emb(torch.tensor([lm.encode(text)])))
        assert e.info["activation"] == pytest.approx(float(h[0, 5, 2]), abs=1e-6)


def test_explain_cell_errors():
    lm, _ = _lm()
    with pytest.raises(ValueError, match="recurrent source name"):
        explain_cell(lm, "abc", "nope", 0)
    with pytest.raises(ValueError, match="outside"):
        explain_cell(lm, "abc", "rnn.l0.h", 0, step=3)
    with pytest.raises(ValueError, match="cell 9"):
        explain_cell(lm, "abc", "rnn.l0.h", 9)
    with pytest.raises(ValueError, match="method"):
        explain_cell(lm, "abc", "rnn.l0.h", 0, method="lime")


def test_explain_cell_rule_arguments():
    lm, _ = _lm()
    with pytest.raises(ValueError, match="rule='simpson'"):
        explain_cell(lm, "abc", "rnn.l0.h", 0, rule="simpson")
    with pytest.raises(ValueError, match="fixed nodes"):
        explain_cell(lm, "abc", "rnn.l0.h", 0, rule="gausslegendre", max_steps=100)
    with pytest.raises(ValueError, match=r"max_steps \(10\) must be at least n_steps \(50\)"):
        explain_cell(lm, "abc", "rnn.l0.h", 0, max_steps=10)


def test_explain_cell_fixed_rule_and_adaptive_agree_on_a_smooth_cell():
    """Where the path is smooth, every rule gives the same attributions (2-layer toy LSTM)."""
    torch.manual_seed(0)
    lm, _ = _lm(hidden=4, layers=2)
    adaptive = explain_cell(lm, "abcdefab", "rnn.l1.h", 1, step=6)
    fixed = explain_cell(lm, "abcdefab", "rnn.l1.h", 1, step=6, rule="gausslegendre", n_steps=64)
    np.testing.assert_allclose(adaptive.scores, fixed.scores, atol=1e-5)
    assert adaptive.convergence.converged and fixed.convergence.converged
    assert adaptive.params["method"] == "adaptive" and adaptive.params["max_steps"] == 200
    # the ends come from a forward-only pass, as in textexplain.IntegratedGradients
    assert (fixed.convergence.n_gradient_rows, fixed.convergence.n_probe_rows) == (64, 2)
    assert "max_steps" not in fixed.params


def test_explain_cell_converges_on_the_shipped_char_lm():
    """charlm-python's cells flip steeply along the path: 32 Gauss-Legendre nodes leave most
    explanations short of completeness; the adaptive rule refining up to 200 evaluations closes the
    gap to 1% (and only spends them where needed)."""
    import data

    lm = data.load_model("charlm-python")
    text = data.python_source_text("test")
    rng = np.random.default_rng(1)
    gaps_fixed, rows = [], []
    for trial in range(6):
        pos = int(rng.integers(200, len(text) - 10))
        source = ["rnn.l0.c", "rnn.l1.c", "rnn.l1.h"][trial % 3]
        cell = int(rng.integers(0, 256))
        e = explain_cell(lm, text[pos - 100:pos], source, cell)
        assert e.convergence.converged, (pos, source, cell, e.convergence.relative_delta)
        assert abs(e.delta) <= 0.01 * abs(e.info["activation"] - e.info["activation_baseline"])
        rows.append(e.convergence.n_gradient_rows)
        gaps_fixed.append(explain_cell(lm, text[pos - 100:pos], source, cell, rule="gausslegendre",
                                       n_steps=32).convergence.relative_delta)
    assert sum(g > 0.01 for g in gaps_fixed) >= 4
    assert all(40 <= n <= 200 for n in rows)
