"""SIGKILL during an extraction (a short run of benchmarks/kill_extraction.py).

A child process extracts into a path that already holds an earlier store and is killed with
SIGKILL at named code points (after a sequence is marked done, in the middle of the states
writes, just before the rename) and once at a random moment. After each kill the target opens
as the earlier store or the complete new one, never anything in between; the partial file does
not open as complete unless it is; a sibling store is untouched; a rerun finishes with the same
states as an uninterrupted run and leaves no files behind. The full run (20 random trials and
every code point) is ``python benchmarks/kill_extraction.py --trials 20 --points all``.
"""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from data.registry import CHECKPOINTS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (CHECKPOINTS / "parens-lstm.pt").exists(), reason="parens-lstm not trained")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("kill_extraction", ROOT / "benchmarks" / "kill_extraction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bench = _load_benchmark()
    yield bench.Harness(tmp_path_factory.mktemp("kill"), n_sequences=30)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("point", ["after-tenth-done-flag", "mid-states-write", "before-rename"])
def test_kill_at_a_code_point_loses_nothing(harness, point):
    row = harness.trial(0, point=point)
    assert row["killed"], row
    assert row["problems"] == [], row
    if point == "after-rename":
        assert row["target"] == "new" and not row["partial_left"]
    else:
        assert row["target"] == "earlier" and row["partial_left"]
    if point == "before-rename":
        assert row["partial_opens"], "the partial file was complete: it may open (and was checked to be correct)"
    else:
        assert not row.get("partial_opens"), row


def test_kill_at_a_random_moment_loses_nothing(harness):
    row = harness.trial(1, delay=random.Random(7).uniform(0.2, 1.5))
    assert row["problems"] == [], row
    assert row["target"] in ("earlier", "new")
