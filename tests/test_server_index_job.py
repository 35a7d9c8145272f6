"""A large store's first match builds its index as a background job (202 + progress), a small one inline."""
from __future__ import annotations


import pytest

from conftest_server import make_toy_store, wait_for_job

MATCH = "/api/stores/toy/match?source=rnn.l0.h&cells=0&left=2&right=1"
RANK = "/api/stores/toy/cells/rank?source=rnn.l0.c&hypothesis=tokens:cat&top=4"
CONTEXTS = "/api/stores/toy/cells/1/contexts?source=rnn.l0.gate_f&k=4&before=1&after=1"


def toy_app(folder, **config):
    from server.app import create_app
    make_toy_store(folder / "toy.h5").close()
    return create_app(folder, {"TESTING": True, **config})


@pytest.mark.parametrize("url", [MATCH, RANK, CONTEXTS])
def test_large_store_builds_its_index_as_a_job(tmp_path, url):
    (tmp_path / "inline").mkdir(), (tmp_path / "job").mkdir()
    inline = toy_app(tmp_path / "inline").test_client()
    expected = inline.get(url)
    assert expected.status_code == 200, expected.get_json()

    client = toy_app(tmp_path / "job", INDEX_JOB_VALUES=0).test_client()
    first = client.get(url)
    assert first.status_code == 202, first.get_json()
    body = first.get_json()
    assert body["status"] == "building index" and body["job"]["kind"] == "index"
    assert int(first.headers["Retry-After"]) >= 1
    again = client.get(url)  # while it builds (or once built) the same job, never a second one
    assert again.status_code == 200 or again.get_json()["job"]["id"] == body["job"]["id"]
    job = wait_for_job(client, body["job"])
    assert job["status"] == "done", job
    assert job["done"] == job["total"] > 0
    answer = client.get(url)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == expected.get_json()


def test_small_store_answers_at_once(tmp_path):
    client = toy_app(tmp_path).test_client()  # default threshold: the toy store builds inline
    for url in (MATCH, RANK, CONTEXTS):
        resp = client.get(url)
        assert resp.status_code == 200, resp.get_json()


def test_opening_a_store_builds_its_index_in_the_background_and_the_match_shows_it(tmp_path):
    """Opening a store (its info, or the explorer page) starts the job "index" for the source the page
    opens on; a match asked for meanwhile answers 202 with that job (progress to show), not a silent wait,
    even on a store small enough to build inline."""
    import threading

    from server.jobs import RUNNER_KEY

    app = toy_app(tmp_path)
    client = app.test_client()
    gate = threading.Event()
    app.extensions[RUNNER_KEY].submit("test", ("hold the worker",), lambda report: gate.wait(60))
    try:
        assert client.get("/api/stores/toy").status_code == 200
        index_jobs = [j for j in client.get("/api/jobs").get_json()["jobs"] if j["kind"] == "index"]
        assert len(index_jobs) == 1 and index_jobs[0]["status"] == "queued", index_jobs
        first = client.get(MATCH)
        assert first.status_code == 202, first.get_json()
        assert first.get_json()["job"]["id"] == index_jobs[0]["id"]
        assert client.get("/explorer?store=toy").status_code == 200  # the page again: the same job, no second
        assert [j["id"] for j in client.get("/api/jobs").get_json()["jobs"] if j["kind"] == "index"] == \
            [index_jobs[0]["id"]]
    finally:
        gate.set()
    assert wait_for_job(client, first.get_json()["job"])["status"] == "done"
    assert client.get(MATCH).status_code == 200
    assert client.get("/api/stores/toy").status_code == 200  # built: nothing more to start
    assert len([j for j in client.get("/api/jobs").get_json()["jobs"] if j["kind"] == "index"]) == 1
