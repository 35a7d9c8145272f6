"""StateStore: round trips, lazy reads, validation of foreign/truncated/incomplete files."""
import json

import h5py
import numpy as np
import pytest

from lstmvis.store import StateStore, StoreError, StoreWriter


def _example(tmp_path, **kw):
    rng = np.random.default_rng(0)
    tokens = list("def f(x):\n    return 'a'\n") + ["x", "=", "1"]
    n = len(tokens)
    states = {"rnn.l0.h": rng.standard_normal((n, 5)).astype(np.float32),
              "rnn.l0.c": rng.standard_normal((n, 7)).astype(np.float32)}
    offsets = [0, 25, n]
    return StateStore.from_arrays(tmp_path / "s.h5", states, tokens=tokens, offsets=offsets, **kw), states, tokens


def test_from_arrays_round_trip(tmp_path):
    store, states, tokens = _example(tmp_path, meta={"depth": np.arange(28) % 3, "pos": ["a", "b", "c"] * 9 + ["a"]},
                                     card={"name": "toy", "metrics": {"bpc": 1.5}})
    with store:
        assert store.sources == ["rnn.l0.h", "rnn.l0.c"]
        assert store.n_tokens == 28 and store.n_sequences == 2
        assert store.offsets.dtype == np.int64 and store.offsets.tolist() == [0, 25, 28]
        assert store.tokens() == tokens
        assert store.tokens(3, 6) == tokens[3:6]
        np.testing.assert_array_equal(np.array(store.vocab)[store.token_ids()], tokens)
        for name, arr in states.items():
            got = store.states(name, 4, 20)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, arr[4:20])
            assert store.n_cells(name) == arr.shape[1]
            assert store.dataset(name).shape == arr.shape
        assert store.meta_names == ["depth", "pos"]
        np.testing.assert_array_equal(store.meta("depth", 0, 6), [0, 1, 2, 0, 1, 2])
        assert store.meta("pos", 1, 4).tolist() == ["b", "c", "a"]
        assert store.card == {"name": "toy", "metrics": {"bpc": 1.5}}
        assert store.sequence_of(0) == 0 and store.sequence_of(24) == 0 and store.sequence_of(25) == 1
        np.testing.assert_array_equal(store.sequence_of(np.array([0, 25, 27])), [0, 1, 1])
        assert store.sequence_bounds(1) == (25, 28)


def test_text_and_spans_without_texts_join_tokens(tmp_path):
    store, _, tokens = _example(tmp_path)
    with store:
        assert store.sequence_text(1) == "x = 1"
        spans = store.token_spans(24, 28)
        # position 24 is the last token of sequence 0 ("\n", after 24 tokens and 24 spaces), then x, =, 1
        assert spans.tolist() == [[48, 49], [0, 1], [2, 3], [4, 5]]
        text0 = store.sequence_text(0)
        for pos in range(25):
            a, b = store.token_spans(pos, pos + 1)[0]
            assert text0[a:b] == tokens[pos]


def test_exact_texts_give_spans_by_search(tmp_path):
    texts = ["Great fun, really!", "A  bore."]
    tokens = ["great", "fun", ",", "really", "!", "a", "bore", "."]
    store = StateStore.from_arrays(tmp_path / "w.h5", {"m.h": np.zeros((8, 2))}, tokens=tokens, offsets=[0, 5, 8],
                                   texts=texts)
    with store:
        assert store.sequence_text(0) == texts[0] and store.sequence_text(1) == texts[1]
        for pos in range(8):
            seq = store.sequence_of(pos)
            a, b = store.token_spans(pos, pos + 1)[0]
            assert store.sequence_text(seq)[a:b].lower() == tokens[pos]
    with pytest.raises(ValueError, match="spans"):
        StateStore.from_arrays(tmp_path / "bad.h5", {"m.h": np.zeros((2, 2))}, tokens=["<unk>", "x"], texts=["y x"])


def test_float16_storage_reads_float32(tmp_path):
    arr = np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4)
    with StateStore.from_arrays(tmp_path / "h.h5", {"a.h": arr}, tokens=list("abcdefghij"), dtype="float16") as s:
        assert s.dataset("a.h").dtype == np.float16
        got = s.states("a.h")
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, arr, atol=1e-3)


def test_token_ids_with_vocab_and_unicode(tmp_path):
    vocab = ["<pad>", "é", "\x00", " ", "\n", "日本"]
    ids = [1, 2, 3, 4, 5, 0]
    with StateStore.from_arrays(tmp_path / "u.h5", {"x.h": np.eye(6)}, token_ids=ids, vocab=vocab,
                                texts=["é\x00 \n日本"], spans=[[0, 1], [1, 2], [2, 3], [3, 4], [4, 6], [6, 6]]) as s:
        assert s.vocab == vocab
        assert s.tokens() == [vocab[i] for i in ids]
        assert s.sequence_text(0) == "é\x00 \n日本"


def test_bad_arguments_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="one row per token"):
        StateStore.from_arrays(tmp_path / "a.h5", {"x.h": np.zeros((3, 2))}, tokens=list("ab"))
    with pytest.raises(ValueError, match="offsets"):
        StateStore.from_arrays(tmp_path / "a.h5", {"x.h": np.zeros((2, 2))}, tokens=list("ab"), offsets=[0, 3])
    with pytest.raises(ValueError, match="token_ids"):
        StateStore.from_arrays(tmp_path / "a.h5", {"x.h": np.zeros((2, 2))}, token_ids=[0, 5], vocab=["a"])
    with pytest.raises(ValueError, match="without '/'"):
        StateStore.from_arrays(tmp_path / "a.h5", {"x/h": np.zeros((2, 2))}, tokens=list("ab"))
    with pytest.raises(ValueError, match="one per token"):
        StateStore.from_arrays(tmp_path / "a.h5", {"x.h": np.zeros((2, 2))}, tokens=list("ab"), meta={"m": [1]})
    assert not list(tmp_path.iterdir())  # failed writes leave nothing behind


def test_ranges_and_unknown_names(tmp_path):
    store, _, _ = _example(tmp_path)
    with store:
        with pytest.raises(IndexError):
            store.states("rnn.l0.h", 5, 100)
        with pytest.raises(IndexError):
            store.tokens(-1, 2)
        with pytest.raises(KeyError, match="rnn.l0.h"):
            store.states("nope", 0, 1)
        with pytest.raises(KeyError):
            store.meta("nope")
        with pytest.raises(IndexError):
            store.sequence_bounds(2)
        with pytest.raises(IndexError):
            store.sequence_of(28)


def test_open_missing_foreign_truncated_incomplete(tmp_path):
    with pytest.raises(FileNotFoundError, match="no state store"):
        StateStore.open(tmp_path / "missing.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["states1"] = np.zeros((3, 2))
    with pytest.raises(StoreError, match="not an lstmvis state store"):
        StateStore.open(foreign)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        StateStore.open(text)
    store, _, _ = _example(tmp_path)
    store.close()
    data = (tmp_path / "s.h5").read_bytes()
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError):
        StateStore.open(truncated)
    writer = StoreWriter(tmp_path / "inc.h5", 2, np.array([0, 2]), ["a"])
    writer.f.close()
    with pytest.raises(StoreError, match="incomplete"):
        StateStore.open(writer.tmp)
    assert not (tmp_path / "inc.h5").exists()  # never renamed into place


def test_damaged_store_is_detected(tmp_path):
    store, _, _ = _example(tmp_path)
    store.close()
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        del f["states"]["rnn.l0.c"]
    with pytest.raises(StoreError, match="rnn.l0.c"):
        StateStore.open(tmp_path / "s.h5")


def test_written_layout(tmp_path):
    store, _, _ = _example(tmp_path, card={"name": "toy"})
    store.close()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format"] == "lstmvis-state-store" and f.attrs["version"] == 1 and f.attrs["complete"]
        assert json.loads(f["states"].attrs["sources"]) == ["rnn.l0.h", "rnn.l0.c"]
        assert f["token_ids"].dtype == np.int32
        assert json.loads(f["card"][()].tobytes()) == {"name": "toy"}


def test_select_and_match_delegate(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("lstmvis.query")
    fake.select = lambda store, *a, **k: ("select", a, k)
    fake.match = lambda store, *a, **k: ("match", a, k)
    monkeypatch.setitem(sys.modules, "lstmvis.query", fake)
    store, _, _ = _example(tmp_path)
    with store:
        assert store.select("rnn.l0.h", 1, 3, threshold=0.5) == ("select", ("rnn.l0.h", 1, 3), {"threshold": 0.5})
        assert store.match("rnn.l0.h", [1])[0] == "match"
