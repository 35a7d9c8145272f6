"""The app's caches: values built once per key (also under concurrent first requests), nothing kept
from a failed build, and one set of caches per app, so two apps in one process never share state."""
from __future__ import annotations

import threading

import pytest

from conftest_server import make_toy_store


def test_a_value_is_built_once_and_a_failed_build_keeps_nothing():
    from server.caches import BuiltOnce

    cache, builds = BuiltOnce(), []

    def build():
        builds.append(1)
        return len(builds)

    assert cache.get("a", build) == 1 and cache.get("a", build) == 1 and len(builds) == 1

    def fail():
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        cache.get("b", fail)
    assert cache.get("b", build) == 2, "the failed build left nothing behind"
    assert len(cache) == 2


def test_beyond_max_entries_the_cache_starts_afresh():
    from server.caches import BuiltOnce

    cache = BuiltOnce(max_entries=2)
    for key in "abc":
        cache.get(key, lambda key=key: key.upper())
    assert len(cache) == 1 and cache.get("c", lambda: "rebuilt") == "C"
    assert cache.get("a", lambda: "rebuilt") == "rebuilt"


def test_concurrent_first_requests_wait_for_one_build():
    from server.caches import BuiltOnce

    cache, builds, building, release = BuiltOnce(), [], threading.Event(), threading.Event()
    n = 8
    start = threading.Barrier(n + 1)

    def build():
        builds.append(1)
        building.set()
        assert release.wait(10)
        return object()

    got = []

    def request():
        start.wait(10)
        got.append(cache.get("key", build))

    threads = [threading.Thread(target=request) for _ in range(n)]
    for t in threads:
        t.start()
    start.wait(10)  # every thread is about to ask for the key while its first build is under way
    assert building.wait(10)
    release.set()
    for t in threads:
        t.join(10)
    assert len(builds) == 1 and len(got) == n and all(v is got[0] for v in got)


def test_two_apps_in_one_process_share_no_cache_and_no_job_runner(tmp_path):
    from server.app import create_app
    from server.context import caches
    from server.jobs import jobs

    make_toy_store(tmp_path / "toy.h5").close()
    first = create_app(tmp_path, {"TESTING": True})
    second = create_app(None, {"TESTING": True, "RESOURCES": first.extensions["lstmvis"]})  # the same stores
    for app in (first, second):
        resp = app.test_client().get("/api/stores/toy/tokens?start=0&stop=3")
        assert resp.status_code == 200
        assert app.test_client().get("/api/stores/toy/search?q=cat").status_code == 200
    with first.app_context():
        mine, my_jobs = caches(), jobs()
    with second.app_context():
        theirs, their_jobs = caches(), jobs()
    assert mine is not theirs and my_jobs is not their_jobs
    assert len(mine.surfaces) == len(theirs.surfaces) == 1
    assert len(mine.search_indexes) == len(theirs.search_indexes) == 1
    assert mine.surfaces.get((0, ""), lambda: "only mine") == "only mine"
    assert theirs.surfaces.get((0, ""), lambda: "theirs") == "theirs"
