"""Long work off the request thread: a job runs in a background thread, the client polls its progress.

A corpus audit over hundreds of sentences or a t-SNE of the test set takes longer than a request
should. ``JobRunner.submit(kind, key, work)`` starts ``work(report)`` in a worker thread and
returns a job at once; ``report(done, total, note)`` updates its progress. Jobs are keyed by what
they compute, so the same request while one runs (or after it finished) reuses that job instead
of starting another. A fixed number of workers bounds the CPU the jobs can take, and only the
most recent finished jobs are kept.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Blueprint, current_app

from .validation import ApiError, api

blueprint = Blueprint("jobs", __name__, url_prefix="/api")

Report = Callable[[int, int, str], None]


@dataclass
class Job:
    """One unit of background work and what the client may see of it."""

    id: str
    kind: str
    key: tuple
    status: str = "queued"  # queued | running | done | error
    done: int = 0
    total: int = 0
    note: str = ""
    result: Any = None
    error: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    ended: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def info(self) -> dict:
        """Progress (and the result once done) as JSON."""
        out = {"id": self.id, "kind": self.kind, "status": self.status, "done": self.done, "total": self.total,
               "note": self.note, "seconds": round((self.finished or time.time()) - self.created, 3)}
        if self.status == "done":
            out["result"] = self.result
        elif self.status == "error":
            out["error"] = self.error
        return out


class JobRunner:
    """A small pool of worker threads running keyed jobs, keeping the last ``keep`` of them."""

    def __init__(self, workers: int = 1, keep: int = 32, max_pending: int = 8):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lstmvis-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self._max_pending = max_pending

    def shutdown(self) -> None:
        """Stop taking jobs: queued ones are cancelled, a running one finishes on its thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, kind: str, key: tuple, work: Callable[[Report], Any]) -> Job:
        """The job computing ``key``: an existing one (running, queued or done), else a new one.

        At most ``max_pending`` jobs wait or run at once; beyond that the client gets a 429, so
        distinct requests cannot queue unbounded work (and memory) behind the workers.
        """
        key = (kind, *key)
        with self._lock:
            existing = self._by_key.get(key)
            if existing is not None and self._jobs[existing].status != "error":
                return self._jobs[existing]
            pending = sum(j.status in ("queued", "running") for j in self._jobs.values())
            if pending >= self._max_pending:
                raise ApiError(429, f"{pending} background jobs are queued or running; try again when one has "
                                    "finished")
            job = Job(uuid.uuid4().hex[:16], kind, key)
            self._jobs[job.id] = job
            self._by_key[key] = job.id
            self._forget_old()
        self._pool.submit(self._run, job, work)
        return job

    def active(self, kind: str, key: tuple) -> Job | None:
        """The queued or running job computing ``key``, if there is one (nothing is started)."""
        with self._lock:
            job = self._jobs.get(self._by_key.get((kind, *key), ""))
        return job if job is not None and job.status in ("queued", "running") else None

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"unknown job {job_id!r}: it never existed or is too old; start it again")
        return job

    def _run(self, job: Job, work: Callable[[Report], Any]) -> None:
        def report(done: int, total: int, note: str = "") -> None:
            job.done, job.total, job.note = int(done), int(total), note

        job.status = "running"
        try:
            job.result = work(report)
            job.status = "done"
        except (ValueError, TypeError) as exc:  # the library's refusal of bad input: say why
            job.error, job.status = str(exc), "error"
        except Exception as exc:  # noqa: BLE001 - a job must never die silently
            job.error, job.status = f"{type(exc).__name__}: {exc}", "error"
        finally:
            job.finished = time.time()
            job.ended.set()

    def list(self) -> list[dict]:
        """Every job kept, newest first, without results (they can be large): for the jobs page."""
        with self._lock:
            kept = list(self._jobs.values())
        return [{k: v for k, v in j.info().items() if k != "result"} | {"created": j.created}
                for j in reversed(kept)]

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in ("done", "error")]
        for job in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[job.id]
            if self._by_key.get(job.key) == job.id:
                del self._by_key[job.key]


RUNNER_KEY = "lstmvis.jobs"  # app.extensions key, set by server.app.create_app


def jobs() -> JobRunner:
    """The job runner of the app handling this request (one per app)."""
    return current_app.extensions[RUNNER_KEY]


@blueprint.get("/jobs/<job_id>")
@api(summary="Progress of a background job, and its result once done", tag="jobs", lane=None)
def job_status(job_id: str):
    """``status`` is queued, running, done (with ``result``) or error (with ``error``); poll until done."""
    return jobs().get(job_id).info()


@blueprint.get("/jobs")
@api(summary="Every background job kept: running, queued and recently finished, newest first", tag="jobs", lane=None)
def job_list():
    """Progress of every job the server keeps (results left out: ask ``/api/jobs/<id>`` for one)."""
    return {"jobs": jobs().list()}
