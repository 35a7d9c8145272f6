"""Issue 24, findings 3 and 10: a page of another origin in real headless Chromium tries the API with
``<img>`` GETs, a cross-site form POST and ``no-cors`` fetches (with and without a body): the server
answers every one with a refusal before any work (no 2xx, no job started)."""
from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest

from conftest_server import CHROMIUM, live_server, make_toy_store

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

ATTACK = """<!doctype html><html><body>
<img src="{api}/api/stores/toy/cells/rank?source=rnn.l0.h&hypothesis=regex:cat">
<img src="{api}/api/stores/toy/search?q=cat&regex=true">
<iframe name="sink"></iframe>
<form id="f" method="POST" action="{api}/api/images/tsne" enctype="text/plain" target="sink">
  <input name='{{"model": "x", "p": "' value='"}}'></form>
<script>
  fetch("{api}/api/images/sanity", {{method: "POST", mode: "no-cors"}});
  fetch("{api}/api/images/activation-max", {{method: "POST", mode: "no-cors", body: "{{}}"}});
  fetch("{api}/api/stores/toy/tokens?start=0&stop=3", {{mode: "no-cors"}});
  document.getElementById("f").submit();
</script></body></html>"""
N_ATTACKS = 6


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """The lstmvis server, recording every API answer it gives: (path, status, Sec-Fetch-Site)."""
    from flask import request

    from server.app import create_app

    d = tmp_path_factory.mktemp("target")
    make_toy_store(d / "toy.h5").close()
    app = create_app(d, {"TESTING": True, "DEMO": False})
    answers, changed = [], threading.Condition()

    @app.after_request
    def _record(resp):
        if request.path.startswith("/api/"):
            with changed:
                answers.append((request.path, resp.status_code, request.headers.get("Sec-Fetch-Site")))
                changed.notify_all()
        return resp

    with live_server(app) as url:
        yield url, answers, changed


def serve_page(directory) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_port


@pytest.mark.parametrize("page_host", ["localhost", "127.0.0.1"])  # another site; the same site, another port
def test_a_foreign_page_cannot_make_the_server_work(browser, target, tmp_path, page_host):
    api, answers, changed = target
    (tmp_path / "attack.html").write_text(ATTACK.format(api=api))
    srv, port = serve_page(tmp_path)
    with changed:
        answers.clear()
    context = browser.new_context()
    try:
        context.new_page().goto(f"http://{page_host}:{port}/attack.html")
        with changed:
            assert changed.wait_for(lambda: len(answers) >= N_ATTACKS, timeout=60), answers
            got = list(answers)
    finally:
        context.close()
        srv.shutdown()
        srv.server_close()
    assert all(status in (403, 415) for _, status, _ in got), got
    assert {site for _, _, site in got} == {"cross-site" if page_host == "localhost" else "same-site"}, got
