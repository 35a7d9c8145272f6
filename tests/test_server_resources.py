"""The resource registry: private model copies per request, lazy thread-safe loading, demo cache."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn


def test_each_concurrent_request_gets_its_own_model_copy():
    from server.resources import ModelEntry
    loads = []

    def loader():
        loads.append(1)
        time.sleep(0.05)  # a slow load: concurrent first requests must still load only once
        return nn.Linear(2, 2)

    entry = ModelEntry("m", "test", "", loader, pool_size=2)
    seen, inside, barrier = [], [], threading.Barrier(2)

    def borrow():
        with entry.use() as m:
            seen.append(m)
            barrier.wait(timeout=5)  # both hold a model at the same time
            inside.append(1)

    threads = [threading.Thread(target=borrow) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(inside) == 2 and len(loads) == 1
    assert seen[0] is not seen[1], "two requests at once must never share one module (hooks would mix)"
    assert all(torch.equal(seen[0].weight, m.weight) for m in seen), "copies are exact"


def test_pool_is_bounded_and_reused():
    from server.resources import ModelEntry
    entry = ModelEntry("m", "test", "", lambda: nn.Linear(2, 2), pool_size=1)
    with entry.use() as first:
        got = []
        t = threading.Thread(target=lambda: got.append(entry.use().__enter__()))
        t.start()
        t.join(0.2)
        assert t.is_alive() and not got, "with a pool of one, a second borrower waits"
    t.join(5)
    assert got == [first]


def test_unknown_model_and_store_are_404():
    from server.resources import Resources
    from server.validation import ApiError
    res = Resources(None, demo=False, build="off")
    with pytest.raises(ApiError) as e:
        res.model_entry("nope")
    assert e.value.status == 404 and "sentiment-lstm" in e.value.message
    with pytest.raises(ApiError) as e:
        res.store("nope")
    assert e.value.status == 404


def test_cache_lives_outside_the_package(monkeypatch, tmp_path):
    import server
    from server.resources import cache_root
    monkeypatch.setenv("LSTMVIS_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("LSTMVIS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "lstmvis"
    monkeypatch.delenv("XDG_CACHE_HOME")
    root = cache_root()
    assert root == Path.home() / ".cache" / "lstmvis"
    assert Path(server.__file__).resolve().parent not in root.resolve().parents


def test_demo_store_of_an_untrained_model_is_unavailable(tmp_path):
    from server.resources import DemoStore, Resources
    from server.validation import ApiError
    spec = DemoStore("ghost", "ghost-lstm", "Ghost", "never trained", lambda model: ([], {}))
    res = Resources(None, cache_dir=tmp_path, build="sync", progress=False, demo_stores=[spec])
    assert list(res.stores) == ["ghost"]
    entry = res.store_entry("ghost")
    assert entry.status == "unavailable" and "python -m data.train ghost-lstm" in entry.message
    with pytest.raises(ApiError) as e:
        entry.open()
    assert e.value.status == 409
