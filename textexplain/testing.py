"""The method contract as a checker you can run on your own method class (like scikit-learn's
``check_estimator``)::

    from textexplain.testing import check_explainer, check_image_method, check_text_model
    check_explainer(MyMethod)                        # on a small default classifier
    check_explainer(MyMethod, my_text_model, params={"n_samples": 8})
    check_image_method(MyImageMethod)                # on a small default CNN
    check_text_model(my_text_model)                  # your model: padding never changes a text's output

Each check raises ``AssertionError`` naming the broken promise. ``check_explainer`` checks a text
method (a ``textexplain.Explainer`` subclass): its declarations (constructor, ``get_params``,
every declared choice and bound refused just outside), the explanation it returns (shape, record,
JSON round trip, escaped HTML), batch = single calls, determinism (and, for a seeded method, that the
seed matters), that the model is left as it was (weights, ``requires_grad``, ``.grad``, training
flag, no hooks, also after the model fails mid-call), that training mode is refused, and that
concurrent calls on one model agree with sequential ones. ``check_image_method`` checks an image
method (a ``textexplain.image.ImageMethod`` subclass) the same way on a batch of images.
``check_text_model`` checks a model rather than a method: every perturbation method and every metric
with ``mask="delete"`` runs texts of mixed lengths in one padded batch, so a model whose output for a
text depends on the padding (or on the other texts of the batch) makes all of them silently wrong.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Explainer
from .explanation import Explanation
from .hyperparameters import Hyper, Method
from .image.base import ImageMethod
from .model import TextModel, WordTokenizer

WORDS = ["<pad>", "<unk>", "good", "bad", "plot", "acting", "not", "great", "dull", "film", "a", "the", ",", "b"]
LABELS = ["neg", "pos", "other"]
TEXTS = ["a good plot but not great acting", "the film", "dull dull film , not good", "great"]
TARGETS = [None, 1, "neg", 2]
# long enough that sampling methods sample (SHAP enumerates texts of up to 14 tokens exactly by default)
LONG_TEXT = "a good plot , not great acting , a dull film , the bad plot , good acting , not the film"
MARKUP_TEXT = "<b>good</b> <script>alert(1)</script> film"


class TinyClassifier(nn.Module):
    """Mean of the token embeddings (pad excluded) -> tanh layer -> logits; seeded random weights."""

    def __init__(self, n_words: int = len(WORDS), n_labels: int = len(LABELS), dim: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(n_words, dim, padding_idx=0)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_labels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.emb.weight[0] = 0
        self.eval()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(torch.float32)
        pooled = (self.emb(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.tanh(self.hidden(pooled)))


def tiny_text_model() -> TextModel:
    """The default model of ``check_explainer``: a small nonlinear word classifier with three classes."""
    module = TinyClassifier()
    return TextModel(module, WORDS, LABELS, embedding=module.emb, tokenizer=WordTokenizer(), name="tiny")


class TinyCNN(nn.Module):
    """conv -> ReLU -> maxpool -> conv -> ReLU -> global average pool -> linear, seeded random weights."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_images(n: int = 3, seed: int = 1) -> torch.Tensor:
    """``n`` random images (n, 2, 8, 8) in [0, 1] for ``TinyCNN``."""
    return torch.rand((n, 2, 8, 8), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- shared checks

def just_outside(hyper: Hyper) -> list[tuple[str, Any]]:
    """``(bound, value)`` pairs just outside each of the library's declared bounds."""
    integer = int in hyper.types and float not in hyper.types
    out = []
    for bound, value in (("ge", hyper.ge), ("gt", hyper.gt), ("le", hyper.le)):
        if value is None:
            continue
        if bound == "gt":
            out.append((bound, int(value) if integer and value == int(value) else value))
        elif integer:
            out.append((bound, int(value) - 1 if bound == "ge" else int(value) + 1))
        else:
            out.append((bound, float(np.nextafter(value, -np.inf if bound == "ge" else np.inf))))
    return out


def not_a_choice(hyper: Hyper) -> Any:
    """A value of the declared type that is none of the declared choices."""
    return "not-" + "-".join(map(str, hyper.choices)) if str in hyper.types else object()


def check_declarations(cls: type[Method], make: Callable[..., Method]) -> None:
    """The constructor takes exactly the declared hyperparameters with their defaults, ``get_params``
    returns them, and each declared choice and bound is refused just outside (``make(**params)``)."""
    import inspect

    declared = cls.hyperparameters
    assert all(isinstance(h, Hyper) for h in declared.values()), "hyperparameters must be Hyper declarations"
    signature = inspect.signature(cls)
    names = [p for p in signature.parameters if p != "model"]
    assert names == list(declared), f"{cls.__name__}: constructor arguments {names} are not the declared {list(declared)}"
    for name, hyper in declared.items():
        assert signature.parameters[name].default == hyper.default or (
            hyper.default is signature.parameters[name].default), f"{name}: default differs from its declaration"
        assert hyper.help, f"{cls.__name__}.{name} has no help text"
    method = make()
    params = method.get_params()
    assert list(params) == list(declared), f"get_params returns {list(params)}, not the declarations"
    for name, hyper in declared.items():
        if hyper.choices is not None and hyper.other_values is None:
            _refused(make, {name: not_a_choice(hyper)}, f"{cls.__name__}({name}=<not a choice>)")
        for bound, value in just_outside(hyper):
            _refused(make, {name: value}, f"{cls.__name__}({name}={value!r}) (just outside {bound}={getattr(hyper, bound)})")
    try:
        make(no_such_hyperparameter=1)
    except TypeError:
        pass
    else:
        raise AssertionError(f"{cls.__name__} accepted an undeclared hyperparameter")
    assert cls.seeded == ("seed" in declared)


def _refused(make: Callable[..., Any], params: dict, what: str) -> None:
    try:
        make(**params)
    except ValueError:
        return
    raise AssertionError(f"{what} was accepted: the declaration's check does not run")


def _in_threads(work: Callable[[int], Any], n: int) -> dict[int, Any]:
    """``work(i)`` for i < n, each in a thread of its own, started together; errors are raised."""
    results, errors = {}, []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _snapshot(module: nn.Module) -> tuple:
    return ({k: v.detach().clone() for k, v in module.state_dict().items()},
            {n: p.requires_grad for n, p in module.named_parameters()},
            {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()},
            [m.training for m in module.modules()])


def _same_snapshot(before: tuple, after: tuple, what: str) -> None:
    state, flags, grads, modes = before
    state2, flags2, grads2, modes2 = after
    assert flags == flags2, f"{what} changed requires_grad"
    assert modes == modes2, f"{what} changed the training flag"
    for k in state:
        assert torch.equal(state[k], state2[k]), f"{what} changed the model's {k}"
    for k in grads:
        assert (grads[k] is None and grads2[k] is None) or (
            grads[k] is not None and grads2[k] is not None and torch.equal(grads[k], grads2[k])), \
            f"{what} touched {k}.grad"


def hooks_left(module: nn.Module) -> int:
    """Hooks on ``module`` and its children, global module hooks, and active torch function modes."""
    g = nn.modules.module
    total = sum(len(d) for d in (g._global_forward_hooks, g._global_forward_pre_hooks, g._global_backward_hooks))
    for m in module.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        total += len(getattr(m, "_backward_pre_hooks", {}))
    return total + torch._C._len_torch_function_stack()


class _FailsAfterForward(nn.Module):
    """The wrapped module, raising after its forward pass (while a method's hooks are active)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.inner(*args, **kwargs)
        raise RuntimeError("the model failed on purpose (check_explainer)")


# ------------------------------------------------------------------------------------ text

def check_explainer(cls: type[Explainer], model: TextModel | None = None,
                    params: Mapping[str, Any] | None = None) -> None:
    """Check a text method class against the contract every ``textexplain`` method keeps.

    ``model``: a ``TextModel`` in eval mode (default: ``tiny_text_model()``); ``params``: the
    hyperparameters to run with (e.g. fewer samples to keep the check fast). Its texts are words of
    the default model; on another model unknown words are its unk token, which works as well.
    """
    assert isinstance(cls, type) and issubclass(cls, Explainer), f"{cls!r} is not a textexplain.Explainer subclass"
    assert cls.name, f"{cls.__name__} has no name: declare it as class {cls.__name__}(Explainer, name=...)"
    model = tiny_text_model() if model is None else model
    params = dict(params or {})
    before = _snapshot(model.module)
    check_declarations(cls, lambda **extra: cls(model, **{**params, **extra}))
    explainer = cls(model, **params)
    assert repr(explainer).startswith(cls.__name__)

    e = explainer.explain(TEXTS[0])
    assert isinstance(e, Explanation) and e.method == cls.name
    assert e.tokens == model.tokenize(TEXTS[0]) and e.token_ids == model.encode(TEXTS[0])
    assert np.asarray(e.scores).shape == (len(e.tokens),) and np.isfinite(e.scores).all(), "scores: one finite per token"
    assert e.spans == model.token_spans(TEXTS[0])
    np.testing.assert_allclose(e.probs, model.predict_proba(TEXTS[0])[0], atol=1e-5,
                               err_msg="probs are not the model's for the text")
    assert e.target == e.predicted and e.labels == list(model.labels)
    assert e.params == explainer.get_params(), "the explanation does not record the hyperparameters"
    assert e.info["model"] == model.name
    back = Explanation.from_json(e.to_json())
    np.testing.assert_array_equal(back.scores, e.scores)
    assert back.params == e.params and back.target_label == e.target_label, "the JSON round trip loses data"
    assert back.convergence == e.convergence and back.info == e.info, "the JSON round trip loses the convergence record"
    page = explainer.explain(MARKUP_TEXT).to_html()
    assert "<script" not in page and "<b>good" not in page and "&lt;" in page, "the HTML does not escape the text"

    # an index, a label name and the last class: TARGETS on the default labels, the same kinds on any others
    labels = list(model.labels)
    targets = TARGETS if labels == LABELS else [None, 1 % len(labels), labels[0], len(labels) - 1]
    batch = explainer.explain_batch(TEXTS, targets)
    for text, target, got in zip(TEXTS, targets, batch):
        single = explainer.explain(text, target)
        assert got.text == text and got.target == single.target
        np.testing.assert_allclose(got.scores, single.scores, rtol=1e-5, atol=1e-6,
                                   err_msg=f"a batch differs from single calls on {text!r}")
    assert batch[1].target == targets[1] and batch[2].target == model.label_index(targets[2])

    first = explainer.explain(TEXTS[2], target=1)
    cls(model, **params).explain(TEXTS[0])  # other work in between changes nothing
    np.testing.assert_array_equal(explainer.explain(TEXTS[2], target=1).scores, first.scores,
                                  err_msg="two calls with the same input differ")
    if cls.seeded:
        seed = params.get("seed", cls.hyperparameters["seed"].default)
        long_first = cls(model, **params).explain(LONG_TEXT, target=1).scores
        np.testing.assert_array_equal(cls(model, **params).explain(LONG_TEXT, target=1).scores, long_first,
                                      err_msg="the same seed gives different scores")
        other = cls(model, **{**params, "seed": seed + 6}).explain(LONG_TEXT, target=1).scores
        assert not np.allclose(other, long_first), "another seed gives the same scores: is the seed used?"

    _same_snapshot(before, _snapshot(model.module), cls.__name__)
    assert hooks_left(model.module) == 0, f"{cls.__name__} left hooks on the model"

    broken = copy.copy(model)  # TextModel() would refuse a module that fails on its probe call
    broken.module = _FailsAfterForward(model.module).eval()
    try:
        cls(broken, **params).explain(TEXTS[0])
    except RuntimeError:
        pass
    else:
        raise AssertionError("a failing model did not fail the explanation")
    assert hooks_left(model.module) == 0, f"{cls.__name__} left hooks on the model after it failed"

    model.module.train()
    try:
        cls(model, **params).explain(TEXTS[0])
    except ValueError:
        pass
    else:
        raise AssertionError(f"{cls.__name__} explained a model in training mode (dropout makes it random)")
    finally:
        assert model.module.training, "the training flag was changed"
        model.module.eval()

    expected = [explainer.explain(t).scores for t in TEXTS]
    probs = model.predict_proba(TEXTS)

    def work(i: int) -> np.ndarray:
        scores = None
        for _ in range(2):
            scores = explainer.explain(TEXTS[i]).scores
            np.testing.assert_allclose(model.predict_proba(TEXTS), probs, atol=1e-6,
                                       err_msg="plain predictions changed while explaining in another thread")
        return scores

    results = _in_threads(work, len(TEXTS))
    for i, scores in enumerate(expected):
        np.testing.assert_allclose(results[i], scores, rtol=1e-5, atol=1e-6,
                                   err_msg="concurrent calls on one model differ from sequential ones")
    assert hooks_left(model.module) == 0


def check_text_model(model: TextModel, texts: Sequence[str] | None = None, atol: float = 1e-4,
                     rtol: float = 1e-5) -> None:
    """Check that a text's logits are the same alone and inside padded batches of mixed lengths.

    ``texts``: texts to check with (default: six texts of 1 to 22 tokens; unknown words become the
    model's unk token), of more than one length. Each text runs alone, then inside shuffled batches
    (pairs, triples, all texts at once: right-padded to the longest) through the model's one call of
    its module (``TextModel.logits``: frame tokens and attention mask added where it has them);
    ``predict_proba`` must give the softmax of the logits alone, whatever its batching. The model
    must be in eval mode and is left as it was. Raises ``AssertionError`` naming the text whose
    logits moved most and by how much (beyond ``atol + rtol * |logit|``).
    """
    assert isinstance(model, TextModel), f"{model!r} is not a textexplain.TextModel"
    assert not model.module.training, "the model is in training mode: call model.module.eval() (dropout is random)"
    texts = list(TEXTS + [LONG_TEXT, MARKUP_TEXT] if texts is None else texts)
    ids = [model.encode(t) for t in texts]
    assert len({len(i) for i in ids}) > 1, "give texts of more than one length: padding is what is checked"
    before, hooks = _snapshot(model.module), hooks_left(model.module)

    def logits(rows: Sequence[int]) -> np.ndarray:
        with torch.no_grad():
            out = model.logits(model.pad_batch([ids[r] for r in rows]))
        return out.detach().to(torch.float64).cpu().numpy()

    alone = np.concatenate([logits([r]) for r in range(len(ids))])
    assert alone.shape == (len(ids), len(model.labels)), \
        f"the module returns {alone.shape[1:]} logits per text, the model has {len(model.labels)} labels"
    assert np.isfinite(alone).all(), "the module returns non-finite logits"
    rng = np.random.default_rng(0)
    worst = (0.0, 0, 0, 0, alone[0])  # excess over the tolerance, text, batch size, padded width, its logits
    for size in (2, 3, len(ids)):
        for _ in range(3):
            order = rng.permutation(len(ids))
            for start in range(0, len(order), size):
                rows = order[start:start + size]
                batched = logits(rows)
                excess = np.abs(batched - alone[rows]) - (atol + rtol * np.abs(alone[rows]))
                i = int(excess.max(1).argmax())
                if excess[i].max() > worst[0]:
                    worst = (float(excess[i].max()), int(rows[i]), len(rows), max(len(ids[r]) for r in rows),
                             batched[i])
    if worst[0] > 0:
        _, r, size, width, got = worst
        raise AssertionError(
            f"the logits of {texts[r]!r} ({len(ids[r])} tokens) depend on the batch: alone {np.round(alone[r], 5)}, "
            f"in a batch of {size} padded to {width} tokens {np.round(got, 5)}; max difference "
            f"{np.abs(got - alone[r]).max():.3g} (tolerance {atol} + {rtol} x |logit|). Padded positions reach the "
            "output: mask them at every layer (not only at the final pooling), or every perturbation method and "
            "every metric with mask='delete' inherits the error.")
    probs = torch.softmax(torch.from_numpy(alone), -1).numpy()
    for batch_size in (None, 2):
        got = model.predict_proba(texts[::-1], batch_size=batch_size)[::-1]
        diff = np.abs(got - probs).max(1)
        assert diff.max() <= atol, (f"predict_proba(batch_size={batch_size}) of {texts[int(diff.argmax())]!r} differs "
                                    f"from the softmax of its logits alone by {diff.max():.3g}")
    _same_snapshot(before, _snapshot(model.module), "check_text_model")
    assert hooks_left(model.module) == hooks, "check_text_model left hooks on the model"


# ----------------------------------------------------------------------------------- images

def check_image_method(cls: type[ImageMethod], module: nn.Module | None = None,
                       params: Mapping[str, Any] | None = None, images: torch.Tensor | None = None) -> None:
    """Check an image method class against the contract every ``textexplain.image`` method keeps.

    ``module``: a classifier of images (B, C, H, W) -> logits (default: ``TinyCNN()``, with
    ``images`` from ``tiny_images``); ``params``: the hyperparameters to run with.
    """
    assert isinstance(cls, type) and issubclass(cls, ImageMethod), f"{cls!r} is not a textexplain.image.ImageMethod"
    assert cls.name, f"{cls.__name__} has no name: declare it as class {cls.__name__}(ImageMethod, name=...)"
    assert cls.output in ("map", "pixels")
    params = dict(params or {})
    make_module = (lambda: TinyCNN()) if module is None else (lambda: module)
    x = tiny_images(3) if images is None else images
    m = make_module()
    initial = _snapshot(m)
    check_declarations(cls, lambda **extra: cls(m, **{**params, **extra}))
    method = cls(m, **params)
    described = cls.describe()
    assert described["name"] == cls.name and described["summary"], f"{cls.__name__} needs a docstring"

    with torch.no_grad():
        n_classes = int(m(x[:1]).shape[1])
    targets = [i % n_classes for i in range(len(x))][::-1]
    batch = method.attribute(x, targets)
    expected = (len(x), *x.shape[2:]) if cls.output == "map" else tuple(x.shape)
    assert tuple(batch.shape) == expected, f"output {tuple(batch.shape)}, expected {expected} ({cls.output})"
    assert batch.dtype == x.dtype and not batch.requires_grad and torch.isfinite(batch).all()
    singles = torch.cat([method.attribute(x[i:i + 1], t) for i, t in enumerate(targets)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-6, msg="a batch differs from single calls")
    torch.testing.assert_close(method.attribute(x, targets), batch, rtol=0, atol=0, msg="two calls differ")
    predicted = m(x).argmax(1).tolist()
    torch.testing.assert_close(method.attribute(x), method.attribute(x, predicted), rtol=0, atol=0,
                               msg="target=None is not the predicted class")
    torch.testing.assert_close(method.attribute(x, 1 % n_classes), method.attribute(x, [1 % n_classes] * len(x)),
                               rtol=0, atol=0, msg="an int target is not the same class for every image")
    clone = method.clone_for(make_module())
    assert clone.get_params().keys() == method.get_params().keys()

    _same_snapshot(initial, _snapshot(m), cls.__name__)
    first, last = list(m.parameters())[0], list(m.parameters())[-1]
    m.train()  # no dropout or batch norm in the default module: the flag must survive
    frozen = first.requires_grad
    first.requires_grad_(False)
    planted = last.grad
    last.grad = torch.full_like(last, 7.0)
    before, x_before = _snapshot(m), x.clone()
    cls(m, **params).attribute(x, 0)
    _same_snapshot(before, _snapshot(m), cls.__name__)
    assert torch.equal(x, x_before) and not x.requires_grad, "the input was changed"
    assert hooks_left(m) == 0, f"{cls.__name__} left hooks or function modes behind"
    last.grad = planted
    first.requires_grad_(frozen)
    m.eval()

    failing = _FailsAfterForward(m)
    try:
        cls(failing, **params).attribute(x, 0)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a failing model did not fail the attribution")
    assert hooks_left(failing) == 0, f"{cls.__name__} left hooks or function modes after the model failed"

    reference = method.attribute(x, 0)
    results = _in_threads(lambda i: cls(m, **params).attribute(x, 0), 4)
    for got in results.values():
        assert torch.equal(got, reference), "concurrent calls on one model differ from a serial call"
    assert hooks_left(m) == 0
    try:
        method.attribute(x[:1], n_classes)
    except ValueError:
        pass
    else:
        raise AssertionError("a target beyond the model's classes was accepted")


__all__ = ["LABELS", "TEXTS", "WORDS", "TinyCNN", "TinyClassifier", "check_explainer", "check_image_method",
           "check_text_model", "hooks_left", "tiny_images", "tiny_text_model"]
