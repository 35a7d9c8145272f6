"""Admission of concurrent API requests to the compute: a few at a time, first come first served.

The server answers every connection on a thread of its own, but the work of a request (validation,
the library call, JSON) is mostly Python that holds the GIL, interleaved with short stretches that
release it (numba kernels, torch ops, the match pool). With eight such requests running at once
every release is followed by a wait for the GIL (up to ``sys.getswitchinterval()``, 5 ms, behind a
thread that computes), so each request takes as long as all of them together and the slowest take
longer still: the 99th percentile of eight concurrent match requests was about twice their median.

A :class:`FairGate` admits ``slots`` requests of a lane at once (default: the number of cores) and
queues the rest strictly in arrival order; a request that finishes hands its slot to the first one
waiting (no newcomer overtakes a waiter, which ``threading.Semaphore`` and ``queue.Queue`` allow).
Reading the request and sending the answer happen outside the gate, in the connection's thread.

Lanes keep kinds of work from queueing behind each other: ``"store"`` (queries of state stores:
tokens, states, select, match, search, cells) and ``"model"`` (model calls: explanations, image
methods). A view that only reads small in-memory state (status, job progress) takes no lane.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from typing import Iterator

LANES = ("store", "model")


def n_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class FairGate:
    """A counting semaphore that admits waiters in arrival order.

    ``acquire`` takes a free slot only when nobody waits; otherwise the caller queues. ``release``
    hands the slot straight to the longest waiter (the slot is never free in between, so a thread
    that arrives at that moment cannot take it).
    """

    def __init__(self, slots: int):
        if int(slots) < 1:
            raise ValueError(f"a gate needs at least 1 slot, got {slots}")
        self.slots = int(slots)
        self._lock = threading.Lock()
        self._free = self.slots
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder that hands us its slot

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            elif self._free < self.slots:
                self._free += 1
            else:
                raise RuntimeError("FairGate released more often than acquired")

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return self.slots - self._free

    def __enter__(self) -> "FairGate":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Gates:
    """One :class:`FairGate` per lane; ``slots=None`` sizes each to the cores."""

    def __init__(self, slots: int | None = None):
        self.slots = int(slots) if slots else n_cores()
        self._gates = {lane: FairGate(self.slots) for lane in LANES}

    def gate(self, lane: str) -> FairGate:
        """The gate of ``lane``."""
        try:
            return self._gates[lane]
        except KeyError:
            raise ValueError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)}") from None

    @contextlib.contextmanager
    def admit(self, lane: str | None) -> Iterator[None]:
        """Wait for a slot of ``lane`` and hold it inside the ``with`` block (``None``: no wait)."""
        if lane is None:
            yield
            return
        with self.gate(lane):
            yield

    def info(self) -> dict:
        return {lane: {"slots": g.slots, "busy": g.busy, "waiting": g.waiting} for lane, g in self._gates.items()}
