"""Ranking metrics for top-K recommendation: pure numpy, vectorized over users.

The list metrics take ``scores``, a (U, C) array with one row per user and one column per
candidate, ``relevant``, a (U, C) boolean array (True marks a held-out positive), and an optional
``mask``, a (U, C) boolean array whose False slots are not candidates: never ranked, never
counted, whatever their score or relevance (a user with fewer real candidates pads the row; a
padded slot may hold NaN).

Candidates rank by descending score and **ties are broken by candidate position: the lower column
index ranks first**. Shuffle the candidate columns (or break ties yourself) whenever the column
order carries information, e.g. when the held-out positives are placed first.

The ``*_at_k`` metrics and :func:`mrr` average over the users with at least one relevant
candidate; users without one are skipped, and a ConfigError is raised when no user has one.
A NaN score in a candidate slot raises ConfigError naming the metric and the first bad
(row, column); ±inf scores simply rank first or last. :func:`gauc` takes long-format rows instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from widedeep.errors import ConfigError

__all__ = [
    "gauc",
    "hit_rate_at_k",
    "map_at_k",
    "mrr",
    "ndcg_at_k",
    "precision_at_k",
    "rank_candidates",
    "ranking_report",
    "recall_at_k",
]


def rank_candidates(scores: ArrayLike, mask: ArrayLike | None = None) -> NDArray[np.int64]:
    """Column indices of each row's candidates, best first; ties keep column order, masked last."""
    s, m = _score_inputs("rank_candidates", scores, mask)
    return _order(s, m)


def hit_rate_at_k(
    scores: ArrayLike, relevant: ArrayLike, k: int, mask: ArrayLike | None = None
) -> float:
    """Fraction of users with at least one relevant candidate among their top ``k``."""
    ranked, _ = _ranked("hit_rate_at_k", scores, relevant, k, mask)
    return _hit_rate(ranked[:, :k])


def ndcg_at_k(
    scores: ArrayLike, relevant: ArrayLike, k: int, mask: ArrayLike | None = None
) -> float:
    """Mean normalized DCG@k: binary gains, 1 / log2(rank + 1) discount, ideal DCG over
    min(#relevant, k) positions."""
    ranked, n_relevant = _ranked("ndcg_at_k", scores, relevant, k, mask)
    return _ndcg(ranked[:, :k], n_relevant)


def mrr(
    scores: ArrayLike, relevant: ArrayLike, k: int | None = None, mask: ArrayLike | None = None
) -> float:
    """Mean reciprocal rank of each user's first relevant candidate; with ``k``, a user whose
    first relevant candidate ranks below ``k`` scores 0."""
    ranked, _ = _ranked("mrr", scores, relevant, k, mask)
    return _mrr(ranked if k is None else ranked[:, :k])


def precision_at_k(
    scores: ArrayLike, relevant: ArrayLike, k: int, mask: ArrayLike | None = None
) -> float:
    """Mean over users of (relevant candidates in the top ``k``) / ``k``, even when a user has
    fewer than ``k`` candidates."""
    ranked, _ = _ranked("precision_at_k", scores, relevant, k, mask)
    return _precision(ranked[:, :k], k)


def recall_at_k(
    scores: ArrayLike, relevant: ArrayLike, k: int, mask: ArrayLike | None = None
) -> float:
    """Mean over users of (relevant candidates in the top ``k``) / (relevant candidates)."""
    ranked, n_relevant = _ranked("recall_at_k", scores, relevant, k, mask)
    return _recall(ranked[:, :k], n_relevant)


def map_at_k(
    scores: ArrayLike, relevant: ArrayLike, k: int, mask: ArrayLike | None = None
) -> float:
    """Mean average precision@k: per user, the sum of precision@rank over the relevant candidates
    ranked within ``k``, divided by min(#relevant, k)."""
    ranked, n_relevant = _ranked("map_at_k", scores, relevant, k, mask)
    return _map(ranked[:, :k], n_relevant)


def ranking_report(
    scores: ArrayLike, relevant: ArrayLike, k: int, mask: ArrayLike | None = None
) -> dict[str, float]:
    """Every list metric at ``k`` (``mrr`` without a cut-off) from one sort, and the number of
    users averaged over."""
    ranked, n_relevant = _ranked("ranking_report", scores, relevant, k, mask)
    top = ranked[:, :k]
    return {
        f"hr@{k}": _hit_rate(top),
        f"ndcg@{k}": _ndcg(top, n_relevant),
        "mrr": _mrr(ranked),
        f"precision@{k}": _precision(top, k),
        f"recall@{k}": _recall(top, n_relevant),
        f"map@{k}": _map(top, n_relevant),
        "users": float(n_relevant.size),
    }


def gauc(
    user_ids: ArrayLike, labels: ArrayLike, scores: ArrayLike, weighted: bool = False
) -> float:
    """Group AUC: each user's ROC AUC (Mann–Whitney, average ranks for ties) averaged over the
    users that have both classes; ``weighted`` weights each user by their number of rows."""
    users, y, s = _gauc_inputs(user_ids, labels, scores)
    n = s.size
    try:
        order = np.lexsort((s, users))  # by user, then by score
    except TypeError as exc:
        raise ConfigError(f"gauc: user_ids must be mutually comparable ({exc})") from exc
    sorted_users = users[order]
    sorted_scores = s[order]
    is_positive = y[order]
    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    np.not_equal(sorted_users[1:], sorted_users[:-1], out=new_user[1:])
    sorted_codes = np.cumsum(new_user) - 1  # users numbered 0.. in sorted order
    is_start = new_user.copy()
    is_start[1:] |= sorted_scores[1:] != sorted_scores[:-1]
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], n) - 1
    user_start = np.flatnonzero(new_user)[sorted_codes]
    # A tie group at sorted positions i..j of a user starting at u shares the within-user rank
    # (i + j) / 2 - u + 1; keep 2 * rank so every sum is an exact integer.
    twice_rank = (starts + ends)[np.cumsum(is_start) - 1] - 2 * user_start + 2
    n_users = int(sorted_codes[-1]) + 1
    n_rows = np.bincount(sorted_codes, minlength=n_users)
    n_pos = np.bincount(sorted_codes[is_positive], minlength=n_users)
    n_neg = n_rows - n_pos
    twice_rank_sum = np.bincount(
        sorted_codes[is_positive], weights=twice_rank[is_positive], minlength=n_users
    )
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        raise ConfigError(
            f"gauc needs at least one user with both classes, got none among {n_users} users"
            f" ({n} rows)"
        )
    n_pos, n_neg = n_pos[both], n_neg[both]
    per_user = (twice_rank_sum[both] - n_pos * (n_pos + 1)) / (2.0 * n_pos * n_neg)
    return float(np.average(per_user, weights=n_rows[both] if weighted else None))


# --- implementations on validated arrays -----------------------------------------------------
# ``top`` is a (N, min(k, C)) bool array: relevance of each user's ranked candidates, best first,
# for the N users with at least one relevant candidate; ``n_relevant`` (N,) counts them (>= 1).


def _hit_rate(top: NDArray[np.bool_]) -> float:
    return float(np.mean(top.any(axis=1)))


def _ndcg(top: NDArray[np.bool_], n_relevant: NDArray[np.int64]) -> float:
    discount = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    dcg = top @ discount
    ideal = np.cumsum(discount)[np.minimum(n_relevant, top.shape[1]) - 1]
    return float(np.mean(dcg / ideal))


def _mrr(ranked: NDArray[np.bool_]) -> float:
    first = np.argmax(ranked, axis=1)
    reciprocal = np.where(ranked.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return float(np.mean(reciprocal))


def _precision(top: NDArray[np.bool_], k: int) -> float:
    return float(np.mean(top.sum(axis=1) / k))


def _recall(top: NDArray[np.bool_], n_relevant: NDArray[np.int64]) -> float:
    return float(np.mean(top.sum(axis=1) / n_relevant))


def _map(top: NDArray[np.bool_], n_relevant: NDArray[np.int64]) -> float:
    precision_at_rank = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    # n_relevant <= C, so min(n_relevant, k) == min(n_relevant, min(k, C)).
    average_precision = (precision_at_rank * top).sum(axis=1) / np.minimum(n_relevant, top.shape[1])
    return float(np.mean(average_precision))


def _order(scores: NDArray[np.float64], mask: NDArray[np.bool_] | None) -> NDArray[np.int64]:
    """One stable sort per row: descending score, unmasked first, ties by column index."""
    if mask is None:
        order = np.argsort(-scores, axis=1, kind="stable")
    else:
        # lexsort is stable; its last key is the primary one (False, i.e. unmasked, first).
        order = np.lexsort((-np.where(mask, scores, 0.0), ~mask), axis=1)
    return order.astype(np.int64, copy=False)


def _ranked(
    metric: str,
    scores: ArrayLike,
    relevant: ArrayLike,
    k: int | None,
    mask: ArrayLike | None,
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Relevance in rank order (N, C) and relevant counts (N,) for the users with a positive."""
    if k is not None:
        _check_k(metric, k)
    s, m = _score_inputs(metric, scores, mask)
    rel = _boolean_matrix(metric, "relevant", relevant, s.shape)
    if m is not None:
        rel = rel & m
    n_relevant = rel.sum(axis=1)
    users = n_relevant > 0
    if not users.any():
        raise ConfigError(
            f"{metric} needs at least one user with a relevant candidate, got none among"
            f" {s.shape[0]} users"
        )
    s, rel = s[users], rel[users]
    order = _order(s, None if m is None else m[users])
    return np.take_along_axis(rel, order, axis=1), n_relevant[users].astype(np.int64)


# --- input validation ------------------------------------------------------------------------


def _check_k(metric: str, k: object) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"{metric}: k must be a positive integer, got {k!r}")


def _score_inputs(
    metric: str, scores: ArrayLike, mask: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.bool_] | None]:
    """Scores as a (U, C) float64 array without NaN in candidate slots, and the mask, if any."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{metric}: scores must be numbers, could not convert them ({exc})"
        ) from exc
    if s.ndim != 2:
        raise ConfigError(f"{metric}: scores must be 2-D (users, candidates), got shape {s.shape}")
    m = None if mask is None else _boolean_matrix(metric, "mask", mask, s.shape)
    bad = np.isnan(s) if m is None else np.isnan(s) & m
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(
            f"{metric}: scores must not be NaN in a candidate slot, got NaN at"
            f" (row {row}, column {column}) ({int(bad.sum())} NaN scores)"
        )
    return s, m


def _boolean_matrix(
    metric: str, what: str, values: ArrayLike, shape: tuple[int, ...]
) -> NDArray[np.bool_]:
    """``values`` as a bool array of ``shape``; numbers are accepted when they are 0 or 1."""
    array = np.asarray(values)
    if array.shape != shape:
        raise ConfigError(
            f"{metric}: {what} must have the shape of scores {shape}, got {array.shape}"
        )
    if array.dtype == np.bool_:
        return array
    try:
        numbers = array.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{metric}: {what} must be booleans, got dtype {array.dtype}") from exc
    bad = (numbers != 0.0) & (numbers != 1.0)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(
            f"{metric}: {what} must be booleans (or 0/1), got {numbers[row, column]} at"
            f" (row {row}, column {column})"
        )
    return numbers == 1.0


def _gauc_vector(what: str, values: ArrayLike, dtype: DTypeLike | None) -> NDArray[Any]:
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"gauc: could not convert {what} to an array ({exc})") from exc
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ConfigError(f"gauc: {what} must be 1-D (or a single column), got shape {array.shape}")
    return array


def _gauc_inputs(
    user_ids: ArrayLike, labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[Any], NDArray[np.bool_], NDArray[np.float64]]:
    """User ids, labels as booleans and finite scores, all of one length."""
    users = _gauc_vector("user_ids", user_ids, None)
    y = _gauc_vector("labels", labels, np.float64)
    s = _gauc_vector("scores", scores, np.float64)
    if not users.size == y.size == s.size:
        raise ConfigError(
            f"gauc: user_ids, labels and scores differ in length ({users.size}, {y.size}, {s.size})"
        )
    if s.size == 0:
        raise ConfigError("gauc: needs at least one row, got empty inputs")
    for what, array in (("labels", y), ("scores", s)):
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"gauc: {what} must be finite, got {array[i]} at index {i} ({bad.size} bad values)"
            )
    bad = np.flatnonzero((y != 0.0) & (y != 1.0))
    if bad.size:
        i = int(bad[0])
        raise ConfigError(f"gauc: labels must be 0 or 1, got {y[i]} at index {i}")
    if users.dtype.kind in "fc" and np.isnan(users).any():
        i = int(np.flatnonzero(np.isnan(users))[0])
        raise ConfigError(f"gauc: user_ids must not be NaN, got NaN at index {i}")
    return users, y == 1.0, s
