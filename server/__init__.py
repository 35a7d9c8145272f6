"""The Flask browser tool: the app factory in ``server.app``, serving in ``server.serving``, the
``lstmvis serve`` command in ``server.cli``."""

DEFAULT_PORT = 8765  # here, so that parsing ``lstmvis serve`` imports no server module
