"""glibc allocator settings for long-running, tensor-heavy processes (the server, extraction)."""
from __future__ import annotations

import os

MiB = 1024 * 1024


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
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    settings = [("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, mmap_threshold),
                ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, trim_threshold),
                ("MALLOC_ARENA_MAX", M_ARENA_MAX, arena_max or max(2, os.cpu_count() or 2))]
    applied = False
    for env, option, value in settings:
        if env not in os.environ:
            applied = bool(libc.mallopt(option, value)) or applied
    return applied
