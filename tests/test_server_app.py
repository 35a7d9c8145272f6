"""The app factory's infrastructure: JSON errors, validation, OpenAPI, security defaults, CLI."""
from __future__ import annotations

import json
import os
import re

import pytest
import requests
from pydantic import Field

from conftest_server import TOY_TEXTS, live_server, make_toy_store


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    make_toy_store(d / "toy.h5").close()
    (d / "sub").mkdir()
    make_toy_store(d / "sub" / "nested.h5").close()
    outside = tmp_path_factory.mktemp("outside")
    make_toy_store(outside / "secret.h5").close()
    os.symlink(outside / "secret.h5", d / "escape.h5")  # points out of the data directory
    (d / "broken.h5").write_bytes(b"not hdf5")
    return d


@pytest.fixture(scope="module")
def app(data_dir):
    from server.app import create_app
    return create_app(data_dir, {"TESTING": True})


@pytest.fixture()
def client(app):
    return app.test_client()


def error_of(resp, status):
    assert resp.status_code == status, resp.data
    assert resp.is_json, resp.content_type
    err = resp.get_json()["error"]
    assert err["status"] == status and err["message"]
    return err["message"]


def test_landing_lists_pages_models_and_stores(client):
    resp = client.get("/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    for page in ("Explorer", "Cells", "Text CNN"):
        assert page in html
    assert "sentiment-lstm" in html  # a shipped model
    assert 'data-store="toy"' in html and 'data-store="sub/nested"' in html


def test_data_dir_paths_are_confined(client, data_dir):
    names = [s["name"] for s in client.get("/api/status").get_json()["stores"]]
    assert "escape" not in names, "a symlink leading out of the data directory must be ignored"
    broken = [s for s in client.get("/api/stores").get_json()["stores"] if s["name"] == "broken"][0]
    assert broken["status"] == "error" and "cannot open" in broken["message"]
    # a store that failed to open answers with a JSON error, never a 500
    error_of(client.get("/api/stores/broken/tokens"), 409)
    # path-like names never reach the file system
    for name in ("..%2Foutside", "%2Fetc%2Fpasswd", "..", "escape"):
        assert client.get(f"/api/stores/{name}/tokens").status_code in (404,)


def test_a_store_in_a_data_subfolder_answers_under_its_name(client):
    """Stores below --data are named by their relative path (``sub/nested``); every store route takes
    that name, as a path or percent-encoded the way the pages send it."""
    for name in ("sub/nested", "sub%2Fnested"):
        info = client.get(f"/api/stores/{name}")
        assert info.status_code == 200, info.data
        assert info.get_json()["name"] == "sub/nested"
        tokens = client.get(f"/api/stores/{name}/tokens?start=0&stop=5")
        assert tokens.status_code == 200, tokens.data
        assert len(tokens.get_json()["tokens"]) == 5
    error_of(client.get("/api/stores/sub/missing/tokens"), 404)


def test_confine_rejects_escapes(tmp_path):
    from server.resources import confine
    from server.validation import ApiError
    (tmp_path / "a").mkdir()
    assert confine(tmp_path, "a") == (tmp_path / "a").resolve()
    for bad in ("..", "../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(ApiError):
            confine(tmp_path, bad)


@pytest.mark.parametrize("method,path,status", [
    ("get", "/no/such/page", 404),
    ("get", "/api/nope", 404),
    ("post", "/api/status", 405),
    ("delete", "/api/stores", 405),
])
def test_routing_errors_are_json(client, method, path, status):
    error_of(getattr(client, method)(path), status)


def _app_with_test_endpoint(data_dir):
    """An app with one extra validated POST endpoint, registered the way new pages plug in."""
    from flask import Blueprint

    from server.app import create_app
    from server.validation import Params, api

    class Body(Params):
        n: int = Field(ge=0, le=10)
        name: str = Field(min_length=1)

    bp = Blueprint("testbp", __name__, url_prefix="/api/test")

    @bp.post("/echo")
    @api(Body, summary="echo")
    def echo(params: Body):
        return {"n": params.n, "name": params.name}

    @bp.get("/boom")
    @api()
    def boom():
        raise RuntimeError("secret internal detail")

    app = create_app(data_dir, {"TESTING": True, "MAX_CONTENT_LENGTH": 1000})
    app.register_blueprint(bp)
    return app


def test_json_body_validation_names_the_problem(data_dir):
    client = _app_with_test_endpoint(data_dir).test_client()
    assert client.post("/api/test/echo", json={"n": 3, "name": "x"}).get_json() == {"n": 3, "name": "x"}
    msg = error_of(client.post("/api/test/echo", json={"n": 99, "name": "x"}), 400)
    assert "n" in msg and "less than or equal to 10" in msg
    msg = error_of(client.post("/api/test/echo", json={"name": "x"}), 400)
    assert "n: Field required" in msg
    msg = error_of(client.post("/api/test/echo", json={"n": 1, "name": "x", "evil": 1}), 400)
    assert "evil: unknown parameter" in msg
    error_of(client.post("/api/test/echo", data="{not json", content_type="application/json"), 400)
    error_of(client.post("/api/test/echo", data="[1, 2]", content_type="application/json"), 400)
    error_of(client.post("/api/test/echo", data="n=1", content_type="application/x-www-form-urlencoded"), 415)
    msg = error_of(client.post("/api/test/echo", data=b"{" + b" " * 2000 + b"}", content_type="application/json"), 413)
    assert "1000 bytes" in msg
    assert app_limit_default() <= 16 * 1024 * 1024


def app_limit_default() -> int:
    from server.app import DEFAULT_CONFIG
    return DEFAULT_CONFIG["MAX_CONTENT_LENGTH"]


def test_unexpected_errors_reveal_nothing(data_dir):
    client = _app_with_test_endpoint(data_dir).test_client()
    msg = error_of(client.get("/api/test/boom"), 500)
    assert "secret" not in msg and "Traceback" not in msg


def test_query_validation(client):
    msg = error_of(client.get("/api/stores/toy/tokens?start=-1"), 400)
    assert "start" in msg and "greater than or equal to 0" in msg
    msg = error_of(client.get("/api/stores/toy/tokens?start=abc"), 400)
    assert "start" in msg and "integer" in msg
    msg = error_of(client.get("/api/stores/toy/tokens?bogus=1"), 400)
    assert "bogus: unknown parameter" in msg


def test_openapi_document_covers_every_api_route(app, client):
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    api_rules = {r.rule for r in app.url_map.iter_rules() if r.rule.startswith("/api/")}
    documented = set(doc["paths"])
    for rule in api_rules:
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)
        assert path in documented, f"{rule} is missing from the OpenAPI document"
    tokens = doc["paths"]["/api/stores/{store}/tokens"]["get"]
    names = {p["name"] for p in tokens["parameters"]}
    assert {"store", "start", "stop"} <= names


def test_security_headers_and_no_debugger(app, client):
    assert app.debug is False
    resp = client.get("/")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"


def _installed_plotly() -> bytes:
    import plotly
    from pathlib import Path
    return (Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js").read_bytes()


def test_plotly_is_served_from_the_installed_package(client):
    resp = client.get("/static/vendor/plotly.min.js")
    assert resp.status_code == 200 and resp.mimetype == "text/javascript"
    assert b"plotly" in resp.data[:2000].lower() and len(resp.data) > 1_000_000
    # the package's file byte for byte, after one line: V8's eager-compile hint (a comment elsewhere)
    hint, _, rest = resp.data.partition(b"\n")
    assert hint == b"//# allFunctionsCalledOnLoad" and rest == _installed_plotly()
    resp.close()


def test_plotly_has_a_versioned_cacheable_gzip_address(client):
    import gzip
    import re

    import plotly

    html = client.get("/explorer").get_data(as_text=True)
    url = re.search(r'src="(/static/vendor/plotly-[^"/]+/plotly\.min\.js)"', html).group(1)
    assert f"plotly-{plotly.__version__}-" in url
    plain = client.get(url)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    cache = plain.headers["Cache-Control"]
    assert "max-age=31536000" in cache and "immutable" in cache and "public" in cache
    assert plain.headers["Vary"] == "Accept-Encoding"
    zipped = client.get(url, headers={"Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["Content-Encoding"] == "gzip" and len(zipped.data) < len(plain.data) / 2
    assert gzip.decompress(zipped.data) == plain.data
    assert plain.headers["ETag"] != zipped.headers["ETag"]  # two encodings, two entities
    again = client.get(url, headers={"If-None-Match": plain.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    # the unversioned address is served too, with a short cache; another version is no such file
    assert "max-age=3600" in client.get("/static/vendor/plotly.min.js").headers["Cache-Control"]
    stale = client.get("/static/vendor/plotly-0.0.1-000000000000/plotly.min.js")
    error_of(stale, 404)


def test_pages_render(client):
    for path in ("/", "/explorer", "/cells", "/textcnn"):
        resp = client.get(path)
        assert resp.status_code == 200 and resp.mimetype == "text/html", path
        assert "plotly.min.js" in resp.get_data(as_text=True) or path == "/"


def test_explorer_page_carries_the_first_store_details(client):
    """The page opens on a store without first asking /api/stores/<name>: it already has the answer."""
    import html as html_lib
    import re

    for query, name in (("?store=toy", "toy"), ("", None), ("?store=nope", None)):
        page = client.get(f"/explorer{query}").get_data(as_text=True)
        data = json.loads(html_lib.unescape(re.search(r'id="page-data">(.*?)</script>', page, re.S).group(1)))
        ready = [s["name"] for s in data["status"]["stores"] if s["status"] == "ready"]
        if name:
            assert data["store_info"] == client.get(f"/api/stores/{name}").get_json()
        else:  # an unknown or missing ?store= opens the first ready store, as the page's script does
            assert data["store_info"]["name"] == ready[0] and data["store_info"]["sources"]


def test_request_threads_are_reused_and_retire_when_idle(app):
    """werkzeug closes each connection after one request: the server's threads wait for the next one
    instead of a new thread per request (warm allocator arenas), and exit once idle."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from server.serving import make_server

    def workers():
        return {t for t in threading.enumerate() if t.name == "http-worker"}

    srv = make_server(app, "127.0.0.1", 0)
    srv.idle_seconds = 0.5
    before = workers()  # idle threads other tests' servers may still hold
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_port}"
    try:
        for _ in range(20):
            requests.get(f"{base}/api/status", timeout=10).raise_for_status()
        assert 1 <= len(workers() - before) <= 5, "20 requests one after another need about one thread"
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: requests.get(f"{base}/api/stores/toy/tokens?start={i % 8}&stop="
                                                           f"{i % 8 + 3}", timeout=10).json()["tokens"], range(24)))
        tokens = " ".join(TOY_TEXTS).split()
        assert results == [tokens[i % 8:i % 8 + 3] for i in range(24)]
        deadline = time.monotonic() + 10
        while workers() - before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not workers() - before, "idle request threads must exit after idle_seconds"
        requests.get(f"{base}/api/status", timeout=10).raise_for_status()  # and new ones start on demand
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_allocator_tuning_respects_the_environment(monkeypatch):
    import platform

    from lstmvis.allocator import tune_allocator

    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX"):
        monkeypatch.setenv(name, "0")
    assert tune_allocator() is False  # every setting was given in the environment: nothing changed
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX"):
        monkeypatch.delenv(name)
    assert tune_allocator() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_live_server_answers_concurrently(app):
    from concurrent.futures import ThreadPoolExecutor
    with live_server(app) as base:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: requests.get(f"{base}/api/stores/toy/tokens?start={i}&stop={i + 3}",
                                                           timeout=10).json()["tokens"], range(8)))
    tokens = " ".join(TOY_TEXTS).split()
    assert results == [tokens[i:i + 3] for i in range(8)]


# -------------------------------------------------------------------------------- the CLI

def test_serve_cli_parses_and_defaults_to_loopback():
    from lstmvis.cli import build_parser
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.data is None and args.no_browser is False
    args = build_parser().parse_args(["serve", "--data", "d", "--port", "0", "--host", "0.0.0.0", "--no-browser"])
    assert (args.data, args.port, args.host, args.no_browser) == ("d", 0, "0.0.0.0", True)


class _Stop(Exception):
    pass


def test_bare_lstmvis_starts_the_demo_server(monkeypatch):
    import server.app
    import server.serving
    from lstmvis import cli
    seen = {}

    def fake_create_app(data_dir=None, config=None):
        seen["data_dir"] = data_dir
        return "app"

    def fake_make_server(app, host, port):
        seen.update(app=app, host=host, port=port)
        raise _Stop()
    monkeypatch.setattr(server.app, "create_app", fake_create_app)
    monkeypatch.setattr(server.serving, "make_server", fake_make_server)
    with pytest.raises(_Stop):
        cli.main([])
    assert seen == {"data_dir": None, "app": "app", "host": "127.0.0.1", "port": server.serving.DEFAULT_PORT}


def test_serve_refuses_a_missing_data_dir(capsys, tmp_path):
    from lstmvis import cli
    assert cli.main(["serve", "--data", str(tmp_path / "nope"), "--no-browser"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_serve_warns_loudly_off_loopback(monkeypatch, capsys, tmp_path):
    import server.serving
    from lstmvis import cli

    def fake_make_server(app, host, port):
        raise _Stop()
    monkeypatch.setattr(server.serving, "make_server", fake_make_server)
    with pytest.raises(_Stop):
        cli.main(["serve", "--data", str(tmp_path), "--host", "0.0.0.0", "--no-browser"])
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err


def test_parsing_the_command_line_loads_no_server_module():
    """``lstmvis`` finds ``serve`` through its entry point; flask and the app load only when it runs."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from lstmvis.cli import build_parser; build_parser().parse_args(['serve']); "
            "print(sorted(m for m in sys.modules if m == 'flask' or m.startswith('server.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "['server.cli']"


def test_only_the_command_line_module_uses_argparse():
    from pathlib import Path

    import server
    users = sorted(p.name for p in Path(server.__file__).parent.glob("*.py") if "argparse" in p.read_text())
    assert users == ["cli.py"]


def test_is_loopback():
    from server.serving import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_status_is_valid_json(client):
    status = client.get("/api/status").get_json()
    json.dumps(status)
    assert status["mode"] == "data"


def test_a_browser_gets_a_404_page_with_the_navigation_and_the_api_json(client):
    page = client.get("/no/such/page", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert b'class="topnav"' in page.data and b"/no/such/page" in page.data
    for url, accept in (("/no/such/page", "application/json"), ("/no/such/page", "*/*"),
                        ("/api/nope", "text/html")):
        resp = client.get(url, headers={"Accept": accept})
        assert resp.status_code == 404 and resp.mimetype == "application/json", (url, accept)


def test_jobs_page_and_list(client):
    assert client.get("/jobs").status_code == 200
    listed = client.get("/api/jobs").get_json()
    assert isinstance(listed["jobs"], list)
