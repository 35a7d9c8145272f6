"""extract: run a model over a corpus and write every recorded state to a StateStore.

Three kinds of model are understood:

* a language model (``lstmvis.LanguageModel``, or any object with ``.module``, ``.vocab`` and
  ``.tokenizer``, wrapped as one), run through ``LanguageModel.step``. A recurrent one's texts of
  any length are cut into chunks and the state is carried from chunk to chunk, so the states
  equal one pass over the whole text; a stateless one (``ids -> logits``) runs each text whole,
  in one chunk as long as the longest text. Sequences run in ``batch_size`` parallel streams: when a
  sequence ends, its stream starts the next one from a zero state.
* a ``textexplain.TextModel`` (classifiers, possibly bidirectional): each text in one pass,
  batched by length and right-padded with the pad id (the model must ignore padding, as the
  shipped ones do by packing).
* a plain ``nn.Module`` mapping ids ``(B, T)`` to anything, with token-id lists as input.
  Without ``pad_id`` only sequences of equal length share a batch (always exact).

The store is written to ``<path>.partial`` and renamed to ``path`` when complete, so a killed
extraction never leaves a store that opens. Rerunning the same extraction resumes from the
sequences already written to the partial file: it is checkpointed every ``CHECKPOINT_SECONDS``
and when the extraction stops (``StoreWriter.checkpoint``), so a resume finds the work done up to
the last checkpoint after any kill, SIGKILL included. A partial file that cannot be resumed (killed
while it was set up or finished, or made by another model, corpus or settings) is started again
with a warning that says why.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from textexplain.language_model import LanguageModel, as_language_model
from textexplain.model import tokenization_of

from .allocator import MiB, tune_allocator
from .capture import Deferred, Recorder, parse_kinds
from .detokenize import detokenize, join_style
from .backend import backend_kind
from .store import StateStore, StoreError, StoreWriter, partial_path_for
from .zarr_backend import PART_TOKENS, plan_parts

DEFAULT_KINDS = ("h", "c")
FLUSH_ROWS = 4096
STAGE_BYTES = 64 << 20          # whole short sequences wait in memory up to this size, then go out in few writes
EXTRACT_MMAP_THRESHOLD = 1024 * MiB  # see tune_allocator_for_extraction
WRITE_QUEUE_BYTES = 1024 * MiB  # about this much memory held by chunks waiting for the writer thread ...
WRITE_QUEUE_CHUNKS = (2, 8)      # ... in at least 2 and at most 8 chunks (a deep queue rides out write stalls)
HELD_PER_STORED = 4              # a waiting chunk holds about 4x its stored rows (deferred c keeps the gates)
CHECKPOINT_SECONDS = 5.0         # at most this much finished work is redone after a kill


class _Corpus:
    """Token ids per sequence, with texts and spans when the input was text."""

    def __init__(self, ids: list[np.ndarray], vocab: list[str], texts: list[str] | None,
                 spans: list[np.ndarray] | None):
        self.ids, self.vocab, self.texts, self.spans = ids, vocab, texts, spans
        self.lengths = np.array([len(x) for x in ids], dtype=np.int64)
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.offsets.tobytes())
        for x in self.ids:
            h.update(np.ascontiguousarray(x, dtype=np.int64).tobytes())
        h.update(json.dumps(self.vocab).encode("utf-8", "surrogatepass"))
        return h.hexdigest()


def _kind_of_model(model) -> str:
    from textexplain.model import TextModel

    if isinstance(model, TextModel):
        return "classifier"
    if isinstance(model, LanguageModel):
        return "language-model"
    if isinstance(model, nn.Module):
        return "module"
    if isinstance(getattr(model, "module", None), nn.Module) and hasattr(model, "vocab") and hasattr(model, "tokenizer"):
        return "language-model"
    raise TypeError(f"extract needs a lstmvis.LanguageModel, a textexplain.TextModel or an nn.Module, got "
                    f"{type(model).__name__}")


def _vocab_list(vocab) -> list[str]:
    return list(vocab.itos) if hasattr(vocab, "itos") else [str(t) for t in vocab]


def _decoded(ids: list[np.ndarray], vocab_list: list[str], tokenizer) -> _Corpus:
    """Token-id lists with the texts their tokens make (``lstmvis.detokenize``) and the tokens' spans."""
    style = join_style(vocab_list, tokenizer)
    decoded = [detokenize([vocab_list[i] for i in x.tolist()], style) for x in ids]
    return _Corpus(ids, vocab_list, [text for text, _ in decoded], [spans for _, spans in decoded])


def _prepare_corpus(model, kind: str, texts_or_ids, vocab, tokenizer=None) -> _Corpus:
    if isinstance(texts_or_ids, str):
        texts_or_ids = [texts_or_ids]
    items = list(texts_or_ids)
    if not items:
        raise ValueError("the corpus is empty: give at least one text or token-id list")
    is_text = isinstance(items[0], str)
    if any(isinstance(x, str) != is_text for x in items):
        raise TypeError("give either texts (str) or token-id lists, not a mix")
    if kind == "module":
        if is_text:
            raise TypeError("a plain nn.Module needs token-id lists; wrap it in a TextModel or LanguageModel to "
                            "extract from texts")
        ids = [np.asarray(x, dtype=np.int64).reshape(-1) for x in items]
        n_vocab = max((int(x.max()) + 1 for x in ids if len(x)), default=1)
        vocab_list = _vocab_list(vocab) if vocab is not None else [str(i) for i in range(n_vocab)]
        if n_vocab > len(vocab_list) or any(len(x) and x.min() < 0 for x in ids):
            raise ValueError(f"token ids must lie in 0..{len(vocab_list) - 1} (the vocabulary size)")
        return _Corpus(ids, vocab_list, None, None) if vocab is None else _decoded(ids, vocab_list, tokenizer)
    vocab_list = _vocab_list(model.vocab)
    if not is_text:
        ids = [np.asarray(x, dtype=np.int64).reshape(-1) for x in items]
        if any(len(x) and (x.min() < 0 or x.max() >= len(vocab_list)) for x in ids):
            raise ValueError(f"token ids must lie in 0..{len(vocab_list) - 1} (the model's vocabulary)")
        return _decoded(ids, vocab_list, getattr(model, "tokenizer", None))
    ids, spans = [], []
    for i, text in enumerate(items):
        try:
            ids.append(np.asarray(model.encode(text), dtype=np.int64))
        except ValueError as exc:  # say which text of a large corpus is refused
            raise ValueError(f"text {i} of the corpus ({text[:40]!r}): {exc}") from None
        span = model.token_spans(text)
        spans.append(None if span is None else np.asarray(span, dtype=np.int64).reshape(-1, 2))
    has_spans = all(s is not None for s in spans)
    return _Corpus(ids, vocab_list, list(items), spans if has_spans else None)


def _fingerprint(module: nn.Module, corpus: _Corpus, settings: dict) -> str:
    h = hashlib.sha256(corpus.digest().encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Sink:
    """Turns each chunk's recorded states into per-sequence rows and writes them in large blocks.

    Everything after the forward pass runs on one background thread, in order: the deferred cell
    states (``Recorder(defer=True)``), the copies of each stream's rows and the HDF5 writes (h5py
    releases the GIL while writing), so the next chunk's forward pass overlaps all of it. A
    sequence is marked done only after all of its rows are written. At most ``max_chunks`` chunks
    wait (each holds its states), and an error on the thread reaches the caller at the next chunk.

    A sequence that arrives whole in one chunk (a sentence of a classifier's corpus) is staged in
    memory with the others instead of written alone: they are written, merged into runs of
    neighbouring sequences, when ``STAGE_BYTES`` is reached and at ``close`` (one HDF5 write per
    source and run instead of one per source and sentence: 0.5 ms each).
    """

    def __init__(self, writer: StoreWriter, corpus: _Corpus, sources: list[str], dtype: str, done: np.ndarray,
                 bar, max_chunks: int = WRITE_QUEUE_CHUNKS[0]):
        self.writer, self.corpus, self.sources, self.dtype = writer, corpus, sources, np.dtype(dtype)
        self.done, self.bar = done, bar
        self.buffers: dict[int, dict[str, np.ndarray]] = {}  # per sequence: a block of rows per source
        self.written: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        self.staged: list[tuple[int, int, dict[str, np.ndarray]]] = []  # whole sequences: (seq, rows, blocks)
        self.staged_bytes = 0
        self.last_checkpoint = time.monotonic()
        self._jobs: queue.Queue = queue.Queue(maxsize=max_chunks)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_loop, name="lstmvis-extract-writer", daemon=True)
        self._thread.start()

    def add_chunk(self, states: Mapping[str, Deferred] | None,
                  report: Sequence[tuple[int, int, int, int, bool]]) -> None:
        """Queue one chunk: ``states`` from ``Recorder.deferred_states`` and ``(sequence, start,
        n_tokens, batch_row, finished)`` per stream (``run_streams``' report)."""
        def job() -> None:
            resolved = {s: states[s].result() for s in self.sources} if states is not None else None
            for seq, _, n, b, finished in report:
                if n == 0:
                    self.finish(seq)
                else:
                    self.add(seq, resolved, b, n, finished)
        self._submit(job)

    def add(self, seq: int, states: Mapping[str, torch.Tensor], b: int, n: int, finished: bool) -> None:
        """Copy one stream's ``n`` rows into the sequence's block buffers (once, converting the dtype);
        a block is written when it holds ``FLUSH_ROWS`` rows or the sequence ends."""
        filled = self.pending.get(seq, 0)
        buffers = self.buffers.get(seq)
        if buffers is not None and filled + n > len(buffers[self.sources[0]]):
            self._flush(seq)
            filled = 0
            if n > len(buffers[self.sources[0]]):
                buffers = None
        if buffers is None:
            rows = min(FLUSH_ROWS + n, int(self.corpus.lengths[seq]) - self.written.get(seq, 0))
            buffers = self.buffers[seq] = {s: np.empty((rows, states[s].shape[-1]), self.dtype) for s in self.sources}
        for s in self.sources:
            np.copyto(buffers[s][filled:filled + n], states[s][b, :n].to("cpu", torch.float32).numpy(),
                      casting="same_kind")
        self.pending[seq] = filled + n
        if finished and not self.written.get(seq) and self.pending[seq] == self.corpus.lengths[seq]:
            self._stage(seq)
        else:
            if finished or self.pending[seq] >= FLUSH_ROWS:
                self._flush(seq)
            if finished:
                self.finish(seq)
        self.bar.update(n)

    def _stage(self, seq: int) -> None:
        """Keep a whole sequence's rows for ``_write_staged`` (written with its neighbours)."""
        n = self.pending.pop(seq)
        blocks = {s: b[:n] for s, b in self.buffers.pop(seq).items()}
        self.staged.append((seq, n, blocks))
        self.staged_bytes += sum(b.nbytes for b in blocks.values())
        if self.staged_bytes >= STAGE_BYTES:
            self._write_staged()

    def _write_staged(self) -> None:
        """Write the staged sequences in runs of neighbours (one write per source and run), then mark
        them done."""
        staged = sorted(self.staged, key=lambda item: item[0])
        self.staged, self.staged_bytes = [], 0
        run: list[tuple[int, int, dict[str, np.ndarray]]] = []
        for item in staged + [None]:
            if run and (item is None or item[0] != run[-1][0] + 1):
                start = int(self.corpus.offsets[run[0][0]])
                for s in self.sources:
                    self.writer.write_states(s, start, np.concatenate([blocks[s] for _, _, blocks in run]))
                run = []
            if item is not None:
                run.append(item)
        if staged:
            self.written.update((seq, n) for seq, n, _ in staged)
            self._mark_done([seq for seq, _, _ in staged])  # one HDF5 write for all their done flags

    def _flush(self, seq: int) -> None:
        n = self.pending.pop(seq, 0)
        if not n:
            return
        start = int(self.corpus.offsets[seq]) + self.written.get(seq, 0)
        self.written[seq] = self.written.get(seq, 0) + n
        for s, block in self.buffers[seq].items():
            self.writer.write_states(s, start, block[:n])

    def finish(self, seq: int) -> None:
        self._flush(seq)
        self.buffers.pop(seq, None)
        self._mark_done([seq])

    def _mark_done(self, seqs: list[int]) -> None:
        """Mark sequences (increasing) done, in memory and on disk, once all their rows are written."""
        for seq in seqs:
            if self.written.get(seq, 0) != self.corpus.lengths[seq]:
                raise RuntimeError(f"internal error: sequence {seq} got {self.written.get(seq, 0)} rows, "
                                   f"expected {self.corpus.lengths[seq]}")
        self.done[seqs] = True
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Put the finished sequences on disk so that a resume after a kill finds them."""
        self.writer.checkpoint(self.done)
        self.last_checkpoint = time.monotonic()

    def close(self) -> None:
        """Wait until every queued chunk is on disk and checkpoint; raise the first error of the thread, if any."""
        if self._thread.is_alive():
            self._jobs.put(self._write_staged)
            self._jobs.put(None)
            self._thread.join()
        if self._error is not None:
            with contextlib.suppress(Exception):  # keep the sequences finished before it; report the first error
                self.checkpoint()
            raise self._error
        self.checkpoint()

    def _submit(self, job) -> None:
        if self._error is not None:
            raise self._error
        self._jobs.put(job)

    def _write_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # handed to the extracting thread by _submit / close
                    self._error = exc


def _state_map(state, fn):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_state_map(s, fn) for s in state)
    raise TypeError(f"cannot carry a recurrent state of type {type(state).__name__} across chunks: the module must "
                    "return tensors or tuples of tensors with the batch in dimension 1 (as nn.LSTM/GRU do)")


def run_streams(module: Callable, ids: Sequence[np.ndarray], batch_size: int = 32, chunk_size: int = 512,
                pad_id: int = 0, device=None, recorder: Recorder | None = None, order: Sequence[int] | None = None):
    """Run a stateful module or step ``(ids, state) -> (out, state)`` over whole sequences in parallel streams.

    Each of ``batch_size`` streams runs one sequence chunk by chunk, carrying its state; when it
    ends, the stream starts the next sequence (longest first) from a zero state. A generator:
    after each chunk it yields ``[(sequence, start, n_tokens, batch_row, finished)]`` (the
    recorder, if given, holds that chunk's states); empty sequences come as ``n_tokens = 0``.
    """
    lengths = [len(x) for x in ids]
    queue = sorted(range(len(ids)) if order is None else order, key=lambda i: lengths[i])  # pop() = longest
    streams: list[list[int]] = []  # [sequence, position]
    state = None
    while queue or streams:
        while len(streams) < batch_size and queue:
            seq = queue.pop()
            if lengths[seq] == 0:
                yield [(seq, 0, 0, -1, True)]
                continue
            streams.append([seq, 0])
        if not streams:
            break
        if state is not None:
            state = _with_fresh_streams(state, len(streams))
        remaining = [lengths[s] - p for s, p in streams]
        width = min(chunk_size, max(remaining))
        batch = torch.full((len(streams), width), pad_id, dtype=torch.long)
        report = []
        for b, (seq, pos) in enumerate(streams):
            n = min(width, remaining[b])
            batch[b, :n] = torch.as_tensor(ids[seq][pos:pos + n])
            report.append((seq, pos, n, b, n == remaining[b]))
        if recorder is None:
            _, state = module(batch.to(device), state)
        else:
            recorder.clear()
            with recorder:
                _, state = module(batch.to(device), state)
        yield report
        keep = [b for b, (*_, finished) in enumerate(report) if not finished]
        for b in keep:
            streams[b][1] += report[b][2]
        if len(keep) < len(streams):
            streams = [streams[b] for b in keep]
            index = torch.tensor(keep, dtype=torch.long, device=device)
            state = _state_map(state, lambda t: t.index_select(1, index)) if keep else None


def _run_language_model(model: LanguageModel, corpus, todo, rec, sink, batch_size, chunk_size, pad_id,
                        device) -> None:
    if not model.stateful:  # nothing to carry between chunks: every sequence in one
        chunk_size = max(chunk_size, int(corpus.lengths.max()))
    for report in run_streams(model.step, corpus.ids, batch_size, chunk_size, pad_id, device, rec, order=todo):
        sink.add_chunk(rec.deferred_states if report[0][2] else None, report)


def _with_fresh_streams(state, n_streams: int):
    """Append a zero state for each stream that joined (new streams go at the end)."""
    def grow(t):
        extra = n_streams - t.shape[1]
        if extra > 0:
            t = torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], 1)
        return t
    return _state_map(state, grow)


def _run_batched(module, corpus, todo, rec, sink, batch_size, pad_id, device) -> None:
    """One pass per sequence, batched by length (equal lengths only when pad_id is None)."""
    order = sorted(todo, key=lambda i: corpus.lengths[i])
    batches, current = [], []
    for seq in order:
        if corpus.lengths[seq] == 0:
            sink.add_chunk(None, [(seq, 0, 0, -1, True)])
            continue
        if current and (len(current) == batch_size
                        or (pad_id is None and corpus.lengths[seq] != corpus.lengths[current[0]])):
            batches.append(current)
            current = []
        current.append(seq)
    if current:
        batches.append(current)
    for group in batches:
        width = int(max(corpus.lengths[s] for s in group))
        batch = torch.full((len(group), width), 0 if pad_id is None else pad_id, dtype=torch.long)
        for b, seq in enumerate(group):
            batch[b, :corpus.lengths[seq]] = torch.from_numpy(corpus.ids[seq])
        rec.clear()
        with rec:
            module(batch.to(device))
        sink.add_chunk(rec.deferred_states,
                       [(seq, 0, int(corpus.lengths[seq]), b, True) for b, seq in enumerate(group)])


def _probe_sources(forward, rec, corpus, device) -> dict[str, int]:
    """Run up to 64 tokens of the longest sequence to learn each source's width and time alignment."""
    longest = int(np.argmax(corpus.lengths))
    if corpus.lengths[longest] == 0:
        raise ValueError("every sequence in the corpus is empty: nothing to extract")
    x = torch.from_numpy(corpus.ids[longest][:64])[None].to(device)
    rec.clear()
    with rec:
        forward(x)
    widths, skipped = {}, [f"{name} ({why})" for name, why in rec.skipped.items()]
    for name, v in rec.states.items():
        if v.shape[1] == x.shape[1]:
            widths[name] = v.shape[2]
        else:
            skipped.append(name)
    if skipped:
        warnings.warn(f"not stored (their time axis is not one step per token, e.g. after pooling): "
                      f"{', '.join(skipped)}; record them with lstmvis.Recorder directly", stacklevel=3)
    rec.clear()
    return widths


def extract(model, texts_or_ids, path: str | Path, sources: Sequence[str] | None = None,
            kinds: str | Sequence[str] = DEFAULT_KINDS, modules: Sequence | None = None, layers=None,
            batch_size: int = 32, chunk_size: int = 512, dtype: str = "float32", progress: bool = True,
            resume: bool = True, meta: Mapping[str, Sequence] | None = None, vocab: Sequence[str] | None = None,
            pad_id: int | None = None, corpus_name: str | None = None, route: str = "fused",
            tokenizer=None, name: str | None = None, part_tokens: int = PART_TOKENS, client=None,
            report: Callable[[int, int], None] | None = None) -> StateStore:
    """Record the states of ``model`` over a corpus into the store at ``path`` and open it.

    ``texts_or_ids``: texts (str) or token-id lists; one sequence each. ``kinds``/``modules``/
    ``layers`` choose what the ``Recorder`` captures (default ``h`` and ``c`` of every recurrent
    layer; ``modules`` may name any submodule with per-token outputs, e.g. a transformer's
    ``"encoder.*.activation"``); ``sources`` narrows to named sources. ``dtype``: ``"float32"`` or
    ``"float16"``. ``meta``: ``{name: per-token values}``, either flat (N,) or one array per sequence.
    ``vocab``/``pad_id``/``tokenizer`` are for plain modules. Token-id lists are stored with the
    text their tokens make (``lstmvis.detokenize``: concatenated for a char vocabulary, spaces
    between words) and each token's span in it; the card records the model's ``tokenization``
    (``StateStore.tokenization``). ``name``: the model's name, written to the store's
    card as ``"model"`` (default: the model's own ``name``) so the server links the store to it.
    ``route``: the ``Recorder`` route (``"unroll"`` is faster for c and gates of unidirectional
    GRUs). ``path``: an HDF5 file, or a ``*.zarr``
    folder or fsspec URL (``lstmvis.zarr_backend``). ``part_tokens``: the corpus is run in shards of
    whole sequences of about this many tokens, one after the other (a Zarr store keeps one part per
    shard): the same shards, hence bitwise the same states, for every backend. ``client``: a
    ``dask.distributed.Client``: the shards run as tasks on its workers (a Zarr store only), each
    worker loads the model once (``model`` given by provider name is loaded there by name, else the
    model is sent once to every worker) and writes its parts; a killed worker's shard is redone by
    another. ``report(tokens_done, tokens_total)`` is told the progress (after each shard with a
    client). Returns the opened ``StateStore``.
    """
    model_name = model if isinstance(model, str) else None
    if model_name is not None:
        from textexplain import providers

        try:
            model = providers.load_model(model_name)
        except LookupError as exc:
            raise TypeError(f"extract needs a lstmvis.LanguageModel, a textexplain.TextModel, an nn.Module or the name "
                            f"of a provider's model: {exc}") from None
    if client is not None and backend_kind(path) != "zarr":
        raise ValueError(f"a cluster writes a Zarr store: give a *.zarr path or a URL, not {path}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be at least 1")
    kind = _kind_of_model(model)
    if kind == "language-model":
        model = as_language_model(model)
    module = model if kind == "module" else model.module
    corpus = _prepare_corpus(model, kind, texts_or_ids, vocab, tokenizer)
    meta_flat = _flatten_meta(corpus, meta)
    if backend_kind(path) == "hdf5":
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a folder: give a file path for the store, e.g. {path / 'states.h5'}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {path.parent} does not exist: create it first")
    shards = plan_parts(corpus.offsets, part_tokens)
    try:
        param = next(module.parameters())
        device = param.device
    except StopIteration:
        device = torch.device("cpu")
    pad = pad_id if kind == "module" else model.vocab.pad_id if hasattr(model.vocab, "pad_id") else 0
    rec = Recorder(module, kinds=parse_kinds(kinds), modules=modules, layers=layers, route=route, defer=True,
                   pad_id=pad)
    modes = [(m, m.training) for m in module.modules()]  # each its own: train(True) would set them all
    module.eval()
    try:
        with torch.no_grad():
            widths = _probe_sources(model.step if kind == "language-model" else module, rec, corpus, device)
            if sources is not None:
                unknown = [s for s in sources if s not in widths]
                if unknown:
                    raise ValueError(f"unknown sources {unknown}: this model records {', '.join(widths)}")
                widths = {s: widths[s] for s in sources}
            settings = {"sources": list(widths), "dtype": dtype, "kind": kind, "store_format": 1}
            card = dict(getattr(model, "card", None) or {})
            card_model = name or getattr(model, "name", None) or card.get("name")
            if isinstance(card_model, str) and card_model:
                card["model"] = card_model
            tokenization = tokenization_of(tokenizer if kind == "module" else model.tokenizer) \
                if kind != "module" or tokenizer is not None else None
            if tokenization is not None:  # StateStore.tokenization: the pages offer a store only to models that cut alike
                card["tokenization"] = tokenization
            card["extraction"] = {**settings, "batch_size": batch_size, "chunk_size": chunk_size,
                                  "n_tokens": corpus.n_tokens, "n_sequences": len(corpus.ids),
                                  "corpus": corpus_name, "module": type(module).__name__}
            fingerprint = _fingerprint(module, corpus, settings)
            writer, done = _open_writer(path, corpus, widths, dtype, card, fingerprint, resume, shards)
            try:
                todo = [i for i in range(len(corpus.ids)) if not done[i]]
                left = int(corpus.lengths[todo].sum()) if todo else 0
                if client is not None:
                    settings_run = {"kinds": parse_kinds(kinds), "modules": modules, "layers": layers, "route": route,
                                    "sources": list(widths), "dtype": dtype, "batch_size": batch_size,
                                    "chunk_size": chunk_size, "pad": pad if kind != "module" else pad_id}
                    _extract_on_cluster(client, model_name or model, writer, corpus, shards, done, settings_run,
                                        report)
                with tqdm(total=corpus.n_tokens, initial=corpus.n_tokens - left, unit="tok",
                          disable=not progress or client is not None,
                          desc=f"extract {str(path).rstrip('/').rsplit('/', 1)[-1]}") as bar:
                    sink = _Sink(writer, corpus, list(widths), dtype, done, bar,
                                 _queue_chunks(batch_size * chunk_size * sum(widths.values())))
                    try:
                        for shard in _shard_todo(shards, len(corpus.ids), done) if client is None else []:
                            if kind == "language-model":
                                _run_language_model(model, corpus, shard, rec, sink, batch_size, chunk_size, pad,
                                                    device)
                            else:
                                _run_batched(module, corpus, shard, rec, sink, batch_size,
                                             pad if kind == "classifier" else pad_id, device)
                    finally:
                        sink.close()  # every queued write lands (or its error is raised) before the file closes
                writer.replace_meta(meta_flat)  # written in full at the end, also after a resume
                writer.finish()
            except BaseException:
                writer.suspend()  # the partial store stays for a resume
                raise
    finally:
        for m, training in modes:
            m.training = training
    return StateStore.open(path)


def _shard_todo(shards: list[int], n_sequences: int, done: np.ndarray) -> list[list[int]]:
    """The sequences not done yet of every shard (shards start at ``shards``), shard by shard."""
    bounds = list(shards) + [n_sequences]
    return [[i for i in range(a, b) if not done[i]] for a, b in zip(bounds[:-1], bounds[1:])]


def _queue_chunks(values_per_chunk: int) -> int:
    """How many chunks may wait for the writer thread: ``WRITE_QUEUE_BYTES`` worth, within ``WRITE_QUEUE_CHUNKS``
    (charlm-python, 32 streams x 512 characters of h and c: 4 chunks)."""
    held = max(1, values_per_chunk * 4 * HELD_PER_STORED)
    low, high = WRITE_QUEUE_CHUNKS
    return int(min(high, max(low, WRITE_QUEUE_BYTES // held)))


def _open_writer(path, corpus: _Corpus, widths: dict[str, int], dtype: str, card: dict, fingerprint: str,
                 resume: bool, shards: list[int]) -> tuple[StoreWriter, np.ndarray]:
    """The writer of an unfinished store of the same run and its finished sequences, or a fresh one.
    HDF5: the unfinished store is ``<path>.partial``; Zarr: the store itself, until its manifest."""
    zarr = backend_kind(path) == "zarr"
    partial = None if zarr else partial_path_for(path)
    if resume and (_unfinished_zarr(path) if zarr else partial.exists()):
        try:
            writer = StoreWriter.resume(path, partial)
        except (OSError, StoreError, KeyError) as exc:
            reason = f"it cannot be read ({str(exc).splitlines()[0]}): it was killed while being set up or finished"
        else:
            same_run = writer.fingerprint == fingerprint
            done = writer.done_flags() if same_run else None
            if done is not None:
                return writer, done
            writer.suspend()
            reason = ("it was stopped while being finished" if same_run
                      else "it was made by another model, corpus or extraction settings")
        warnings.warn(f"the unfinished extraction {partial or path} is not resumed and starts again: {reason}",
                      stacklevel=3)
    if partial is not None:
        partial.unlink(missing_ok=True)
    writer = StoreWriter(path, corpus.n_tokens, corpus.offsets, corpus.vocab, card=card, partial_path=partial,
                         parts=shards)
    try:
        writer.fingerprint = fingerprint
        writer.write_tokens(0, np.concatenate(corpus.ids) if corpus.n_tokens else np.zeros(0, np.int64))
        for name, width in widths.items():
            writer.add_source(name, width, dtype)
        if corpus.texts is not None:
            writer.set_texts(corpus.texts)
        if corpus.spans is not None:
            writer.set_spans(np.concatenate(corpus.spans) if corpus.n_tokens else np.zeros((0, 2), np.int64))
        done = np.zeros(len(corpus.ids), dtype=bool)
        writer.checkpoint(done)
    except BaseException:
        writer.abort()
        raise
    return writer, done


class _PartWriter:
    """What ``_Sink`` writes through on a worker: rows of one part at positions within the part."""

    def __init__(self, zarr_writing, part: int):
        self.store, self.part = zarr_writing, part
        self.row0 = zarr_writing.part_rows(part)[0]

    def write_states(self, name: str, start: int, arr: np.ndarray) -> None:
        if len(arr):
            self.store.write_rows(f"states/{name}", self.row0 + start, arr)

    def checkpoint(self, done: np.ndarray) -> None:
        """A part is recorded as done only whole (``mark_part``), after its last row."""


_WORKER_MODELS: dict[str, object] = {}  # models loaded by name on this worker, once


def _extract_part(model, url: str, part: int, ids: list[np.ndarray], settings: dict) -> int:
    """A cluster task: run one shard's sequences (token ids) and write them as part ``part`` of the
    Zarr store at ``url``, then mark the part done. The same schedule as a single process's shard,
    so the same floats. Returns the tokens written."""
    from .zarr_backend import ZarrWriting

    if isinstance(model, str):
        if model not in _WORKER_MODELS:
            from textexplain import providers

            _WORKER_MODELS[model] = providers.load_model(model)
        model = _WORKER_MODELS[model]
    kind = _kind_of_model(model)
    if kind == "language-model":
        model = as_language_model(model)
    module = model if kind == "module" else model.module
    corpus = _Corpus(ids, [], None, None)
    store = ZarrWriting.reopen(url)
    rec = Recorder(module, kinds=settings["kinds"], modules=settings["modules"], layers=settings["layers"],
                   route=settings["route"], defer=True)
    try:
        param = next(module.parameters())
        device = param.device
    except StopIteration:
        device = torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), tqdm(disable=True) as bar:
            sink = _Sink(_PartWriter(store, part), corpus, settings["sources"], settings["dtype"],
                         np.zeros(len(ids), dtype=bool), bar)
            todo = list(range(len(ids)))
            try:
                if kind == "language-model":
                    _run_language_model(model, corpus, todo, rec, sink, settings["batch_size"],
                                        settings["chunk_size"], settings["pad"], device)
                else:
                    _run_batched(module, corpus, todo, rec, sink, settings["batch_size"], settings["pad"], device)
            finally:
                sink.close()
    finally:
        module.train(was_training)
    store.mark_part(part)
    return corpus.n_tokens


def _extract_on_cluster(client, model, writer: StoreWriter, corpus: _Corpus, shards: list[int], done: np.ndarray,
                        settings: dict, report: Callable[[int, int], None] | None) -> None:
    """Run every shard not done yet as an ``_extract_part`` task on ``client``'s workers; returns when all
    parts are written (a task lost with its worker is rerun by the scheduler, from the start of its part)."""
    from distributed import as_completed

    zarr_writing = writer.backend
    todo = [k for k, shard in enumerate(_shard_todo(shards, len(corpus.ids), done)) if shard]
    model_ref = model if isinstance(model, str) else client.scatter(model, broadcast=True)
    finished = int(corpus.lengths[done].sum())
    if report is not None:
        report(finished, corpus.n_tokens)
    futures = []
    for k in todo:
        a, b = zarr_writing.part_sequences(k)
        futures.append(client.submit(_extract_part, model_ref, zarr_writing.url, k, corpus.ids[a:b], settings,
                                     pure=False))
    try:
        for future in as_completed(futures):
            finished += future.result()
            if report is not None:
                report(finished, corpus.n_tokens)
    except BaseException:
        client.cancel(futures)
        raise
    for k in todo:
        a, b = zarr_writing.part_sequences(k)
        done[a:b] = True


def _unfinished_zarr(path) -> bool:
    """Whether a Zarr store at ``path`` was begun and never completed (it has no manifest)."""
    try:
        StateStore.open(path).close()
    except FileNotFoundError:
        return False
    except StoreError as exc:
        return "incomplete" in str(exc)
    return False


def _flatten_meta(corpus: _Corpus, meta) -> dict[str, np.ndarray]:
    """Meta tracks as flat (N,) arrays; one array per sequence is accepted too."""
    out = {}
    for name, values in (meta or {}).items():
        if len(values) == len(corpus.ids) and len(corpus.ids) != corpus.n_tokens:
            parts = [np.asarray(v) for v in values]
            if [len(p) for p in parts] != corpus.lengths.tolist():
                raise ValueError(f"meta track {name!r}: each sequence needs one value per token")
            values = np.concatenate(parts) if parts else np.zeros(0)
        values = np.asarray(values)
        if values.shape != (corpus.n_tokens,):
            raise ValueError(f"meta track {name!r} has shape {values.shape}: give one value per token "
                             f"({corpus.n_tokens}) or one array per sequence")
        out[name] = values
    return out


def tune_allocator_for_extraction() -> bool:
    """glibc settings under which oneDNN's LSTM workspace (~100 MB a layer call) is reused instead of
    faulting in fresh pages on every call (see ``lstmvis.allocator``). Returns whether applied."""
    return tune_allocator(mmap_threshold=EXTRACT_MMAP_THRESHOLD, trim_threshold=EXTRACT_MMAP_THRESHOLD)
