"""Conformance suite run over every explanation method, plus the shared model-call layer."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import textexplain as te
from data.architectures import RNNClassifier
from test_explain_analytic import LABELS, WORDS, make_bag_model
from textexplain.base import substituted_embeddings
from textexplain.perturb import MaskedModel

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


FAST = {
    "gradient": {},
    "gradient_x_input": {},
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 8, "seed": 1},
    "occlusion": {"window": 2},
    "lime": {"num_samples": 300, "seed": 1},
    "shap": {"budget": 24, "seed": 1, "exact_max_tokens": 4},
}
SEEDED = ("smoothgrad", "lime", "shap")
TEXTS = ["a good plot but not great acting", "the film", "dull dull film , not good", "great"]


@pytest.fixture(scope="module")
def lstm():
    """A small random biLSTM classifier with dropout and packing, in eval mode."""
    torch.manual_seed(0)
    module = RNNClassifier(len(WORDS), len(LABELS), emb_dim=8, hidden=6, dropout=0.5)
    return te.TextModel(module, WORDS, LABELS, embedding=module.emb, tokenizer=te.WordTokenizer(), name="tiny")


def test_registry_has_every_method():
    assert list(te.METHODS) == ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad",
                                "occlusion", "lime", "shap"]
    assert set(FAST) == set(te.METHODS)


@pytest.mark.parametrize("method", list(FAST))
def test_output_shape_and_record(lstm, method):
    text = TEXTS[0]
    e = te.explain(lstm, text, method=method, **FAST[method])
    assert isinstance(e, te.Explanation) and e.method == method
    assert e.tokens == lstm.tokenize(text) and e.token_ids == lstm.encode(text)
    assert e.scores.shape == (len(e.tokens),) and np.isfinite(e.scores).all()
    assert e.spans == lstm.token_spans(text)
    np.testing.assert_allclose(e.probs, lstm.predict_proba(text)[0], atol=1e-5)
    assert e.target == e.predicted and e.labels == LABELS
    assert e.params == {**te.METHODS[method](lstm).get_params(), **FAST[method]}
    assert e.info["model"] == "tiny"
    if method in ("integrated_gradients", "shap"):
        assert e.delta is not None
    back = te.Explanation.from_json(e.to_json())
    np.testing.assert_array_equal(back.scores, e.scores)
    assert back.spans == e.spans and back.params == e.params and back.target_label == e.target_label
    # Integrated Gradients' typed convergence record survives JSON, whose info keeps its keys
    assert (e.convergence is not None) == (method == "integrated_gradients")
    assert back.convergence == e.convergence and back.info == e.info
    if e.convergence is not None:
        assert e.to_dict()["info"]["converged"] == e.convergence.converged


@pytest.mark.parametrize("method", list(FAST))
def test_batch_equals_singles(lstm, method):
    targets = [None, 1, "neg", 2]
    batch = te.explain_batch(lstm, TEXTS, method=method, target=targets, **FAST[method])
    for text, target, got in zip(TEXTS, targets, batch):
        single = te.explain(lstm, text, method=method, target=target, **FAST[method])
        assert got.text == text and got.target == single.target
        np.testing.assert_allclose(got.scores, single.scores, rtol=1e-5, atol=1e-6)
    assert batch[2].target == 0 and batch[1].target == 1


@pytest.mark.parametrize("method", list(FAST))
def test_deterministic(lstm, method):
    explainer = te.METHODS[method](lstm, **FAST[method])
    first = explainer.explain(TEXTS[2], target=1)
    te.explain(lstm, TEXTS[0], method=method, **FAST[method])  # other work in between changes nothing
    np.testing.assert_array_equal(explainer.explain(TEXTS[2], target=1).scores, first.scores)
    if method in SEEDED:
        other = te.explain(lstm, TEXTS[2], method=method, target=1, **{**FAST[method], "seed": 7})
        assert not np.allclose(other.scores, first.scores)


def _snapshot(module):
    return ({k: v.detach().clone() for k, v in module.state_dict().items()},
            {n: p.requires_grad for n, p in module.named_parameters()},
            [m.training for m in module.modules()])


def _hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in module.modules())


@pytest.mark.parametrize("method", list(FAST))
def test_model_unchanged_and_no_hooks_left(lstm, method):
    state, grads, modes = _snapshot(lstm.module)
    te.explain(lstm, TEXTS[0], method=method, **FAST[method])
    te.explain_batch(lstm, TEXTS[:2], method=method, **FAST[method])
    after_state, after_grads, after_modes = _snapshot(lstm.module)
    assert after_grads == grads and after_modes == modes
    for k in state:
        assert torch.equal(state[k], after_state[k]), k
    assert all(p.grad is None for p in lstm.module.parameters())
    assert _hooks(lstm.module) == 0


@pytest.mark.parametrize("method", list(FAST))
def test_training_mode_is_refused_and_left_alone(method):
    model = make_bag_model()
    model.module.train()
    with pytest.raises(ValueError, match="eval"):
        te.explain(model, "good film", method=method, **FAST[method])
    assert model.module.training


def test_hook_removed_when_the_forward_fails():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(WORDS), 3)

        def forward(self, ids):
            self.emb(ids)
            raise RuntimeError("boom")

    module = Broken()
    model = te.TextModel(module, WORDS, LABELS, embedding=module.emb)
    with pytest.raises(RuntimeError, match="boom"):
        te.explain(model, "good film", method="integrated_gradients")
    assert _hooks(module) == 0


def test_substitution_only_affects_its_own_thread(lstm):
    ids = torch.tensor([lstm.encode("good film")])
    plain = lstm.module(ids).detach()
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other_thread():
        entered.wait(5)
        with torch.no_grad():
            seen["logits"] = lstm.module(ids)
        release.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with substituted_embeddings(lstm, torch.zeros(1, 2, 8)):
        entered.set()
        release.wait(5)
        with torch.no_grad():
            substituted = lstm.module(ids)
    worker.join()
    torch.testing.assert_close(seen["logits"], plain)
    assert not torch.allclose(substituted, plain)
    assert _hooks(lstm.module) == 0


def _in_threads(work, n: int) -> dict:
    """``work(i)`` for i < n, each in a thread of its own, started together: results by i (errors raised)."""
    results, errors = {}, []

    def run(i):
        try:
            results[i] = work(i)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "shap"])
def test_concurrent_calls_equal_sequential(lstm, method):
    """The server calls methods concurrently on one model; each call must see only its own inputs."""
    expected = [te.explain(lstm, t, method=method, **FAST[method]).scores for t in TEXTS]
    probs = lstm.predict_proba(TEXTS)

    def work(i):
        for _ in range(3):
            scores = te.explain(lstm, TEXTS[i], method=method, **FAST[method]).scores
            np.testing.assert_allclose(lstm.predict_proba(TEXTS), probs, atol=1e-6)
        return scores

    results = _in_threads(work, len(TEXTS))
    for i, scores in enumerate(expected):
        np.testing.assert_allclose(results[i], scores, rtol=1e-5, atol=1e-6)
    assert _hooks(lstm.module) == 0


def test_clear_errors(lstm):
    with pytest.raises(ValueError, match="unknown method"):
        te.explain(lstm, "good", method="saliency")
    with pytest.raises(TypeError, match="n_steps"):
        te.explain(lstm, "good", method="integrated_gradients", n_step=10)
    with pytest.raises(ValueError, match="target"):
        te.explain(lstm, "good", method="gradient", target=7)
    with pytest.raises(ValueError, match="unknown target"):
        te.explain(lstm, "good", method="gradient", target="positive")
    with pytest.raises(ValueError, match="no tokens"):
        te.explain(lstm, "   ", method="occlusion")
    with pytest.raises(ValueError, match="n_steps"):
        te.IntegratedGradients(lstm, n_steps=0)
    with pytest.raises(ValueError, match="method"):
        te.IntegratedGradients(lstm, method="simpson")
    with pytest.raises(ValueError, match="baseline"):
        te.IntegratedGradients(lstm, baseline=[1, 2]).explain("good film , great")
    with pytest.raises(ValueError, match="mask"):
        te.Occlusion(lstm, mask="[MASK]")
    with pytest.raises(TypeError, match="TextModel"):
        te.Gradient(lstm.module)
    with pytest.raises(ValueError, match="one target per text"):
        te.explain_batch(lstm, TEXTS, method="gradient", target=[0, 1])
    with pytest.raises(TypeError, match="list of texts"):
        te.explain_batch(lstm, "good film", method="gradient")


class Recording(torch.nn.Module):
    """Wraps the bag model and records the shape of every batch it is run on."""

    def __init__(self):
        super().__init__()
        self.inner = make_bag_model().module
        self.emb = self.inner.emb
        self.shapes = []

    def forward(self, ids):
        self.shapes.append(tuple(ids.shape))
        return self.inner(ids)


def test_masked_model_deduplicates_and_bounds_batches():
    module = Recording()
    model = te.TextModel(module, WORDS, LABELS, embedding=module.emb)
    ids = model.encode("good plot not great acting film")
    masked = MaskedModel(model, ids, mask="pad", max_batch_tokens=12)
    rng = np.random.default_rng(0)
    keep = rng.random((40, 6)) < 0.5
    keep = np.concatenate([keep, keep[:10]])
    out = masked.logits(keep)
    distinct = len({row.tobytes() for row in keep})
    assert masked.n_evaluations == distinct == sum(s[0] for s in module.shapes)
    assert all(b * t <= 12 for b, t in module.shapes)
    np.testing.assert_array_equal(out[40:], out[:10])
    calls = len(module.shapes)
    masked.logits(keep[:5])  # cached: no new model call
    assert len(module.shapes) == calls
    # pad mode keeps the length: a masked token contributes nothing, the rest unchanged
    single = np.ones((1, 6), bool)
    single[0, 1] = False
    expected = model.logits_ids([ids])[0] - _head_contribution(model, ids[1])
    np.testing.assert_allclose(masked.logits(single)[0], expected, atol=1e-5)


def _head_contribution(model, token_id):
    with torch.no_grad():
        return model.module.inner.head.weight.numpy() @ model.embedding.weight[token_id].numpy()


@pytest.mark.parametrize("method, params", [("occlusion", {"window": 2}), ("shap", {"algorithm": "exact"}),
                                            ("shap", {"algorithm": "kernel", "budget": 40})])
def test_planned_perturbations_run_in_one_pass_with_the_text(method, params):
    module = Recording()
    model = te.TextModel(module, WORDS, LABELS, embedding=module.emb)
    e = te.explain(model, "good plot not great acting film , the dull", method=method, **params)
    assert len(module.shapes) == 1 and module.shapes[0][0] == e.info["n_model_evaluations"]


@pytest.mark.parametrize("mask", ["unk", "delete", "the"])
def test_masked_model_replacements(mask):
    model = make_bag_model()
    ids = model.encode("good plot not great")
    masked = MaskedModel(model, ids, mask=mask)
    keep = np.array([[True, False, True, False], [False] * 4])
    replacement = {"unk": WORDS.index("<unk>"), "the": WORDS.index("the")}.get(mask)
    if mask == "delete":
        inputs = [[ids[0], ids[2]], [model.pad_id]]
    else:
        inputs = [[ids[0], replacement, ids[2], replacement], [replacement] * 4]
    np.testing.assert_allclose(masked.logits(keep), model.logits_ids(inputs), atol=1e-6)


def test_to_words_merges_sub_tokens_and_characters():
    chars = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz ,"]

    class CharBag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(chars), 4, padding_idx=0)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, ids):
            return self.head(self.emb(ids).sum(1))

    module = CharBag()
    model = te.TextModel(module, chars, ["a", "b"], embedding=module.emb, tokenizer=te.CharTokenizer())
    text = "good  film, ok"
    e = te.GradientXInput(model).explain(text, target=1)
    w = e.to_words()
    assert w.tokens == ["good", "film,", "ok"]
    assert w.spans == [(0, 4), (6, 11), (12, 14)]
    assert w.scores.sum() == pytest.approx(e.scores.sum())
    np.testing.assert_allclose(w.scores[0], e.scores[0:6].sum())  # "good" + the two spaces after it
    assert w.info["token_groups"][1] == [6, 7, 8, 9, 10, 11]
    assert w.token_ids == [-1, -1, -1]
    assert e.to_words("absmax").scores[2] == pytest.approx(
        e.scores[12:14][np.argmax(np.abs(e.scores[12:14]))])
    with pytest.raises(ValueError, match="how"):
        e.to_words("median")


@pytest.mark.parametrize("precision", ["float64", "auto"])
def test_integrated_gradients_in_float64_meets_the_same_contract(lstm, precision):
    """IG on float64 copies of the model: batch equals singles, deterministic, thread-safe (each call copies
    while others hold hooks on the module), and the model keeps no hooks, gradients or changed parameters."""
    params = {**FAST["integrated_gradients"], "precision": precision, "max_steps": 40}
    state, grads, modes = _snapshot(lstm.module)
    targets = [None, 1, "neg", 2]
    batch = te.explain_batch(lstm, TEXTS, method="integrated_gradients", target=targets, **params)
    singles = [te.explain(lstm, t, method="integrated_gradients", target=g, **params) for t, g in zip(TEXTS, targets)]
    for got, single in zip(batch, singles):
        np.testing.assert_array_equal(got.scores, single.scores)
        assert got.params == single.params and got.params["precision"] == precision
        if precision == "float64":
            assert got.convergence.precision == "float64"
    results = _in_threads(lambda i: te.explain(lstm, TEXTS[i], method="integrated_gradients", target=targets[i],
                                               **params).scores, len(TEXTS))
    for i, single in enumerate(singles):
        np.testing.assert_array_equal(results[i], single.scores)
    after_state, after_grads, after_modes = _snapshot(lstm.module)
    assert after_grads == grads and after_modes == modes
    assert all(torch.equal(state[k], after_state[k]) for k in state)
    assert _hooks(lstm.module) == 0 and all(p.grad is None for p in lstm.module.parameters())
