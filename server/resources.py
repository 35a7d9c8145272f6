"""The server's registry of models and state stores, loaded lazily and safely across threads.

Two sources of resources:

* the bundled demo: the shipped models (``data.load_model``) and small demo stores built once
  from them with ``lstmvis.extract`` and cached outside the package directory
  (``$LSTMVIS_CACHE``, else ``$XDG_CACHE_HOME/lstmvis``, else ``~/.cache/lstmvis``);
* ``--data DIR``: the user's state stores (``*.h5``, ``*.zarr``) and checkpoints (``*.pt`` with an
  optional ``*.json`` card), every path confined to DIR, rescanned while serving
  (:meth:`Resources.refresh`); DIR may be an fsspec URL (``s3://bucket/runs``: Zarr stores only,
  :class:`DataLocation`);
* Python objects handed to ``lstmvis.serve(models=..., stores=...)`` (``server.python_api``).

Models are handed out through :meth:`Resources.model`, a context manager that lends each request
its own copy of the model (a small pool), so hooks registered by one request can never record
another request's forward pass.
"""
from __future__ import annotations

import atexit
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
from typing import Any, Callable, Iterator, Mapping, Sequence

from data.registry import ANSI_CODES, CheckpointError, read_card

from .validation import ApiError

# Bump when the demo stores' recipe changes, so stale caches are rebuilt.
DEMO_FORMAT = 3  # 3: the card records the model's tokenization
RESCAN_SECONDS = 1.0  # --data is looked at again at most this often, on listing requests
MODEL_SUFFIXES = (".pt",)
STORE_SUFFIXES = (".h5", ".hdf5", ".zarr")
MAX_DEPTH = 16  # folders below --data that a scan goes into


def plain(message: str) -> str:
    """A message without terminal colour codes (torch colours some of its own)."""
    return ANSI_CODES.sub("", message)


def kind_of(model: Any) -> str:
    """The kind of a loaded model: ``classifier`` (a TextModel), ``language-model`` (a LanguageModel),
    ``image-classifier`` (any other ``nn.Module``)."""
    from textexplain import TextModel
    from textexplain.language_model import LanguageModel
    if isinstance(model, TextModel):
        return "classifier"
    if isinstance(model, LanguageModel):
        return "language-model"
    return "image-classifier"


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


class DataLocation:
    """Where ``--data`` lives: a local folder or an fsspec URL (``s3://bucket/runs``), and what it holds.

    :meth:`files` lists the state stores (HDF5 files, Zarr folders) and, in a local folder, the
    checkpoints, each with a cheap signature that changes when its content does (a ``stat``, or the
    Zarr manifest's; on object storage one listing per folder and one ``HEAD`` per Zarr store). What
    is listed lies inside the location: symlinks leading out of a local folder are skipped, and on
    object storage only keys under the location's own prefix are (never another prefix or bucket;
    a location with a ``..`` part is refused). Zarr folders and index folders are not descended into.
    """

    def __init__(self, where: str | os.PathLike):
        from lstmvis.backend import is_url

        self.url = str(where).rstrip("/") if is_url(where) else None
        if self.url is None:
            self.fs, self.root = None, Path(where).expanduser().resolve()
            if not self.root.is_dir():
                raise ValueError(f"--data {where}: no such directory")
            return
        if ".." in self.url.split("://", 1)[1].split("/"):
            raise ValueError(f"--data {where}: a data location may not contain '..'")
        import fsspec
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
            self.root = self.root.rstrip("/")
            found = self.fs.isdir(self.root)
        except (ImportError, ValueError, OSError) as exc:  # an unknown protocol, its package missing, no access
            raise ValueError(f"--data {where}: cannot be read ({type(exc).__name__}: {plain(str(exc))})") from None
        if not found:
            raise ValueError(f"--data {where}: no such folder or prefix")

    @property
    def remote(self) -> bool:
        return self.url is not None

    def __str__(self) -> str:
        return self.url or str(self.root)

    def files(self) -> dict[str, tuple[str | Path, tuple]]:
        """``{path relative to the location: (address to open, signature)}`` of every store and checkpoint."""
        return self._remote_files() if self.remote else self._local_files()

    def _local_files(self) -> dict[str, tuple[str | Path, tuple]]:
        found: dict[str, tuple[str | Path, tuple]] = {}
        for folder, dirs, names in os.walk(self.root):
            depth = len(Path(folder).relative_to(self.root).parts)
            stores = [d for d in dirs if d.endswith(".zarr")]
            dirs[:] = [] if depth >= MAX_DEPTH else sorted(d for d in dirs if not d.endswith((".zarr", ".index")))
            for name in sorted(stores + names):
                if Path(name).suffix not in MODEL_SUFFIXES + STORE_SUFFIXES:
                    continue
                try:
                    path = confine(self.root, Path(folder) / name)
                    signature = _local_signature(path)
                except (ApiError, OSError):
                    continue  # a symlink leading out of the data directory, or a file gone meanwhile
                if signature is not None:
                    found[path.relative_to(self.root).as_posix()] = (path, signature)
        return found

    def _remote_files(self) -> dict[str, tuple[str | Path, tuple]]:
        self.fs.invalidate_cache()  # listings are cached by the filesystem: read them again
        found: dict[str, tuple[str | Path, tuple]] = {}
        todo = [(self.root, 0)]
        while todo:
            folder, depth = todo.pop()
            for info in self.fs.ls(folder, detail=True):
                key = str(info["name"]).rstrip("/")
                rel = key[len(self.root) + 1:] if key.startswith(self.root + "/") else ""
                if not rel or ".." in rel.split("/"):
                    continue  # never a key outside the location's prefix
                if info.get("type") == "directory":
                    if rel.endswith(".zarr"):
                        found[rel] = (f"{self.url}/{rel}", self._manifest_signature(key))
                    elif depth < MAX_DEPTH and not rel.endswith(".index"):
                        todo.append((key, depth + 1))
                elif Path(rel).suffix in STORE_SUFFIXES:  # an HDF5 file: listed, to say it needs converting
                    found[rel] = (f"{self.url}/{rel}", (info.get("size"), _version_of(info)))
        return found

    def _manifest_signature(self, key: str) -> tuple:
        from lstmvis.zarr_backend import MANIFEST
        try:
            info = self.fs.info(f"{key}/{MANIFEST}")
        except FileNotFoundError:
            return ("no manifest",)  # still being written (or crashed): read again once it is complete
        return (info.get("size"), _version_of(info))


def _version_of(info: dict) -> str:
    """What changes when an object is written again: its ETag, else its modification time."""
    return str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or info.get("created") or "")


def _local_signature(path: Path) -> tuple | None:
    """``(mtime, size)`` of a file (with its ``.json`` card's for a checkpoint), of a Zarr folder's
    manifest; None for what is not a store or checkpoint."""
    if path.suffix == ".zarr":
        if not path.is_dir():
            return None
        from lstmvis.zarr_backend import MANIFEST
        manifest = path / MANIFEST
        if not manifest.is_file():
            return ("no manifest",)
        st = manifest.stat()
        return (st.st_mtime_ns, st.st_size)
    if not path.is_file():
        return None
    st = path.stat()
    signature: tuple = (st.st_mtime_ns, st.st_size)
    card = path.with_suffix(".json")
    if path.suffix in MODEL_SUFFIXES and card.is_file():
        cst = card.stat()
        signature += (cst.st_mtime_ns, cst.st_size)
    return signature


def entry_names(paths) -> dict[str, str]:
    """``{relative path: name}``: the path without its suffix (``runs/a.h5`` is ``runs/a``); where two
    files would get one name (``a.h5`` and ``a.zarr``), each keeps its suffix."""
    stems: dict[str, list[str]] = {}
    for rel in paths:
        stems.setdefault(Path(rel).with_suffix("").as_posix(), []).append(rel)
    return {rel: (stem if len(rels) == 1 else rel) for stem, rels in stems.items() for rel in rels}


# --------------------------------------------------------------------------------------- models

class ModelEntry:
    """One model: loaded on first use, then lent out as private copies from a small pool.

    The loaded object is kept as a template that is never lent: every lent instance is a deep copy
    of it, made while nothing runs on the template (copying a model mid-forward, with a recorder's
    hooks installed, would copy those too).
    """

    def __init__(self, name: str, kind: str, description: str, loader: Callable[[], Any],
                 card: dict | None = None, pool_size: int = 2, problem: str = ""):
        self.name, self.kind, self.description, self.card = name, kind, description, card or {}
        self.problem = plain(problem)  # why the model cannot be used (known up front, or once loading failed)
        self._loader = loader
        self._pool_size = max(1, pool_size)
        self._lock = threading.Lock()
        self._template: Any = None
        self._made = 0
        self._free: queue.LifoQueue = queue.LifoQueue()

    @classmethod
    def of(cls, name: str, model: Any, description: str, card: dict | None = None,
           pool_size: int = 2) -> "ModelEntry":
        """An entry for a model already loaded: ``model`` is the template (copied for every loan, never lent)."""
        entry = cls(name, kind_of(model), description, lambda: model, card=card, pool_size=pool_size)
        entry._template = model
        return entry

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
            self.problem = plain(f"loading it failed: {str(exc).strip() or type(exc).__name__}")
            raise ApiError(409, f"model {self.name!r} cannot be used: {self.problem}") from None

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        inst = self._instance()
        try:
            yield inst
        finally:
            self._free.put(inst)

    @property
    def tokenization(self) -> str | None:
        """How the model cuts a text (``TextModel.tokenization``), once loaded; ``None`` before, or for an image model."""
        return getattr(self._template, "tokenization", None) if self.loaded else None

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "loaded": self.loaded, "card": self.card or None, "usable": not self.problem,
                "problem": self.problem, "tokenization": self.tokenization}


def user_checkpoint_problem(path: Path, exc: Exception) -> str:
    """Why a ``.pt`` in ``--data`` cannot be served, in one plain sentence that says what can be loaded
    and how a model of one's own class is served instead."""
    from data.architectures import ARCHITECTURES

    message = plain(str(exc).splitlines()[0] if str(exc) else type(exc).__name__).replace(str(path), path.name)
    if "Weights only load failed" in message:
        what = ("is not a safe checkpoint: it holds pickled Python objects (a module saved whole with "
                "torch.save(model)?), which --data never unpickles")
    elif "needs the keys" in message:
        what = ("is not a checkpoint of this tool: it holds no 'arch' and 'config' beside its weights (a bare "
                "state_dict?)" if _is_bare_state_dict(path) else "is not a checkpoint of this tool")
    elif message.startswith("unknown architecture"):
        what = f"names an {message.split(':')[0]}"
    else:
        return f"loading it failed: {message}"
    known = ", ".join(sorted(ARCHITECTURES))
    return (f"{path.name} {what}; --data loads checkpoints written by data.registry.save_checkpoint for one of "
            f"the architectures {known} (with an optional .json model card), and a model of your own class is "
            f"served with `lstmvis serve --models FILE.py` or `lstmvis.serve(models=...)`.")


def _is_bare_state_dict(path: Path) -> bool:
    """Whether ``path`` holds only a mapping of names to tensors (read with ``weights_only=True``)."""
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 -- any failure: it is not one
        return False
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


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
        return {"name": name, "description": plain(f"{path.with_suffix('.pt').name} in --data ({problem})")}


# --------------------------------------------------------------------------------------- stores

@dataclass
class StoreEntry:
    """One state store: opened lazily; a demo store may still be building."""

    name: str
    path: Path | str  # a local path or an fsspec URL (a Zarr store on object storage)
    title: str = ""
    description: str = ""
    model: str | None = None
    status: str = "ready"  # ready | queued | building | error | unavailable
    message: str = ""
    fixed_model: bool = False  # the model is known from the recipe (demo stores), not looked up from the card
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

    def close(self) -> None:
        """Close the open file (the store was removed from --data or replaced)."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def info(self, detail: bool = False) -> dict:
        out = {"name": self.name, "title": self.title or self.name, "description": self.description,
               "model": self.model, "status": self.status, "message": self.message}
        if self.status == "ready":
            s = self.open()
            out.update(sources=list(s.sources), n_tokens=int(s.n_tokens), n_sequences=int(s.n_sequences),
                       meta=list(s.meta_names), cells={src: int(s.n_cells(src)) for src in s.sources},
                       tokenization=s.tokenization, has_texts=bool(s.has_texts))
            if detail:
                out["card"] = s.card
                out["char_level"] = s.tokenization == "char"  # the one rule: StateStore.tokenization
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
    ``models`` and ``stores``: entries made from the user's Python objects (``server.python_api``), kept
    under their names whatever ``--data`` holds.
    """

    def __init__(self, data_dir: str | os.PathLike | DataLocation | None = None, *, cache_dir: str | os.PathLike | None = None,
                 demo: bool | None = None, build: str = "background", pool_size: int = 2,
                 progress: bool = True, demo_names: list[str] | None = None,
                 demo_stores: Sequence[DemoStore] = DEMO_STORES, models: Mapping[str, ModelEntry] | None = None,
                 stores: Mapping[str, StoreEntry] | None = None):
        if build not in ("background", "sync", "off"):
            raise ValueError(f"build must be 'background', 'sync' or 'off', got {build!r}")
        self.data_dir = data_dir if isinstance(data_dir, DataLocation) or data_dir is None else DataLocation(data_dir)
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
        self._own_models, self._own_stores = dict(models or {}), dict(stores or {})
        self._scanned: dict[str, tuple] = {}  # --data file (relative path) -> (signature, name, entry)
        self._scanned_at = -float("inf")
        self._scan_lock = threading.Lock()
        self._stopping = threading.Event()  # set at the interpreter's exit: the demo build stops between stores
        self._register_shipped_models()
        if self.demo:
            self._register_demo_stores()
        self.models.update(self._own_models)
        self.stores.update(self._own_stores)
        if self.data_dir is not None:
            self._scan_user_dir()
        else:
            self._link_stores_to_models()
        if self.demo:
            if build == "sync":
                self.build_demo()
            elif build == "background":
                self._start_demo_build()

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
        if name not in self.models:
            self.refresh()  # added to --data since the last look?
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
        if name not in self.stores:
            self.refresh()
        try:
            return self.stores[name]
        except KeyError:
            known = ", ".join(sorted(self.stores)) or "none"
            raise ApiError(404, f"unknown store {name!r}; stores: {known}") from None

    def store(self, name: str):
        return self.store_entry(name).open()

    # -- user data directory
    def refresh(self) -> None:
        """Look at ``--data`` again (at most every :data:`RESCAN_SECONDS`, from listing requests): stores
        and checkpoints added since appear, removed ones disappear, changed ones are read again.

        Cheap when nothing changed: one ``stat`` per file. A store appears once its writer finished
        (``StoreWriter`` writes aside and renames into place; a store still being copied in does not
        open and is read again when it changes). The registries are replaced, never changed in place,
        so a request going through the old ones is not disturbed.
        """
        if self.data_dir is None or time.monotonic() - self._scanned_at < RESCAN_SECONDS:
            return
        if not self._scan_lock.acquire(blocking=False):
            return  # another request is scanning
        try:
            self._scan_user_dir()
        finally:
            self._scan_lock.release()

    def _scan_user_dir(self) -> None:
        """Register what is new or changed in ``--data`` and drop what is gone (see :meth:`refresh`)."""
        try:
            found = self.data_dir.files()
        except OSError:  # the location cannot be listed now (object storage unreachable): keep what is known
            self._scanned_at = time.monotonic()
            return
        names = entry_names(found)
        models, stores = dict(self.models), dict(self.stores)
        for rel in set(self._scanned) - set(found):  # removed files
            name, entry = self._scanned.pop(rel)[1:]
            target = stores if Path(rel).suffix in STORE_SUFFIXES else models
            if target.get(name) is entry:
                del target[name]
                if isinstance(entry, StoreEntry):
                    entry.close()
        for rel, (path, signature) in found.items():
            known, name = self._scanned.get(rel), names[rel]
            if known is not None and known[0] == signature and known[1] == name:
                continue
            if known is not None and known[1] != name:  # renamed: a file of the same stem came or went
                target = stores if Path(rel).suffix in STORE_SUFFIXES else models
                if target.get(known[1]) is known[2]:
                    del target[known[1]]
                    if isinstance(known[2], StoreEntry):
                        known[2].close()
            if Path(rel).suffix in STORE_SUFFIXES:
                if name in self._own_stores:
                    continue  # a store handed to lstmvis.serve has this name
                entry = self._user_store_entry(path, name)
                old = stores.get(name)
                stores[name] = entry
                if isinstance(old, StoreEntry) and old is not entry:
                    old.close()
            else:
                if name in self._own_models:
                    continue  # a model handed to lstmvis.serve has this name
                entry = self._user_checkpoint_entry(path, name)
                models[name] = entry
            self._scanned[rel] = (signature, name, entry)
        self.models, self.stores = models, stores
        self._link_stores_to_models()
        self._scanned_at = time.monotonic()

    @staticmethod
    def _user_store_entry(path: Path | str, name: str) -> StoreEntry:
        file = str(path).rstrip("/").rsplit("/", 1)[-1]
        entry = StoreEntry(name, path, title=name, description=f"{file} in --data")
        if isinstance(path, str) and not file.endswith(".zarr"):
            entry.status, entry.message = "error", (f"an HDF5 store on object storage is not read in place: convert "
                                                    f"it (lstmvis convert {file} {Path(file).stem}.zarr) and put "
                                                    "the Zarr store there instead")
            return entry
        try:
            entry.open()
        except Exception as exc:  # a broken or unfinished file must not keep the others from loading
            entry.status, entry.message = "error", plain(f"cannot open: {exc}".replace(str(path), file))
        return entry

    def _user_checkpoint_entry(self, path: Path, name: str) -> ModelEntry:
        """A checkpoint from ``--data``, loaded now through the library's safe loader
        (``data.registry``, ``weights_only=True``), so the listing says at once whether it can be used."""
        from data import load_checkpoint
        from data.registry import build_from_checkpoint

        card_path = path.with_suffix(".json")
        card = read_user_card(card_path, name) if card_path.is_file() else {"name": name}
        description = card.get("description") or f"{path.name} in --data"
        try:
            model = build_from_checkpoint(load_checkpoint(path), name=name, card=card)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, RuntimeError) as exc:
            return ModelEntry(name, card.get("kind") or "user model", description, lambda: None, card=card,
                              pool_size=self.pool_size, problem=user_checkpoint_problem(path, exc))
        return ModelEntry.of(name, model, description, card=card, pool_size=self.pool_size)

    def _link_stores_to_models(self) -> None:
        """A store whose card names a model that is loaded links to it: ``card["model"]`` (written by
        ``lstmvis.extract(..., name=...)``), else the card's ``name`` (``extract`` copies the model's
        card), matched against model names, their cards' names and the models' own ``name``."""
        by_name: dict[str, str] = {}
        for key, m in self.models.items():
            for alias in (m.card.get("name"), getattr(m._template, "name", None) if m.loaded else None):
                if isinstance(alias, str) and alias:
                    by_name.setdefault(alias, key)
        for entry in self.stores.values():
            if entry.status != "ready" or entry.fixed_model:
                continue
            try:
                card = entry.open().card
            except Exception:  # noqa: BLE001 -- unreadable now: the store's own requests say why
                continue
            names = [card.get("model"), card.get("name")] if isinstance(card, dict) else []
            entry.model = next((n if n in self.models else by_name[n] for n in names
                                if isinstance(n, str) and (n in self.models or n in by_name)), None)

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
                                   status="unavailable", fixed_model=True,
                                   message=f"model {spec.model} is not trained: python -m data.train {spec.model}")
            else:
                path = self._demo_path(spec, digest)
                entry = StoreEntry(spec.name, path, spec.title, spec.description, spec.model,
                                   status="ready" if path.is_file() else "queued", fixed_model=True)
            self.stores[spec.name] = entry

    def _start_demo_build(self) -> None:
        """Build the demo stores on a background thread that the interpreter's exit stops between
        stores and waits for (a thread killed inside a torch call aborts the process)."""
        thread = threading.Thread(target=self.build_demo, name="demo-build", daemon=True)

        def stop() -> None:
            self._stopping.set()
            thread.join(timeout=120)
        atexit.register(stop)
        thread.start()

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
                if self._stopping.is_set():
                    break
                bar.set_postfix_str(spec.name)
                if entry.path.is_file():
                    entry.status = "ready"
                    continue
                entry.status = "building"
                t0 = time.perf_counter()
                try:
                    self._build_one(spec, entry.path)
                except Exception as exc:  # keep serving the other stores; say what failed
                    entry.status, entry.message = "error", plain(f"building failed: {type(exc).__name__}: {exc}")
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
        """Every model and store (``--data`` looked at again first: :meth:`refresh`)."""
        self.refresh()
        return {"mode": "demo" if self.demo else "data", "data_dir": str(self.data_dir) if self.data_dir else None,
                "models": [m.info() for m in self.models.values()],
                "stores": [s.info() for s in self.stores.values()]}
