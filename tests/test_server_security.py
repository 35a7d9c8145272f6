"""Regression tests for the server-side findings of issue 24 (an independent attack on the server):
cross-site requests, request bodies, the regex budget, malformed cards and checkpoints, slow clients."""
from __future__ import annotations

import socket
import time
from html import unescape

import numpy as np
import pytest

from conftest_server import live_server, make_toy_store

SLOW_PATTERN = r"(?:.|..){0,11}(?:\d\d\d\d|\W\W\W\W\W\W)"  # backtracks on every position of "aaaa..."
N_SLOW_TEXTS = 30


def make_slow_store(path):
    """A store of many texts on each of which SLOW_PATTERN takes a fraction of a second."""
    from lstmvis import StateStore

    texts = ["a" * 800] * N_SLOW_TEXTS
    return StateStore.from_arrays(path, {"rnn.l0.h": np.zeros((len(texts), 4), dtype=np.float32)},
                                  tokens=texts, offsets=np.arange(len(texts) + 1), texts=texts)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("security")
    make_toy_store(d / "toy.h5").close()
    make_slow_store(d / "slow.h5").close()
    return d


@pytest.fixture(scope="module")
def app(data_dir):
    from server.app import create_app
    return create_app(data_dir, {"TESTING": True, "JOB_WORKERS": 1})


@pytest.fixture()
def client(app):
    return app.test_client()


def status_and_message(resp) -> tuple[int, str]:
    return resp.status_code, (resp.get_json() or {}).get("error", {}).get("message", "")


# ------------------------------------------------------------ finding 3: cross-site GETs, regex budget

@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},  # <img src>
    {"Sec-Fetch-Site": "same-site"},  # another port on localhost is the same site
    {"Origin": "http://evil.example"},  # a browser without fetch metadata
    {"Origin": "null"},  # a sandboxed frame or a file:// page
])
def test_a_foreign_web_page_gets_no_api_answer(client, headers):
    for method, url in [("GET", "/api/stores/toy/cells/rank?source=rnn.l0.h&hypothesis=regex:cat"),
                        ("GET", "/api/stores/toy/tokens?start=0&stop=3"), ("POST", "/api/images/tsne")]:
        resp = client.open(url, method=method, headers=headers, json={} if method == "POST" else None)
        status, message = status_and_message(resp)
        assert status == 403 and "Sec-Fetch-Site" in message, (method, url, status, message)


@pytest.mark.parametrize("headers", [{}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                                     {"Origin": "http://localhost"}])
def test_own_pages_typed_addresses_and_scripts_are_answered(client, headers):
    resp = client.get("/api/stores/toy/cells/rank?source=rnn.l0.h&hypothesis=regex:cat", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert client.get("/explorer", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link to a page


def test_a_regex_hypothesis_has_one_time_budget_for_the_whole_store(client, monkeypatch, data_dir):
    """Each text takes well under the limit; all texts together take many times it (per-text limits
    let one request run for minutes)."""
    from lstmvis import StateStore, hypotheses

    monkeypatch.setattr(hypotheses, "REGEX_SECONDS", 1.0)
    status, message = status_and_message(
        client.get("/api/stores/slow/cells/rank", query_string={"source": "rnn.l0.h",
                                                                 "hypothesis": f"regex:{SLOW_PATTERN}"}))
    assert status == 400 and "ran longer than 1.0 s over the store's texts" in message
    status, message = status_and_message(
        client.get("/api/stores/slow/hypothesis", query_string={"hypothesis": f"regex:{SLOW_PATTERN}",
                                                                 "start": 0, "stop": 5}))
    assert status == 400 and "ran longer" in message
    with StateStore.open(data_dir / "slow.h5") as store, pytest.raises(ValueError, match="ran longer than 0.2 s"):
        hypotheses.regex(SLOW_PATTERN, timeout=0.2)(store)


def test_a_text_hypothesis_stops_when_asked(data_dir):
    from lstmvis import StateStore, hypotheses

    asked = []
    with StateStore.open(data_dir / "slow.h5") as store, pytest.raises(hypotheses.Cancelled):
        hypotheses.regex("a+")(store, cancelled=lambda: asked.append(1) or len(asked) > 3)
    assert len(asked) == 4  # stopped before the fifth text


def test_a_client_that_closed_its_connection_counts_as_gone(app):
    from server.context import client_gone

    ours, theirs = socket.socketpair()
    with ours, app.test_request_context("/", environ_base={"werkzeug.socket": ours}):
        assert not client_gone()  # waiting for the answer
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request is not a goodbye
        assert not client_gone()
        theirs.close()
        ours.recv(100)
        assert client_gone()
    with app.test_request_context("/"):
        assert not client_gone()  # no socket (the test client): present


# ------------------------------------------------------------ finding 10: every POST is JSON, also empty

@pytest.mark.parametrize("url", ["/api/images/tsne", "/api/images/activation-max", "/api/images/sanity",
                                 "/api/explain", "/api/audit", "/api/images/explain",
                                 "/api/stores/toy/cells/0/explain"])
def test_an_empty_post_without_json_content_type_starts_nothing(client, url):
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        resp = client.post(url, content_type=content_type)
        status, message = status_and_message(resp)
        assert status == 415 and "Content-Type: application/json" in message, (url, content_type, status, message)


# ------------------------------------------------------------ finding 12: chunked bodies over the cap

def raw_request(base: str, data: bytes, timeout: float = 10.0) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def chunked(body: bytes, size: int = 500) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def test_a_chunked_body_over_the_size_limit_is_refused(data_dir):
    from server.app import create_app

    app = create_app(data_dir, {"TESTING": True, "MAX_CONTENT_LENGTH": 1000})
    body = b'{"model": "bag", "text": "good", "methods": ["gradient"]}'
    head = (b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    with live_server(app) as base:
        over = raw_request(base, head + chunked(body + b" " * 2000))  # the first 1000 bytes are valid JSON
        assert over.startswith(b"HTTP/1.1 413"), over[:200]
        assert b"larger than the server's limit of 1000 bytes" in over
        within = raw_request(base, head + chunked(body + b" " * 100))
        assert not within.startswith(b"HTTP/1.1 413"), within[:200]


# ------------------------------------------------------------ findings 5 and 6: malformed cards and checkpoints

@pytest.fixture(scope="module")
def crafted_dir(tmp_path_factory):
    """A --data directory of checkpoints with deeply nested or malformed cards, and checkpoints with
    fields of the wrong type, beside a toy store with texts."""
    import json
    import shutil

    import torch

    from data.registry import CHECKPOINTS

    d = tmp_path_factory.mktemp("crafted")
    make_toy_store(d / "toy.h5").close()
    source, card = CHECKPOINTS / "sentiment-cnn.pt", json.loads((CHECKPOINTS / "sentiment-cnn.json").read_text())
    crafted_cards = {"deep": "[" * 100_000, "metrics": json.dumps({**card, "metrics": [1, 2]}),
                     "arch": json.dumps({**card, "architecture": "str"}), "notobject": "[1, 2]"}
    for name, text in crafted_cards.items():
        shutil.copy(source, d / f"{name}.pt")
        (d / f"{name}.json").write_text(text)
    ckpt = torch.load(source, weights_only=True)
    for name, fields in {"tokenizer": {"tokenizer": ["word"]}, "vocab": {"vocab": 5}}.items():
        torch.save({**ckpt, **fields}, d / f"{name}.pt")
        (d / f"{name}.json").write_text(json.dumps(card))
    return d


@pytest.fixture(scope="module")
def crafted_client(crafted_dir):
    from server.app import create_app
    return create_app(crafted_dir, {"TESTING": True}).test_client()  # the deep card must not stop it


def test_malformed_cards_never_stop_the_server_or_break_a_page(crafted_client):
    page = crafted_client.get("/")
    assert page.status_code == 200
    html = unescape(page.get_data(as_text=True))
    models = {m["name"]: m for m in crafted_client.get("/api/status").get_json()["models"]}
    for name, reason in [("deep", "deep.json is nested too deeply"), ("metrics", "field 'metrics' is malformed"),
                         ("arch", "field 'architecture' is malformed"), ("notobject", "is not a JSON object")]:
        assert reason in models[name]["description"], models[name]
        assert reason in html
    # the weights are fine: the model still explains
    resp = crafted_client.post("/api/explain", json={"model": "deep", "text": "good", "methods": ["gradient"],
                                                     "faithfulness": False})
    assert resp.status_code == 200, resp.get_json()


def test_malformed_cards_do_not_break_the_text_cnn_page(crafted_client):
    status, message = status_and_message(crafted_client.get("/api/textcnn/filters?k=1"))
    assert status == 200, message  # the shipped text CNN over the toy store
    # whether a model is a text CNN is asked of the model (lstmvis.textcnn), not of its malformed card
    status, message = status_and_message(crafted_client.get("/api/textcnn/filters?model=arch&k=1"))
    assert status == 200, message
    status, message = status_and_message(crafted_client.get("/api/textcnn/filters?model=sentiment-lstm&k=1"))
    assert 400 <= status < 500 and "no Conv1d" in message


@pytest.mark.parametrize("name", ["tokenizer", "vocab"])
def test_a_checkpoint_with_malformed_fields_is_a_clear_409(crafted_client, name):
    body = {"model": name, "text": "good", "methods": ["gradient"]}
    for _ in range(2):  # also once the failure is known
        status, message = status_and_message(crafted_client.post("/api/explain", json=body))
        assert status == 409 and f"model {name!r} cannot be used" in message, (status, message)
    model = next(m for m in crafted_client.get("/api/status").get_json()["models"] if m["name"] == name)
    assert not model["usable"] and model["problem"]
    assert "Unusable: loading it failed" in crafted_client.get("/").get_data(as_text=True)


# ------------------------------------------------------------ finding 9: slow and idle connections

def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    return sock


def closed_by_server(sock: socket.socket) -> bytes:
    """Whatever the server sent before it closed ``sock`` (waits for the close, at most the socket's timeout)."""
    got = b""
    with sock:
        while chunk := sock.recv(4096):
            got += chunk
    return got


def test_idle_and_half_sent_connections_are_closed_and_capped(app):
    import requests

    with live_server(app, header_seconds=1.0, body_seconds=1.0, max_connections=3) as base:
        idle = connect(base)  # never sends a byte
        half = connect(base)  # headers never end, one byte at a time would not help either
        half.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        body = connect(base)  # announces a body that never comes
        body.sendall(b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        beyond = closed_by_server(connect(base))  # a fourth while three are open
        assert beyond.startswith(b"HTTP/1.1 503") and b"too many open connections" in beyond, beyond
        for sock in (idle, half, body):
            assert not closed_by_server(sock).startswith(b"HTTP/1.1 200")  # closed, with no answer to wait for
        deadline = time.monotonic() + 15  # their threads count them down right after closing
        while (resp := requests.get(f"{base}/api/status", timeout=10)).status_code == 503:
            assert time.monotonic() < deadline, "closed connections must free their places"
        assert resp.status_code == 200


def test_a_chunked_body_that_stops_coming_is_refused_and_closed(app):
    with live_server(app, body_seconds=1.0) as base:
        sock = connect(base)
        sock.sendall(b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n10\r\n{")
        answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]  # werkzeug: the client stopped sending
