"""The transient marker shared by everything that hooks into a user's module.

Hooks and instance-level ``forward`` overrides that live only during one call carry the attribute
``TRANSIENT``, so that a copy of the module taken meanwhile (``TextModel.float64``) leaves them out.
``textexplain.base`` (embedding substitution) and ``lstmvis``'s recorder mark theirs with it.
"""
from __future__ import annotations

from typing import TypeVar

TRANSIENT = "_textexplain_transient"

T = TypeVar("T")


def transient(obj: T) -> T:
    """Mark a hook (or an instance-level ``forward``) as living only during one call."""
    setattr(obj, TRANSIENT, True)
    return obj
