"""``lstmvis.serve``: the browser tool over the user's own Python objects (models and state stores).

``lstmvis`` reaches this module only through the entry point ``serve`` of the group
``lstmvis.servers`` (``lstmvis.serving``), so the library never imports the server. Everything handed
in is checked here, at the door, with messages that name the fix; what passes becomes the entries of
a :class:`~server.resources.Resources` beside the shipped models (and ``--data``, when given).

The user's objects are never changed: each model is copied once (``copy.deepcopy``) when it is handed
in, that copy is put in eval mode and is the template every request's own copy is taken from, so
later training in the user's session does not reach the server, and nothing the server does (hooks,
modes, gradients) reaches the user's model.
"""
from __future__ import annotations

import copy
import html
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from . import DEFAULT_PORT
from .resources import DataLocation, plain, ModelEntry, Resources, StoreEntry, entry_names, kind_of

REQUEST_LOG = logging.getLogger("lstmvis.server")  # lstmvis.serve's request log: silent unless configured
REQUEST_LOG.addHandler(logging.NullHandler())
SCHEDULER_TIMEOUT = "20s"  # to connect to a Dask scheduler
MAX_NAME = 200  # the requests' limit on a model name
IMAGE_SIDE = 28  # the images page feeds MNIST-sized grey images (server.image_api)
# Notebook front ends that may show the tool in an iframe (``ServerHandle._repr_html_``): Jupyter on this
# machine and VS Code's notebook webviews. Every other page is still refused framing. (No IPv6 literal:
# CSP's host-source grammar has none, and Chromium reports "http://[::1]:*" as an error on every page.)
EMBED_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "vscode-webview:",
                 "https://*.vscode-cdn.net")
FIX_KINDS = ("hand in a text classifier as textexplain.TextModel(module, vocab, labels, embedding=...), a language "
             "model as lstmvis.LanguageModel(module, vocab, tokenizer), an image classifier as the nn.Module itself")


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"{what} name {name!r} is not usable: give a printable string of 1 to {MAX_NAME} characters")


def _snapshot(name: str, model: Any) -> Any:
    """The server's own copy of ``model``, in eval mode (the user's object stays as it is)."""
    try:
        snapshot = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 -- anything a user's object does in __deepcopy__
        raise TypeError(f"model {name!r} cannot be copied with copy.deepcopy ({type(exc).__name__}: {exc}): the "
                        "server serves a copy and lends every request one of its own; keep what cannot be copied "
                        "(open files, locks, clients) out of the model") from None
    module = snapshot if isinstance(snapshot, nn.Module) else getattr(snapshot, "module", None)
    if isinstance(module, nn.Module):
        module.eval()
    return snapshot


def _check_image_module(name: str, module: nn.Module) -> None:
    """An image classifier is served on the images page, which feeds it (B, 1, 28, 28) grey levels."""
    shape = (2, 1, IMAGE_SIDE, IMAGE_SIDE)
    try:
        with torch.no_grad():
            out = module(torch.zeros(shape))
        problem = None if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == 2 and out.shape[1] >= 2 \
            else f"returned {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
    except Exception as exc:  # noqa: BLE001 -- the user's forward pass, on the server's copy
        problem = f"failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if problem:
        raise TypeError(f"model {name!r} is a bare nn.Module, which is served as an image classifier: the images "
                        f"page feeds it MNIST-sized grey images (B, 1, {IMAGE_SIDE}, {IMAGE_SIDE}) in [0, 1] and needs "
                        f"(B, classes) logits, but on zeros{shape} it {problem}; {FIX_KINDS}")


def model_entries(models: Mapping[str, Any] | None, pool_size: int = 2,
                  taken: Iterable[str] = ()) -> dict[str, ModelEntry]:
    """Entries for the models handed to ``serve``: ``{name: TextModel | LanguageModel | image nn.Module}``.

    ``taken``: names already in use (the shipped models), refused with the fix.
    """
    from textexplain import TextModel
    from textexplain.language_model import LanguageModel

    if models is None:
        return {}
    if not isinstance(models, Mapping):
        raise TypeError(f"models must be a dict {{name: model}}, got {type(models).__name__}: e.g. "
                        "models={'my-classifier': textexplain.TextModel(...)}")
    taken = set(taken)
    entries: dict[str, ModelEntry] = {}
    for name, model in models.items():
        _check_name(name, "model")
        if name in taken:
            raise ValueError(f"model name {name!r} is taken by a shipped model: choose another name "
                             f"(shipped: {', '.join(sorted(taken))})")
        if not isinstance(model, (TextModel, LanguageModel, nn.Module)):
            raise TypeError(f"model {name!r} is a {type(model).__name__}, which the server cannot serve: {FIX_KINDS}")
        snapshot = _snapshot(name, model)
        if kind_of(snapshot) == "image-classifier":
            _check_image_module(name, snapshot)
        card = dict(getattr(snapshot, "card", None) or {})
        description = card.get("description") or f"{type(getattr(snapshot, 'module', snapshot)).__name__} " \
                                                   "handed to lstmvis.serve"
        entries[name] = ModelEntry.of(name, snapshot, str(description), card=card, pool_size=pool_size)
    return entries


def store_entries(stores: Sequence[Any] | None, taken: Iterable[str] = ()) -> dict[str, StoreEntry]:
    """Entries for the stores handed to ``serve``: paths or URLs of stores (``states.h5``, ``states.zarr``,
    ``s3://bucket/states.zarr``) or open ``StateStore`` objects (the server opens its own handle on
    the store); each is named by its file's stem."""
    from lstmvis import StateStore, StoreError
    from lstmvis.backend import is_url

    if stores is None:
        return {}
    if isinstance(stores, (str, os.PathLike, StateStore)) or not isinstance(stores, (list, tuple)):
        raise TypeError(f"stores must be a list of store paths or StateStore objects, got {type(stores).__name__}: "
                        "e.g. stores=['states.h5'] or stores=[lstmvis.extract(...)]")
    taken = set(taken)
    entries: dict[str, StoreEntry] = {}
    for item in stores:
        if isinstance(item, StateStore):
            path = item.url if is_url(item.url) else getattr(item, "path", None)
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"store {item!r} has no file path the server can open: hand in the path of an .h5 store")
        elif isinstance(item, (str, os.PathLike)):
            path = item
        else:
            raise TypeError(f"stores[...] is a {type(item).__name__}: give the path of a store or a StateStore")
        path = str(path).rstrip("/") if is_url(path) else Path(path).expanduser().resolve()
        try:
            StateStore.open(path).close()
        except (StoreError, OSError) as exc:
            raise ValueError(f"store {str(item)!r} cannot be served: {exc}") from None
        file = path if isinstance(path, Path) else Path(path.rsplit("/", 1)[-1])
        name = file.stem
        if name in entries or name in taken:
            other = entries[name].path if name in entries else "the demo"
            raise ValueError(f"two stores are named {name!r} ({other} and {path}): stores are named by their file's "
                             "name; rename one of the files")
        entries[name] = StoreEntry(name, path, title=name, description=f"{file.name} handed to lstmvis.serve")
    return entries


def make_resources(models: Mapping[str, Any] | None = None, stores: Sequence[Any] | None = None,
                   data_dir: str | os.PathLike | None = None, *, demo: bool = False,
                   cache_dir: str | os.PathLike | None = None, pool_size: int = 2, progress: bool = True) -> Resources:
    """The models and stores the server offers: the shipped models, the user's objects (checked here),
    ``data_dir`` (rescanned while serving) and, with ``demo``, the demo stores."""
    import data

    from .resources import DEMO_STORES

    location = None if data_dir is None else DataLocation(data_dir)  # a folder or an fsspec URL, checked here
    own_models = model_entries(models, pool_size, taken=data.MODELS)
    own_stores = store_entries(stores, taken=[s.name for s in DEMO_STORES] if demo else ())
    if location is not None:
        clash = {n: f for f, n in entry_names(location.files()).items() if n in own_models or n in own_stores}
        if clash:
            name, file = next(iter(clash.items()))
            raise ValueError(f"the data directory holds {file}, named {name!r} like a model or store handed in: "
                             "rename one of them")
    return Resources(location, cache_dir=cache_dir, demo=demo, build="background", pool_size=pool_size,
                     progress=progress, models=own_models, stores=own_stores)


def dask_client(scheduler: str | None = None, client: Any = None) -> tuple[Any, bool]:
    """``(client, owned)``: the Dask client the server runs its match and cell-ranking queries on
    (Zarr stores), ``client`` as handed in, or one connected to ``scheduler`` (``tcp://HOST:8786``),
    which the server owns and closes when it stops; ``(None, False)`` for neither."""
    if scheduler is not None and client is not None:
        raise ValueError("give either scheduler= (an address) or client= (a dask.distributed.Client), not both")
    if client is not None:
        if not all(callable(getattr(client, m, None)) for m in ("submit", "gather", "map")):
            raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
        return client, False
    if scheduler is None:
        return None, False
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise TypeError(f"scheduler must be a Dask scheduler's address such as tcp://HOST:8786, got {scheduler!r}")
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("a Dask scheduler needs dask.distributed: pip install 'lstmvis-textexplain[scale]'") from None
    try:
        return Client(scheduler, timeout=SCHEDULER_TIMEOUT, set_as_default=False), True
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {scheduler} within {SCHEDULER_TIMEOUT} "
                         f"({type(exc).__name__}: {plain(str(exc)).splitlines()[0] if str(exc) else ''})") from None


class ServerHandle:
    """A running server (``serve(..., block=False)``): its ``url``, ``stop()``, ``wait()``; a context
    manager (stops on exit); in a notebook it shows the tool in the cell (``_repr_html_``).
    ``closing``: what ``stop()`` closes after the server (a Dask client the server opened)."""

    def __init__(self, server, app, closing: Sequence[Any] = ()):
        from .serving import url_of

        self.app = app
        self.url = url_of(server)
        self._closing = list(closing)
        self._server = server
        self._stopped = False
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="lstmvis-serve", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving: the listening socket is closed (the port is free again) and the thread joined."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        from .jobs import RUNNER_KEY
        self.app.extensions[RUNNER_KEY].shutdown()
        for resource in self._closing:
            resource.close()

    def wait(self) -> None:
        """Serve until Ctrl+C, then stop."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<lstmvis server at {self.url} ({'stopped' if self._stopped else 'running'})>"

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        return (f'<iframe src="{url}" title="lstmvis" width="100%" height="720" style="border: 1px solid #ccc">'
                f'</iframe><p><a href="{url}" target="_blank" rel="noopener">{url}</a></p>')


def serve(models: Mapping[str, Any] | None = None, stores: Sequence[Any] | None = None,
          data_dir: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          block: bool = True, *, open_browser: bool | None = None, demo: bool = False,
          cache_dir: str | os.PathLike | None = None, allow_hosts: Iterable[str] = (),
          embed_origins: Iterable[str] = EMBED_ORIGINS, pool_size: int = 2,
          corpora: Sequence[str | os.PathLike] = (), scheduler: str | None = None,
          client: Any = None) -> ServerHandle | None:
    """Serve the browser tool over ``models`` (``{name: TextModel | LanguageModel | image nn.Module}``),
    ``stores`` (paths or ``StateStore`` objects), the shipped models and ``data_dir`` (see
    ``lstmvis.serve``); ``corpora``: labelled CSV/JSONL files for the workbench (``lstmvis serve --corpus``),
    read now so a bad one is refused here; ``scheduler`` (an address) or ``client`` (a
    ``dask.distributed.Client``): match and cell ranking over Zarr stores run on that cluster
    (``lstmvis.cluster``). ``block=False`` returns a :class:`ServerHandle`; ``block=True`` serves until
    Ctrl+C. ``port=0`` picks a free port. Unlike ``lstmvis serve``, this leaves the process's torch
    and allocator settings alone and prints nothing (it runs inside the user's session): the request
    log goes to the ``logging`` logger ``lstmvis.server`` (:data:`REQUEST_LOG`) only."""
    from .app import create_app
    from .serving import LOOPBACK_NAMES, is_loopback, make_server
    from .store_views import CLIENT_KEY
    from .workbench_api import CORPORA_KEY, check_corpus_files

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer 0..65535 (0 picks a free one), got {port!r}")
    corpus_files = check_corpus_files(corpora, "corpora")
    res = make_resources(models, stores, data_dir, demo=demo, cache_dir=cache_dir, pool_size=pool_size,
                         progress=False)
    dask, owned = dask_client(scheduler, client)
    config: dict[str, Any] = {"RESOURCES": res, "FRAME_ANCESTORS": list(embed_origins), CORPORA_KEY: corpus_files,
                              CLIENT_KEY: dask}
    if is_loopback(host):
        config["ALLOWED_HOSTS"] = [*LOOPBACK_NAMES, *allow_hosts]
    app = create_app(data_dir, config)
    try:
        server = make_server(app, host, port, request_log=REQUEST_LOG)
    except OSError as exc:
        if owned:
            dask.close()
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another port "
                         "(port=0 picks a free one)") from None
    handle = ServerHandle(server, app, closing=[dask] if owned else [])
    if open_browser if open_browser is not None else block:
        import webbrowser
        threading.Timer(0.5, webbrowser.open, args=(handle.url,)).start()
    if not block:
        return handle
    handle.wait()
    return None
