"""Issue 18, points 1, 2, 8, 9 and 10: users' own models, tokenizers and folders."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import data
import lstmvis
import textexplain as te
from textexplain import CharTokenizer, TextModel, Vocab, WordTokenizer

ROOT = Path(__file__).resolve().parents[1]
CHARS = ["<pad>", "<unk>", *"abcdefgh ."]


# ------------------------------------------------------------------------- language models
class RecurrentLM(nn.Module):
    """The project's convention: ``(ids, state) -> (logits, state)``."""

    def __init__(self, n=None):
        super().__init__()
        n = n or len(CHARS)
        torch.manual_seed(0)
        self.emb = nn.Embedding(n, 4)
        self.rnn = nn.LSTM(4, 5, batch_first=True)
        self.out = nn.Linear(5, n)

    def forward(self, ids, state=None):
        h, state = self.rnn(self.emb(ids), state)
        return self.out(h), state


class LogitsOnly(RecurrentLM):
    """``ids -> logits`` (no state), output in one of the accepted shapes; the same weights."""

    def __init__(self, wrap="tensor"):
        super().__init__()
        self.wrap = wrap

    def forward(self, ids):
        logits, _ = super().forward(ids)
        if self.wrap == "tuple":
            return logits, "extra"
        if self.wrap == "object":
            return SimpleNamespace(logits=logits, past_key_values=None)
        return logits


TEXT = "abc defgh. " * 7  # 77 characters


@pytest.mark.parametrize("wrap", ["tensor", "tuple", "object"])
def test_stateless_language_models_of_any_output_shape_match_the_recurrent_one(wrap, tmp_path):
    vocab = Vocab(CHARS)
    recurrent = lstmvis.LanguageModel(RecurrentLM().eval(), vocab, CharTokenizer())
    stateless = lstmvis.LanguageModel(LogitsOnly(wrap).eval(), vocab, CharTokenizer())
    assert recurrent.stateful and not stateless.stateful
    ids = torch.tensor([recurrent.encode(TEXT)])
    with torch.no_grad():
        logits, state = stateless.step(ids)
        expected, _ = recurrent.step(ids)
    assert state is None
    torch.testing.assert_close(logits, expected)
    assert stateless.bits_per_token([ids[0].tolist()], streams=2, chunk=8) == pytest.approx(
        recurrent.bits_per_token([ids[0].tolist()], streams=2, chunk=8), rel=1e-5)
    # a sequence longer than a chunk runs whole (nothing to carry): the states equal the recurrent run
    a = lstmvis.extract(recurrent, [TEXT, TEXT[:20]], tmp_path / "a.h5", chunk_size=16, progress=False)
    b = lstmvis.extract(stateless, [TEXT, TEXT[:20]], tmp_path / "b.h5", chunk_size=16, progress=False)
    np.testing.assert_allclose(b.states("rnn.l0.h"), a.states("rnn.l0.h"), atol=1e-6)
    with pytest.raises(ValueError, match="stateless"):
        stateless.step(ids, state=(torch.zeros(1, 1, 5), torch.zeros(1, 1, 5)))


class StateRequired(RecurrentLM):
    """``forward(ids, state)`` with no default for the state: only ``step`` knows to pass one."""

    def forward(self, ids, state):
        return super().forward(ids, state)


def test_explain_cell_runs_through_the_one_call():
    lm = lstmvis.LanguageModel(StateRequired().eval(), Vocab(CHARS), CharTokenizer())
    e = lstmvis.explain_cell(lm, "abc de", "rnn.l0.c", cell=1, method="gradient")
    ref = lstmvis.explain_cell(lstmvis.LanguageModel(RecurrentLM().eval(), Vocab(CHARS), CharTokenizer()),
                               "abc de", "rnn.l0.c", cell=1, method="gradient")
    np.testing.assert_allclose(e.scores, ref.scores, atol=1e-6)


def test_language_model_output_errors_name_what_came_back():
    class Words(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(len(CHARS), 3)

        def forward(self, ids):
            return {"scores": self.emb(ids)}

    with pytest.raises(TypeError, match=r"returned a dict.*tensor.*first element of a tuple.*\.logits"):
        lstmvis.LanguageModel(Words(), Vocab(CHARS), CharTokenizer())
    with pytest.raises(ValueError, match="12 logits per token but the vocabulary has 11"):
        lstmvis.LanguageModel(RecurrentLM(n=12), Vocab(CHARS[:-1]), CharTokenizer())


def test_the_probe_leaves_the_module_as_it_was():
    module = RecurrentLM()
    module.rnn.eval()  # mixed training flags are kept
    lstmvis.LanguageModel(module, Vocab(CHARS), CharTokenizer())
    assert module.training and not module.rnn.training and module.out.training


def test_data_language_model_is_the_library_class():
    assert data.LanguageModel is lstmvis.LanguageModel
    assert data.load_model("parens-lstm").stateful


# ------------------------------------------------------------------------- classifiers
class Classifier(nn.Module):
    def __init__(self, n_logits=2, wrap="tensor"):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Linear(3, n_logits)
        self.wrap = wrap

    def forward(self, ids):
        logits = self.head(self.emb(ids).mean(1))
        if self.wrap == "tuple":
            return (logits, None)
        if self.wrap == "object":
            return SimpleNamespace(logits=logits)
        return logits


VOCAB = ["<pad>", "<unk>", "good", "bad", "film"]


@pytest.mark.parametrize("wrap", ["tuple", "object"])
def test_text_model_reads_tuples_and_logits_objects(wrap):
    torch.manual_seed(0)
    plain = Classifier().eval()
    other = Classifier(wrap=wrap).eval()
    other.load_state_dict(plain.state_dict())
    a = TextModel(plain, VOCAB, ["neg", "pos"], embedding=plain.emb, tokenizer=WordTokenizer())
    b = TextModel(other, VOCAB, ["neg", "pos"], embedding=other.emb, tokenizer=WordTokenizer())
    np.testing.assert_allclose(b.predict_proba("good film"), a.predict_proba("good film"), atol=1e-6)
    for method in ("integrated_gradients", "occlusion"):
        np.testing.assert_allclose(te.explain(b, "good bad film", method=method).scores,
                                   te.explain(a, "good bad film", method=method).scores, atol=1e-5)


def test_text_model_checks_the_label_count_when_wrapping():
    module = Classifier(n_logits=2).eval()
    with pytest.raises(ValueError, match=r"returns 2 logits but 3 labels were given"):
        TextModel(module, VOCAB, ["neg", "neutral", "pos"], embedding=module.emb)


def test_text_model_refuses_a_module_in_training_mode_and_leaves_it_so():
    module = Classifier()
    with pytest.raises(ValueError, match=r"training mode.*module\.eval\(\)"):
        TextModel(module, VOCAB, ["neg", "pos"], embedding=module.emb)
    assert module.training


# ------------------------------------------------------------------------- tokenizers
class NoSpans:
    """Lower-cases words; has no spans method."""

    def __call__(self, text):
        return text.lower().split()


class Rewrites:
    """Rewrites its tokens (sub-word marks): they cannot be found in the text."""

    def __call__(self, text):
        return ["##" + w for w in text.split()]


def test_a_tokenizer_without_spans_gets_them_by_search():
    module = Classifier().eval()
    m = TextModel(module, VOCAB, ["neg", "pos"], embedding=module.emb, tokenizer=NoSpans())
    text = "Good  FILM, bad"
    assert m.token_spans(text) == [(0, 4), (6, 11), (12, 15)]
    e = te.explain(m, text, method="gradient")
    assert e.to_words().tokens == ["Good", "FILM,", "bad"]


def test_a_tokenizer_whose_tokens_are_not_in_the_text_gets_no_spans_and_a_warning(tmp_path):
    module = Classifier().eval()
    m = TextModel(module, VOCAB, ["neg", "pos"], embedding=module.emb, tokenizer=Rewrites())
    with pytest.warns(UserWarning, match="no spans"):
        e = te.explain(m, "good film", method="gradient")
    assert e.spans is None
    with pytest.warns(UserWarning, match="kept as tokens"):
        words = e.to_words()
    assert words.tokens == ["##good", "##film"]


def test_stores_of_a_tokenizer_without_spans_show_the_real_text(tmp_path):
    lm = lstmvis.LanguageModel(RecurrentLM().eval(), Vocab(CHARS), list)  # str -> chars, no spans
    store = lstmvis.extract(lm, ["Abc de"], tmp_path / "s.h5", progress=False)
    np.testing.assert_array_equal(store.token_spans(), [[i, i + 1] for i in range(6)])


# ------------------------------------------------------------------------- errors that say what to do
@pytest.mark.parametrize("saved", ["module", "state_dict"])
def test_foreign_checkpoints_get_one_plain_sentence(saved, tmp_path):
    from data.provider import load_model

    module = Classifier()
    path = tmp_path / "mine.pt"
    torch.save(module if saved == "module" else module.state_dict(), path)
    with pytest.raises(data.CheckpointError) as err:
        load_model(str(path))
    message = str(err.value)
    assert "only checkpoints of this project" in message and "lstmvis.LanguageModel / textexplain.TextModel" in message
    assert "\x1b" not in message and "\n" not in message


def test_checkpoint_errors_carry_no_ansi_codes(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(Classifier(), path)
    with pytest.raises(data.CheckpointError) as err:
        data.load_checkpoint(path)
    assert "weights_only" in str(err.value) and "\x1b" not in str(err.value)


# ------------------------------------------------------------------------- name collisions
@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A user's folder with their own data.py and server.py (which must never be imported)."""
    folder = tmp_path_factory.mktemp("user-project")
    for name in ("data", "server"):
        (folder / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py was imported')\n")
    return folder


@pytest.mark.parametrize("args", [["-c", "import lstmvis, textexplain"], ["-m", "lstmvis", "--help"],
                                  ["-m", "textexplain.cli", "--help"], ["-m", "lstmvis", "models"]],
                         ids=["import", "lstmvis-help", "textexplain-help", "lstmvis-models"])
def test_a_users_data_and_server_modules_do_not_shadow_ours(user_folder, args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, behind the user's folder on sys.path
    done = subprocess.run([sys.executable, *args], cwd=user_folder, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "own" not in done.stderr
    if args[-1] == "models":
        assert "sentiment-lstm" in done.stdout
    if args[-1] == "--help" and args[1] == "lstmvis":
        assert "serve" in done.stdout


def test_an_already_imported_module_of_the_same_name_gets_a_clear_error(tmp_path, monkeypatch):
    from textexplain import providers

    monkeypatch.setitem(sys.modules, "data", SimpleNamespace(__file__=str(tmp_path / "data.py")))
    monkeypatch.delitem(sys.modules, "data.provider", raising=False)
    with pytest.raises(ImportError, match=r"already imported from .*data\.py.*rename it"):
        providers.model_providers()


def test_library_modules_never_import_the_demo_package():
    code = ("import sys, lstmvis, textexplain, lstmvis.cli, textexplain.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('data', 'server')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
