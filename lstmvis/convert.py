"""Copy a state store from one backend to another (HDF5 <-> Zarr, local <-> object storage), exactly."""
from __future__ import annotations

import numpy as np

from .store import StateStore, StoreWriter
from .zarr_backend import PART_TOKENS, plan_parts

COPY_BYTES = 64 << 20  # states copied in row blocks of about this size


def convert(source, target, part_tokens: int = PART_TOKENS) -> StateStore:
    """Write the store at ``source`` to ``target`` (either backend, chosen by the address) and open it.

    Everything is copied as stored: states in their dtype, token ids, vocabulary, offsets, meta,
    texts and spans (where present), card. ``part_tokens``: tokens per part of a Zarr target."""
    with StateStore.open(source) as store:
        writer = StoreWriter(target, store.n_tokens, store.offsets, store.vocab, card=store.card,
                             parts=plan_parts(store.offsets, part_tokens))
        try:
            writer.write_tokens(0, store.token_ids())
            for name in store.sources:
                ds = store.dataset(name)
                writer.add_source(name, store.n_cells(name), str(ds.dtype))
                step = max(1, COPY_BYTES // max(1, ds.shape[1] * ds.dtype.itemsize))
                for a in range(0, store.n_tokens, step):
                    writer.write_states(name, a, np.asarray(ds[a:a + step]))
            for name in store.meta_names:
                writer.add_meta(name, store.meta(name))
            if store.has_texts:
                writer.set_texts([store.sequence_text(i) for i in range(store.n_sequences)])
            if store.has_spans:
                writer.set_spans(store.token_spans())
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    return StateStore.open(target)
