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
