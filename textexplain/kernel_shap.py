"""Shapley values of tokens: exact by enumeration for short texts, KernelSHAP above.

The players are token positions; a coalition keeps its tokens and masks the others with the
stated baseline (``mask``, default the pad embedding with the length kept). ``v(S)`` is the
target output. Exact values enumerate all ``2^M`` coalitions. KernelSHAP (Lundberg & Lee 2017)
solves the Shapley-kernel weighted least squares with the efficiency constraint
``sum(phi) = v(all) - v(none)`` enforced exactly: subset sizes whose expected share of the
budget covers them are enumerated completely, the rest are sampled in complementary pairs.
"""
from __future__ import annotations

from math import comb, factorial

import numpy as np

from .base import SEED_HELP
from .hyperparameters import Hyper
from .perturb import PerturbationExplainer, rng

MAX_EXACT_TOKENS = 20


def all_coalitions(n: int) -> np.ndarray:
    """Keep-masks ``(2^n, n)``; row ``c`` keeps token ``i`` when bit ``i`` of ``c`` is set."""
    codes = np.arange(2 ** n)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


def exact_shapley(n: int, value) -> tuple[np.ndarray, float, float]:
    """Exact Shapley values from ``value(keep_masks)`` on all coalitions; also v(none), v(all)."""
    v = value(all_coalitions(n))
    codes = np.arange(2 ** n)
    sizes = _popcount(codes)
    weight = np.array([factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)])
    phi = np.empty(n)
    for i in range(n):
        without = codes[((codes >> i) & 1) == 0]
        phi[i] = np.dot(weight[sizes[without]], v[without | (1 << i)] - v[without])
    return phi, float(v[0]), float(v[-1])


def _popcount(codes: np.ndarray) -> np.ndarray:
    counts = np.zeros_like(codes)
    c = codes.copy()
    while c.any():
        counts += c & 1
        c >>= 1
    return counts


def kernel_coalitions(n: int, budget: int, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions (keep-masks, without the empty and full ones) and their Shapley-kernel weights.

    At most ``budget - 2`` distinct coalitions. A pair of sizes ``k, n-k`` is enumerated when the
    budget share its kernel weight earns covers all its subsets; the remaining sizes are sampled
    in complementary pairs, duplicates adding weight instead of evaluations.
    """
    left = budget - 2
    if left >= 2 ** n - 2:
        keep = all_coalitions(n)[1:-1]
        k = keep.sum(1)
        return keep, (n - 1) / (comb_array(n, k) * k * (n - k))
    size_weight = np.array([(n - 1) / (k * (n - k)) for k in range(1, n)])
    masks: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    weight_left = size_weight.sum()
    pairs = [(k, n - k) for k in range(1, n // 2 + 1)]
    sampled_from: list[int] = []
    for index, (k, k_other) in enumerate(pairs):
        sizes = (k,) if k == k_other else (k, k_other)
        count = sum(comb(n, s) for s in sizes)
        mass = sum(size_weight[s - 1] for s in sizes)
        if count <= left and left * mass / weight_left >= count - 1e-8:
            for s in sizes:
                subsets = subsets_of_size(n, s)
                masks.append(subsets)
                weights.append(np.full(len(subsets), size_weight[s - 1] / comb(n, s)))
            left -= count
            weight_left -= mass
        else:
            sampled_from = [s for kk, ko in pairs[index:] for s in ((kk,) if kk == ko else (kk, ko))]
            break
    if sampled_from and left > 0:
        sampled, counts = _sample_pairs(n, sampled_from, size_weight, left, generator)
        masks.append(sampled)
        weights.append(weight_left * counts / counts.sum())
    if not masks:
        return np.zeros((0, n), dtype=bool), np.zeros(0)
    return np.concatenate(masks), np.concatenate(weights)


def _sample_pairs(n: int, sizes: list[int], size_weight: np.ndarray, wanted: int,
                  generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``wanted`` distinct coalitions drawn in complementary pairs (size by kernel weight, then a
    uniform subset of that size), with how often each was drawn. Vectorised draws, in rounds."""
    p = np.array([size_weight[s - 1] for s in sizes])
    p /= p.sum()
    found: dict[bytes, int] = {}
    rows: list[np.ndarray] = []
    counts: list[int] = []
    for _ in range(50):
        m = max(32, wanted - len(found))
        drawn = np.asarray(sizes)[generator.choice(len(sizes), size=m, p=p)]
        rank = np.argsort(np.argsort(generator.random((m, n)), axis=1), axis=1)
        keep = rank < drawn[:, None]
        for row in keep:
            pair = (row, ~row)
            keys = [r.tobytes() for r in pair]
            new = sum(key not in found for key in set(keys))
            if len(found) + new > wanted:
                return np.array(rows, dtype=bool).reshape(-1, n), np.asarray(counts, dtype=np.float64)
            for key, r in zip(keys, pair):
                if key in found:
                    counts[found[key]] += 1
                else:
                    found[key] = len(rows)
                    rows.append(r)
                    counts.append(1)
        if len(found) >= wanted:
            break
    return np.array(rows, dtype=bool).reshape(-1, n), np.asarray(counts, dtype=np.float64)


def comb_array(n: int, ks: np.ndarray) -> np.ndarray:
    return np.array([comb(n, int(k)) for k in ks], dtype=np.float64)


def subsets_of_size(n: int, size: int) -> np.ndarray:
    """Keep-masks ``(C(n, size), n)`` of every subset of ``size`` tokens."""
    from itertools import combinations

    chosen = np.array(list(combinations(range(n), size)), dtype=np.int64).reshape(-1, size)
    keep = np.zeros((len(chosen), n), dtype=bool)
    keep[np.arange(len(chosen))[:, None], chosen] = True
    return keep


def constrained_wls(z: np.ndarray, y: np.ndarray, w: np.ndarray, total: float) -> np.ndarray:
    """``argmin sum_j w_j (y_j - z_j . phi)^2`` subject to ``sum(phi) = total`` (KKT system)."""
    n = z.shape[1]
    zw = z.T * w
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = 2 * zw @ z
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.concatenate([2 * zw @ y, [total]])
    solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return solution[:n]


class Shap(PerturbationExplainer, name="shap", title="SHAP"):
    """Shapley values of the tokens (signed; they add up to ``v(all) - v(none)``).

    ``algorithm="auto"`` enumerates exactly when the text has at most ``exact_max_tokens``
    tokens (``2^M`` model evaluations) and runs KernelSHAP with ``budget`` distinct model
    evaluations above (default ``2M + 2048``). ``delta`` = ``sum(scores) - (v(all) - v(none))``
    (zero up to rounding: efficiency holds by construction).
    """

    budget = Hyper(int, None, ge=4, api_le=4096,
                   help="distinct model evaluations for KernelSHAP (default: 2 x tokens + 2048)")
    algorithm = Hyper(str, "auto", choices=("auto", "exact", "kernel"),
                      help="exact enumeration, KernelSHAP, or auto (exact up to exact_max_tokens)")
    exact_max_tokens = Hyper(int, 14, ge=1, le=MAX_EXACT_TOKENS, api_le=14,
                             help="longest text explained exactly (2^tokens model calls)")
    seed = Hyper(int, 0, api_ge=0, api_le=2**31 - 1, help=SEED_HELP)

    def _plan(self, n_tokens: int) -> dict:
        exact = self.algorithm == "exact" or (self.algorithm == "auto" and n_tokens <= self.exact_max_tokens)
        if exact and n_tokens > MAX_EXACT_TOKENS:
            raise ValueError(f"exact Shapley values for {n_tokens} tokens need 2^{n_tokens} model calls: use "
                             f"algorithm='kernel' (or 'auto') for texts over {MAX_EXACT_TOKENS} tokens")
        if exact or n_tokens == 1:
            return {"algorithm": "exact", "masks": all_coalitions(n_tokens)}
        budget = self.budget if self.budget is not None else 2 * n_tokens + 2048
        keep, weights = kernel_coalitions(n_tokens, budget, rng(self.seed))
        ends = np.array([np.zeros(n_tokens, bool), np.ones(n_tokens, bool)])
        return {"algorithm": "kernel", "masks": np.concatenate([ends, keep]), "weights": weights}

    def _scores(self, n_tokens: int, value, plan: dict):
        if plan["algorithm"] == "exact":
            phi, v_none, v_all = exact_shapley(n_tokens, value)
            info = {"algorithm": "exact"}
        else:
            values = value(plan["masks"])
            v_none, v_all = float(values[0]), float(values[1])
            keep = plan["masks"][2:]
            phi = constrained_wls(keep.astype(np.float64), values[2:] - v_none, plan["weights"], v_all - v_none)
            info = {"algorithm": "kernel", "n_coalitions": int(len(plan["masks"]))}
        delta = float(phi.sum() - (v_all - v_none))
        return phi, delta, {**info, "f_input": v_all, "f_baseline": v_none}
