"""glibc allocator settings for tensor-heavy processes: set once by the server and extraction
(``tune_allocator``), and raised on demand by the Recorder (``keep_heap_for``)."""
from __future__ import annotations

import os
import threading

MiB = 1024 * 1024
OPT_OUT_ENV = "LSTMVIS_TUNE_ALLOCATOR"  # "0": the Recorder leaves glibc's settings alone
KEEP_MAX = 1024 * MiB  # keep_heap_for never sets a threshold above this
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
_TUNABLES = {M_MMAP_THRESHOLD: "glibc.malloc.mmap_threshold", M_TRIM_THRESHOLD: "glibc.malloc.trim_threshold"}
_KEPT = {"threshold": 0}  # the lowest threshold this process has set so far (0: glibc's own, at most 32 MiB)
_LOCK = threading.Lock()


def tune_allocator(arena_max: int | None = None, mmap_threshold: int = 32 * MiB,
                   trim_threshold: int = 64 * MiB) -> bool:
    """Keep freed memory for the next allocation instead of handing it back to the kernel (glibc only).

    By default glibc serves every allocation above a moving threshold (at most 32 MiB) with a
    fresh mmap and trims free heap tops early, so large tensors arrive as new pages that fault on
    first touch: a 50-token IG explanation took about 5,000 page faults (20-30 ms of its 75 ms of
    CPU), and oneDNN's LSTM workspace (about 100 MB for 32 x 200 steps of 256 units) about 8,000
    per layer call (a fifth of its time). Fixed thresholds (``mmap_threshold``,
    ``trim_threshold``) and one arena per core bring that to a few hundred. Settings given in the
    environment (``MALLOC_*``) win. Call it before starting threads. Returns whether applied.
    """
    applied = _mallopt([("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, mmap_threshold),
                        ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, trim_threshold),
                        ("MALLOC_ARENA_MAX", M_ARENA_MAX, arena_max or max(2, os.cpu_count() or 2))])
    if applied:
        with _LOCK:
            _KEPT["threshold"] = max(_KEPT["threshold"], min(mmap_threshold, trim_threshold))
    return applied


def keep_heap_for(nbytes: int) -> bool:
    """Let glibc serve blocks of ``nbytes`` from its heap and keep them when freed, so the next
    block of that size reuses the same pages instead of faulting in fresh ones.

    The Recorder calls it with the size of each oneDNN LSTM workspace it reads (about 100 MB at
    32 x 200 steps of 256 units: 16,000 page faults a forward pass otherwise, 1.5x instead of
    1.15x the plain forward under no_grad). It only ever raises glibc's thresholds: the mmap
    threshold to the next power of two of at least twice ``nbytes`` (64 MiB at least), the trim
    threshold to four times that (up to 1 GiB of freed memory may then stay with the process),
    both at most ``KEEP_MAX``; a block above that is left as it is. It does nothing off glibc,
    where the environment sets the threshold (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``), or with ``LSTMVIS_TUNE_ALLOCATOR=0``.
    Returns whether it changed a setting.
    """
    if 2 * nbytes <= _KEPT["threshold"] or os.environ.get(OPT_OUT_ENV, "1") == "0":
        return False
    mmap_threshold = 1 << max(26, (2 * nbytes - 1).bit_length())  # at least 64 MiB
    if mmap_threshold > KEEP_MAX:
        return False
    with _LOCK:
        if 2 * nbytes <= _KEPT["threshold"]:
            return False
        _KEPT["threshold"] = mmap_threshold  # also when not applied: asked once per size
        return _mallopt([("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, mmap_threshold),
                         ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, min(KEEP_MAX, 4 * mmap_threshold))])


def _mallopt(settings: list[tuple[str, int, int]]) -> bool:
    """``mallopt(option, value)`` for each ``(environment variable, option, value)`` that the
    environment does not set; whether any was applied (False off glibc)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    applied = False
    for env, option, value in settings:
        if env not in os.environ and not (option in _TUNABLES and _TUNABLES[option] in tunables):
            applied = bool(libc.mallopt(option, value)) or applied
    return applied
