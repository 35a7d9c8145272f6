"""``lstmvis serve``: registered with the ``lstmvis`` command line through the ``lstmvis.commands``
entry point, so that ``lstmvis`` never imports the server."""
from .app import add_serve

__all__ = ["add_serve"]
