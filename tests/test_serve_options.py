"""``lstmvis.serve(corpora=...)`` (issue 18: the workbench's ``--corpus`` from Python) and quiet serving:
``lstmvis.serve(block=False)`` prints nothing; its request log goes to the ``lstmvis.server`` logger only,
while ``lstmvis serve`` keeps werkzeug's request log on stderr."""
from __future__ import annotations

import logging

import pytest
import requests

import lstmvis
from server import python_api


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def werkzeug_records():
    handler, logger = Records(), logging.getLogger("werkzeug")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # other tests quiet it (conftest_server.live_server)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label,lang\n"a fine, moving film",fresh,en\n"dull and far too long",rotten,en\n')
    return path


def test_corpora_reach_the_workbench(corpus):
    with lstmvis.serve(models={}, corpora=[corpus], port=0, block=False) as server:
        listed = requests.get(server.url + "api/workbench/corpora", timeout=30).json()
        assert "file:reviews.csv" in listed["corpora"]
        rows = requests.get(server.url + "api/workbench/rows", timeout=60,
                            params={"model": "sentiment-lstm", "corpus": "file:reviews.csv"})
        assert rows.status_code == 200, rows.text
        assert rows.json()["total"] == 2 and rows.json()["meta"] == ["lang"]


def test_corpora_are_checked_at_the_door(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "label": "fresh"}\n{nope\n')
    with pytest.raises(ValueError, match=r"corpora .*bad.jsonl, line 2: not JSON"):
        python_api.serve(models={}, corpora=[bad], port=0, block=False)
    with pytest.raises(TypeError, match="corpora must be a list of corpus file paths"):
        python_api.serve(models={}, corpora=str(corpus), port=0, block=False)
    with pytest.raises(ValueError, match="corpora .*nowhere.csv: no such file"):
        python_api.serve(models={}, corpora=[tmp_path / "nowhere.csv"], port=0, block=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "reviews.csv").write_text(corpus.read_text())
    with pytest.raises(ValueError, match="two corpus files are named 'reviews.csv'"):
        python_api.serve(models={}, corpora=[corpus, other / "reviews.csv"], port=0, block=False)


def test_the_python_server_prints_nothing_and_logs_to_its_logger(capfd, caplog, werkzeug_records):
    caplog.set_level(logging.INFO, logger="lstmvis.server")
    with lstmvis.serve(models={}, port=0, block=False) as server:
        assert requests.get(server.url + "api/status", timeout=30).status_code == 200
        assert requests.get(server.url + "api/nowhere", timeout=30).status_code == 404
        requests.get(server.url + "api/stores/nope/match", timeout=30)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert werkzeug_records == []
    lines = [r.getMessage() for r in caplog.records if r.name == "lstmvis.server"]
    assert any('"GET /api/status HTTP/1.1" 200' in line for line in lines)
    assert any('"GET /api/nowhere HTTP/1.1" 404' in line for line in lines)


def test_the_command_lines_server_keeps_werkzeugs_request_log(werkzeug_records):
    from server.app import create_app
    from server.serving import make_server
    from server.python_api import ServerHandle

    app = create_app(None, {"TESTING": True, "DEMO": False})
    with ServerHandle(make_server(app, "127.0.0.1", 0), app) as server:
        assert requests.get(server.url + "api/status", timeout=30).status_code == 200
    assert any("GET /api/status HTTP/1.1" in m and "200" in m for m in werkzeug_records)


def test_a_local_data_folder_serves_zarr_stores_and_names_clashing_files_by_their_suffix(tmp_path):
    import os
    import shutil

    from conftest_server import make_toy_store
    from server.resources import Resources

    make_toy_store(str(tmp_path / "a.zarr")).close()
    make_toy_store(tmp_path / "a.h5").close()
    (tmp_path / "runs").mkdir()
    make_toy_store(str(tmp_path / "runs" / "b.zarr")).close()
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "half.zarr")
    os.remove(tmp_path / "half.zarr" / "manifest.json")  # still being written
    outside = tmp_path.parent / f"{tmp_path.name}-outside.zarr"
    shutil.copytree(tmp_path / "a.zarr", outside)
    os.symlink(outside, tmp_path / "link.zarr")  # leads out of the data folder
    res = Resources(tmp_path, demo=False, build="off")
    status = {name: entry.status for name, entry in res.stores.items()}
    assert status == {"a.h5": "ready", "a.zarr": "ready", "runs/b": "ready", "half": "error"}
    assert "incomplete" in res.stores["half"].message
    assert res.store("runs/b").match("rnn.l0.h", [0], progress=False).hits


def test_a_cluster_that_stops_answering_is_a_503():
    from server.store_views import cluster_errors
    from server.validation import ApiError

    with pytest.raises(ApiError) as caught:
        with cluster_errors(object()):
            raise OSError("connection closed")
    assert caught.value.status == 503 and "Dask cluster" in caught.value.message
    with pytest.raises(ValueError, match="bad cells"):  # the library's refusal stays the client's 400
        with cluster_errors(object()):
            raise ValueError("bad cells")


def test_a_location_that_cannot_be_listed_for_a_while_keeps_what_is_known(tmp_path, monkeypatch):
    from conftest_server import make_toy_store
    from server import resources

    make_toy_store(tmp_path / "a.h5").close()
    res = resources.Resources(tmp_path, demo=False, build="off")
    monkeypatch.setattr(resources, "RESCAN_SECONDS", 0.0)

    def unreachable():
        raise OSError("the object store did not answer")

    monkeypatch.setattr(res.data_dir, "files", unreachable)
    assert [s["name"] for s in res.summary()["stores"]] == ["a"]


def test_the_match_minimap_bins_counts_that_bin_themselves_where_they_are():
    """A cluster's match counts stay on its workers and bin there (``count_at_least``): the explorer's
    minimap asks them instead of fetching every token's count."""
    import numpy as np

    from server.explorer_api import _overview

    counts = np.random.default_rng(0).integers(0, 4, size=1301)

    class Binning:
        def __len__(self):
            return len(counts)

        def count_at_least(self, level, bin_size):
            padded = np.zeros(-(-len(counts) // bin_size) * bin_size, np.int64)
            padded[:len(counts)] = counts >= level
            return padded.reshape(-1, bin_size).sum(axis=1)

        def __array__(self, dtype=None, copy=None):
            raise AssertionError("fetched every count")

    want = _overview(counts, 3)
    got = _overview(Binning(), 3)
    assert got["bin_size"] == want["bin_size"] and np.array_equal(got["all_on"], want["all_on"])
