"""``lstmvis serve --models FILE.py``: run the user's file (named on the command line, never by a
request) and take the models and stores it offers: ``models()`` returns ``{name: model}`` as for
``lstmvis.serve(models=...)``, an optional ``stores()`` a list of store paths or ``StateStore`` objects."""
from __future__ import annotations

import runpy
import sys
import traceback
from pathlib import Path
from typing import Any


def _failure(path: Path, when: str, exc: BaseException) -> ValueError:
    """The error for an exception raised by the user's file: the file, the line, the traceback's last line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path]
    where = f" at line {frames[-1].lineno} ({frames[-1].line})" if frames and frames[-1].line else ""
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return ValueError(f"--models {path}: {when} failed{where}: {last}")


def _call(path: Path, namespace: dict, name: str) -> Any:
    try:
        return namespace[name]()
    except Exception as exc:  # noqa: BLE001 -- the user's code: say where it failed
        raise _failure(path, f"{name}()", exc) from None


def load_models_file(file: str) -> tuple[dict, list]:
    """``(models, stores)`` from the user's file; ValueError (or FileNotFoundError) that names the fix."""
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"--models {file}: no such file (give a Python file that defines models())")
    if path.suffix != ".py":
        raise ValueError(f"--models {file}: not a Python file (give a .py file that defines models())")
    folder = str(path.parent)
    sys.path.insert(0, folder)  # the file may import its neighbours, as `python FILE.py` would let it
    try:
        namespace = runpy.run_path(str(path), run_name="lstmvis_models_file")
    except SystemExit as exc:
        raise ValueError(f"--models {path}: running it called exit({exc.code!r}); a models file defines models() "
                         "and leaves serving to `lstmvis serve`") from None
    except Exception as exc:  # noqa: BLE001 -- the user's code
        raise _failure(path, "running it", exc) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    if not callable(namespace.get("models")):
        raise ValueError(f"--models {path}: the file defines no function models(); define one that returns "
                         "{name: model}, e.g. {'my-classifier': textexplain.TextModel(...)}")
    models = _call(path, namespace, "models")
    if not isinstance(models, dict):
        raise ValueError(f"--models {path}: models() returned a {type(models).__name__}; it must return a dict "
                         "{name: TextModel | LanguageModel | image nn.Module}")
    stores = _call(path, namespace, "stores") if callable(namespace.get("stores")) else []
    if not isinstance(stores, (list, tuple)):
        raise ValueError(f"--models {path}: stores() returned a {type(stores).__name__}; it must return a list of "
                         "store paths or StateStore objects")
    return models, list(stores)
