"""Helpers for the server tests: a toy store with known answers, a live server in a thread,
and the bundled demo built once per test session into the repository's .cache folder."""
from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Demo stores for tests are cached inside the repository's (git-ignored) .cache folder.
TEST_CACHE = REPO / ".cache" / "lstmvis-test"

# Three sequences; "cat sat" occurs three times.
TOY_TEXTS = ["the cat sat on the mat", "a cat sat here and a cat ran", "dogs sat the cat sat down"]


def toy_states(tokens: list[str]) -> np.ndarray:
    """Four cells with known on/off patterns (threshold 0.3):

    * cell 0 is on exactly over each "cat sat" (both tokens), off elsewhere;
    * cell 1 is on at every "cat", off elsewhere;
    * cell 2 is always on (so a selection with left padding never includes it);
    * cell 3 is always off.
    """
    n = len(tokens)
    x = np.zeros((n, 4), dtype=np.float32)
    x[:, 0] = -0.5
    for i, t in enumerate(tokens):
        if t == "cat":
            x[i, 1] = 0.8
            if i + 1 < n and tokens[i + 1] == "sat":
                x[i, 0] = x[i + 1, 0] = 0.9
    x[:, 2] = 0.6
    x[:, 3] = 0.1
    return x


def make_toy_store(path: Path, texts: bool = True):
    from lstmvis import StateStore

    seqs = [t.split() for t in TOY_TEXTS]
    tokens = [t for s in seqs for t in s]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    states = toy_states_by_sequence(seqs)
    label = np.concatenate([np.full(len(s), i % 2, dtype=np.int64) for i, s in enumerate(seqs)])
    gate = np.tile(np.array([0.95, 0.05, 0.5, 0.05], dtype=np.float32), (len(tokens), 1))
    gate[1::2, 3] = 0.95  # cell 3 alternates: saturated low on half the steps, high on the other half
    return StateStore.from_arrays(path, {"rnn.l0.h": states, "rnn.l0.c": -states, "rnn.l0.gate_f": gate},
                                  tokens=tokens, offsets=offsets,
                                  meta={"label": label}, card={"name": "toy"},
                                  texts=TOY_TEXTS if texts else None)


REVIEWS = ["A gorgeous, witty film.", "The plot is a bore and far too long.", "Not good at all.",
           "An intimate, moving portrait of grief.", "Loud and boring from start to finish."]


def make_review_store(folder: Path) -> Path:
    """``folder/reviews.h5``: the five REVIEWS as sentiment-cnn tokenizes them (texts and spans kept, one
    dummy source): the corpus the text-CNN views run the model over."""
    import data
    from lstmvis import StateStore

    model = data.load_model("sentiment-cnn")
    toks = [model.tokenize(t) for t in REVIEWS]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in toks])])
    spans = np.concatenate([np.asarray(model.token_spans(t)) for t in REVIEWS])
    StateStore.from_arrays(folder / "reviews.h5", {"x": np.zeros((offsets[-1], 1), np.float32)},
                           tokens=[t for ts in toks for t in ts], offsets=offsets, texts=REVIEWS, spans=spans).close()
    return folder / "reviews.h5"


def toy_states_by_sequence(seqs: list[list[str]]) -> np.ndarray:
    return np.concatenate([toy_states(s) for s in seqs])


@contextlib.contextmanager
def live_server(app, **server_options):
    """Serve ``app`` on 127.0.0.1 on a free port in a background thread; yields the base URL.
    ``server_options``: keyword arguments of ``server.serving.make_server``."""
    import logging

    from server.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in test output
    srv = make_server(app, "127.0.0.1", 0, **server_options)
    thread = threading.Thread(target=srv.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


_demo_lock = threading.Lock()
_demos: dict = {}


def run_job(client, path: str, body: dict, timeout: float = 180.0) -> dict:
    """POST a background job and poll it until it is done or failed; returns the final job."""
    resp = client.post(path, json=body)
    assert resp.status_code == 202, resp.get_json()
    return wait_for_job(client, resp.get_json(), timeout)


def wait_for_job(client, job: dict, timeout: float = 180.0) -> dict:
    """Poll a job (a dict with ``id`` and ``status``) until it is done or failed; returns the final job."""
    import time

    deadline = time.monotonic() + timeout
    while job["status"] not in ("done", "error"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").get_json()
    return job


def alone_and_together(call, bodies: list, threads: int = 8) -> list[tuple]:
    """``(concurrent answer, sequential answer)`` pairs: each body once alone, then every body twice
    from ``threads`` threads at once (requests sharing one model)."""
    from concurrent.futures import ThreadPoolExecutor

    alone = [call(b) for b in bodies]
    with ThreadPoolExecutor(threads) as pool:
        together = list(pool.map(call, bodies * 2))
    return list(zip(together, alone * 2))


TIMEOUT_MS = 90_000  # browser waits: the CI machine is shared, model calls can take many times longer than alone


class Watched:
    """A browser page that records console errors, page errors, failed requests and HTTP errors."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))

    def close(self):
        self.context.close()
        assert not self.problems, self.problems


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (registered in sys.modules under its name)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def demo_resources(*names: str):
    """The bundled demo's Resources (all stores, or only ``names``), built once into TEST_CACHE."""
    from server.resources import Resources

    key = tuple(sorted(names))
    with _demo_lock:
        if key not in _demos:
            _demos[key] = Resources(None, cache_dir=TEST_CACHE, build="sync", progress=False,
                                    demo_names=list(names) or None)
        return _demos[key]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"


def shot(page, name: str, docs: bool = False) -> None:
    """A full-page screenshot under test-artifacts/screenshots; ``docs=True`` also refreshes the copy the
    README shows (docs/screenshots), so it always shows the current pages and models."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    if docs:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / name)
