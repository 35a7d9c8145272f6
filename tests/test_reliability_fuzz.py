"""Fuzzing every endpoint from the OpenAPI document (a short run of benchmarks/fuzz_server.py).

hypothesis draws valid, one-field-wrong and chaotic requests for every operation the server
documents; every answer must be non-5xx, strict JSON (no NaN), and every error must have the
shape ``{"error": {"status", "message"}}``. A failure is shrunk to a minimal request. The full
run (5,000+ requests over a real socket) is ``python benchmarks/fuzz_server.py --requests 5000``.
Below the fuzzer: regressions it found, as plain tests.
"""
from __future__ import annotations

import json
import logging
import threading

import pytest
from hypothesis import HealthCheck, given, settings

from conftest_server import demo_resources, load_benchmark



fuzz = load_benchmark("fuzz_server")


@pytest.fixture(scope="module")
def app():
    from server.app import create_app
    app = create_app(None, {"RESOURCES": demo_resources()})
    app.logger.setLevel(logging.CRITICAL)  # the 500s the fuzzer looks for are reported by the assertions
    return app


@pytest.fixture(scope="module")
def send(app):
    return fuzz.TestClientTransport(app)


@pytest.fixture(scope="module")
def doc(send):
    return json.loads(send("GET", "/api/openapi.json", "", {}, b"")[2])


@pytest.fixture(scope="module")
def hints(send):
    return fuzz.Hints.from_server(send)


def test_fuzz_every_endpoint(send, doc, hints):
    ops = fuzz.operations(doc)
    assert len(ops) >= 15, "the OpenAPI document should list every JSON endpoint"
    tally = fuzz.Tally()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(req=fuzz.request_strategy(ops, hints))
    def one(req):
        problems = fuzz.send_and_check(send, req, tally)
        assert not problems, (problems, req)

    one()
    assert send("GET", "/api/status", "", {}, b"")[0] == 200
    assert tally.by_status.get(200, 0) >= 20, f"too few requests did real work: {tally.by_status}"
    assert len(tally.by_endpoint) >= len(ops) // 2, "the fuzzer should reach most endpoints"


def test_oversized_bodies_are_json_413(send, doc):
    ops = fuzz.operations(doc)
    for req in fuzz.oversized_requests(ops, 2 * 1024 * 1024):
        status, headers, body = send(req.method, req.path, req.query, req.headers, req.body)
        assert status == 413, (req.endpoint, status)
        assert fuzz.problems_of(req, status, headers, body) == []


def test_the_oracle_can_fail():
    """The checks reject a 500, a NaN, an HTML error and an error without a message."""
    req = fuzz.Request("GET", "/api/stores")
    assert fuzz.problems_of(req, 500, {"Content-Type": "application/json"},
                            b'{"error": {"status": 500, "message": "x"}}')
    assert fuzz.problems_of(req, 200, {"Content-Type": "application/json"}, b'{"a": NaN}')
    assert fuzz.problems_of(req, 404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>")
    assert fuzz.problems_of(req, 400, {"Content-Type": "application/json"}, b'{"error": {"status": 400}}')
    assert not fuzz.problems_of(req, 400, {"Content-Type": "application/json"},
                                b'{"error": {"status": 400, "message": "bad"}}')


# ----------------------------------------------------------------------- regressions it found

@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"model":' * 50_000 + b"1" + b"}" * 50_000],
                         ids=["arrays", "objects"])
def test_deeply_nested_json_is_a_400(send, body):
    status, _, data = send("POST", "/api/explain", "", {"Content-Type": "application/json"}, body)
    assert status == 400 and "nested" in json.loads(data)["error"]["message"]


def test_answers_never_contain_nan(send):
    """A one-token text: Kendall tau and friends are undefined, and must arrive as null."""
    status, headers, body = send("POST", "/api/explain", "", {"Content-Type": "application/json"},
                                 json.dumps({"model": "sentiment-lstm", "text": "0", "methods": ["gradient"]}).encode())
    assert status == 200
    json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in a JSON answer"))


def test_unknown_meta_track_hypothesis_is_a_400(send, hints):
    store = "sentiment" if "sentiment" in hints.stores else hints.stores[0]
    status, _, body = send("GET", f"/api/stores/{store}/hypothesis", "hypothesis=meta%3Ano_such_track", {}, b"")
    assert status == 400 and "no_such_track" in json.loads(body)["error"]["message"]


def test_background_jobs_are_bounded():
    """Distinct requests cannot queue unbounded work: past the limit the client gets a 429."""
    from server.jobs import JobRunner
    from server.validation import ApiError

    release = threading.Event()
    runner = JobRunner(workers=1, max_pending=3)
    try:
        for i in range(3):
            runner.submit("slow", (i,), lambda report: release.wait(30))
        with pytest.raises(ApiError) as err:
            runner.submit("slow", (99,), lambda report: None)
        assert err.value.status == 429
        assert runner.submit("slow", (0,), lambda report: None).key == ("slow", 0)  # the same job is found again
    finally:
        release.set()


@pytest.mark.parametrize("pattern", [r"((\w|\s)+)+!"])
def test_catastrophic_regular_expressions_end(send, hints, pattern):
    """Search and regex hypotheses run user patterns with a time limit: an answer, never a hang."""
    from urllib.parse import quote
    store = "sentiment" if "sentiment" in hints.stores else hints.stores[0]
    for path, query in ((f"/api/stores/{store}/search", f"regex=true&q={quote(pattern)}"),
                        (f"/api/stores/{store}/hypothesis", f"hypothesis={quote('regex:' + pattern)}")):
        status, headers, body = send("GET", path, query, {}, b"")
        assert status in (200, 400), (path, status)
        assert fuzz.problems_of(fuzz.Request("GET", path), status, headers, body) == []


def test_loopback_server_refuses_other_host_names(monkeypatch, tmp_path):
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 must not get answers from the server."""
    import server.serving
    from lstmvis import cli
    from conftest_server import make_toy_store
    make_toy_store(tmp_path / "toy.h5").close()
    apps = []

    class Stop(Exception):
        pass

    def capture(app, host, port):
        apps.append(app)
        raise Stop()
    monkeypatch.setattr(server.serving, "make_server", capture)
    for argv in (["serve", "--data", str(tmp_path), "--no-browser"],
                 ["serve", "--data", str(tmp_path), "--no-browser", "--allow-host", "lstmvis.example.org"]):
        with pytest.raises(Stop):
            cli.main(argv)
    strict, proxied = (app.test_client() for app in apps)
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert strict.get("/api/stores", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example.com", "localhost.evil.com", "lstmvis.example.org"):
        resp = strict.get("/api/stores", headers={"Host": host})
        assert resp.status_code == 400 and "not trusted" in resp.get_json()["error"]["message"], host
    assert proxied.get("/api/stores", headers={"Host": "lstmvis.example.org"}).status_code == 200


def test_http_layer_errors_are_json_too(app):
    """A request line over 64 KiB is refused by the HTTP server before Flask sees it: still JSON."""
    import socket

    from conftest_server import live_server
    with live_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /api/status?" + b"x" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 414") and b"application/json" in head
        assert json.loads(body)["error"]["status"] == 414
        status, _, _ = fuzz.HTTPTransport("127.0.0.1", port)("GET", "/api/status", "", {}, b"")
        assert status == 200, "the server keeps serving"


@pytest.mark.parametrize("digits", [19, 5000])
def test_huge_integers_in_url_paths_are_404(send, hints, digits):
    """werkzeug's int converter fed 5000 digits raised ValueError inside routing (a 500)."""
    store = hints.stores[0]
    status, headers, body = send("GET", f"/api/stores/{store}/cells/{'9' * digits}/contexts", "source=x", {}, b"")
    assert status == 404 and fuzz.problems_of(fuzz.Request("GET", "/api/x"), status, headers, body) == []
