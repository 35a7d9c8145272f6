"""Hypotheses: per-character definitions checked against Python's own tokenizer and by hand."""
import io
import tokenize

import numpy as np
import pytest

import data
from lstmvis import hypotheses as hyp
from lstmvis.store import StateStore


def _tokenize_masks(source: str):
    """Reference (state after reading each char): STRING token [start, end - 1), COMMENT [start, end)."""
    line_starts = np.concatenate([[0], np.cumsum([len(l) for l in source.splitlines(keepends=True)])])
    in_string, in_triple, in_comment, prefix = (np.zeros(len(source), dtype=bool) for _ in range(4))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        a = line_starts[tok.start[0] - 1] + tok.start[1]
        b = line_starts[tok.end[0] - 1] + tok.end[1]
        if tok.type == tokenize.STRING:
            quote = min(i for i in (tok.string.find("'"), tok.string.find('"')) if i >= 0)
            prefix[a:a + quote] = True  # r, b, f prefixes: before the quote, not inside yet
            in_string[a + quote:b - 1] = True
            in_triple[a + quote:b - 1] = tok.string[quote:quote + 3] in ('"""', "'''")
        elif tok.type == tokenize.COMMENT:
            in_comment[a:b] = True
    return in_string, in_triple, in_comment, prefix


def test_lexer_agrees_with_pythons_tokenizer_on_stdlib_files():
    files = data.python_source("test")[:12]
    n_chars = 0
    for name, source in files:
        ref_string, ref_triple, ref_comment, prefix = _tokenize_masks(source)
        in_string, in_triple, in_comment = hyp.python_lexer_masks(source)
        np.testing.assert_array_equal(in_string[~prefix], ref_string[~prefix], err_msg=name)
        np.testing.assert_array_equal(in_triple[~prefix], ref_triple[~prefix], err_msg=name)
        np.testing.assert_array_equal(in_comment, ref_comment, err_msg=name)
        n_chars += len(source)
    assert n_chars > 50_000


def test_hand_checked_strings_comments_and_escapes():
    text = "x = 'a\\'b' # c \"q\"\ny = \"\"\"t\n'u'\"\"\" + r'\\\\'\nz = 'open\nw"
    in_string, in_triple, in_comment = hyp.python_lexer_masks(text)
    marks = "".join("t" if t else "s" if s else "c" if c else "." for s, t, c in zip(in_string, in_triple, in_comment))
    assert marks == ("....sssss..ccccccc." "....ttttt" "ttttt.....sss.." "....sssss." ".")
    assert (hyp.inside_short_string.of_text(text) == (in_string & ~in_triple)).all()
    assert hyp.position_in_line.of_text("ab\ncd").tolist() == [1, 2, 0, 1, 2]
    assert hyp.indentation_level.of_text("a\n    b\n\tc").tolist() == [0, 0, 4, 4, 4, 4, 4, 4, 8, 8]
    assert hyp.bracket_depth.of_text("f(a[1]) )").tolist() == [0, 1, 1, 2, 2, 1, 0, 0, -1]
    assert hyp.regex(r"\d+").of_text("a12b3").tolist() == [0, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="invalid regular expression"):
        hyp.regex("(")


def test_word_store_tokens_take_their_last_character(tmp_path):
    texts = ['say "hi there" now', "f(x, (y))"]
    tokens = ["say", '"', "hi", "there", '"', "now", "f", "(", "x", ",", "(", "y", ")", ")"]
    states = np.zeros((len(tokens), 2), dtype=np.float32)
    with StateStore.from_arrays(tmp_path / "w.h5", {"m.h": states}, tokens=tokens, offsets=[0, 6, 14],
                                texts=texts, meta={"label": [0, 1] * 7, "pos": ["a", "b"] * 7}) as store:
        assert hyp.inside_quotes(store).tolist() == [0, 1, 1, 1, 0, 0] + [0] * 8
        assert hyp.bracket_depth(store).tolist() == [0] * 6 + [0, 1, 1, 1, 2, 2, 1, 0]
        assert hyp.token_in(["(", ")"])(store).tolist() == [0] * 7 + [1, 0, 0, 1, 0, 1, 1]
        label = hyp.meta("label")
        assert label(store).tolist() == [0, 1] * 7 and label.kind == "binary"
        assert hyp.meta("pos", "b")(store).tolist() == [0, 1] * 7
        with pytest.raises(ValueError, match="categories"):
            hyp.meta("pos")(store)
        with pytest.raises(ValueError, match="vocabulary"):
            hyp.token_in("zzz")(store)


def test_parens_depth_matches_the_generators_ground_truth(tmp_path):
    seqs = data.parens("test", n_sequences=5, length=60)
    tokens = [t for toks, _ in seqs for t in toks]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t, _ in seqs])])
    texts = ["".join(t) for t, _ in seqs]
    with StateStore.from_arrays(tmp_path / "p.h5", {"m.h": np.zeros((len(tokens), 1), np.float32)},
                                tokens=tokens, offsets=offsets, texts=texts) as store:
        np.testing.assert_array_equal(hyp.resolve("parens")(store), np.concatenate([d for _, d in seqs]))


def test_resolve_names():
    assert hyp.resolve("quotes") is hyp.inside_quotes and hyp.resolve("comment") is hyp.inside_comment
    assert hyp.resolve("regex:def ").kind == "binary" and hyp.resolve("meta:label").track == "label"
    assert hyp.resolve("tokens:a,b").tokens == ["a", "b"]
    with pytest.raises(ValueError, match="unknown hypothesis"):
        hyp.resolve("nonsense")
