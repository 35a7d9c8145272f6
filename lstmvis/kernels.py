"""The compiled passes of ``match`` (numba; they release the GIL, ``lstmvis.query`` runs them on parts
of the store in threads): the selected cells' on-bits per step from the index's codes (``on_planes``,
``fix_bucket``), LSTMVis's strict run-length histogram (``strict_runs``), the stack scan over the runs of all levels
(``runs``) and the verification of the best candidates (``verify``). Definitions and the algorithm
are in ``lstmvis.query``'s docstring.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (LLVM's ctpop: one instruction)."""
    def codegen(context, builder, signature, args):
        return builder.zext(builder.ctpop(args[0]), context.get_value_type(types.int64))
    return types.int64(types.uint64), codegen


@intrinsic
def _popcount8(typingctx, x):
    """Set bits of a uint8 (LLVM's ctpop: vectorized with a table lookup per byte)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint8(types.uint8), codegen


@numba.njit(inline="always")
def _on_bit(codes, t, flip, least, enable):
    """1 if the cell is on at ``t``: its code (flipped, ``code ^ 255``, for cells on when low) is at
    least ``least``, and ``enable`` is 1 (0: the cell is on nowhere)."""
    return np.uint8((codes[t] ^ flip) >= least) & enable


@numba.njit(cache=True, nogil=True)
def on_planes(codes, rows, flips, least, enable, start, stop, planes, count, chunk_max, chunk_rise):
    """The selected cells over steps ``[start, stop)`` (``start`` a multiple of 64): ``planes[p, t]``
    bit ``k`` = cell ``8p + k`` on at ``t``, ``count[t]`` = how many are on, ``chunk_max[k]`` = the
    largest count in steps ``[64k, 64k + 64)``, ``chunk_rise[k]`` = the largest number of selected
    cells that switch on (on at ``t``, off at ``t - 1``) at a step ``t`` of the chunk (at ``t =
    start``, where ``t - 1`` is another thread's, its count). Eight cells at a time (one plane
    byte; ``rows``, ``flips``, ``least``, ``enable``: ``(planes, 8)``, see ``_on_bit``), vectorized
    over steps with one-byte arithmetic, in blocks that stay in cache. The threshold's own bucket
    counts as off here (``fix_bucket`` adds its steps that are on)."""
    block, chunk = 4096, 64
    n_planes = planes.shape[0]
    rise = np.zeros(block, dtype=count.dtype)
    for b0 in range(start, stop, block):
        b1 = min(stop, b0 + block)
        size = b1 - b0
        cnt = count[b0:b1]
        cnt[:] = 0
        for p in range(n_planes):
            plane = planes[p, b0:b1]
            if enable[p, 3] == 0:  # at most 3 cells on somewhere (the last plane): one at a time is cheaper
                plane[:] = 0
                for k in range(8):
                    if enable[p, k] == 0:
                        continue
                    c0, f0, l0, e0 = codes[rows[p, k], b0:b1], flips[p, k], least[p, k], enable[p, k]
                    for t in range(size):
                        on = _on_bit(c0, t, f0, l0, e0)
                        plane[t] |= on << np.uint8(k)
                        cnt[t] += on
                continue
            c0, c1, c2, c3 = codes[rows[p, 0], b0:b1], codes[rows[p, 1], b0:b1], codes[rows[p, 2], b0:b1], \
                codes[rows[p, 3], b0:b1]
            c4, c5, c6, c7 = codes[rows[p, 4], b0:b1], codes[rows[p, 5], b0:b1], codes[rows[p, 6], b0:b1], \
                codes[rows[p, 7], b0:b1]
            f0, f1, f2, f3, f4, f5, f6, f7 = flips[p, 0], flips[p, 1], flips[p, 2], flips[p, 3], flips[p, 4], \
                flips[p, 5], flips[p, 6], flips[p, 7]
            l0, l1, l2, l3, l4, l5, l6, l7 = least[p, 0], least[p, 1], least[p, 2], least[p, 3], least[p, 4], \
                least[p, 5], least[p, 6], least[p, 7]
            e0, e1, e2, e3, e4, e5, e6, e7 = enable[p, 0], enable[p, 1], enable[p, 2], enable[p, 3], enable[p, 4], \
                enable[p, 5], enable[p, 6], enable[p, 7]
            for t in range(size):
                on = (_on_bit(c0, t, f0, l0, e0) | (_on_bit(c1, t, f1, l1, e1) << np.uint8(1))
                      | (_on_bit(c2, t, f2, l2, e2) << np.uint8(2)) | (_on_bit(c3, t, f3, l3, e3) << np.uint8(3))
                      | (_on_bit(c4, t, f4, l4, e4) << np.uint8(4)) | (_on_bit(c5, t, f5, l5, e5) << np.uint8(5))
                      | (_on_bit(c6, t, f6, l6, e6) << np.uint8(6)) | (_on_bit(c7, t, f7, l7, e7) << np.uint8(7)))
                plane[t] = on
                cnt[t] += _popcount8(on)
        for c0 in range(0, size, chunk):
            top = cnt[c0]
            for t in range(c0 + 1, min(size, c0 + chunk)):
                top = max(top, cnt[t])
            chunk_max[(b0 + c0) // chunk] = top
        rise[:] = 0
        first = 1 if b0 == start else 0
        if first:
            rise[0] = cnt[0]
        for p in range(n_planes):
            now, before = planes[p, b0 + first:b1], planes[p, b0 + first - 1:b1 - 1]
            for t in range(size - first):
                rise[t + first] += _popcount8(now[t] & ~before[t])
        for c0 in range(0, size, chunk):
            top = rise[c0]
            for t in range(c0 + 1, min(size, c0 + chunk)):
                top = max(top, rise[t])
            chunk_rise[(b0 + c0) // chunk] = top


def plane_tables(column: np.ndarray, low: np.ndarray, split: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``on_planes``'s ``(rows, flips, least, enable)`` for the cells of ``cell_tests``: cell ``j`` is
    slot ``j & 7`` of plane ``j >> 3``. On when high: ``code > split``, i.e. ``code >= split + 1``;
    on when low: ``code < split``, i.e. ``code ^ 255 >= 256 - split``; a bound of 256 is nowhere
    (``enable`` 0). Empty slots are never on (and read the plane's first row again, in cache)."""
    n_planes = (len(column) + 7) // 8
    rows = np.repeat(column[::8], 8).reshape(n_planes, 8).astype(np.int64)
    flips = np.zeros((n_planes, 8), dtype=np.uint8)
    least = np.full((n_planes, 8), 256, dtype=np.int16)
    j = np.arange(len(column))
    rows.flat[j] = column
    flips.flat[j] = np.where(low, 255, 0)
    least.flat[j] = np.where(low, 256 - np.maximum(split, 0), split + 1)
    return rows, flips, np.minimum(least, 255).astype(np.uint8), (least < 256).astype(np.uint8)


@numba.njit(cache=True, nogil=True)
def fix_bucket(keys, order, bucket_start, column, low, check, k_pos, k_neg, planes, count, chunk_max, chunk_rise):
    """Add to ``on_planes``'s result the steps of the threshold's own bucket (``check``) that are
    on: a prefix (low) or suffix (high) of the bucket in key order (``order``), found by bisection.
    ``chunk_rise`` stays an upper bound: each cell added at a step adds at most one to its rise."""
    chunk = 64
    for j in range(len(column)):
        if check[j] < 0:
            continue
        cell, p, bit = column[j], j >> 3, np.uint8(1 << (j & 7))
        lo, hi = bucket_start[cell, check[j]], bucket_start[cell, check[j] + 1]
        while lo < hi:  # the first with key > k_neg (low) or key >= k_pos (high)
            mid = (lo + hi) // 2
            key = keys[cell, order[cell, mid]]
            if (key <= k_neg) if low[j] else (key < k_pos):
                lo = mid + 1
            else:
                hi = mid
        first, last = (bucket_start[cell, check[j]], lo) if low[j] else (lo, bucket_start[cell, check[j] + 1])
        for i in range(first, last):
            t = order[cell, i]
            planes[p, t] |= bit
            count[t] += np.uint8(1)
            chunk_max[t // chunk] = max(chunk_max[t // chunk], count[t])
            chunk_rise[t // chunk] += 1


@numba.njit(inline="always")
def _step_bits(planes, t, w, n_planes):
    """Word ``w`` of the selected cells' on-bits at step ``t`` (cells ``64w .. 64w + 63``)."""
    word = np.uint64(0)
    for p in range(8 * w, min(n_planes, 8 * w + 8)):
        word |= np.uint64(planes[p, t]) << np.uint64(8 * (p - 8 * w))
    return word


@numba.njit(cache=True, nogil=True)
def strict_runs(count, chunk_max, n, offsets, first_seq, last_seq, pad_left, pad_right, min_length, phrase_length,
                histogram):
    """``histogram[L]`` += the number of *strict* runs of length ``L`` in sequences ``[first_seq, last_seq)``:
    maximal runs with all ``n`` selected cells on (``count == n``), of length ``>= min_length`` (exactly
    ``phrase_length`` when it is not 0), with every selected cell off (``count == 0``) at each of the
    ``pad_left`` steps before and the ``pad_right`` steps after (clipped to the sequence); chunks of 64
    steps whose largest count is below ``n`` are skipped."""
    histogram[:] = 0
    for seq in range(first_seq, last_seq):
        lo, hi = offsets[seq], offsets[seq + 1]
        t, open_at = lo, -1
        while t <= hi:
            if t < hi and open_at < 0 and t % 64 == 0 and chunk_max[t // 64] < n:
                t += 64
                continue
            if t < hi and count[t] == n:
                if open_at < 0:
                    open_at = t
            elif open_at >= 0:
                length = t - open_at
                strict = length == phrase_length if phrase_length > 0 else length >= min_length
                for r in range(max(lo, open_at - pad_left), open_at):
                    strict = strict and count[r] == 0
                for r in range(t, min(hi, t + pad_right)):
                    strict = strict and count[r] == 0
                if strict:
                    histogram[length] += 1
                open_at = -1
            t += 1


@numba.njit(inline="always")
def _start_bound(planes, t, seq_lo, pad_left, words, n_planes):
    """How many selected cells are on at ``t`` and off at each of its left padding steps (inside
    its sequence): no run starting at ``t`` has a larger ``|C & C'|``."""
    bound = 0
    for w in range(words):
        pad = np.uint64(0)
        for r in range(max(seq_lo, t - pad_left), t):
            pad |= _step_bits(planes, r, w, n_planes)
        bound += _popcount(_step_bits(planes, t, w, n_planes) & ~pad)
    return bound


@numba.njit(cache=True, nogil=True)
def runs(planes, count, chunk_max, chunk_rise, n, word_slots, level, known, offsets, first_seq, last_seq, pad_left,
         pad_right, min_length, phrase_length, top, cand):
    """In sequences ``[first_seq, last_seq)``, enumerate the candidates that are runs at some level
    ``>= level`` (steps counting fewer than ``level`` end runs) and can reach the ``top`` best, with
    their exact ``|C & C'|``; keep in ``cand`` (rows ``start, stop, lo, hi, |C & C'|``; ``[lo, hi)``:
    the run with its padding inside its sequence) those that fewer than ``top`` others beat on
    ``|C & C'|``; ``known``: a lower bound of the ``top``-th best ``|C & C'|`` (0: none), candidates
    below it are not kept. ``word_slots``: a tuple of ``(n + 63) // 64`` zeros, so that the number
    of bit words per step is known when compiling (2x faster loops). Returns ``(kept, floor,
    n_candidates)``: ``floor`` is the ``top``-th best ``|C & C'|`` found (0 if fewer than ``top``
    were found above ``known``); ``kept``: the candidates kept, rows of ``cand`` or of a larger
    array that replaced it when it filled up.

    A stack holds the open runs of all levels (heights strictly increasing), each with the AND of
    its own steps' bits, the OR of its start's left padding and the *bound* of its start: how many
    selected cells are on at the start and off at its padding (``|C & C'|`` of every run starting
    there is at most that). A step of count ``v`` closes every open run higher than ``v``: the run
    ``[s, t)`` on top is maximal at the levels above ``max(v, height below it)``, one candidate, and
    its AND goes on to the run below. Runs whose bound is below the ``top``-th best ``|C & C'|`` found
    so far (the *floor*), and runs lower than ``level``, are *dead*: they can never be kept. The
    bottom of the stack (entry 0) stands for all the open dead runs: its height is the highest level
    they reach. While no live run is open, the scan only looks for the next step where a run with a
    large enough bound starts (the count rises above the dead height there), skipping 64 steps at a
    time where every count is below ``level``. As the floor rises, ``level`` rises with it: a run
    at level ``m`` has ``|C & C'| <= m``.
    """
    words = len(word_slots)  # ``(n + 63) // 64``, known when compiling: one version per tuple length
    end = offsets[last_seq]
    n_planes = planes.shape[0]
    st_start = np.zeros(n + 2, dtype=np.int64)
    st_height = np.zeros(n + 2, dtype=np.int64)
    st_bound = np.zeros(n + 2, dtype=np.int64)
    st_and = np.zeros((n + 2, words), dtype=np.uint64)
    st_pad = np.zeros((n + 2, words), dtype=np.uint64)
    acc = np.empty(words, dtype=np.uint64)
    by_inter = np.zeros(n + 1, dtype=np.int64)
    kept, floor, at_least_floor, n_candidates, fold = 0, max(known, 1), 0, 0, False
    level = max(level, floor)
    seq = first_seq
    seq_lo = seq_hi = t = offsets[first_seq]  # an empty sequence before the first: its first step "ends" it
    sp = 1  # entries 1 .. sp - 1: live (or not yet folded) runs; entry 0: the dead runs
    while t <= end:
        if fold:
            fold = False
            sp = _fold_dead(st_start, st_height, st_bound, st_and, st_pad, sp, level, floor, words)
        if sp == 1 and t < seq_hi:  # no live run: on to the next step where one starts (kept inline: as a
            dead = st_height[0]     # function of its own, inlined or called, the scan took 7-15% longer)
            while t < seq_hi:
                if t % 64 == 0:
                    if dead == 0 and chunk_max[t // 64] < level:
                        t += 64
                        continue
                    if t != seq_lo and t + 64 <= seq_hi and (chunk_rise[t // 64] if pad_left else
                                                             chunk_max[t // 64]) < floor:
                        t += 64  # no run with a large enough bound starts in these 64 steps
                        dead = np.int64(count[t - 1])
                        if dead < level:
                            dead = 0
                        continue
                v = np.int64(count[t])
                if v < level:
                    v = 0
                if v > dead and (v if t == seq_lo or pad_left == 0 else
                                 _start_bound(planes, t, seq_lo, pad_left, words, n_planes)) >= floor:
                    break
                dead = v
                t += 1
            t = min(t, seq_hi)
            st_height[0] = dead
        v = np.int64(count[t]) if t < seq_hi else 0
        if v < level:
            v = 0
        if t < seq_hi and st_height[sp - 1] == v:  # the common step: it extends the top run
            for w in range(words):
                st_and[sp - 1, w] &= _step_bits(planes, t, w, n_planes)
            t += 1
            continue
        ending = t == seq_hi  # a sequence ends at t: close every open run (no right padding)
        for w in range(words):
            acc[w] = ~np.uint64(0)
        first = t
        while sp > 1 and st_height[sp - 1] > v:  # close the runs higher than v, each a candidate
            sp -= 1
            for w in range(words):
                acc[w] &= st_and[sp, w]
            s = st_start[sp]
            first = s
            length = t - s
            if st_bound[sp] >= floor and st_height[sp] >= level and (
                    (length == phrase_length) if phrase_length > 0 else (length >= min_length)):
                n_candidates += 1
                e_pad = t if ending else min(seq_hi, t + pad_right)
                inter = _intersection(planes, acc, st_pad, sp, t, e_pad, words, n_planes)
                if inter >= floor:
                    cand, kept = _keep(cand, kept, floor, s, t, max(seq_lo, s - pad_left), e_pad, inter)
                    by_inter[inter] += 1
                    at_least_floor, floor, raised = _raise_floor(by_inter, at_least_floor + 1, floor, top)
                    fold = fold or raised
                    level = max(level, floor)
        if st_height[0] > v:  # the dead runs above ``v`` end here too
            st_height[0] = v
        if ending:
            if t == end:
                break
            while offsets[seq + 1] <= t:  # on to the sequence holding t
                seq += 1
            seq_lo, seq_hi = offsets[seq], offsets[seq + 1]
            sp, first, st_height[0] = 1, t, 0
            continue  # t is examined again, inside its sequence
        for w in range(words):
            acc[w] &= _step_bits(planes, t, w, n_planes)
        if st_height[sp - 1] == v:  # the step extends the open run of its own height
            for w in range(words):
                st_and[sp - 1, w] &= acc[w]
        else:
            _open_run(planes, st_start, st_height, st_bound, st_and, st_pad, sp, first, t, v, acc, seq_lo, pad_left,
                      words, n_planes)
            sp += 1
        if st_bound[1] < floor or st_height[1] < level:
            fold = fold or sp > 1
        t += 1
    return cand[:_drop_below(cand, kept, floor)], floor if at_least_floor >= top else 0, n_candidates


@numba.njit(inline="always")
def _fold_dead(st_start, st_height, st_bound, st_and, st_pad, sp, level, floor, words):
    """Fold the dead entries at the bottom of ``runs``' stack (lower than ``level`` or with a bound
    below ``floor``) into entry 0; the entries above move down. Returns the new stack size."""
    k = 1
    while k < sp and (st_height[k] < level or st_bound[k] < floor):
        k += 1
    if k > 1:
        st_height[0] = st_height[k - 1]
        for i in range(k, sp):
            st_start[i - k + 1], st_height[i - k + 1], st_bound[i - k + 1] = st_start[i], st_height[i], st_bound[i]
            for w in range(words):
                st_and[i - k + 1, w], st_pad[i - k + 1, w] = st_and[i, w], st_pad[i, w]
        sp -= k - 1
    if st_height[0] < level:
        st_height[0] = 0
    return sp


@numba.njit(inline="always")
def _intersection(planes, acc, st_pad, sp, t, e_pad, words, n_planes):
    """``|C & C'|`` of the run in stack entry ``sp`` closing at ``t``: the selected cells on over all of
    it (``acc``) and off at its left padding (``st_pad``) and at its right padding ``[t, e_pad)``."""
    inter = 0
    for w in range(words):
        pad = st_pad[sp, w]
        for r in range(t, e_pad):
            pad |= _step_bits(planes, r, w, n_planes)
        inter += _popcount(acc[w] & ~pad)
    return inter


@numba.njit(inline="always")
def _keep(cand, kept, floor, start, stop, lo, hi, inter):
    """Append the candidate ``(start, stop, lo, hi, inter)`` to ``cand[:kept]``; when full, first drop
    the rows below ``floor``, and if more than half remain, move to an array twice as large. Returns
    the array and the new count."""
    if kept == len(cand):
        kept = _drop_below(cand, kept, floor)
        if 2 * kept > len(cand):
            larger = np.empty((2 * len(cand), 5), dtype=cand.dtype)
            larger[:kept] = cand[:kept]
            cand = larger
    cand[kept, 0], cand[kept, 1], cand[kept, 2], cand[kept, 3], cand[kept, 4] = start, stop, lo, hi, inter
    return cand, kept + 1


@numba.njit(inline="always")
def _drop_below(cand, kept, floor):
    """Move the rows of ``cand[:kept]`` with ``|C & C'| >= floor`` to the front, in order; their number."""
    m = 0
    for i in range(kept):
        if cand[i, 4] >= floor:
            cand[m] = cand[i]
            m += 1
    return m


@numba.njit(inline="always")
def _raise_floor(by_inter, at_least_floor, floor, top):
    """Raise ``floor`` while ``top`` candidates still have a larger ``|C & C'|`` (``by_inter``: how many
    have each; ``at_least_floor``: how many have at least ``floor``). Returns both and whether it rose."""
    raised = False
    while at_least_floor - by_inter[floor] >= top:
        at_least_floor -= by_inter[floor]
        floor += 1
        raised = True
    return at_least_floor, floor, raised


@numba.njit(inline="always")
def _open_run(planes, st_start, st_height, st_bound, st_and, st_pad, sp, first, t, v, acc, seq_lo, pad_left, words,
              n_planes):
    """Push the run of height ``v`` that starts at ``first`` and has the bits ``acc`` so far as stack
    entry ``sp``. If it starts at ``t``: the OR of its left padding inside the sequence and its bound;
    else it starts where the last closed run started, in that run's slot: same padding and bound."""
    st_start[sp], st_height[sp] = first, v
    for w in range(words):
        st_and[sp, w] = acc[w]
    if first == t:
        bound = 0
        for w in range(words):
            st_pad[sp, w] = 0
            for r in range(max(seq_lo, t - pad_left), t):
                st_pad[sp, w] |= _step_bits(planes, r, w, n_planes)
            bound += _popcount(acc[w] & ~st_pad[sp, w])
        st_bound[sp] = bound


@numba.njit(inline="always")
def _before(inter1, union1, length1, start1, inter2, union2, length2, start2):
    """Is the key ``(-inter1, union1, -length1, start1)`` smaller than ``(-inter2, ...)``?"""
    if inter1 != inter2:
        return inter1 > inter2
    if union1 != union2:
        return union1 < union2
    if length1 != length2:
        return length1 > length2
    return start1 < start2


@numba.njit(cache=True, nogil=True)
def verify(rows, starts, stops, lo, hi, inter, sign_code, k_pos, k_neg, selected, n, top):
    """The ``top`` best candidates: ``(start, stop, |C & C'|, |C | C'|)`` rows, ``C'`` as bit words,
    and how many were read. Candidates come sorted by their bound ``(-inter, n, -length, start)``
    (``|C | C'| >= n``): reading stops when the ``top``-th best key is no worse than the next bound.
    ``C'`` is the AND over the run's rows of the on-bits and over its padding rows of the off-bits.
    """
    d = rows.shape[1]
    words = len(selected)
    best = np.zeros((top, 4), dtype=np.int64)
    best_bits = np.zeros((top, words), dtype=np.uint64)
    cprime = np.empty(words, dtype=np.uint64)
    row = np.empty(words, dtype=np.uint64)
    m, n_verified = 0, 0
    for c in range(len(starts)):
        s, e = starts[c], stops[c]
        if m == top and not _before(inter[c], n, e - s, s, best[m - 1, 2], best[m - 1, 3],
                                    best[m - 1, 1] - best[m - 1, 0], best[m - 1, 0]):
            break
        n_verified += 1
        cprime[:] = ~np.uint64(0)
        for r in range(lo[c], hi[c]):
            row[:] = 0
            if sign_code == 0:
                for j in range(d):
                    row[j >> 6] |= np.uint64(rows[r, j] >= k_pos) << np.uint64(j & 63)
            elif sign_code == 1:
                for j in range(d):
                    row[j >> 6] |= np.uint64(rows[r, j] <= k_neg) << np.uint64(j & 63)
            else:
                for j in range(d):
                    row[j >> 6] |= np.uint64(rows[r, j] >= k_pos) << np.uint64(j & 63)
                    row[(d + j) >> 6] |= np.uint64(rows[r, j] <= k_neg) << np.uint64((d + j) & 63)
            if s <= r < e:
                for w in range(words):
                    cprime[w] &= row[w]
            else:
                for w in range(words):
                    cprime[w] &= ~row[w]
        got, extra = 0, 0
        for w in range(words):
            got += _popcount(cprime[w] & selected[w])
            extra += _popcount(cprime[w] & ~selected[w])
        union = n + extra
        if m == top and not _before(got, union, e - s, s, best[m - 1, 2], best[m - 1, 3],
                                    best[m - 1, 1] - best[m - 1, 0], best[m - 1, 0]):
            continue
        p = min(m, top - 1)  # insertion sort into the best list
        while p > 0 and _before(got, union, e - s, s, best[p - 1, 2], best[p - 1, 3],
                                best[p - 1, 1] - best[p - 1, 0], best[p - 1, 0]):
            best[p] = best[p - 1]
            best_bits[p] = best_bits[p - 1]
            p -= 1
        best[p, 0], best[p, 1], best[p, 2], best[p, 3] = s, e, got, union
        best_bits[p] = cprime
        m = min(m + 1, top)
    return best[:m].copy(), best_bits[:m].copy(), n_verified
