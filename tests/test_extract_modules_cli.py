"""``lstmvis extract --modules`` (issue 18, point 5): any submodule's per-token output from the command
line, by name, glob or dotted type, on the shipped sentiment-transformer."""
import numpy as np
import pytest

from lstmvis import StateStore
from lstmvis.cli import build_parser, main

ARGS = ["extract", "--model", "sentiment-transformer", "--corpus", "rotten_tomatoes:test", "--limit", "3", "--quiet"]


def test_modules_by_glob_name_and_dotted_type(tmp_path):
    out = tmp_path / "t.h5"
    assert main([*ARGS, "--out", str(out), "--modules", "encoder.*.activation,encoder.0",
                 "--modules", "torch.nn.LayerNorm"]) == 0
    with StateStore.open(out) as store:
        assert set(store.sources) == {"encoder.0", "encoder.0.activation", "encoder.1.activation", "encoder.0.norm1",
                                      "encoder.0.norm2", "encoder.1.norm1", "encoder.1.norm2"}
        assert store.n_sequences == 3
        assert store.n_cells("encoder.0.activation") > store.n_cells("encoder.0")  # the MLP is wider than the layer
        assert np.abs(store.states("encoder.1.activation")).sum() > 0


@pytest.mark.parametrize("pattern", ["decoder.*", "torch.nn.LSTM"])
def test_a_pattern_that_matches_nothing_is_a_clear_error(tmp_path, capsys, pattern):
    assert main([*ARGS, "--out", str(tmp_path / "x.h5"), "--modules", pattern]) == 2
    err = capsys.readouterr().err
    assert "matches no recordable module of TransformerClassifier" in err and "encoder.0.activation" in err
    assert not (tmp_path / "x.h5").exists()


def test_help_names_the_option():
    sub = build_parser()._subparsers._group_actions[0].choices["extract"]
    assert "glob patterns" in sub.format_help() and "--modules" in sub.format_help()
