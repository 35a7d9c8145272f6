"""extract: stored states equal a single unbatched pass per sequence; atomic, resumable writes."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lstmvis
from data.architectures import CharLM, RNNClassifier, TextCNN
from data.registry import CHECKPOINTS, LanguageModel
from lstmvis import Recorder, StateStore, StoreError, extraction
from lstmvis.store import StoreWriter
from textexplain.model import CharTokenizer, TextModel, Vocab, WordTokenizer

ROOT = Path(__file__).resolve().parents[1]
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyzT_()[]{}'\"#:=.,+-*/ \n0123456789"))


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


def char_lm(rnn="lstm", seed=0):
    torch.manual_seed(seed)
    vocab = Vocab(["<pad>", "<unk>", *CHARS])
    module = CharLM(len(vocab), emb_dim=6, hidden=8, layers=2, rnn=rnn).eval()
    return LanguageModel(module, vocab, CharTokenizer(), name="toy-charlm", card={"name": "toy-charlm"})


def single_pass(module, ids, kinds="h,c", lm=True):
    x = torch.tensor([ids])
    with torch.no_grad(), Recorder(module, kinds=kinds) as rec:
        module(x, None) if lm else module(x)
    return {k: v[0].numpy() for k, v in rec.states.items()}


TEXTS = ["def f(x):\n    return x + 1\n" * 3, "", "a", "print('hi')  # done\n", "x = [1, 2, (3)]\n" * 5,
         "while True:\n    pass\n"]


@pytest.mark.parametrize("rnn,route", [("lstm", "fused"), ("gru", "fused"), ("lstm", "unroll"), ("gru", "unroll")])
def test_language_model_streams_equal_single_pass(tmp_path, rnn, route):
    lm = char_lm(rnn)
    kinds = "h,c" if rnn == "lstm" else "h,gates"
    store = lstmvis.extract(lm, TEXTS, tmp_path / "s.h5", kinds=kinds, batch_size=2, chunk_size=7, progress=False,
                            route=route)
    with store:
        assert store.n_sequences == len(TEXTS)
        assert store.n_tokens == sum(len(t) for t in TEXTS)
        expected_sources = single_pass(lm.module, lm.encode("ab"), kinds).keys()
        assert store.sources == list(expected_sources)
        for i, text in enumerate(TEXTS):
            a, b = store.sequence_bounds(i)
            assert b - a == len(text)
            assert store.sequence_text(i) == text
            assert "".join(store.tokens(a, b)) == text
            assert store.token_spans(a, b).tolist() == [[j, j + 1] for j in range(len(text))]
            if not text:
                continue
            ref = single_pass(lm.module, lm.encode(text), kinds)
            for name, arr in ref.items():
                np.testing.assert_allclose(store.states(name, a, b), arr, atol=1e-5, rtol=0, err_msg=f"{i} {name}")
        assert store.card["name"] == "toy-charlm"
        assert store.card["extraction"]["kind"] == "language-model"
        assert store.card["extraction"]["sources"] == store.sources


def test_long_text_chunks_carry_state(tmp_path):
    lm = char_lm()
    text = "".join(CHARS) * 20
    with lstmvis.extract(lm, text, tmp_path / "long.h5", chunk_size=64, progress=False) as store:
        ref = single_pass(lm.module, lm.encode(text))
        for name, arr in ref.items():
            np.testing.assert_allclose(store.states(name), arr, atol=1e-5, rtol=0)
        # a fresh state at every chunk would differ right after the first chunk boundary
        fresh = single_pass(lm.module, lm.encode(text[64:128]))
        assert np.abs(store.states("rnn.l1.c", 64, 128) - fresh["rnn.l1.c"]).max() > 1e-3


def word_model(kind="lstm"):
    torch.manual_seed(0)
    words = ["<pad>", "<unk>", "a", "good", "bad", "film", "very", "not", ",", "."]
    vocab = Vocab(words)
    if kind == "cnn":
        module = TextCNN(len(vocab), 2, emb_dim=5, channels=6, blocks=1, hidden=4)
    else:
        module = RNNClassifier(len(vocab), 2, emb_dim=5, hidden=4, rnn=kind, bidirectional=True)
    return TextModel(module.eval(), vocab, ["neg", "pos"], embedding=module.emb, tokenizer=WordTokenizer(),
                     card={"name": f"toy-{kind}"})


SENTENCES = ["A very good film.", "not good", "Bad, bad film", "a", "very very very bad film , not good ."]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_classifier_in_padded_batches(tmp_path, kind):
    model = word_model(kind)
    meta = {"label": [np.full(len(model.encode(t)), i % 2) for i, t in enumerate(SENTENCES)]}
    with lstmvis.extract(model, SENTENCES, tmp_path / "c.h5", kinds="all", batch_size=3, progress=False,
                         meta=meta) as store:
        assert any(".reverse." in s for s in store.sources)
        for i, text in enumerate(SENTENCES):
            a, b = store.sequence_bounds(i)
            ids = model.encode(text)
            assert store.token_ids(a, b).tolist() == ids
            ref = single_pass(model.module, ids, kinds="all", lm=False)
            for name, arr in ref.items():
                np.testing.assert_allclose(store.states(name, a, b), arr, atol=1e-5, rtol=0, err_msg=name)
            for pos, (s, e) in zip(range(a, b), store.token_spans(a, b)):
                assert store.sequence_text(i)[s:e].lower() == store.tokens(pos, pos + 1)[0]
            assert store.meta("label", a, b).tolist() == [i % 2] * (b - a)


def test_text_cnn_conv_filters_and_pooled_layers_skipped(tmp_path):
    model = word_model("cnn")
    with pytest.warns(UserWarning, match="convs.1.conv"):
        store = lstmvis.extract(model, SENTENCES, tmp_path / "cnn.h5", kinds="conv", progress=False)
    with store:
        assert store.sources == ["convs.0.conv"]
        for i, text in enumerate(SENTENCES):
            a, b = store.sequence_bounds(i)
            x = model.emb_out = model.module.emb(torch.tensor([model.encode(text)])).transpose(1, 2)
            want = model.module.convs[0](x)[0].T.detach().numpy()
            np.testing.assert_allclose(store.states("convs.0.conv", a, b), want, atol=1e-5, rtol=0)


class BiGRUTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 4)
        self.rnn = nn.GRU(4, 3, bidirectional=True, batch_first=True)

    def forward(self, ids):
        return self.rnn(self.emb(ids))[0]


def test_plain_module_groups_equal_lengths(tmp_path):
    torch.manual_seed(0)
    module = BiGRUTagger().eval()
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8], [9], [10, 11]]
    with lstmvis.extract(module, seqs, tmp_path / "m.h5", kinds="h", batch_size=8, progress=False) as store:
        assert store.vocab == [str(i) for i in range(12)]
        for i, ids in enumerate(seqs):
            ref = single_pass(module, ids, kinds="h", lm=False)
            a, b = store.sequence_bounds(i)
            for name, arr in ref.items():  # reverse states would differ if padding entered a batch
                np.testing.assert_allclose(store.states(name, a, b), arr, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="token-id lists"):
        lstmvis.extract(module, ["text"], tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="0..2"):
        lstmvis.extract(module, [[1, 5]], tmp_path / "x.h5", vocab=["a", "b", "c"], progress=False)


def test_float16_sources_selection_and_errors(tmp_path):
    lm = char_lm()
    with lstmvis.extract(lm, TEXTS, tmp_path / "h.h5", sources=["rnn.l1.c"], dtype="float16",
                         progress=False) as store:
        assert store.sources == ["rnn.l1.c"]
        assert store.dataset("rnn.l1.c").dtype == np.float16
        a, b = store.sequence_bounds(0)
        ref = single_pass(lm.module, lm.encode(TEXTS[0]))["rnn.l1.c"]
        np.testing.assert_allclose(store.states("rnn.l1.c", a, b), ref, atol=2e-3)
    with pytest.raises(ValueError, match="unknown sources"):
        lstmvis.extract(lm, TEXTS, tmp_path / "e.h5", sources=["rnn.l9.h"], progress=False)
    with pytest.raises(ValueError, match="dtype"):
        lstmvis.extract(lm, TEXTS, tmp_path / "e.h5", dtype="float64", progress=False)
    with pytest.raises(ValueError, match="empty"):
        lstmvis.extract(lm, [], tmp_path / "e.h5", progress=False)
    with pytest.raises(ValueError, match="meta"):
        lstmvis.extract(lm, TEXTS, tmp_path / "e.h5", meta={"x": [1, 2]}, progress=False)
    with pytest.raises(TypeError, match="LanguageModel"):
        lstmvis.extract("charlm", TEXTS, tmp_path / "e.h5", progress=False)
    assert not (tmp_path / "e.h5").exists()


def patch_write_states(monkeypatch, fail_at: int = 0, error: BaseException | None = None,
                       written: list | None = None) -> None:
    """``StoreWriter.write_states`` raises ``error`` at its ``fail_at``-th call (0: never) and appends the
    start of every write to ``written``."""
    original = StoreWriter.write_states
    calls = {"n": 0}

    def write_states(self, name, start, arr):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise error
        if written is not None:
            written.append(start)
        return original(self, name, start, arr)

    monkeypatch.setattr(StoreWriter, "write_states", write_states)


def test_interrupted_extraction_never_opens_and_resumes(tmp_path, monkeypatch):
    lm = char_lm()
    path = tmp_path / "r.h5"
    texts = [t for t in TEXTS if t] * 3
    # every sequence is written whole (one write per source: 4) and then marked done, so the
    # 25th write interrupts after six finished sequences
    monkeypatch.setattr(extraction, "STAGE_BYTES", 1)
    patch_write_states(monkeypatch, 6 * 4 + 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        lstmvis.extract(lm, texts, path, batch_size=2, chunk_size=9, progress=False)
    assert not path.exists()
    with pytest.raises(FileNotFoundError, match="resume"):
        StateStore.open(path)
    with pytest.raises(StoreError, match="incomplete"):
        StateStore.open(tmp_path / "r.h5.partial")
    monkeypatch.undo()
    monkeypatch.setattr(extraction, "STAGE_BYTES", 1)  # one write per sequence and source: starts name sequences
    written = []
    patch_write_states(monkeypatch, written=written)
    with lstmvis.extract(lm, texts, path, batch_size=2, chunk_size=9, progress=False) as resumed:
        got = {s: resumed.states(s) for s in resumed.sources}
        processed = {int(resumed.sequence_of(start)) for start in written}
    assert len(processed) == len(texts) - 6  # the six finished sequences were not run again
    assert not (tmp_path / "r.h5.partial").exists()
    monkeypatch.undo()
    with lstmvis.extract(lm, texts, tmp_path / "fresh.h5", progress=False) as fresh:
        for s in fresh.sources:
            np.testing.assert_allclose(got[s], fresh.states(s), atol=1e-6, rtol=0)


def test_a_failed_write_on_the_writer_thread_stops_the_extraction(tmp_path, monkeypatch):
    """Writes run on a background thread: its error (a full disk) reaches the caller, the store does
    not open as complete, and a rerun finishes it."""
    lm = char_lm()
    path = tmp_path / "w.h5"
    patch_write_states(monkeypatch, 5, OSError(28, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        lstmvis.extract(lm, TEXTS * 2, path, batch_size=2, chunk_size=9, progress=False)
    assert not path.exists()
    with pytest.raises(StoreError, match="incomplete"):
        StateStore.open(tmp_path / "w.h5.partial")
    monkeypatch.undo()
    with lstmvis.extract(lm, TEXTS * 2, path, batch_size=2, chunk_size=9, progress=False) as store:
        a, b = store.sequence_bounds(6)
        ref = single_pass(lm.module, lm.encode((TEXTS * 2)[6]))
        np.testing.assert_allclose(store.states("rnn.l0.h", a, b), ref["rnn.l0.h"], atol=1e-5, rtol=0)


def test_partial_from_another_model_is_not_resumed(tmp_path, monkeypatch):
    path = tmp_path / "p.h5"
    monkeypatch.setattr(extraction, "STAGE_BYTES", 1)  # each sequence is written (4 sources) and marked done
    patch_write_states(monkeypatch, 3 * 4 + 1, RuntimeError("x"))  # after three finished sequences
    with pytest.raises(RuntimeError):
        lstmvis.extract(char_lm(seed=0), TEXTS, path, progress=False)
    assert (tmp_path / "p.h5.partial").exists()
    monkeypatch.undo()
    other = char_lm(seed=1)
    with pytest.warns(UserWarning, match="p.h5.partial is not resumed and starts again: it was made by another model"):
        store = lstmvis.extract(other, TEXTS, path, progress=False)
    with store:
        for i, text in enumerate(TEXTS):
            a, b = store.sequence_bounds(i)
            ref = single_pass(other.module, other.encode(text)) if text else {}
            for name, arr in ref.items():
                np.testing.assert_allclose(store.states(name, a, b), arr, atol=1e-5, rtol=0, err_msg=f"{i} {name}")


def test_killed_process_leaves_no_store(tmp_path):
    """SIGKILL in the middle of an extraction: the child says when it is there (its 30th forward call
    blocks, earlier chunks handed to its writer thread) and is killed then."""
    script = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch; torch.set_num_threads(1)
        import lstmvis
        from test_extract import char_lm, TEXTS
        lm, calls = char_lm(), []
        def hold_at_the_30th_call(module, inputs):
            calls.append(1)
            if len(calls) == 30:
                print("extracting", flush=True)
                threading.Event().wait()
        lm.module.register_forward_pre_hook(hold_at_the_30th_call)
        lstmvis.extract(lm, TEXTS * 40, {str(tmp_path / 'k.h5')!r}, batch_size=2, chunk_size=5, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    partial = tmp_path / "k.h5.partial"
    try:
        assert proc.stdout.readline() == "extracting\n", "the child ended before its 30th forward call"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert partial.exists()
    assert not (tmp_path / "k.h5").exists()
    with pytest.raises(FileNotFoundError):
        StateStore.open(tmp_path / "k.h5")
    with pytest.raises((StoreError, OSError)):
        StateStore.open(partial)
    with lstmvis.extract(char_lm(), TEXTS * 40, tmp_path / "k.h5", progress=False) as store:  # resumes or restarts
        assert store.n_sequences == len(TEXTS) * 40
        a, b = store.sequence_bounds(len(TEXTS) * 40 - 2)
        ref = single_pass(char_lm().module, char_lm().encode(TEXTS[-2]))
        np.testing.assert_allclose(store.states("rnn.l1.c", a, b), ref["rnn.l1.c"], atol=1e-5, rtol=0)


CHECKPOINT_HOOKS = """
    import sys, threading
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    import torch; torch.set_num_threads(1)
    from lstmvis import extraction
    extraction.CHECKPOINT_SECONDS = 0  # checkpoint whenever a sequence is done ...
    extraction.STAGE_BYTES = 1  # ... and written at once (not staged in memory with others)
    checkpointed, mark_done = threading.Event(), extraction._Sink._mark_done
    def say_when_checkpointed(self, seqs):
        mark_done(self, seqs)
        checkpointed.set()
    extraction._Sink._mark_done = say_when_checkpointed
    def hold_after_a_checkpoint(module, calls=[]):
        calls.append(1)
        if len(calls) == 30:  # the writer thread has finished sequences to checkpoint by now
            print("extracting" if checkpointed.wait(60) else "no checkpoint", flush=True)
            threading.Event().wait()
    def hold(module):
        module.register_forward_pre_hook(lambda m, inputs: hold_after_a_checkpoint(m))
"""


def _run_until_checkpointed(script: str, stop: int):
    """Run ``script`` (after CHECKPOINT_HOOKS) until it has checkpointed finished sequences and is
    held mid-extraction, then send it signal ``stop``; returns the finished process and its stderr."""
    hooks = CHECKPOINT_HOOKS.format(root=str(ROOT), tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(hooks) + textwrap.dedent(script)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == "extracting\n", f"the child did not get mid-extraction: {line!r}"
        os.kill(proc.pid, stop)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, err


def _done_on_disk(partial: Path) -> set[int]:
    import h5py
    with h5py.File(partial, "r") as f:  # the killed process's partial file reads
        return set(np.flatnonzero(f["done"][()]).tolist())


def _resumed_sequences(monkeypatch, run) -> tuple[StateStore, set[int]]:
    """Run ``run()`` (an extraction) recording which sequences it writes states for."""
    written = []
    patch_write_states(monkeypatch, written=written)
    store = run()
    monkeypatch.undo()
    return store, {int(store.sequence_of(start)) for start in written}


def test_partial_store_resumes_after_sigkill(tmp_path, monkeypatch):
    """kill -9 mid-extraction: the partial file opens (with h5py) and a rerun redoes none of the
    sequences checkpointed as done, with the same states as an uninterrupted run."""
    out = tmp_path / "k.h5"
    proc, _ = _run_until_checkpointed(f"""
        from test_extract import char_lm, TEXTS
        import lstmvis
        lm = char_lm()
        hold(lm.module)
        lstmvis.extract(lm, TEXTS * 40, {str(out)!r}, batch_size=2, chunk_size=5, progress=False)
    """, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    done = _done_on_disk(tmp_path / "k.h5.partial")
    assert done, "no finished sequence was checkpointed"
    with pytest.raises(StoreError, match="incomplete"):
        StateStore.open(tmp_path / "k.h5.partial")
    store, processed = _resumed_sequences(
        monkeypatch, lambda: lstmvis.extract(char_lm(), TEXTS * 40, out, batch_size=2, chunk_size=5, progress=False))
    with store, lstmvis.extract(char_lm(), TEXTS * 40, tmp_path / "fresh.h5", progress=False) as fresh:
        assert processed and not processed & done, "checkpointed sequences were extracted again"
        for s in fresh.sources:
            np.testing.assert_allclose(store.states(s), fresh.states(s), atol=1e-5, rtol=0)
    assert not (tmp_path / "k.h5.partial").exists()


@pytest.mark.skipif(not (CHECKPOINTS / "parens-lstm.pt").exists(), reason="parens-lstm not trained yet")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_cli_extract_stops_on_sigterm_and_sighup_like_ctrl_c(tmp_path, monkeypatch, capsys, stop):
    """`lstmvis extract` told to stop by SIGTERM or SIGHUP keeps its finished sequences, says so, and
    the same command resumes them."""
    from lstmvis.cli import main
    out = tmp_path / "p.h5"
    argv = ["extract", "--model", "parens-lstm", "--corpus", "parens:test", "--limit", "60", "--batch-size", "2",
            "--chunk-size", "16", "--quiet", "--out"]
    proc, err = _run_until_checkpointed(f"""
        from textexplain import providers
        load_model = providers.load_model
        def load_and_hold(spec):
            model = load_model(spec)
            hold(model.module)
            return model
        providers.load_model = load_and_hold
        from lstmvis.cli import main
        sys.exit(main({argv + [str(out)]!r}))
    """, stop)
    assert proc.returncode == 128 + stop, err
    assert f"stopped by {signal.Signals(stop).name}" in err and "rerun the same command to resume" in err, err
    done = _done_on_disk(tmp_path / "p.h5.partial")
    assert done, "no finished sequence was kept"
    store, processed = _resumed_sequences(monkeypatch, lambda: (main(argv + [str(out)]), StateStore.open(out))[1])
    assert main(argv + [str(tmp_path / "fresh.h5")]) == 0
    with store, StateStore.open(tmp_path / "fresh.h5") as fresh:
        assert processed and not processed & done, "the kept sequences were extracted again"
        for s in fresh.sources:
            np.testing.assert_allclose(store.states(s), fresh.states(s), atol=1e-5, rtol=0)
    assert "starts again" not in capsys.readouterr().err


def test_a_partial_store_that_cannot_be_resumed_says_it_starts_again(tmp_path):
    (tmp_path / "b.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # killed while being set up
    with pytest.warns(UserWarning, match="b.h5.partial is not resumed and starts again: it cannot be read"):
        lstmvis.extract(char_lm(), TEXTS, tmp_path / "b.h5", progress=False).close()


@pytest.mark.skipif(not (CHECKPOINTS / "parens-lstm.pt").exists(), reason="parens-lstm not trained yet")
def test_shipped_parens_lm(tmp_path):
    import data

    lm = data.load_model("parens-lstm")
    seqs = [" ".join(tokens) if lm.tokenizer.name != "char" else "".join(tokens)
            for tokens, _ in data.parens("test", n_sequences=6, length=60)]
    with lstmvis.extract(lm, seqs, tmp_path / "p.h5", batch_size=4, chunk_size=25, progress=False) as store:
        assert store.card["name"] == "parens-lstm"
        for i in (0, 5):
            a, b = store.sequence_bounds(i)
            ref = single_pass(lm.module, lm.encode(seqs[i]))
            for name, arr in ref.items():
                np.testing.assert_allclose(store.states(name, a, b), arr, atol=1e-5, rtol=0)


@pytest.mark.skipif(not (CHECKPOINTS / "sentiment-lstm.pt").exists(), reason="sentiment-lstm not trained yet")
def test_shipped_sentiment_lstm(tmp_path, sentiment_lstm):
    import data

    texts, _ = data.rotten_tomatoes("test")
    texts = texts[:40]
    with lstmvis.extract(sentiment_lstm, texts, tmp_path / "s.h5", progress=False) as store:
        assert store.card["name"] == "sentiment-lstm"
        for i in (0, 17, 39):
            a, b = store.sequence_bounds(i)
            ref = single_pass(sentiment_lstm.module, sentiment_lstm.encode(texts[i]), lm=False)
            for name, arr in ref.items():
                np.testing.assert_allclose(store.states(name, a, b), arr, atol=1e-5, rtol=0)


@pytest.mark.skipif(not (CHECKPOINTS / "parens-lstm.pt").exists(), reason="parens-lstm not trained yet")
def test_cli_extract_and_info(tmp_path, capsys):
    from lstmvis.cli import main

    out = tmp_path / "p.h5"
    assert main(["extract", "--model", "parens-lstm", "--corpus", "parens:test", "--out", str(out), "--limit", "3",
                 "--kinds", "h,gates", "--float16", "--quiet"]) == 0
    with StateStore.open(out) as store:
        assert store.n_sequences == 3 and store.n_tokens == 600
        assert store.sources == ["rnn.l0.h", "rnn.l0.gate_i", "rnn.l0.gate_f", "rnn.l0.gate_g", "rnn.l0.gate_o"]
        assert store.dataset("rnn.l0.h").dtype == np.float16
        import data

        assert store.meta("depth", 0, 200).tolist() == data.parens("test")[0][1].tolist()
        assert store.card["extraction"]["corpus"] == "parens:test"
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "600 tokens in 3 sequences" in capsys.readouterr().out
    txt = tmp_path / "mine.txt"
    txt.write_text("((1)2)\n(3)\n")
    assert main(["extract", "--model", "parens-lstm", "--corpus", str(txt), "--out", str(tmp_path / "t.h5"),
                 "--quiet"]) == 0
    with StateStore.open(tmp_path / "t.h5") as store:
        assert store.n_sequences == 1 and store.sequence_text(0) == "((1)2)\n(3)\n"
    assert main(["extract", "--model", "parens-lstm", "--corpus", "nope:test", "--out", str(tmp_path / "x.h5")]) == 2
    assert "unknown corpus" in capsys.readouterr().err
    assert main(["extract", "--model", "mnist-cnn", "--corpus", "parens:test", "--out", str(tmp_path / "x.h5")]) == 2


@pytest.mark.skipif(not (CHECKPOINTS / "charlm-python.pt").exists(), reason="charlm-python not trained yet")
def test_shipped_charlm_python_files(tmp_path):
    import data

    lm = data.load_model("charlm-python")
    texts = [src[:1500] for _, src in data.python_source("test")[:3]]
    with lstmvis.extract(lm, texts, tmp_path / "py.h5", kinds="h,c", batch_size=2, chunk_size=400,
                         progress=False) as store:
        assert store.card["name"] == "charlm-python" and store.sources == ["rnn.l0.h", "rnn.l0.c", "rnn.l1.h",
                                                                            "rnn.l1.c"]
        for i, text in enumerate(texts):
            a, b = store.sequence_bounds(i)
            assert store.sequence_text(i) == text
            ref = single_pass(lm.module, lm.encode(text))
            for name, arr in ref.items():
                # batch 2 in 400-step chunks vs one whole pass: float32 rounding drifts over 1,500 recurrent
                # steps (|c| reaches 4.4 in the stateful-trained model), hence a relative tolerance of 1e-5
                np.testing.assert_allclose(store.states(name, a, b), arr, atol=1e-5, rtol=1e-5, err_msg=name)


def test_chunks_waiting_for_the_writer_are_bounded_by_memory():
    """Deferred cell states keep each waiting chunk's gate workspace alive: the queue holds about
    WRITE_QUEUE_BYTES, never fewer than 2 chunks (overlap) nor more than 8."""
    from lstmvis.extraction import WRITE_QUEUE_BYTES, _queue_chunks
    assert _queue_chunks(32 * 512 * 4 * 256) == 4  # charlm-python: h and c of 2 layers of 256
    assert _queue_chunks(32 * 512 * 8 * 1024) == 2  # 4 layers of 1024: 2 chunks, not 4 x 2 GiB
    assert _queue_chunks(2 * 9 * 16) == 8
    for values in (10 ** 3, 10 ** 6, 10 ** 7, 10 ** 9):
        n = _queue_chunks(values)
        assert 2 <= n <= 8 and (n == 2 or n * values * 4 * 4 <= WRITE_QUEUE_BYTES)


def test_the_card_records_the_models_tokenization(tmp_path):
    import data
    import lstmvis

    store = lstmvis.extract(data.load_model("sentiment-lstm"), ["a good film", "bad"], tmp_path / "s.h5", progress=False)
    assert store.card["tokenization"] == store.tokenization == "word"
    store.close()
