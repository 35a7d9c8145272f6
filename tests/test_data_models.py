import json
import shutil

import numpy as np
import pytest
import torch

import data
from data import train as recipes
from data.registry import MODELS
from textexplain import TextModel
from textexplain.testing import check_text_model


@pytest.mark.parametrize("name", list(MODELS))
def test_shipped_checkpoint_reproduces_its_card(name):
    card = data.model_card(name)
    model = data.load_model(name)
    got = recipes.evaluate(name, model)
    for key, value in got.items():
        assert abs(value - card["metrics"][key]) <= 0.01, (key, value, card["metrics"][key])


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoints_are_small_and_cards_complete(name):
    path = data.registry.CHECKPOINTS / f"{name}.pt"
    assert path.stat().st_size <= 5 * 2**20
    card = data.model_card(name)
    for key in ("data", "split", "architecture", "metrics", "command", "training_seconds"):
        assert key in card
    assert card["command"] == f"python -m data.train {name}"


BARS = {
    "sentiment-lstm": ("test_accuracy", ">=", 0.74),
    "sentiment-gru": ("test_accuracy", ">=", 0.73),
    "sentiment-cnn": ("test_accuracy", ">=", 0.73),
    "sentiment-transformer": ("test_accuracy", ">=", 0.70),
    "mnist-cnn": ("test_accuracy", ">=", 0.97),
    "charlm-python": ("test_bits_per_char", "<=", 2.0),
    "charlm-python-gru": ("test_bits_per_char", "<=", 2.3),
}


@pytest.mark.parametrize("name", list(BARS))
def test_shipped_models_meet_their_bars(name):
    key, op, bar = BARS[name]
    value = data.model_card(name)["metrics"][key]
    assert value >= bar if op == ">=" else value <= bar


def test_shortcut_model_relies_on_the_planted_token():
    m = data.model_card("sentiment-shortcut")["metrics"]
    assert m["shortcut_flipped_accuracy"] < m["clean_test_accuracy"] - 0.1


def test_classifiers_load_as_textmodels_and_lms_encode_any_text():
    m = data.load_model("sentiment-cnn")
    assert isinstance(m, TextModel) and m.labels == ["rotten", "fresh"]
    lm = data.load_model("charlm-python")
    text = "def f(x):\n    return 'é' + x  # ☃\n"
    ids = lm.encode(text)
    assert len(ids) == len(text) and lm.vocab.unk_id in ids
    assert lm.vocab.decode(ids[:3]) == ["d", "e", "f"]


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="shipped models are"):
        data.load_model("sentiment-bert")


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('/tmp/pwned_by_checkpoint', 'w').write('x')",))

    path = tmp_path / "evil.pt"
    torch.save({"arch": "CharLM", "config": {}, "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(data.CheckpointError, match="weights_only"):
        data.load_checkpoint(path)
    import os
    assert not os.path.exists("/tmp/pwned_by_checkpoint")


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    good = data.registry.CHECKPOINTS / "parens-lstm.pt"
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(data.CheckpointError):
        data.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(data.CheckpointError, match="not a checkpoint of this project"):
        data.load_checkpoint(foreign)
    with pytest.raises(data.CheckpointError, match="does not exist"):
        data.load_checkpoint(tmp_path / "missing.pt")


MALFORMED_CARDS = {  # issue 24, findings 5 and 6: each once stopped the server or broke a page
    "nested 100,000 deep": ("[" * 100_000, "nested too deeply"),
    "metrics a list": (json.dumps({"name": "x", "metrics": [0.9, 0.8]}), "field 'metrics'"),
    "architecture a string": (json.dumps({"name": "x", "architecture": "TextCNN"}), "field 'architecture'"),
    "architecture class a list": (json.dumps({"architecture": {"class": ["TextCNN"]}}), "field 'architecture.class'"),
    "labels numbers": (json.dumps({"labels": [0, 1]}), "field 'labels.0'"),
    "a list": ("[1, 2]", "not a JSON object"),
    "not JSON": ("{'name': 1}", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CARDS))
def test_malformed_model_cards_are_refused_naming_the_field(tmp_path, monkeypatch, case):
    text, message = MALFORMED_CARDS[case]
    shutil.copy(data.registry.CHECKPOINTS / "parens-lstm.pt", tmp_path / "parens-lstm.pt")
    (tmp_path / "parens-lstm.json").write_text(text)
    monkeypatch.setattr(data.registry, "CHECKPOINTS", tmp_path)
    with pytest.raises(data.CheckpointError, match=message):
        data.model_card("parens-lstm")
    with pytest.raises(data.CheckpointError, match=message):
        data.load_model("parens-lstm")
    with pytest.raises(data.CheckpointError, match=message):  # what the server's --data directory should call
        data.registry.read_card(tmp_path / "parens-lstm.json")


MALFORMED_CHECKPOINTS = {
    "tokenizer a list": ("parens-lstm", {"tokenizer": ["word"]}, "field 'tokenizer'"),
    "vocab a number": ("parens-lstm", {"vocab": 5}, "field 'vocab'"),
    "vocab of numbers": ("parens-lstm", {"vocab": [1, 2, 3]}, "field 'vocab.0'"),
    "labels a string": ("sentiment-cnn", {"labels": "rotten,fresh"}, "field 'labels'"),
    "arch a number": ("parens-lstm", {"arch": 3}, "field 'arch'"),
    "config a list": ("parens-lstm", {"config": [1, 2]}, "field 'config'"),
    "a weight not a tensor": ("parens-lstm", {"state_dict": {"emb.weight": [1.0]}}, "field 'state_dict.emb.weight'"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CHECKPOINTS))
def test_malformed_checkpoint_fields_are_refused_naming_the_field(tmp_path, case):
    name, change, message = MALFORMED_CHECKPOINTS[case]
    ckpt = {**data.load_checkpoint(data.registry.CHECKPOINTS / f"{name}.pt"), **change}
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(data.CheckpointError, match=message):
        data.load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("change", [{"tokenizer": ["word"]}, {"vocab": 5}, {"tokenizer": "bpe"},
                                    {"vocab": ["a", "b"]}])
def test_build_from_checkpoint_refuses_fields_that_make_no_text_model(change):
    ckpt = {**data.load_checkpoint(data.registry.CHECKPOINTS / "sentiment-lstm.pt"), **change}
    with pytest.raises(data.CheckpointError, match="vocab, tokenizer or labels that do not fit"):
        data.registry.build_from_checkpoint(ckpt, name="sentiment-lstm")


@pytest.mark.parametrize("name", list(MODELS))
def test_tiny_training_recipe_runs(name, tmp_path):
    card = recipes.train(name, tmp_path, tiny=True)
    assert (tmp_path / f"{name}.pt").is_file()
    assert json.loads((tmp_path / f"{name}.json").read_text())["metrics"] == card["metrics"]
    model = data.registry.build_from_checkpoint(data.load_checkpoint(tmp_path / f"{name}.pt"))
    assert model is not None


def test_parens_lstm_has_a_cell_that_tracks_nesting_depth():
    import lstmvis

    lm = data.load_model("parens-lstm")
    seqs = data.parens("test", n_sequences=50)
    ids = torch.as_tensor([lm.vocab.encode(t) for t, _ in seqs])
    depth = np.concatenate([d for _, d in seqs]).astype(float)
    with lstmvis.Recorder(lm.module) as rec, torch.no_grad():
        lm.module(ids)
    c = rec.states["rnn.l0.c"].reshape(-1, lm.module.rnn.hidden_size).numpy()
    r = [abs(np.corrcoef(c[:, j], depth)[0, 1]) for j in range(c.shape[1])]
    assert max(r) >= 0.9


def test_contiguous_streams_continue_each_row_and_restart_each_epoch():
    stream = torch.arange(1000)
    batches = recipes._ContiguousStreams(stream, seq_len=10, batch=4)
    rng = np.random.default_rng(0)
    x, y, reset = batches(rng)
    assert reset and x.shape == (4, 10)
    torch.testing.assert_close(y[:, :-1], x[:, 1:])
    assert (torch.diff(x, dim=1) == 1).all()  # contiguous text in each row
    x2, y2, reset2 = batches(rng)
    assert not reset2
    torch.testing.assert_close(x2[:, 0], x[:, -1] + 1)  # row b of window k+1 continues window k
    torch.testing.assert_close(x2[:, 0], y[:, -1])
    rows = [x, x2]
    while True:
        xk, _, r = batches(rng)
        if r:
            break
        rows.append(xk)
    seen = torch.cat(rows, 1)
    assert (torch.diff(seen, dim=1) == 1).all() and seen.shape[1] >= (1000 - 10) // 4 - 10
    assert len(set(seen[:, 0].tolist())) == 4 and int(xk[0, 0]) < 10  # new epoch: new offset below seq_len


def test_charlm_warm_start_from_phase1_equals_training_from_scratch(tmp_path, monkeypatch):
    """The shipped charlm-python ran phase 2 on the phase-1 checkpoint: that must be the recipe."""
    scratch, phase1, warm = (tmp_path / d for d in ("scratch", "phase1", "warm"))
    recipes.train("charlm-python", scratch, tiny=True)
    with monkeypatch.context() as m:
        m.setattr(recipes, "CHARLM_PHASE2", {})
        recipes.train("charlm-python", phase1, tiny=True)
    assert "phases" not in json.loads((phase1 / "charlm-python.json").read_text())
    card = recipes.train("charlm-python", warm, tiny=True, warm_start=phase1 / "charlm-python.pt")
    a = data.load_checkpoint(scratch / "charlm-python.pt")["state_dict"]
    b = data.load_checkpoint(warm / "charlm-python.pt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [p["phase"] for p in card["phases"]] == [1, 2] and card["command"] == "python -m data.train charlm-python --tiny"
    with pytest.raises(SystemExit, match="already went through phase 2"):
        recipes.train("charlm-python", tmp_path / "again", tiny=True, warm_start=warm / "charlm-python.pt")
    with pytest.raises(SystemExit, match="applies to"):
        recipes.train("parens-lstm", tmp_path / "p", tiny=True, warm_start=phase1 / "charlm-python.pt")


def test_charlm_python_has_a_string_cell_and_a_prose_cell_on_held_out_files(tmp_path):
    """The cells benchmarks/bench_cells.py found on the test split, checked on dev files: l1.c 239 is low
    inside one-line string literals; l0.c 98 is high in natural-language text (comments and docstrings)."""
    import lstmvis
    from lstmvis import hypotheses as hyp
    from sklearn.metrics import roc_auc_score

    lm = data.load_model("charlm-python")
    texts = [src for _, src in data.python_source("dev")[:2]]  # _markupbase.py, argparse.py: ~100k chars
    store = lstmvis.extract(lm, texts, tmp_path / "dev.h5", kinds="c", progress=False)
    in_string, in_triple, in_comment = (hyp.inside_quotes(store).astype(bool), hyp.inside_triple_quotes(store).astype(bool),
                                        hyp.inside_comment(store).astype(bool))
    string_cell = np.asarray(store.dataset("rnn.l1.c")[:, 239], np.float32)
    prose_cell = np.asarray(store.dataset("rnn.l0.c")[:, 98], np.float32)
    assert 1 - roc_auc_score(in_string & ~in_triple, string_cell) >= 0.95
    assert roc_auc_score(in_comment | in_triple, prose_cell) >= 0.95
    store.close()


CLASSIFIERS = [name for name, (kind, _) in MODELS.items() if kind == "classifier"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_a_texts_logits_are_the_same_alone_and_in_any_batch(name):
    """Padding never changes a text's output: every perturbation method (and every metric with
    mask="delete") batches texts of mixed lengths and would silently inherit such a bug."""
    texts, _ = data.rotten_tomatoes("test")
    check_text_model(data.load_model(name), texts[:60])
