"""Issue 18, points 4 and 9, and the server side of 6: lstmvis.serve(models=, stores=), `lstmvis serve
--models FILE.py`, --data rescanned, user checkpoints that cannot be loaded, stores linked to their model."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from torch import nn

import data
import lstmvis
from textexplain import TextModel
from data.registry import CHECKPOINTS
from server import python_api
from server.models_file import load_models_file
from tests.conftest_server import make_toy_store

ROOT = Path(__file__).resolve().parents[1]


def module_state(module: nn.Module) -> tuple:
    """What serving must never change: weights, mode and every hook of every submodule."""
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    modes = [m.training for m in module.modules()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in module.modules()]
    return weights, modes, hooks


def same_state(a: tuple, b: tuple) -> bool:
    return a[1:] == b[1:] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A classifier, a language model and an image classifier of the user's, and a store of the LM's states."""
    cnn, lm0, img = (data.load_model(n) for n in ("sentiment-cnn", "parens-lstm", "mnist-cnn"))
    cnn = TextModel(cnn.module, cnn.vocab, cnn.labels, embedding=cnn.module.emb, tokenizer=cnn.tokenizer)  # no card
    lm = lstmvis.LanguageModel(lm0.module, lm0.vocab, lm0.tokenizer, name="my-lm", card={"name": "my-lm"})
    folder = tmp_path_factory.mktemp("own")
    store = lstmvis.extract(lm, ["(()(()))", "((()))()"], folder / "parens-states.h5", progress=False)
    toy = make_toy_store(folder / "toy.h5")  # texts for the text-CNN page
    return {"my-cnn": cnn, "my-lm": lm, "my-img": img}, [store, str(toy.path)]


def test_serve_offers_each_kind_on_its_pages_and_stop_frees_the_port(own):
    models, stores = own
    before = {name: module_state(getattr(m, "module", m)) for name, m in models.items()}
    with python_api.serve(models=models, stores=stores, port=0, block=False) as server:
        url = server.url
        status = {m["name"]: m for m in requests.get(url + "api/status", timeout=30).json()["models"]}
        assert [status[n]["kind"] for n in models] == ["classifier", "language-model", "image-classifier"]
        explained = requests.post(url + "api/explain", timeout=60, json={
            "model": "my-cnn", "text": "a fine film", "methods": ["gradient"], "faithfulness": False})
        assert explained.status_code == 200, explained.text
        assert requests.get(url + "textcnn", timeout=60).status_code == 200
        filters = requests.get(url + "api/textcnn/filters", params={"model": "my-cnn", "store": "toy", "k": 2}, timeout=60)
        assert filters.status_code == 200 and filters.json()["filters"], filters.text
        assert "my-cnn" in filters.json()["models"]  # listed because lstmvis.textcnn maps it, with no card saying so
        stores_listed = {s["name"]: s for s in requests.get(url + "api/stores", timeout=30).json()["stores"]}
        assert stores_listed["parens-states"]["model"] == "my-lm"  # the card names it: linked
        cell = requests.post(url + "api/stores/parens-states/cells/0/explain", timeout=60,
                             json={"source": "rnn.l0.c", "position": 5, "method": "gradient"})
        assert cell.status_code == 200 and cell.json()["model"] == "my-lm", cell.text
        image = requests.post(url + "api/images/explain", timeout=60,
                              json={"model": "my-img", "index": 0, "methods": ["gradient"]})
        assert image.status_code == 200, image.text
        assert 'frame-ancestors' in requests.get(url, timeout=30).headers["Content-Security-Policy"]
    assert not server.running
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.socket() as s:  # free again (as the server bound it: SO_REUSEADDR)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    after = {name: module_state(getattr(m, "module", m)) for name, m in models.items()}
    assert all(same_state(before[n], after[n]) for n in models)


def test_the_handle_embeds_the_tool_escaped(own):
    server = python_api.serve(models={}, port=0, block=False)
    try:
        assert f'<iframe src="{server.url}"' in server._repr_html_()
        server.url = 'http://127.0.0.1:1/"><script>alert(1)</script>'
        html = server._repr_html_()
        assert "<script>" not in html and "&quot;&gt;&lt;script&gt;" in html
    finally:
        server.stop()


def test_lstmvis_serve_goes_through_the_entry_point(monkeypatch):
    from lstmvis import serving

    found = [ep for ep in serving.entry_points(group=serving.SERVERS_GROUP) if ep.name == "serve"]
    assert found and found[0].value == "server.python_api:serve"  # pyproject registers it (pip install -e .)
    assert serving.DEFAULT_PORT == __import__("server").DEFAULT_PORT
    monkeypatch.setattr(serving, "entry_points", lambda group: [])
    with pytest.raises(ImportError, match="lstmvis.servers.*install"):
        lstmvis.serve(models={})


def test_lstmvis_serve_starts_the_server(own):
    with lstmvis.serve(models={"my-cnn": own[0]["my-cnn"]}, port=0, block=False) as server:
        names = [m["name"] for m in requests.get(server.url + "api/explain/models", timeout=30).json()["models"]]
    assert "my-cnn" in names


class Broken(nn.Module):
    def forward(self, x):
        return x.sum()  # no (B, classes) logits


@pytest.mark.parametrize("models, stores, message", [
    ([1, 2], None, "models must be a dict"),
    ({"x": "a string"}, None, "is a str.*TextModel"),
    ({"sentiment-lstm": nn.Linear(2, 2)}, None, "taken by a shipped model: choose another name"),
    ({"": nn.Linear(2, 2)}, None, "name '' is not usable"),
    ({"img": Broken()}, None, r"images page feeds it .*\(B, 1, 28, 28\).*TextModel"),
    (None, "states.h5", "stores must be a list"),
    (None, ["nowhere.h5"], "cannot be served"),
])
def test_what_is_handed_in_is_checked_at_the_door(models, stores, message, tmp_path):
    with pytest.raises((TypeError, ValueError), match=message):
        python_api.make_resources(models, stores)


def test_two_stores_of_one_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stores = [make_toy_store(tmp_path / d / "toy.h5").path for d in "ab"]
    with pytest.raises(ValueError, match="two stores are named 'toy'.*rename one"):
        python_api.make_resources(stores=stores)


# ------------------------------------------------------------------------------- --models FILE.py
@pytest.mark.parametrize("source, message", [
    ("x = 1\n", "defines no function models()"),
    ("def models():\n    return [1]\n", "models\\(\\) returned a list; it must return a dict"),
    ("import math\n\ndef models():\n    return {'x': math.nope}\n",
     r"models\(\) failed at line 4 \(return \{'x': math.nope\}\): AttributeError: .*nope"),
    ("raise RuntimeError('boom')\n", r"running it failed at line 1 .*RuntimeError: boom"),
])
def test_a_models_file_that_cannot_be_used_says_why(source, message, tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(source)
    with pytest.raises(ValueError, match=message) as err:
        load_models_file(str(path))
    assert str(path) in str(err.value)


def test_a_missing_models_file_is_named():
    with pytest.raises(FileNotFoundError, match="nowhere.py: no such file"):
        load_models_file("nowhere.py")


def test_lstmvis_serve_models_runs_from_a_folder_with_its_own_data_and_server_modules(tmp_path):
    for name in ("data", "server"):  # the user's own modules, which must never be imported
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py was imported')\n")
    shutil.copy(ROOT / "docs" / "examples" / "models_file.py", tmp_path / "mine.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lstmvis", "serve", "--models", "mine.py", "--port", "0",
                             "--no-browser"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, line + (proc.stderr.read() if proc.poll() is not None else "")
        models = requests.get(found.group(0) + "api/explain/models", timeout=30).json()["models"]
        assert "tiny-gru" in [m["name"] for m in models]
    finally:
        proc.kill()
        proc.wait()


def test_lstmvis_serve_models_errors_exit_2_with_the_message(tmp_path):
    (tmp_path / "mine.py").write_text("def models():\n    return 5\n")
    done = subprocess.run([sys.executable, "-m", "lstmvis", "serve", "--models", "mine.py", "--no-browser"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "models() returned a int" in done.stderr, done.stderr


# ------------------------------------------------------------------------------- --data rescanned
@pytest.fixture
def rescanned(tmp_path, monkeypatch):
    from server import resources
    from server.app import create_app

    monkeypatch.setattr(resources, "RESCAN_SECONDS", 0.0)  # every listing looks again
    return tmp_path, create_app(tmp_path, {"TESTING": True, "DEMO": False, "DEMO_BUILD": "off"}).test_client()


def listed(client) -> tuple[dict, dict]:
    status = client.get("/api/status").get_json()
    return {m["name"]: m for m in status["models"]}, {s["name"]: s for s in status["stores"]}


def test_stores_and_models_added_and_removed_appear_and_disappear(rescanned):
    folder, client = rescanned
    models, stores = listed(client)
    assert "toy" not in stores and "mine" not in models
    make_toy_store(folder / "toy.h5").close()
    (folder / ".toy2.h5.tmp-1-abcd").write_bytes(b"half")  # a writer's temporary file
    (folder / "toy3.h5.partial").write_bytes(b"half")  # an unfinished extraction
    shutil.copy(CHECKPOINTS / "sentiment-cnn.pt", folder / "mine.pt")
    models, stores = listed(client)
    assert set(stores) == {"toy"} and stores["toy"]["status"] == "ready"
    assert models["mine"]["usable"] and models["mine"]["kind"] == "classifier"
    assert [s["name"] for s in client.get("/api/stores").get_json()["stores"]] == ["toy"]
    assert client.get("/api/stores/toy/tokens?start=0&stop=3").status_code == 200
    (folder / "toy.h5").unlink()
    (folder / "mine.pt").unlink()
    models, stores = listed(client)
    assert "toy" not in stores and "mine" not in models
    assert client.get("/api/stores/toy/tokens?start=0&stop=3").status_code == 404


def test_a_store_in_data_links_to_a_model_its_card_names(rescanned):
    folder, client = rescanned
    shutil.copy(CHECKPOINTS / "sentiment-cnn.pt", folder / "mine.pt")
    toy = make_toy_store(folder / "toy.h5")
    toy.close()
    assert listed(client)[1]["toy"]["model"] is None  # its card names "toy": no such model
    import numpy as np
    named = lstmvis.StateStore.from_arrays(folder / "named.h5", {"rnn.l0.h": np.zeros((3, 2), np.float32)},
                                           tokens=["a", "b", "c"], offsets=[0, 3],
                                           card={"name": "something", "model": "mine"})  # as extract(name=) writes
    named.close()
    assert listed(client)[1]["named"]["model"] == "mine"


@pytest.mark.parametrize("kind", ["pickled-module", "state-dict"])
def test_a_pickled_module_or_bare_state_dict_gets_one_plain_sentence(rescanned, kind):
    folder, client = rescanned
    module = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    torch.save(module if kind == "pickled-module" else module.state_dict(), folder / "mine.pt")
    model = listed(client)[0]["mine"]
    problem = model["problem"]
    assert not model["usable"] and "\x1b" not in problem
    assert problem.count(". ") == 0 and problem.endswith(".") and "\n" not in problem  # one sentence
    assert "--models FILE.py" in problem and "lstmvis.serve(models=...)" in problem and "TextCNN" in problem
    assert ("pickled" if kind == "pickled-module" else "state_dict") in problem
    answer = client.post("/api/explain", json={"model": "mine", "text": "good", "methods": ["gradient"]})
    assert answer.status_code == 409 and problem in answer.get_json()["error"]["message"]
    assert problem in client.get("/").get_data(as_text=True).replace("&#39;", "'").replace("&#x27;", "'")
