"""LSTMVis project import/export: exact file layout, exact round trip, foreign projects, CLI."""
import h5py
import numpy as np
import pytest
import yaml

from lstmvis.cli import main
from lstmvis.project import export_lstmvis, import_lstmvis, read_words_dict
from lstmvis.store import StateStore


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["if x:\n\tpass", "a b"]
    tokens = list(texts[0]) + list(texts[1])
    n = len(tokens)
    states = {name: rng.standard_normal((n, 3 + i)).astype(np.float32)
              for i, name in enumerate(["rnn.l0.h", "rnn.l0.c", "rnn.l1.h", "rnn.l1.c", "rnn.l1.gate_f",
                                        "rnn.l0.reverse.h"])}
    meta = {"depth": np.arange(n) % 4, "kind": np.array(["code", "text"])[np.arange(n) % 2]}
    s = StateStore.from_arrays(tmp_path / "s.h5", states, tokens=tokens, offsets=[0, len(texts[0]), n], meta=meta,
                               card={"name": "toy", "metrics": {"bpc": 2.0}}, texts=texts)
    yield s
    s.close()


def test_export_writes_the_lstmvis_layout(store, tmp_path):
    folder = export_lstmvis(store, tmp_path / "proj")
    assert sorted(p.name for p in folder.iterdir()) == ["lstm.yml", "lstmvis_store.h5", "meta.h5",
                                                       "meta_kind.dict", "states.h5", "train.h5", "words.dict"]
    config = yaml.safe_load((folder / "lstm.yml").read_text())
    assert config["name"] == "toy"
    assert config["files"] == {"states": "states.h5", "train": "train.h5", "words": "words.dict", "meta": "meta.h5",
                               "meta_kind": "meta_kind.dict"}
    assert config["word_sequence"] == {"file": "train", "path": "words", "dict_file": "words"}
    assert config["states"]["file"] == "states"
    assert config["states"]["types"] == [
        {"type": "output", "layer": 1, "path": "output1"}, {"type": "state", "layer": 1, "path": "states1"},
        {"type": "output", "layer": 2, "path": "output2"}, {"type": "state", "layer": 2, "path": "states2"},
        {"type": "state", "layer": 2, "path": "rnn.l1.gate_f"}, {"type": "state", "layer": 1, "path": "rnn.l0.reverse.h"}]
    assert config["meta"]["depth"] == {"file": "meta", "path": "depth", "vis": {"type": "scalar", "range": [0.0, 3.0]}}
    assert config["meta"]["kind"] == {"file": "meta", "path": "kind", "dict": "meta_kind",
                                      "vis": {"type": "discrete", "range": "dict"}}
    with h5py.File(folder / "states.h5", "r") as f:
        assert sorted(f) == sorted(t["path"] for t in config["states"]["types"])
        for src, path in [("rnn.l0.h", "output1"), ("rnn.l1.c", "states2"), ("rnn.l1.gate_f", "rnn.l1.gate_f")]:
            assert f[path].dtype == np.float32
            np.testing.assert_array_equal(f[path][()], store.states(src))
    with h5py.File(folder / "train.h5", "r") as f:
        words = f["words"][()]
        assert words.ndim == 1 and words.min() >= 1
        np.testing.assert_array_equal(words, store.token_ids() + 1)
    lines = (folder / "words.dict").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    shown = {"\n": "\\n", "\t": "\\t"}
    assert lines[:-1] == [f"{shown.get(t, t)} {i + 1}" for i, t in enumerate(store.vocab)]
    assert f"  {store.vocab.index(' ') + 1}" in lines  # the space token: the line starts with a space


def lstmvis_dict_parser(path):
    """LSTMVis's own words.dict reading rule (lstmdata/data_handler.py): 2 fields, or a leading space."""
    id_value = {}
    with open(path) as f:
        for line in f:
            if len(line) > 0:
                if len(line.split()) == 2:
                    k, v = line.split()
                    id_value[int(v)] = k
                elif line[0] == " ":
                    id_value[int(line.strip())] = " "
    return id_value


def test_lstmvis_reader_resolves_every_word_id(store, tmp_path):
    folder = export_lstmvis(store, tmp_path / "proj")
    id_value = lstmvis_dict_parser(folder / "words.dict")
    with h5py.File(folder / "train.h5", "r") as f:
        words = [id_value[i] for i in f["words"][()].tolist()]  # LSTMVis maps every id through the dict
    shown = {"\n": "\\n", "\t": "\\t"}
    assert words == [shown.get(t, t) for t in store.tokens()]
    kinds = lstmvis_dict_parser(folder / "meta_kind.dict")
    with h5py.File(folder / "meta.h5", "r") as f:
        assert [kinds[i] for i in f["kind"][()].tolist()] == store.meta("kind").tolist()


def test_round_trip_is_exact(store, tmp_path):
    export_lstmvis(store, tmp_path / "proj")
    with import_lstmvis(tmp_path / "proj", tmp_path / "back.h5") as back:
        assert back.sources == store.sources
        for s in store.sources:
            np.testing.assert_array_equal(back.states(s), store.states(s))
        assert back.vocab == store.vocab
        np.testing.assert_array_equal(back.token_ids(), store.token_ids())
        np.testing.assert_array_equal(back.offsets, store.offsets)
        assert [back.sequence_text(i) for i in range(2)] == [store.sequence_text(i) for i in range(2)]
        np.testing.assert_array_equal(back.token_spans(), store.token_spans())
        assert back.meta_names == store.meta_names
        np.testing.assert_array_equal(back.meta("depth"), store.meta("depth"))
        assert back.meta("kind").tolist() == store.meta("kind").tolist()
        assert back.card == store.card


def _foreign_project(folder, words_ids, dict_lines, n_cells=4, rows=None):
    folder.mkdir()
    rng = np.random.default_rng(1)
    n = len(words_ids)
    with h5py.File(folder / "states.h5", "w") as f:
        for name in ("output1", "states1", "output2", "states2"):
            f[name] = rng.standard_normal((rows or n, n_cells)).astype(np.float32)
    with h5py.File(folder / "train.h5", "w") as f:
        f["words"] = np.array(words_ids)
    with h5py.File(folder / "pos.h5", "w") as f:
        f["tags"] = np.array([1, 2] * (n // 2) + [1] * (n % 2))
    (folder / "words.dict").write_text("".join(dict_lines))
    (folder / "tags.dict").write_text("NN 1\nVB 2\n")
    config = {"name": "children books", "description": "LSTMVis example",
              "files": {"states": "states.h5", "train": "train.h5", "words": "words.dict", "pos": "pos.h5",
                        "tags": "tags.dict"},
              "word_sequence": {"file": "train", "path": "words", "dict_file": "words"},
              "states": {"file": "states", "types": [{"type": "state", "layer": 1, "path": "states1"},
                                                     {"type": "output", "layer": 1, "path": "output1"},
                                                     {"type": "state", "layer": 2, "path": "states2"},
                                                     {"type": "output", "layer": 2, "path": "output2"}]},
              "meta": {"pos": {"file": "pos", "path": "tags", "dict": "tags", "vis": {"type": "discrete",
                                                                                      "range": "dict"}}}}
    (folder / "lstm.yml").write_text(yaml.safe_dump(config))
    return folder


def test_import_foreign_project(tmp_path):
    # <s>=1 <unk>=2 </s>=3 as LSTMVis's Indexer writes them; "the"=4, " "=5 (a line starting with a space)
    dict_lines = ["<s> 1\n", "<unk> 2\n", "</s> 3\n", "the 4\n", " 5\n", "cat 6\n"]
    words = [4, 5, 6, 3, 6, 3, 4, 4]
    folder = _foreign_project(tmp_path / "cbt", words, dict_lines)
    with import_lstmvis(folder, tmp_path / "cbt.h5") as s:
        assert s.sources == ["lstmvis.l0.c", "lstmvis.l0.h", "lstmvis.l1.c", "lstmvis.l1.h"]
        assert s.tokens() == ["the", " ", "cat", "</s>", "cat", "</s>", "the", "the"]
        assert s.offsets.tolist() == [0, 4, 6, 8]  # sequences end after each </s>
        with h5py.File(folder / "states.h5", "r") as f:
            np.testing.assert_array_equal(s.states("lstmvis.l1.h"), f["output2"][()])
        assert s.meta("pos").tolist() == ["NN", "VB"] * 4
        assert s.card["name"] == "children books"
        assert s.sequence_text(0) == "the   cat </s>"  # no texts in LSTMVis: tokens joined by spaces


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        import_lstmvis(tmp_path / "none", tmp_path / "x.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lstm.yml"):
        import_lstmvis(tmp_path / "empty", tmp_path / "x.h5")
    folder = _foreign_project(tmp_path / "bad", [4, 4, 4], ["the 4\n"], rows=5)
    with pytest.raises(ValueError, match="one row per token"):
        import_lstmvis(folder, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    config = yaml.safe_load((folder / "lstm.yml").read_text())
    config["files"]["states"] = "../outside.h5"
    (folder / "lstm.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="outside the project"):
        import_lstmvis(folder, tmp_path / "x.h5")
    (tmp_path / "bad.dict").write_text("no-id-here\n")
    with pytest.raises(ValueError, match="token id"):
        read_words_dict(tmp_path / "bad.dict")


def test_export_refuses_a_non_empty_folder(store, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        export_lstmvis(store, tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]


def test_cli_export_import_info(store, tmp_path, capsys):
    assert main(["export-lstmvis", str(store.path), str(tmp_path / "proj"), "--name", "demo"]) == 0
    assert yaml.safe_load((tmp_path / "proj" / "lstm.yml").read_text())["name"] == "demo"
    assert main(["import-lstmvis", str(tmp_path / "proj"), "--out", str(tmp_path / "back.h5"), "--float16"]) == 0
    with StateStore.open(tmp_path / "back.h5") as back:
        assert back.dataset("rnn.l0.h").dtype == np.float16
    capsys.readouterr()
    assert main(["info", str(tmp_path / "back.h5")]) == 0
    out = capsys.readouterr().out
    assert f"{store.n_tokens} tokens in 2 sequences" in out and "rnn.l1.gate_f" in out and "meta tracks: depth, kind" in out
    assert main(["info", str(tmp_path / "missing.h5")]) == 2
    assert "no state store" in capsys.readouterr().err
