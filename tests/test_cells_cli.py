"""`lstmvis cells` on a store with a planted quote cell, and discovery on the shipped parens-lstm."""
import json

import numpy as np
import pytest

from lstmvis.cli import main
from lstmvis.store import StateStore


@pytest.fixture
def quote_store(tmp_path):
    text = "x = 'abc' + y  # note\nz = \"q\" * 2\n" * 20
    rng = np.random.default_rng(0)
    from lstmvis.hypotheses import inside_quotes

    states = rng.normal(0, 0.3, size=(len(text), 4)).astype(np.float32)
    path = tmp_path / "q.h5"
    with StateStore.from_arrays(path, {"rnn.l0.c": states}, tokens=list(text), texts=[text]) as store:
        quotes = inside_quotes(store)
    states[:, 2] += np.where(quotes > 0, -1.0, 0.0)  # cell 2 is low inside strings
    path.unlink()
    StateStore.from_arrays(path, {"rnn.l0.c": states, "rnn.l0.gate_f": 1 / (1 + np.exp(-states))},
                           tokens=list(text), texts=[text]).close()
    return path


def test_cells_command_ranks_and_shows_contexts(quote_store, capsys):
    assert main(["cells", str(quote_store), "--source", "rnn.l0.c", "--hypothesis", "quotes", "--top", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "rnn.l0.c vs inside_quotes (binary, auroc)" in lines[0]
    first = lines[2].split()
    assert first[:2] == ["1", "2"] and float(first[2]) < 0.05 and first[3] == "-"
    assert main(["cells", str(quote_store), "--hypothesis", "quotes", "--json", "--contexts", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["source"] for d in data] == ["rnn.l0.c"] and data[0]["top"][0]["cell"] == 2
    assert "'" in data[0]["top"][0]["context"] or '"' in data[0]["top"][0]["context"]


def test_cells_command_saturation_and_errors(quote_store, capsys):
    assert main(["cells", str(quote_store), "--saturation"]) == 0
    assert "rnn.l0.gate_f" in capsys.readouterr().out
    assert main(["cells", str(quote_store)]) == 2
    assert "--hypothesis" in capsys.readouterr().err
    assert main(["cells", str(quote_store), "--hypothesis", "nonsense"]) == 2
    assert "unknown hypothesis" in capsys.readouterr().err


def test_parens_lstm_has_a_depth_cell(tmp_path):
    """The shipped parens-lstm on held-out sequences: some cell correlates with the nesting depth."""
    import data
    from lstmvis import extract, rank_cells

    lm = data.load_model("parens-lstm")
    seqs = data.parens("test", n_sequences=40)
    depth = np.concatenate([d for _, d in seqs])
    store = extract(lm, ["".join(t) for t, _ in seqs], tmp_path / "p.h5", kinds="h,c", progress=False)
    with store:
        ranking = rank_cells(store, "rnn.l0.c", "parens")
        assert ranking.best["strength"] > 0.6
        np.testing.assert_allclose(ranking.scores,
                                   [np.corrcoef(store.states("rnn.l0.c")[:, c], depth)[0, 1]
                                    for c in range(store.n_cells("rnn.l0.c"))], atol=1e-6)


@pytest.fixture(scope="module")
def parens_store(tmp_path_factory):
    """The shipped parens-lstm's states over 3 held-out sequences (the store names its model)."""
    import data
    from lstmvis import extract

    seqs = data.parens("test", n_sequences=3, length=60)
    path = tmp_path_factory.mktemp("parens") / "p.h5"
    extract(data.load_model("parens-lstm"), ["".join(t) for t, _ in seqs], path, kinds="h,c", progress=False).close()
    return path


def test_explain_a_stored_cell_reproduces_the_stored_activation(parens_store):
    import data
    from lstmvis.cells import explain_stored_cell

    lm = data.load_model("parens-lstm")
    with StateStore.open(parens_store) as store:
        a, b = store.sequence_bounds(1)
        position = a + 30
        e, where = explain_stored_cell(store, lm, "rnn.l0.c", 49, position)  # the whole 60-token sequence fits
        stored = float(store.states("rnn.l0.c", position, position + 1)[0, 49])
        assert where == {"start": a, "stop": b, "whole_sequence": True, "stored_activation": pytest.approx(stored)}
        assert e.info["activation"] == pytest.approx(where["stored_activation"], abs=1e-4)
        assert e.convergence.converged and np.all(e.scores[position - a + 1:] == 0)
        short, where = explain_stored_cell(store, lm, "rnn.l0.c", 49, position, window=10)
        assert (where["start"], where["stop"], where["whole_sequence"]) == (position - 9, position + 1, False)
        assert len(short.tokens) == 10
        with pytest.raises(ValueError, match="unknown source"):
            explain_stored_cell(store, lm, "rnn.l9.c", 49, position)
        with pytest.raises(ValueError, match="outside the store"):
            explain_stored_cell(store, lm, "rnn.l0.c", 49, store.n_tokens)


def test_cells_command_explains_a_cell(parens_store, capsys):
    assert main(["cells", str(parens_store), "--source", "rnn.l0.c", "--explain", "49", "--position", "70"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rnn.l0.c[49] at position 70 (parens-lstm, the whole sequence)")
    assert "gradient evaluations" in out and "completeness delta" in out
    assert main(["cells", str(parens_store), "--source", "rnn.l0.c", "--explain", "49", "--position", "70",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["params"]["cell"] == 49 and got["whole_sequence"] and got["info"]["converged"]
    assert main(["cells", str(parens_store), "--explain", "49"]) == 2
    assert "needs --position" in capsys.readouterr().err
