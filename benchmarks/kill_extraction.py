"""SIGKILL an extraction at random points; prove nothing half-written ever opens and nothing is lost.

Each trial: the target path already holds an *earlier* store (another corpus), and a sibling
store sits in the same folder. A child process extracts the parens-lstm states (h, c, gates) of a
corpus into the target path and is killed with SIGKILL after a random delay (uniform over the
time an uninterrupted extraction takes, plus a margin, so some kills land after it finished), or
at a named code point (``--points``: after a sequence's done flag, inside ``finish`` before the
rename, ...). Then:

1. the target path opens, and holds either the earlier store unchanged or the new one in full;
2. the ``.partial`` file never opens as a complete store unless it is complete and correct;
3. the sibling store is unchanged;
4. rerunning the same extraction finishes (resuming or starting over) and gives the same
   states as an uninterrupted run (atol 1e-5: batches differ on resume), tokens/offsets equal;
5. no temporary or partial file is left behind.

    python benchmarks/kill_extraction.py --trials 20            # random kill points
    python benchmarks/kill_extraction.py --points all           # every named code point once
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("h", "c", "gates")
BATCH, CHUNK = 8, 64

# Named code points where the child kills itself: (module attribute path, when, which call)
POINTS = {
    "after-first-done-flag": ("lstmvis.extraction._Sink.finish", "after", 1),
    "after-done-flags": ("lstmvis.extraction._Sink._mark_done", "after", 1),  # sequences marked done, store unfinished
    "mid-states-write": ("lstmvis.store.StoreWriter.write_states", "after", 1),
    "before-finish": ("lstmvis.store.StoreWriter.finish", "before", 1),
    "before-rename": ("os.replace", "before", 1),
    "after-rename": ("os.replace", "after", 1),
    "before-meta": ("lstmvis.extraction._write_meta", "before", 1),
}


def corpus(n_sequences: int, seed: int) -> list[str]:
    import data
    rng = np.random.default_rng(seed)  # varied lengths, so sequences finish at different steps
    return ["".join(toks[:int(rng.integers(20, 201))])
            for toks, _ in data.parens("test", n_sequences=n_sequences, seed=seed)]


def run_extract(texts: list[str], out: Path, resume: bool = True):
    import data
    import lstmvis
    lm = data.load_model("parens-lstm")
    return lstmvis.extract(lm, texts, out, kinds=KINDS, batch_size=BATCH, chunk_size=CHUNK, progress=False,
                           resume=resume, meta={"length": [np.full(len(t), len(t)) for t in texts]})


def _install_kill_point(point: str) -> None:
    import importlib
    target, when, nth = POINTS[point]
    mod_name, _, attr = target.rpartition(".")
    try:
        owner = importlib.import_module(mod_name)
    except ModuleNotFoundError:  # a class attribute: module.Class.method
        mod_name, _, cls = mod_name.rpartition(".")
        owner = getattr(importlib.import_module(mod_name), cls)
    original = getattr(owner, attr)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if when == "before" and calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if when == "after" and calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, attr, wrapped)


def worker(args) -> None:
    import torch
    torch.set_num_threads(1)
    texts = json.loads(Path(args.texts).read_text())
    import data  # noqa: F401  (imports done before READY, so delays measure extraction only)
    import lstmvis  # noqa: F401
    if args.point:
        _install_kill_point(args.point)
    print("READY", flush=True)
    run_extract(texts, Path(args.out))
    print("DONE", flush=True)


def snapshot(path: Path) -> dict:
    """Everything a store holds, for exact comparison."""
    from lstmvis import StateStore
    with StateStore.open(path) as s:
        return {"tokens": s.token_ids(), "offsets": s.offsets.copy(),
                "states": {k: s.states(k) for k in s.sources}, "meta": {m: s.meta(m) for m in s.meta_names},
                "texts": [s.sequence_text(i) for i in range(s.n_sequences)]}


def same(a: dict, b: dict, atol: float = 0.0) -> bool:
    if not (np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["offsets"], b["offsets"])
            and a["texts"] == b["texts"] and a["states"].keys() == b["states"].keys()
            and a["meta"].keys() == b["meta"].keys()):
        return False
    if not all(np.array_equal(a["meta"][k], b["meta"][k]) for k in a["meta"]):
        return False
    return all(np.allclose(a["states"][k], b["states"][k], atol=atol, rtol=0) for k in a["states"])


def done_count(partial: Path) -> int | None:
    """How many sequences an unfinished extraction has marked done (None: no readable partial file)."""
    import h5py
    try:
        with h5py.File(partial, "r") as f:
            return int(np.count_nonzero(f["done"][()])) if "done" in f else 0
    except (OSError, KeyError):
        return None


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Harness:
    """A folder with an earlier store at the target path, a sibling store, and the reference."""

    def __init__(self, work: Path, n_sequences: int):
        self.work = work
        self.texts = corpus(n_sequences, 0)
        self.texts_file = work / "texts.json"
        self.texts_file.write_text(json.dumps(self.texts))
        self.earlier_texts = self.texts[: max(2, n_sequences // 10)][::-1]
        ref_path = work / "reference.h5"
        t0 = time.perf_counter()
        run_extract(self.texts, ref_path).close()
        self.in_process_seconds = time.perf_counter() - t0
        self.reference = snapshot(ref_path)
        self.template_earlier = work / "earlier-template.h5"
        run_extract(self.earlier_texts, self.template_earlier).close()
        self.earlier = snapshot(self.template_earlier)
        shutil.copy(ref_path, work / "sibling-template.h5")

    def fresh_folder(self, trial: int) -> Path:
        folder = self.work / f"trial-{trial:02d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        shutil.copy(self.template_earlier, folder / "states.h5")
        shutil.copy(self.work / "sibling-template.h5", folder / "sibling.h5")
        return folder

    def spawn(self, folder: Path, point: str | None) -> subprocess.Popen:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--texts", str(self.texts_file),
               "--out", str(folder / "states.h5")]
        if point:
            cmd += ["--point", point]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            raise RuntimeError(f"worker did not start: {line!r} {proc.stderr.read()[-2000:]}")
        return proc

    def uninterrupted_seconds(self) -> float:
        """From READY to DONE in a child: the extraction itself (not the interpreter's exit after it)."""
        folder = self.fresh_folder(99)
        proc = self.spawn(folder, None)
        t0 = time.perf_counter()
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        proc.wait(timeout=600)
        if line.strip() != "DONE":
            raise RuntimeError(f"worker did not finish: {line!r} {proc.stderr.read()[-2000:]}")
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.read()[-2000:])
        shutil.rmtree(folder)
        return elapsed

    def trial(self, trial: int, delay: float | None = None, point: str | None = None) -> dict:
        """Kill after ``delay`` seconds (random trials) or at ``point``; then check and rerun."""
        from lstmvis import StoreError
        folder = self.fresh_folder(trial)
        target, partial = folder / "states.h5", folder / "states.h5.partial"
        sibling_digest = file_digest(folder / "sibling.h5")
        proc = self.spawn(folder, point)
        if delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=600)
        killed = proc.returncode == -signal.SIGKILL
        row = {"trial": trial, "delay_s": None if delay is None else round(delay, 3), "point": point,
               "killed": killed, "problems": []}
        problems = row["problems"]
        # 1. the target path: the earlier store unchanged, or the new one in full
        try:
            now = snapshot(target)
            row["target"] = "earlier" if same(now, self.earlier) else "new" if same(now, self.reference, 1e-5) \
                else "OTHER"
            if row["target"] == "OTHER":
                problems.append("target opens with content that is neither the earlier nor the new store")
        except (StoreError, FileNotFoundError) as exc:
            row["target"] = "missing"
            problems.append(f"the earlier store was lost: {exc}")
        # 2. the partial file never opens as complete unless it is
        row["partial_left"] = partial.exists()
        if partial.exists():
            try:
                got = snapshot(partial)
                if not same(got, self.reference, 1e-5):
                    problems.append("the partial file opens as a complete store but its content is wrong")
                row["partial_opens"] = True
            except (StoreError, OSError):
                row["partial_opens"] = False
        # 3. the sibling store is untouched
        if file_digest(folder / "sibling.h5") != sibling_digest:
            problems.append("the sibling store changed")
        # 4. a rerun finishes and equals the uninterrupted run
        row["resumable_sequences"] = done_count(partial)
        t0 = time.perf_counter()
        try:
            run_extract(self.texts, target).close()
            if not same(snapshot(target), self.reference, 1e-5):
                problems.append("the rerun's store differs from an uninterrupted extraction")
        except Exception as exc:  # noqa: BLE001 -- report any failure of the rerun
            problems.append(f"the rerun failed: {type(exc).__name__}: {exc}")
        row["rerun_s"] = round(time.perf_counter() - t0, 2)
        # 5. nothing left behind
        leftovers = sorted(p.name for p in folder.iterdir()
                           if p.name not in ("states.h5", "sibling.h5") and not p.name.endswith(".index"))
        if leftovers:
            problems.append(f"files left behind: {leftovers}")
        shutil.rmtree(folder, ignore_errors=True)
        return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="random-delay SIGKILL trials (default 20)")
    p.add_argument("--points", default="", help="comma-separated named kill points, or 'all'")
    p.add_argument("--sequences", type=int, default=120, help="corpus size in parens sequences (default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the per-trial rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--point", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    import torch
    torch.set_num_threads(1)
    points = list(POINTS) if args.points == "all" else [x for x in args.points.split(",") if x]
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kill-extraction-") as tmp:
        h = Harness(Path(tmp), args.sequences)
        total = h.uninterrupted_seconds() if args.trials else 0.0
        print(f"corpus: {len(h.texts)} sequences, {sum(map(len, h.texts))} tokens; uninterrupted extraction in a "
              f"child: {total:.2f} s (in process {h.in_process_seconds:.2f} s)", flush=True)
        for i in range(args.trials):
            rows.append(h.trial(i, delay=rng.uniform(0.0, 1.15 * total)))
            print(json.dumps(rows[-1]), flush=True)
        for j, point in enumerate(points):
            rows.append(h.trial(args.trials + j, point=point))
            print(json.dumps(rows[-1]), flush=True)
    bad = [r for r in rows if r["problems"]]
    killed = sum(r["killed"] for r in rows)
    outcomes = {k: sum(r["target"] == k for r in rows) for k in ("earlier", "new", "OTHER", "missing")}
    print(f"\n{len(rows)} trials, {killed} killed mid-run; target afterwards: {outcomes}; partial files opening as "
          f"complete: {sum(bool(r.get('partial_opens')) for r in rows)}; reruns matching an uninterrupted run: "
          f"{sum(not any('rerun' in x for x in r['problems']) for r in rows)}/{len(rows)}; trials with problems: "
          f"{len(bad)}; reruns that resumed done sequences: {sum(bool(r.get('resumable_sequences')) for r in rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
