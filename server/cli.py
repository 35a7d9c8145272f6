"""``lstmvis serve``: registered with the ``lstmvis`` command line through the ``lstmvis.commands``
entry point, so that ``lstmvis`` never imports the server. The server itself loads only when the
command runs (``server.serving``)."""
from __future__ import annotations

import argparse
import sys

from . import DEFAULT_PORT

OFF_LOOPBACK_WARNING = ("WARNING: serving on {host}, reachable from other machines.\n"
                        "Anyone who can reach this port can run the models and read every store in the data\n"
                        "directory. There is no authentication. Use --host 127.0.0.1 unless you mean it.")


def _cmd_serve(args: argparse.Namespace) -> int:
    from textexplain.providers import _working_folder_off_path

    with _working_folder_off_path():  # a user's own data.py or server.py in the working folder cannot shadow ours
        from . import app, models_file, python_api, serving  # noqa: F401 -- imported here, with their imports of data
        from . import resources as resources_module

    if not serving.is_loopback(args.host):
        print("\n" + "!" * 78 + "\n" + OFF_LOOPBACK_WARNING.format(host=args.host) + "\n" + "!" * 78 + "\n",
              file=sys.stderr)
    if args.data is not None:
        resources_module.DataLocation(args.data)  # a folder or a URL that can be read, else the reason now
    from .workbench_api import check_corpus_files
    corpora = check_corpus_files(args.corpus)  # a bad file is refused now, with the line that is wrong
    resources = None
    if args.models is not None:
        serving.tune_process()  # before the user's file starts torch's threads
        models, stores = models_file.load_models_file(args.models)
        resources = python_api.make_resources(models, stores, args.data, demo=False, cache_dir=args.cache)
    client, _ = python_api.dask_client(args.scheduler)
    try:
        server = serving.listen(args.data, host=args.host, port=args.port, cache_dir=args.cache,
                                allow_hosts=args.allow_host, resources=resources, corpora=corpora, dask_client=client)
        what = f"the stores and models in {args.data}" if args.data else "the bundled demo"
        if args.models is not None:
            what = f"the models of {args.models}" + (f" and the stores and models in {args.data}" if args.data else "")
        if client is not None:
            what += f", queries of Zarr stores on the Dask cluster at {args.scheduler}"
        print(f"lstmvis: serving {what} at {serving.url_of(server)}  (Ctrl+C to stop)", file=sys.stderr, flush=True)
        serving.serve(server, open_browser=not args.no_browser)
    finally:
        if client is not None:
            client.close()
    print("lstmvis: stopped", file=sys.stderr)
    return 0


def add_serve(sub) -> None:
    """Register ``lstmvis serve`` on the CLI's subparsers."""
    p = sub.add_parser(
        "serve", help="open the browser tool (no arguments: the bundled demo)",
        description="Serve the browser tool: the hidden-state explorer, cell discovery, text-CNN filters, text "
                    "explanations and image methods. With no arguments it serves the bundled demo (shipped models; demo "
                    "state stores are built once, with a progress bar, and cached in $LSTMVIS_CACHE or "
                    "~/.cache/lstmvis). With --data DIR it serves the *.h5 and *.zarr state stores and *.pt checkpoints "
                    "in DIR, a folder or a URL (looked at again while serving: files added later appear). It prints "
                    "werkzeug's request log on stderr, one line per request. With --models FILE.py it serves the models "
                    "that FILE.py's models() returns. It listens on 127.0.0.1 only, unless --host says otherwise.")
    p.add_argument("--data", metavar="DIR", help="serve the stores and checkpoints in DIR instead of the demo; DIR may "
                   "be an fsspec URL such as s3://bucket/runs (Zarr stores only; endpoint and credentials from fsspec's "
                   "configuration or the usual AWS_* variables)")
    p.add_argument("--scheduler", metavar="ADDR", help="a Dask scheduler (tcp://HOST:8786): match and cell ranking "
                   "(AUROC) over Zarr stores run on its workers, one task per part, with the same results")
    p.add_argument("--models", metavar="FILE.py", help="also serve your own models: FILE.py defines models() "
                   "returning {name: TextModel | LanguageModel | image nn.Module} (and optionally stores() returning "
                   "store paths); it is run once, at start")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; "
                   "0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else "
                   "exposes the tool to the network)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.add_argument("--cache", metavar="DIR", help="where demo stores are cached (default $LSTMVIS_CACHE or "
                   "~/.cache/lstmvis)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name, e.g. the name a reverse proxy forwards "
                        "(on loopback only localhost, 127.0.0.1 and [::1] are answered, against DNS rebinding)")
    p.add_argument("--corpus", action="append", default=[], metavar="FILE",
                   help="a labelled corpus for the workbench: CSV with a header or JSONL, columns text,label[,meta...] "
                        "(repeat for more)")
    p.set_defaults(func=_cmd_serve)
