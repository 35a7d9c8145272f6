"""``lstmvis.serve``: open the browser tool over your own models and stores, from Python.

The browser tool lives a floor above (the ``server`` package), so this module never imports it: the
server offers its serve function as the entry point ``serve`` of the group :data:`SERVERS_GROUP`,
as it offers ``lstmvis serve`` to the command line through ``lstmvis.commands``.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any, Iterable, Mapping, Sequence

from textexplain.providers import load_entry_point

SERVERS_GROUP = "lstmvis.servers"
DEFAULT_PORT = 8765  # the server's default port (server.DEFAULT_PORT; a test keeps them equal)


def serve(models: Mapping[str, Any] | None = None, stores: Sequence[Any] | None = None,
          data_dir: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          block: bool = True, *, open_browser: bool | None = None, demo: bool = False,
          cache_dir: str | os.PathLike | None = None, allow_hosts: Iterable[str] = (),
          embed_origins: Iterable[str] | None = None, pool_size: int = 2, corpora: Sequence[str | os.PathLike] = (),
          scheduler: str | None = None, client: Any = None):
    """Serve the browser tool over your own models and state stores, beside the shipped models.

    ``models``: ``{name: model}``, each a ``textexplain.TextModel`` (explanations page, text-CNN page when
    ``lstmvis.textcnn`` maps its Conv1d stack), a ``LanguageModel`` (cells page, through its stores) or an
    image classifier ``nn.Module`` (images page: MNIST-sized grey images (B, 1, 28, 28) in, (B, classes)
    logits out). Each is copied when handed in and the copy is served in eval mode: your object is
    never changed, and later changes to it do not reach the server.
    ``stores``: paths or URLs of state stores or ``StateStore`` objects (explorer and cells pages); a store whose
    card names a served model links to it (``extract(..., name=...)``).
    ``data_dir``: also serve the stores and checkpoints of this directory, looked at again while serving;
    an fsspec URL (``"s3://bucket/runs"``) serves the Zarr stores under it.
    ``scheduler`` (a Dask scheduler's address, ``"tcp://HOST:8786"``) or ``client`` (a
    ``dask.distributed.Client``): match and AUROC cell ranking over Zarr stores run on that cluster,
    one task per part, with the results of one process (``lstmvis.cluster``); a client the server
    opens for ``scheduler`` is closed when it stops, a ``client`` handed in is left open.
    ``corpora``: labelled corpus files for the workbench page (CSV with a header or JSONL; columns
    ``text``, ``label`` and any others), as ``lstmvis serve --corpus``; a bad file is refused at once.
    ``demo``: also build and serve the demo stores. ``port=0`` picks a free port.
    Nothing is printed: the request log goes to the ``logging`` logger ``lstmvis.server``.
    ``block=True`` serves until Ctrl+C (and opens a browser); ``block=False`` returns a handle with
    ``.url``, ``.stop()`` and ``.wait()``, usable as a context manager, that shows the tool in a notebook
    cell. ``embed_origins``: the notebook origins that may show it (default: Jupyter on this machine
    and VS Code).
    """
    found = [ep for ep in entry_points(group=SERVERS_GROUP) if ep.name == "serve"]
    if not found:
        raise ImportError(f"lstmvis.serve needs the browser tool, whose package registers the entry point 'serve' "
                          f"in the group {SERVERS_GROUP!r}, and none is installed: install lstmvis-textexplain "
                          "with pip (from a source checkout: pip install -e .)")
    options = {} if embed_origins is None else {"embed_origins": embed_origins}
    return load_entry_point(found[0])(models=models, stores=stores, data_dir=data_dir, host=host, port=port,
                                      block=block, open_browser=open_browser, demo=demo, cache_dir=cache_dir,
                                      allow_hosts=allow_hosts, pool_size=pool_size, corpora=corpora,
                                      scheduler=scheduler, client=client, **options)
