"""The server's registry of models and state stores, loaded lazily and safely across threads.

Two sources of resources:

* the bundled demo: the shipped models (``data.load_model``) and small demo stores built once
  from them with ``lstmvis.extract`` and cached outside the package directory
  (``$LSTMVIS_CACHE``, else ``$XDG_CACHE_HOME/lstmvis``, else ``~/.cache/lstmvis``);
* ``--data DIR``: the user's state stores (``*.h5``) and checkpoints (``*.pt`` with an optional
  ``*.json`` card), every path confined to DIR.

Models are handed out through :meth:`Resources.model`, a context manager that lends each request
its own copy of the model (a small pool), so hooks registered by one request can never record
another request's forward pass.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from data.registry import CheckpointError, read_card

from .validation import ApiError

# Bump when the demo stores' recipe changes, so stale caches are rebuilt.
DEMO_FORMAT = 2


def cache_root() -> Path:
    """Where built demo stores live: never inside the installed package."""
    env = os.environ.get("LSTMVIS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lstmvis"


def confine(root: Path, candidate: str | os.PathLike) -> Path:
    """``candidate`` resolved (symlinks followed) and proven to lie inside ``root``.

    Raises ApiError(403) for anything that escapes: absolute paths elsewhere, ``..``, or
    symlinks pointing outside.
    """
    root = Path(root).resolve()
    p = Path(candidate)
    resolved = (p if p.is_absolute() else root / p).resolve()
    if resolved != root and root not in resolved.parents:
        raise ApiError(403, f"path {str(candidate)!r} is outside the data directory")
    return resolved


# --------------------------------------------------------------------------------------- models

class ModelEntry:
    """One model: loaded on first use, then lent out as private copies from a small pool.

    The loaded object is kept as a template that is never lent: every lent instance is a deep copy
    of it, made while nothing runs on the template (copying a model mid-forward, with a recorder's
    hooks installed, would copy those too).
    """

    def __init__(self, name: str, kind: str, description: str, loader: Callable[[], Any],
                 card: dict | None = None, pool_size: int = 2):
        self.name, self.kind, self.description, self.card = name, kind, description, card or {}
        self.problem = ""  # why the model cannot be used, once loading it failed
        self._loader = loader
        self._pool_size = max(1, pool_size)
        self._lock = threading.Lock()
        self._template: Any = None
        self._made = 0
        self._free: queue.LifoQueue = queue.LifoQueue()

    @property
    def loaded(self) -> bool:
        return self._template is not None

    def _instance(self) -> Any:
        if self.problem:
            raise ApiError(409, f"model {self.name!r} cannot be used: {self.problem}")
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._template is None:
                self._template = self._load()
            if self._made < self._pool_size:
                self._made += 1
                return copy.deepcopy(self._template)
        return self._free.get()  # all copies busy: wait for one

    def _load(self) -> Any:
        """The loaded model; a checkpoint the library refuses (or that breaks it) makes the model unusable,
        with the library's message, instead of failing every request with a 500."""
        try:
            return self._loader()
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
            # CheckpointError is a ValueError; the others: fields of a checkpoint the library did not check
            self.problem = f"loading it failed: {str(exc).strip() or type(exc).__name__}"
            raise ApiError(409, f"model {self.name!r} cannot be used: {self.problem}") from None

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        inst = self._instance()
        try:
            yield inst
        finally:
            self._free.put(inst)

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "loaded": self.loaded, "card": self.card or None, "usable": not self.problem,
                "problem": self.problem}


def read_user_card(path: Path, name: str) -> dict:
    """A model card from ``--data`` (``data.registry.read_card``: JSON checked against the card
    schema); when it cannot be used, a card of the model's name whose description says why (the
    weights may be fine: the model still loads).

    A card that is unreadable, not JSON, nested too deeply to parse, not an object, or with a field
    of the wrong type never stops the server or breaks a page.
    """
    try:
        return read_card(path)
    except (OSError, CheckpointError) as exc:
        problem = str(exc).replace(str(path), path.name)  # the file's name, not where the data directory is
        return {"name": name, "description": f"{path.with_suffix('.pt').name} in --data ({problem})"}


# --------------------------------------------------------------------------------------- stores

@dataclass
class StoreEntry:
    """One state store: opened lazily; a demo store may still be building."""

    name: str
    path: Path
    title: str = ""
    description: str = ""
    model: str | None = None
    status: str = "ready"  # ready | queued | building | error | unavailable
    message: str = ""
    _store: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def open(self):
        if self.status != "ready":
            if self.status in ("queued", "building"):
                raise ApiError(503, f"store {self.name!r} is still being built; try again in a few seconds",
                               retry_after=2)
            raise ApiError(409, f"store {self.name!r} is not available: {self.message}")
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from lstmvis import StateStore
                    self._store = StateStore.open(self.path)
        return self._store

    def info(self, detail: bool = False) -> dict:
        out = {"name": self.name, "title": self.title or self.name, "description": self.description,
               "model": self.model, "status": self.status, "message": self.message}
        if self.status == "ready":
            s = self.open()
            out.update(sources=list(s.sources), n_tokens=int(s.n_tokens), n_sequences=int(s.n_sequences),
                       meta=list(s.meta_names), cells={src: int(s.n_cells(src)) for src in s.sources})
            if detail:
                out["card"] = s.card
                out["char_level"] = all(len(t) <= 1 or (t[0] == "<" and t[-1] == ">") for t in s.vocab)
                out["has_texts"] = bool(s.has_texts)
                out["meta_info"] = {name: _meta_summary(s, name) for name in s.meta_names}
        return out


def _meta_summary(store, name: str, max_values: int = 20) -> dict:
    """Whether a meta track holds categories, and which (at most ``max_values``, from the first 1M tokens)."""
    import numpy as np
    values = store.meta(name, 0, min(store.n_tokens, 1_000_000))
    if values.dtype.kind in "biuf":
        return {"categorical": False, "min": float(values.min()) if len(values) else None,
                "max": float(values.max()) if len(values) else None}
    cats = np.unique(values.astype(str))
    return {"categorical": True, "values": cats[:max_values].tolist(), "more": len(cats) > max_values}


# ----------------------------------------------------------------------------------- demo recipe

@dataclass(frozen=True)
class DemoStore:
    """How one demo store is built: a shipped model over a shipped corpus, states kept as float16."""

    name: str
    model: str
    title: str
    description: str
    corpus: Callable[[Any], tuple[list[str], dict]]  # model -> (texts, {meta track: one array per text})
    kinds: tuple[str, ...] = ("h", "c", "gates")
    sources: tuple[str, ...] | None = None  # only these of the recorded sources (default: all)
    modules: tuple[str, ...] | None = None  # Recorder(modules=...): names or globs, e.g. a transformer's blocks


def _parens_corpus(model) -> tuple[list[str], dict]:
    import data
    seqs = data.parens("test")  # 200 sequences of 200 tokens
    return ["".join(toks) for toks, _ in seqs], {"depth": [d for _, d in seqs]}


def _python_corpus(model, chars: int = 40_000) -> tuple[list[str], dict]:
    import data
    texts, total = [], 0
    for _, src in data.python_source("test"):  # whole test-split files, in name order
        if total >= chars:
            break
        texts.append(src[:chars - total])
        total += len(texts[-1])
    return texts, {}


def _sentiment_corpus(model, n: int = 1000) -> tuple[list[str], dict]:
    import numpy as np

    import data
    texts, labels = data.rotten_tomatoes("test")
    tokenize = model.tokenize
    pairs = [(t, int(y)) for t, y in zip(texts, labels) if tokenize(t)][:n]
    return [t for t, _ in pairs], {"label": [np.full(len(tokenize(t)), np.array(["rotten", "fresh"])[y])
                                             for t, y in pairs]}


DEMO_STORES = [
    DemoStore("parens", "parens-lstm", "Nested parentheses",
              "LSTMVis's own demo: an LSTM language model on the nested-parentheses language; "
              "the 'depth' meta track is the true nesting depth.", _parens_corpus),
    DemoStore("sentiment", "sentiment-lstm", "Movie-review sentences",
              "The biLSTM sentiment classifier over Rotten Tomatoes test sentences; "
              "the 'label' meta track is the sentence's gold label.", _sentiment_corpus, kinds=("h", "c")),
    DemoStore("python-code", "charlm-python", "Python source, character by character",
              "Karpathy-style: a 2-layer char-level LSTM language model over CPython standard-library "
              "test files: look for quote, comment, indentation and bracket cells.", _python_corpus,
              sources=("rnn.l0.h", "rnn.l0.c", "rnn.l1.h", "rnn.l1.c", "rnn.l1.gate_i", "rnn.l1.gate_f",
                       "rnn.l1.gate_o")),
    DemoStore("sentiment-transformer", "sentiment-transformer", "Movie-review sentences, transformer neurons",
              "The transformer sentiment classifier over Rotten Tomatoes test sentences: each encoder layer's "
              "output (encoder.N) and its MLP's ReLU neurons (encoder.N.activation); the 'label' meta track "
              "is the sentence's gold label.", _sentiment_corpus, modules=("encoder.*", "encoder.*.activation")),
]


def _checkpoint_digest(model: str) -> str | None:
    from data.registry import CHECKPOINTS
    path = CHECKPOINTS / f"{model}.pt"
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -------------------------------------------------------------------------------------- registry

class Resources:
    """All models and stores the server knows, with thread-safe lazy loading.

    ``demo_stores``: the demo's recipes (default :data:`DEMO_STORES`); ``demo_names``: only these of them.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
                 demo: bool | None = None, build: str = "background", pool_size: int = 2,
                 progress: bool = True, demo_names: list[str] | None = None,
                 demo_stores: Sequence[DemoStore] = DEMO_STORES):
        if build not in ("background", "sync", "off"):
            raise ValueError(f"build must be 'background', 'sync' or 'off', got {build!r}")
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ValueError(f"--data {data_dir}: not a directory")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self.demo = (self.data_dir is None) if demo is None else demo
        self.pool_size = pool_size
        self.progress = progress
        known = [spec.name for spec in demo_stores]
        unknown = sorted(set(demo_names or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown demo stores {unknown}: the demo has {', '.join(known)}")
        self.demo_specs = [spec for spec in demo_stores if demo_names is None or spec.name in demo_names]
        self.models: dict[str, ModelEntry] = {}
        self.stores: dict[str, StoreEntry] = {}
        self._register_shipped_models()
        if self.data_dir is not None:
            self._register_user_dir(self.data_dir)
        if self.demo:
            self._register_demo_stores()
            if build == "sync":
                self.build_demo()
            elif build == "background":
                threading.Thread(target=self.build_demo, name="demo-build", daemon=True).start()

    # -- models
    def _register_shipped_models(self) -> None:
        import data
        from data.registry import CHECKPOINTS
        for m in data.list_models():
            if not (CHECKPOINTS / f"{m['name']}.pt").is_file():
                continue
            self.models[m["name"]] = ModelEntry(m["name"], m["kind"], m["description"],
                                                functools.partial(data.load_model, m["name"]),
                                                card=m["card"], pool_size=self.pool_size)

    def model_entry(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ApiError(404, f"unknown model {name!r}; loaded models: {known}") from None

    def model(self, name: str):
        """``with resources.model(name) as m:`` -- a copy of the model private to this request."""
        return self.model_entry(name).use()

    # -- stores
    def store_entry(self, name: str) -> StoreEntry:
        try:
            return self.stores[name]
        except KeyError:
            known = ", ".join(sorted(self.stores)) or "none"
            raise ApiError(404, f"unknown store {name!r}; stores: {known}") from None

    def store(self, name: str):
        return self.store_entry(name).open()

    # -- user data directory
    def _register_user_dir(self, root: Path) -> None:
        from data.registry import build_from_checkpoint
        from data import load_checkpoint
        for path in sorted(root.rglob("*")):
            try:
                path = confine(root, path)
            except ApiError:
                continue  # a symlink leading out of the data directory is ignored
            if not path.is_file():
                continue
            name = path.relative_to(root).with_suffix("").as_posix()
            if path.suffix in (".h5", ".hdf5"):
                self.stores[name] = StoreEntry(name, path, title=name, description=f"{path.name} in --data")
                try:
                    self.stores[name].open()
                except Exception as exc:  # a broken file must not keep the others from loading
                    self.stores[name].status, self.stores[name].message = "error", f"cannot open: {exc}"
            elif path.suffix == ".pt":
                card_path = path.with_suffix(".json")
                card = read_user_card(card_path, name) if card_path.is_file() else {"name": name}

                def load(path=path, name=name, card=card):
                    return build_from_checkpoint(load_checkpoint(path), name=name, card=card)
                self.models[name] = ModelEntry(name, card.get("kind", "user model"),
                                               card.get("description", f"{path.name} in --data"),
                                               load, card=card, pool_size=self.pool_size)
        self._link_stores_to_models()

    def _link_stores_to_models(self) -> None:
        """A store made by ``lstmvis.extract`` carries its model's card: find that model by name."""
        by_card_name = {str(m.card.get("name")): key for key, m in self.models.items() if m.card.get("name")}
        for entry in self.stores.values():
            if entry.status != "ready" or entry.model:
                continue
            card = entry.open().card
            name = card.get("model") or card.get("name") if isinstance(card, dict) else None
            if isinstance(name, str):
                entry.model = name if name in self.models else by_card_name.get(name)

    # -- bundled demo
    def _demo_path(self, spec: DemoStore, digest: str) -> Path:
        recipe = f"{DEMO_FORMAT}:{spec.name}:{spec.model}:{spec.kinds}:{spec.sources}:{digest}"
        if spec.modules:
            recipe += f":{spec.modules}"
        key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
        return self.cache_dir / "demo" / f"{spec.name}__{key}.h5"

    def _register_demo_stores(self) -> None:
        for spec in self.demo_specs:
            digest = _checkpoint_digest(spec.model)
            if digest is None:
                entry = StoreEntry(spec.name, Path(), spec.title, spec.description, spec.model,
                                   status="unavailable",
                                   message=f"model {spec.model} is not trained: python -m data.train {spec.model}")
            else:
                path = self._demo_path(spec, digest)
                entry = StoreEntry(spec.name, path, spec.title, spec.description, spec.model,
                                   status="ready" if path.is_file() else "queued")
            self.stores[spec.name] = entry

    def build_demo(self) -> None:
        """Build every queued demo store once (progress bar on stderr); others wait on a file lock."""
        todo = [(s, self.stores[s.name]) for s in self.demo_specs if self.stores[s.name].status == "queued"]
        if not todo:
            return
        from tqdm.auto import tqdm
        (self.cache_dir / "demo").mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / "demo" / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another server process may be building the same stores
            bar = tqdm(todo, desc="lstmvis: building demo stores (once)", unit="store", disable=not self.progress)
            for spec, entry in bar:
                bar.set_postfix_str(spec.name)
                if entry.path.is_file():
                    entry.status = "ready"
                    continue
                entry.status = "building"
                t0 = time.perf_counter()
                try:
                    self._build_one(spec, entry.path)
                except Exception as exc:  # keep serving the other stores; say what failed
                    entry.status, entry.message = "error", f"building failed: {type(exc).__name__}: {exc}"
                    continue
                entry.status = "ready"
                entry.message = f"built in {time.perf_counter() - t0:.1f} s"

    def _build_one(self, spec: DemoStore, path: Path) -> None:
        """Extract the store (atomic: written aside, renamed when complete); match indexes follow on first use."""
        import shutil

        import lstmvis

        for old in path.parent.glob(f"{spec.name}__*"):  # stores of older checkpoints or recipes
            if old.name.split(".")[0] != path.stem:
                shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        with self.model(spec.model) as model:
            texts, meta = spec.corpus(model)
            store = lstmvis.extract(model, texts, path, kinds=spec.kinds, sources=spec.sources, dtype="float16",
                                    progress=False, meta=meta, corpus_name=f"demo:{spec.name}", modules=spec.modules)
        store.close()

    def summary(self) -> dict:
        return {"mode": "demo" if self.demo else "data", "data_dir": str(self.data_dir) if self.data_dir else None,
                "models": [m.info() for m in self.models.values()],
                "stores": [s.info() for s in self.stores.values()]}
