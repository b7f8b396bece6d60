"""Ranking quality of a proxy score against ground truth: Kendall, Spearman, within-group tau, top-k.

All functions take two 1-D array-likes of equal length (``scores`` from a proxy such as the RLNAS angle, ``truth``
such as NAS-Bench-201 test accuracy), drop every pair in which either value is NaN, and return a Python float
(``nan`` when fewer than two pairs remain). Higher scores are taken to mean "predicted better".

Kendall's tau is scipy's tau-b, which accounts for ties in both arrays. RLNAS's ``cal_correlation.py`` instead
breaks ties by sort order before calling scipy; with the many exact ties of angle scores the two can differ,
and tau-b is the one that does not depend on the input order.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ['kendall_tau', 'spearman_rho', 'tau_within_groups', 'descending_order', 'top_k_mean', 'top1_truth']

_logger = logging.getLogger(__name__)


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f'{name} must be 1-D (one value per architecture), got shape {arr.shape}.')
    return arr


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f'Length mismatch {lengths}: expected one value per architecture in each array, '
                         f'in the same order. Align the arrays before calling.')


def _finite_pairs(scores, truth, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
    """Arrays restricted to the positions where neither score nor truth is NaN."""
    s, t = _as_1d(scores, 'scores'), _as_1d(truth, 'truth')
    _check_lengths(scores=s, truth=t, **{f'extra{k}': e for k, e in enumerate(extra)})
    keep = ~(np.isnan(s) | np.isnan(t))
    return (s[keep], t[keep], *(np.asarray(e)[keep] for e in extra))


def kendall_tau(scores, truth) -> float:
    """Kendall tau-b between ``scores`` and ``truth`` over the non-NaN pairs (``nan`` if < 2 pairs or constant)."""
    s, t = _finite_pairs(scores, truth)
    if len(s) < 2:
        return float('nan')
    return float(stats.kendalltau(s, t).statistic)


def spearman_rho(scores, truth) -> float:
    """Spearman rank correlation (average ranks for ties) over the non-NaN pairs."""
    s, t = _finite_pairs(scores, truth)
    if len(s) < 2 or np.all(s == s[0]) or np.all(t == t[0]):
        return float('nan')
    return float(stats.spearmanr(s, t).statistic)


def tau_within_groups(scores, truth, groups, min_size: int = 3) -> float:
    """Kendall tau inside groups of equal key, averaged with weights equal to the group sizes.

    A group qualifies when it holds at least ``min_size`` non-NaN pairs and its truth is not constant. A
    qualifying group whose scores are constant gets tau 0 (the proxy orders nothing inside it), not NaN, so a
    proxy cannot gain by tying. Use it to remove a confounder, e.g. ``groups=params_on_valid_paths(op_idx)``
    asks whether the proxy ranks cells of equal size. Returns ``nan`` when no group qualifies.
    """
    s, t, g = _finite_pairs(scores, truth, np.asarray(groups))
    if g.ndim != 1:
        raise ValueError(f'groups must be 1-D (one group key per architecture), got shape {g.shape}.')
    _, inverse = np.unique(g, return_inverse=True)
    total, weight = 0.0, 0
    for key in range(inverse.max() + 1 if len(inverse) else 0):
        members = inverse == key
        n = int(members.sum())
        if n < min_size or np.all(t[members] == t[members][0]):
            continue
        tau = 0.0 if np.all(s[members] == s[members][0]) else stats.kendalltau(s[members], t[members]).statistic
        total, weight = total + n * float(tau), weight + n
    return total / weight if weight else float('nan')


def descending_order(scores, tie_break=None) -> np.ndarray:
    """Indices sorting ``scores`` descending; ties by ``tie_break`` descending, then by lowest index.

    NaN scores go last (in index order). The order is fully deterministic for given inputs.
    """
    s = _as_1d(scores, 'scores')
    keys = [np.arange(len(s))]
    if tie_break is not None:
        tb = _as_1d(tie_break, 'tie_break')
        _check_lengths(scores=s, tie_break=tb)
        keys.append(-tb)
    keys.append(-s)  # np.lexsort sorts by the last key first; NaN (negated or not) sorts last.
    return np.lexsort(keys)


def top_k_mean(scores, truth, k: int, tie_break=None) -> float:
    """Mean truth of the ``k`` best-scored items (ties as in :func:`descending_order`; NaN pairs dropped)."""
    if int(k) != k or k < 1:
        raise ValueError(f'k must be a positive integer, got {k!r}.')
    extra = () if tie_break is None else (_as_1d(tie_break, 'tie_break'),)
    s, t, *tb = _finite_pairs(scores, truth, *extra)
    if len(s) < k:
        raise ValueError(f'top_k_mean needs at least k={k} non-NaN pairs, got {len(s)}; lower k.')
    order = descending_order(s, tb[0] if tb else None)
    return float(t[order[:int(k)]].mean())


def top1_truth(scores, truth, tie_break: Sequence[float] | np.ndarray | None = None) -> float:
    """Truth of the best-scored item.

    Ties in ``scores`` are broken by the larger ``tie_break`` value when given (a secondary score, e.g. fewer
    pools), and otherwise, or if still tied, by the lowest index. NaN pairs are dropped first.
    """
    return top_k_mean(scores, truth, 1, tie_break=tie_break)
