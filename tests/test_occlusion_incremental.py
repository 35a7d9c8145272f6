"""Occlusion's incremental path (textexplain/incremental.py span tensors) gives the plain path's scores.

Every case compares ``evaluation="incremental"`` (or the automatic choice) with ``evaluation="plain"``:
max |difference| <= 1e-5 x max |score| (float32 models, default state tolerance), and to rounding with
``state_tolerance=0`` in float64. Models: the shipped recurrent and convolutional classifiers, the
language models read as classifiers of their next token, hand-set LSTM/GRU/Conv1d stacks, and models
the span rules do not cover (densified, or the whole path given up), where the result must be exact too.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data
import textexplain as te
import textexplain.incremental as incremental
from textexplain.perturb import MaskedModel
from textexplain.testing import check_explainer, hooks_left

RTOL = 1e-5  # of max |score|
WORDS = ["<pad>", "<unk>"] + [f"w{i}" for i in range(30)]


def _sentence(model, n: int) -> str:
    texts, _ = data.rotten_tomatoes("test")
    words: list[str] = []
    for t in texts:
        words += model.tokenize(t)
        if len(words) >= n:
            break
    return " ".join(words[:n])


def _random_text(n: int, seed: int = 0) -> str:
    return " ".join(f"w{i}" for i in np.random.default_rng(seed).integers(0, 30, size=n))


def _compare(model, text, rtol=RTOL, evaluation="incremental", scale="score", **params):
    """Explain ``text`` both ways; the difference must be within ``rtol`` x max |score| (``scale="score"``)
    or x the output scale, max(|score|, |logit|) (``"output"``: random models whose masked tokens move
    the logits by less than their float32 rounding)."""
    plain = te.Occlusion(model, evaluation="plain", **params).explain(text)
    fast = te.Occlusion(model, evaluation=evaluation, **params).explain(text)
    assert plain.info["evaluation"] == "plain"
    gap = np.abs(fast.scores - plain.scores).max()
    size = np.abs(plain.scores).max()
    if scale == "output":
        size = max(size, np.abs(plain.info["logits"]).max())
    assert gap <= rtol * max(size, 1e-12), (gap, size)
    np.testing.assert_allclose(fast.probs, plain.probs, atol=1e-6)  # the text alone vs in a batch
    return fast


@pytest.fixture(scope="module")
def shipped():
    return {name: data.load_model(name) for name in ("sentiment-lstm", "sentiment-gru", "sentiment-cnn",
                                                     "sentiment-shortcut")}


@pytest.mark.parametrize("name", ["sentiment-lstm", "sentiment-gru", "sentiment-cnn", "sentiment-shortcut"])
@pytest.mark.parametrize("params", [{"window": 1}, {"window": 3, "stride": 2, "mask": "unk"}, {"window": 2, "mask": "the"}])
def test_shipped_classifiers_match_the_plain_path(shipped, name, params):
    model = shipped[name]
    model.max_tokens = 10_000
    e = _compare(model, _sentence(model, 150), **params)
    assert e.info["evaluation"] == "incremental" and e.info["densified_calls"] == []
    assert e.info["incremental_rows"] == e.info["n_windows"]


@pytest.mark.parametrize("text, window", [("good", 1), ("good", 3), ("a dull film", 5), ("a dull film", 2)])
def test_short_texts_and_windows_over_the_whole_text(shipped, text, window):
    for name in ("sentiment-lstm", "sentiment-cnn"):
        e = _compare(shipped[name], text, window=window)
        assert e.info["evaluation"] == "incremental"


def test_auto_takes_the_incremental_path_on_long_texts_only(shipped):
    for name, n in (("sentiment-gru", 400), ("sentiment-cnn", 64)):
        model = shipped[name]
        long = te.Occlusion(model).explain(_sentence(model, n))
        assert long.info["evaluation"] == "incremental" and long.info["incremental_check"] < 1e-5
        short = te.Occlusion(model).explain(_sentence(model, n // 2))
        assert short.info["evaluation"] == "plain" and "incremental_rows" not in short.info
    deleted = te.Occlusion(model, mask="delete", evaluation="incremental").explain(_sentence(model, 80))
    assert deleted.info["evaluation"] == "plain"


class NextToken(nn.Module):
    """A language model read as a classifier of the token after the text."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(ids)[0][:, -1]


@pytest.mark.parametrize("name, text", [("parens-lstm", "((()(())))" * 6), ("charlm-python", "def f(x):\n    return x + 1\n" * 3)])
def test_language_models_as_next_token_classifiers(name, text):
    lm = data.load_model(name)
    module = NextToken(lm.module).eval()
    model = te.TextModel(module, lm.vocab, lm.vocab.itos, embedding=lm.module.emb, tokenizer=lm.tokenizer)
    e = _compare(model, text, window=1)
    assert e.info["evaluation"] == "incremental" and e.info["densified_calls"] == []
    _compare(model, text, window=3, stride=3, mask="unk")


# ------------------------------------------------------------------------------------ hand-set models

class Recurrent(nn.Module):
    def __init__(self, kind: str, bidirectional: bool, batch_first: bool, use_final: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.batch_first, self.use_final = batch_first, use_final
        self.emb = nn.Embedding(len(WORDS), 8, padding_idx=0)
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(8, 6, num_layers=2, batch_first=batch_first,
                                                            bidirectional=bidirectional)
        self.out = nn.Linear(6 * (2 if bidirectional else 1) + 6, 3)

    def forward(self, ids):
        x = self.emb(ids)
        h, state = self.rnn(x if self.batch_first else x.transpose(0, 1))
        h = h if self.batch_first else h.transpose(0, 1)
        final = (state[0] if isinstance(state, tuple) else state)[-1]
        pooled = torch.tanh(h).amax(1) + h.mean(1)
        return self.out(torch.cat([pooled, final if self.use_final else torch.zeros_like(final)], -1))


def _wrap(module, dtype=torch.float32):
    module = module.to(dtype).eval()
    model = te.TextModel(module, WORDS, ["a", "b", "c"], embedding=module.emb)
    model.max_tokens = 10_000
    return model


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional, batch_first, use_final", [(False, True, True), (True, True, False),
                                                                   (True, False, True)])
def test_two_layer_recurrences(kind, bidirectional, batch_first, use_final):
    model = _wrap(Recurrent(kind, bidirectional, batch_first, use_final))
    for n, params in [(120, {"window": 1}), (90, {"window": 3, "stride": 2, "mask": "unk"}), (1, {"window": 2})]:
        e = _compare(model, _random_text(n, seed=n), scale="output", **params)
        assert e.info["evaluation"] == "incremental" and e.info["densified_calls"] == []


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_zero_tolerance_is_the_plain_path_to_rounding(kind):
    model = _wrap(Recurrent(kind, True, True, use_final=True), torch.float64)
    _compare(model, _random_text(70), rtol=1e-11, window=2, state_tolerance=0.0)


class Convolutional(nn.Module):
    """Conv1d stacks with padding, stride, dilation and max pooling with ceil_mode, then time reductions."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(len(WORDS), 8, padding_idx=0)
        self.c1 = nn.Conv1d(8, 6, 3, padding=1)
        self.c2 = nn.Conv1d(6, 5, 4, stride=2, dilation=2, padding=3)
        self.c3 = nn.Conv1d(5, 4, 3, padding="same")
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(8, 3)

    def forward(self, ids):
        x = self.emb(ids).transpose(1, 2)
        x = F.max_pool1d(self.act(self.c1(x)), 3, stride=2, padding=1, ceil_mode=True)
        x = self.c3(F.gelu(self.c2(x)))
        return self.out(torch.cat([x.amax(-1), x.sum(-1)], -1))


def test_convolution_and_pooling_stacks():
    model = _wrap(Convolutional())
    for n, params in [(101, {"window": 1}), (64, {"window": 4, "stride": 3}), (2, {"window": 1}), (5, {"window": 9})]:
        e = _compare(model, _random_text(n, seed=n), scale="output", **params)
        assert e.info["evaluation"] == "incremental" and e.info["densified_calls"] == []


class Masked(nn.Module):
    """An LSTM whose outputs are masked by the ids (a span mask, False where ``mask="unk"`` hides tokens)
    and by position (a plain mask, partly False), next to masks True or False everywhere (the rules'
    shortcuts), pooled by several reductions over different tensors (the cached reference scans)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(len(WORDS), 8, padding_idx=0)
        self.rnn = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.out = nn.Linear(36, 3)

    def forward(self, ids):
        h, _ = self.rnn(self.emb(ids))
        known = (ids != 1).unsqueeze(-1)
        late = (torch.arange(ids.shape[1]) >= 3)[None, :, None]
        every = torch.ones_like(late)
        a = h.masked_fill(~known, -5.0).amax(1) + (h * late).sum(1)
        b = (every * h).mean(1) + h.masked_fill(~every, 7.0).amax(1) + torch.masked_fill(h, ~late, 2.0).amin(1)
        c = (h * known).sum(1) + torch.mul(h, True).amax(1)
        return self.out(torch.cat([a, b, c], -1))


@pytest.mark.parametrize("mask", ["pad", "unk"])
def test_masks_true_or_false_everywhere_and_partly(mask):
    e = _compare(_wrap(Masked()), _random_text(80), window=2, mask=mask, scale="output")
    assert e.info["evaluation"] == "incremental" and e.info["densified_calls"] == []


def test_a_mask_false_everywhere_shares_the_block():
    run = incremental.SpanRun()
    x = incremental.make_span(torch.randn(1, 9, 4), torch.tensor([0, 5]), torch.randn(2, 3, 4), (0, 1, 2), run)
    nothing, partly = torch.zeros(1, 9, 1, dtype=torch.bool), torch.zeros(2, 9, 1, dtype=torch.bool)
    partly[:, 6] = True
    assert x.masked_fill(nothing, 1.0)._block is x._block and (x * ~nothing)._block is x._block
    assert torch.equal(x.masked_fill(partly, 1.0).dense(), x.dense().masked_fill(partly, 1.0))
    assert torch.equal((x * ~partly).dense(), x.dense() * ~partly)
    assert torch.equal(x.masked_fill(partly.expand(2, 9, 4), 1.0).dense(), x.dense().masked_fill(partly, 1.0))
    wider = torch.ones(3, 1, 1, 1, dtype=torch.bool)  # all True, but the product broadcasts to more rows
    assert torch.equal(x * wider, x.dense() * wider)


class Unsupported(nn.Module):
    """An LSTM followed by a running sum over time: no span rule for cumsum."""

    def __init__(self, inplace: str = ""):
        super().__init__()
        torch.manual_seed(1)
        self.inplace = inplace
        self.emb = nn.Embedding(len(WORDS), 8, padding_idx=0)
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, ids):
        x = self.emb(ids)
        if self.inplace == "own":
            x.mul_(0.5)
        elif self.inplace == "view":  # writes into x through a view
            x.transpose(1, 2).mul_(0.5)
        h, _ = self.rnn(x)
        return self.out((h if self.inplace else h.cumsum(1)).mean(1))


def test_an_unsupported_call_is_densified_and_exact():
    model = _wrap(Unsupported())
    text = _random_text(400)
    forced = _compare(model, text, window=2, scale="output")
    assert forced.info["evaluation"] == "incremental" and forced.info["densified_calls"] == ["TensorBase.cumsum"]
    auto = _compare(model, text, window=2, evaluation="auto", scale="output")
    assert auto.info["evaluation"] == "plain" and "cumsum" in auto.info["evaluation_note"]
    assert auto.info["incremental_rows"] == incremental_rows_per_call(text)


def incremental_rows_per_call(text: str) -> int:
    from textexplain.perturb import SPAN_ROWS

    return min(SPAN_ROWS, len(text.split()) - 1)


def test_in_place_writes():
    own = _compare(_wrap(Unsupported(inplace="own")), _random_text(20), window=1, scale="output")
    assert own.info["evaluation"] == "incremental" and own.info["densified_calls"] == []
    view = _compare(_wrap(Unsupported(inplace="view")), _random_text(20), window=1, scale="output")
    assert view.info["evaluation"] == "plain" and "in-place" in view.info["evaluation_note"]


def test_the_plain_check_catches_a_wrong_rule(monkeypatch):
    right = incremental._lstm_step

    def wrong(xp, h, c, w_hh_t, b_hh):
        h, c = right(xp, h, c, w_hh_t, b_hh)
        return h * 1.01, c

    monkeypatch.setattr(incremental, "_lstm_step", wrong)
    e = _compare(_wrap(Recurrent("lstm", True, True)), _random_text(30), window=1, scale="output")
    assert e.info["evaluation"] == "plain" and "differed" in e.info["evaluation_note"]


def test_a_transformer_runs_plain_and_forced_is_still_exact():
    model = data.load_model("sentiment-transformer")
    text = _sentence(model, 70)
    assert te.Occlusion(model).explain(text).info["evaluation"] == "plain"
    forced = _compare(model, text, window=1)
    assert forced.info["densified_calls"]


# --------------------------------------------------------------------------------- the house rules

def test_the_module_is_untouched(shipped):
    model = shipped["sentiment-lstm"]
    module = model.module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()]
    te.Occlusion(model, evaluation="incremental").explain(_sentence(model, 70))
    assert not module.training and hooks_left(module) == 0
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()] == hooks
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters())
    assert type(module.rnn) is nn.LSTM and "forward" not in vars(module.rnn)


def test_check_explainer_on_the_incremental_path():
    check_explainer(te.Occlusion, params={"evaluation": "incremental", "window": 2})
    check_explainer(te.Occlusion, model=_wrap(Recurrent("gru", True, True)), params={"evaluation": "incremental"})


def test_progress_bar_counts_the_masked_texts(capsys):
    model = _wrap(Recurrent("lstm", True, True))
    ids = model.encode(_random_text(300))
    keep = ~np.eye(300, dtype=bool)
    masked = MaskedModel(model, ids, progress=True, evaluation="incremental")
    masked.logits(keep)
    assert "300/300" in capsys.readouterr().err and masked.path["evaluation"] == "incremental"


def test_state_tolerance_is_declared_and_bounded():
    hyper = te.Occlusion.hyperparameters["state_tolerance"]
    assert hyper.default == incremental.STATE_TOLERANCE and hyper.ge == 0 and hyper.le == 1e-2
    with pytest.raises(ValueError):
        te.Occlusion(data.load_model("sentiment-cnn"), state_tolerance=-1.0)
    with pytest.raises(ValueError):
        te.Occlusion(data.load_model("sentiment-cnn"), evaluation="fast")
