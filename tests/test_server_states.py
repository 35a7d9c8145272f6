"""The states API on a toy store with known answers: tokens, states, select, match, search."""
from __future__ import annotations

import numpy as np
import pytest

from conftest_server import TOY_TEXTS, make_toy_store

TOKENS = " ".join(TOY_TEXTS).split()
CAT_SAT = [i for i in range(len(TOKENS) - 1) if TOKENS[i] == "cat" and TOKENS[i + 1] == "sat"]  # [1, 7, 17]
SEQ_STARTS = [0, 6, 14, 20]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("toydata")
    make_toy_store(d / "toy.h5").close()
    make_toy_store(d / "plain.h5", texts=False).close()
    return create_app(d, {"TESTING": True})


@pytest.fixture()
def client(app):
    return app.test_client()


def get_ok(client, url):
    resp = client.get(url)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def get_err(client, url, status=400):
    resp = client.get(url)
    assert resp.status_code == status, (url, resp.status_code, resp.data)
    body = resp.get_json()
    assert body["error"]["status"] == status
    return body["error"]["message"]


def test_stores(client):
    stores = get_ok(client, "/api/stores")["stores"]
    assert [s["name"] for s in stores] == ["plain", "toy"]
    toy = stores[1]
    assert toy["n_tokens"] == len(TOKENS) and toy["n_sequences"] == 3
    assert toy["sources"] == ["rnn.l0.h", "rnn.l0.c", "rnn.l0.gate_f"] and toy["cells"]["rnn.l0.h"] == 4
    assert toy["meta"] == ["label"]
    info = get_ok(client, "/api/stores/toy")
    assert info["card"]["name"] == "toy" and info["char_level"] is False
    assert "toy" in get_err(client, "/api/stores/nope", 404)


def test_tokens_with_sequences_and_meta(client):
    r = get_ok(client, "/api/stores/toy/tokens?start=4&stop=9")
    assert r["tokens"] == TOKENS[4:9]
    assert [(s["index"], s["start"], s["stop"]) for s in r["sequences"]] == [(0, 0, 6), (1, 6, 14)]
    assert r["meta"]["label"] == [0, 0, 1, 1, 1]
    assert get_ok(client, "/api/stores/toy/tokens")["tokens"] == TOKENS  # default: from 0, as many as allowed
    assert "past the end" in get_err(client, "/api/stores/toy/tokens?start=0&stop=999")
    assert "before start" in get_err(client, "/api/stores/toy/tokens?start=5&stop=2")
    assert "past the end" in get_err(client, f"/api/stores/toy/tokens?start={len(TOKENS)}")


def test_states_are_cell_major_and_exact(client):
    from conftest_server import toy_states_by_sequence
    expected = toy_states_by_sequence([t.split() for t in TOY_TEXTS])
    r = get_ok(client, "/api/stores/toy/states?source=rnn.l0.h&start=2&stop=8")
    assert r["cells"] == [0, 1, 2, 3] and r["n_cells"] == 4
    np.testing.assert_allclose(np.array(r["values"]), expected[2:8].T, atol=1e-5)
    r = get_ok(client, "/api/stores/toy/states?source=rnn.l0.c&start=0&stop=3&cells=3,1")
    assert r["cells"] == [1, 3]
    np.testing.assert_allclose(np.array(r["values"]), -expected[0:3][:, [1, 3]].T, atol=1e-5)
    assert "unknown source" in get_err(client, "/api/stores/toy/states?source=nope", 404)
    assert "source" in get_err(client, "/api/stores/toy/states?start=0")
    assert "out of range" in get_err(client, "/api/stores/toy/states?source=rnn.l0.h&cells=0,7")
    assert "cells" in get_err(client, "/api/stores/toy/states?source=rnn.l0.h&cells=a,b")


def test_select_finds_the_planted_cell(client):
    a = CAT_SAT[0]
    r = get_ok(client, f"/api/stores/toy/select?source=rnn.l0.h&start={a}&stop={a + 2}")
    assert r["cells"] == [0]  # cell 1 is off at "sat", cell 2 is on in the padding, cell 3 is never on
    r = get_ok(client, f"/api/stores/toy/select?source=rnn.l0.h&start={a}&stop={a + 1}")
    assert r["cells"] == [0, 1]  # both on at "cat" and off at "the" before it
    r = get_ok(client, f"/api/stores/toy/select?source=rnn.l0.h&start={a}&stop={a + 1}&pad_left=0")
    assert r["cells"] == [0, 1, 2]
    r = get_ok(client, f"/api/stores/toy/select?source=rnn.l0.h&start={a}&stop={a + 2}&threshold=0.95")
    assert r["cells"] == []  # a higher threshold changes the selection
    assert "stop" in get_err(client, "/api/stores/toy/select?source=rnn.l0.h&start=3&stop=3")
    assert "pad_left" in get_err(client, "/api/stores/toy/select?source=rnn.l0.h&start=1&stop=3&pad_left=-1")
    assert "[1, 999)" in get_err(client, "/api/stores/toy/select?source=rnn.l0.h&start=1&stop=999")  # the library's


@pytest.mark.parametrize("store", ["toy", "plain"])
def test_search(client, store):
    r = get_ok(client, f"/api/stores/{store}/search?q=cat%20sat")
    assert [h["position"] for h in r["hits"]] == CAT_SAT and all(h["length"] == 2 for h in r["hits"])
    hit = r["hits"][1]
    assert hit["tokens"][hit["position"] - hit["start"]] == "cat"
    r = get_ok(client, f"/api/stores/{store}/search?q=CAT&case=true")
    assert r["hits"] == []
    r = get_ok(client, f"/api/stores/{store}/search?q=d.g&regex=true")
    assert [h["position"] for h in r["hits"]] == [TOKENS.index("dogs")]
    assert r["hits"][0]["start"] == SEQ_STARTS[2], "context stays inside the hit's sequence"
    r = get_ok(client, f"/api/stores/{store}/search?q=a&limit=2")
    assert len(r["hits"]) == 2 and r["truncated"]
    assert "regular expression" in get_err(client, f"/api/stores/{store}/search?q=(&regex=true")
    assert "q" in get_err(client, f"/api/stores/{store}/search?q=")


def test_match_finds_every_planted_run(client):
    r = get_ok(client, "/api/stores/toy/match?source=rnn.l0.h&cells=0&left=2&right=1")
    hits = r["hits"]
    assert sorted(h["start"] for h in hits) == CAT_SAT
    for h in hits:
        assert h["length"] == 2 and h["intersection"] == 1
        assert h["tokens"][h["start"] - h["context_start"]:h["stop"] - h["context_start"]] == ["cat", "sat"]
        on = dict(zip(range(h["context_start"], h["context_stop"]), h["counts"]))
        assert on[h["start"]] == on[h["start"] + 1] == 1
        seq = max(i for i, a in enumerate(SEQ_STARTS) if a <= h["start"])
        assert SEQ_STARTS[seq] <= h["context_start"] and h["context_stop"] <= SEQ_STARTS[seq + 1]
    assert r["length_histogram"][2] == 3 and r["n_runs"] == 3
    ov = r["overview"]  # one bin per token in a store this small: the count of cell 0 on
    assert ov["bin_size"] == 1 and [i for i, c in enumerate(ov["all_on"]) if c] == sorted(CAT_SAT + [p + 1 for p in CAT_SAT])
    # cells 0 and 1 together: the runs share cell 0 only over "cat sat" (cell 1 is off at "sat")
    r = get_ok(client, "/api/stores/toy/match?source=rnn.l0.h&cells=0,1")
    assert sorted(h["start"] for h in r["hits"]) == CAT_SAT and all(h["intersection"] == 1 for h in r["hits"])
    r = get_ok(client, "/api/stores/toy/match?source=rnn.l0.h&cells=0&top=1")
    assert len(r["hits"]) == 1
    # negated states: the same cell is on negatively
    r = get_ok(client, "/api/stores/toy/match?source=rnn.l0.c&cells=0&sign=negative")
    assert sorted(h["start"] for h in r["hits"]) == CAT_SAT


@pytest.mark.parametrize("query,needle", [
    ("source=rnn.l0.h", "cells"),
    ("source=rnn.l0.h&cells=", "cells"),
    ("source=rnn.l0.h&cells=9", "0..3"),  # the library names the cell ids the source has
    ("source=rnn.l0.h&cells=0&sign=sideways", "sign"),
    ("source=rnn.l0.h&cells=0&top=0", "top"),
    ("source=rnn.l0.h&cells=0&threshold=abc", "threshold"),
    ("source=nope&cells=0", "unknown source"),
])
def test_match_bad_input(client, query, needle):
    status = 404 if "unknown source" in needle else 400
    assert needle in get_err(client, f"/api/stores/toy/match?{query}", status)


def test_select_across_a_sequence_end_is_a_400(client):
    assert "sequence" in get_err(client, "/api/stores/toy/select?source=rnn.l0.h&start=4&stop=8")


def test_select_hints_say_why_a_brush_selects_nothing(client):
    # "sat" alone: cells 0 and 2 are on, but both are on at "cat" before it too, so pad_left=1 drops them
    h = get_ok(client, "/api/stores/toy/select/hints?source=rnn.l0.h&start=2&stop=3&threshold=0.3")
    assert h["cells"] == 0
    assert h["without_padding"]["cells"] == 2
    # cell 0 and cell 2 are on together over "cat sat": brushing that range selects cell 0
    assert h["cover"] == {"start": 1, "stop": 3, "cells": 1}
    assert {x["source"] for x in h["sources"]} == {"rnn.l0.c", "rnn.l0.gate_f"}
    assert [x["threshold"] for x in h["thresholds"]] == [0.15, 0.225, 0.45, 0.6]
    assert all(x["cells"] == 0 for x in h["thresholds"])
