"""``lstmvis serve``: registered with the ``lstmvis`` command line through the ``lstmvis.commands``
entry point, so that ``lstmvis`` never imports the server. The server itself loads only when the
command runs (``server.serving``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import DEFAULT_PORT

OFF_LOOPBACK_WARNING = ("WARNING: serving on {host}, reachable from other machines.\n"
                        "Anyone who can reach this port can run the models and read every store in the data\n"
                        "directory. There is no authentication. Use --host 127.0.0.1 unless you mean it.")


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import serving

    if not serving.is_loopback(args.host):
        print("\n" + "!" * 78 + "\n" + OFF_LOOPBACK_WARNING.format(host=args.host) + "\n" + "!" * 78 + "\n",
              file=sys.stderr)
    if args.data is not None and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: no such directory")
    from .workbench_api import read_corpus_file
    for path in args.corpus:
        read_corpus_file(path)  # a bad file is refused now, with the line that is wrong
    server = serving.listen(args.data, host=args.host, port=args.port, cache_dir=args.cache,
                            allow_hosts=args.allow_host, corpora=args.corpus)
    what = f"the stores and models in {args.data}" if args.data else "the bundled demo"
    print(f"lstmvis: serving {what} at {serving.url_of(server)}  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    serving.serve(server, open_browser=not args.no_browser)
    print("lstmvis: stopped", file=sys.stderr)
    return 0


def add_serve(sub) -> None:
    """Register ``lstmvis serve`` on the CLI's subparsers."""
    p = sub.add_parser(
        "serve", help="open the browser tool (no arguments: the bundled demo)",
        description="Serve the browser tool: the hidden-state explorer, cell discovery, text-CNN filters, text "
                    "explanations and image methods. With no arguments it serves the bundled demo (shipped models; demo "
                    "state stores are built once, with a progress bar, and cached in $LSTMVIS_CACHE or "
                    "~/.cache/lstmvis). With --data DIR it serves the *.h5 state stores and *.pt checkpoints "
                    "in DIR. It listens on 127.0.0.1 only, unless --host says otherwise.")
    p.add_argument("--data", metavar="DIR", help="serve the stores and checkpoints in DIR instead of the demo")
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
