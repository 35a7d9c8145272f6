"""The Flask browser tool (app factory in ``server.app``)."""
