"""The ``textexplain`` command line: bare text as the default command, outputs, clear errors."""
from __future__ import annotations

import json
import re

import pytest

from textexplain import cli


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


def test_bare_text_explains_with_several_methods_and_writes_html_and_json(tmp_path, capsys):
    html_path, json_path = tmp_path / "out.html", tmp_path / "out.json"
    rc = cli.main(["a gorgeous, witty <script>x</script> film", "--model", "sentiment-lstm",
                   "--method", "gradient_x_input,occlusion", "--target", "fresh", "--color", "none",
                   "--html", str(html_path), "--json", str(json_path), "--set", "occlusion.window=2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("model sentiment-lstm: predicted ")
    assert "gradient_x_input: predicted" in out and "occlusion: predicted" in out and "target fresh" in out
    assert re.search(r"gorgeous\[[+-]\d", out)
    page = html_path.read_text(encoding="utf-8")
    assert page.count("<tr style=\"border-top") == 2 and "<script>" not in page
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert [d["method"] for d in data] == ["gradient_x_input", "occlusion"]
    assert data[1]["params"]["window"] == 2 and data[0]["target_label"] == "fresh"


def test_explicit_subcommand_and_target_index(capsys):
    assert cli.main(["explain", "a dull mess", "--method", "gradient", "--target", "0", "--color", "none"]) == 0
    assert "target rotten" in capsys.readouterr().out


def test_words_and_seed_options(capsys):
    assert cli.main(["well-made, fun", "--method", "shap", "--seed", "3", "--words", "--color", "none"]) == 0
    out = capsys.readouterr().out
    assert "well-made,[" in out  # sub-tokens merged into the whitespace word


@pytest.mark.parametrize("argv, message", [
    (["good", "--method", "saliency"], "unknown method saliency"),
    (["good", "--model", "nope"], "unknown model"),
    (["good", "--model", "charlm-python"], "not a text classifier"),
    (["good", "--set", "n_stepz=3"], "no parameter 'n_stepz'"),
    (["good", "--set", "lime.seed=1"], "not among the chosen methods"),
    (["good", "--target", "meh"], "unknown target"),
    (["good", "--normalize", "zscore"], "normalize"),
    (["--method", "gradient"], "no text given"),
])
def test_clear_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    out = capsys.readouterr().out
    for word in ("--method", "--target", "--html", "integrated_gradients", "--set", "examples"):
        assert word in out
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_parser_is_subcommand_capable():
    """Other areas register subcommands as add_xxx(sub) functions in SUBCOMMANDS."""
    def add_dummy(sub):
        p = sub.add_parser("dummy")
        p.set_defaults(func=lambda args: 7)

    cli.SUBCOMMANDS.append(add_dummy)
    try:
        assert cli.main(["dummy"]) == 7
    finally:
        cli.SUBCOMMANDS.remove(add_dummy)
