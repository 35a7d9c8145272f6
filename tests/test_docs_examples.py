"""Every recipe script under docs/examples/ runs to the end, so the docs cannot rot.

Each script is run as a user would run it (`python docs/examples/NAME.py`) from a fresh temporary
directory, with LSTMVIS_EXAMPLE_CI=1: a script that serves the browser tool then starts it with
`block=False`, checks that its pages answer, and stops it instead of waiting for Ctrl+C.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def test_there_are_recipes():
    assert SCRIPTS, f"no recipe scripts in {EXAMPLES}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_recipe_runs(script: Path, tmp_path: Path):
    env = dict(os.environ, LSTMVIS_EXAMPLE_CI="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
