"""widedeep.ranking_metrics on hand-computed cases, a per-user Python reference and sklearn."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import widedeep.ranking_metrics as rm
from widedeep.errors import ConfigError
from widedeep.metrics import auc
from widedeep.ranking_metrics import (
    gauc,
    hit_rate_at_k,
    map_at_k,
    mrr,
    ndcg_at_k,
    precision_at_k,
    rank_candidates,
    ranking_report,
    recall_at_k,
)

SEEDS = [0, 1, 2, 3, 4]
AT_K = [hit_rate_at_k, ndcg_at_k, mrr, precision_at_k, recall_at_k, map_at_k]

# Scores for 5 candidates whose ranking (best first) is columns 1, 3, 2, 0, 4:
#   column:  0    1    2    3    4
#   score:  0.6  0.9  0.7  0.8  0.5     →  rank of column: 0→4, 1→1, 2→3, 3→2, 4→5
SCORES_5 = [0.6, 0.9, 0.7, 0.8, 0.5]


def _relevant_at(*columns: int, n: int = 5) -> list[bool]:
    return [c in columns for c in range(n)]


# --- rank_candidates ---------------------------------------------------------------------------


def test_rank_candidates_orders_best_first() -> None:
    np.testing.assert_array_equal(rank_candidates([SCORES_5]), [[1, 3, 2, 0, 4]])


def test_rank_candidates_breaks_ties_by_column_position() -> None:
    # 2 and 2 tie (columns 1, 2), 1 and 1 tie (columns 0, 3): lower column first in each.
    np.testing.assert_array_equal(rank_candidates([[1.0, 2.0, 2.0, 1.0]]), [[1, 2, 0, 3]])
    np.testing.assert_array_equal(rank_candidates(np.zeros((2, 4))), [[0, 1, 2, 3]] * 2)


def test_rank_candidates_puts_masked_last_whatever_their_score() -> None:
    scores = [[9.0, -np.inf, 1.0, np.nan], [0.0, 0.0, 0.0, 0.0]]
    mask = [[False, True, True, False], [True, False, True, True]]
    order = rank_candidates(scores, mask)
    # Row 0: unmasked 1.0 (col 2) then -inf (col 1); masked 0, 3 after, in column order.
    # Row 1: unmasked ties 0, 2, 3 in column order, then masked 1.
    np.testing.assert_array_equal(order, [[2, 1, 0, 3], [0, 2, 3, 1]])
    assert order.dtype == np.int64


# --- hand-computed cases -----------------------------------------------------------------------


def test_one_relevant_at_rank_3_of_5() -> None:
    scores, relevant = [SCORES_5], [_relevant_at(2)]  # column 2 ranks 3rd
    assert hit_rate_at_k(scores, relevant, 2) == 0.0
    assert hit_rate_at_k(scores, relevant, 3) == 1.0
    assert ndcg_at_k(scores, relevant, 2) == 0.0
    # DCG@3 = 1/log2(3+1) = 0.5; ideal DCG over min(1, 3) = 1 position = 1/log2(2) = 1.
    assert ndcg_at_k(scores, relevant, 3) == pytest.approx(0.5)
    assert mrr(scores, relevant) == pytest.approx(1 / 3)
    assert mrr(scores, relevant, k=3) == pytest.approx(1 / 3)
    assert mrr(scores, relevant, k=2) == 0.0  # first relevant is below the cut-off
    assert precision_at_k(scores, relevant, 3) == pytest.approx(1 / 3)  # 1 hit / k=3
    assert precision_at_k(scores, relevant, 5) == pytest.approx(1 / 5)
    assert recall_at_k(scores, relevant, 2) == 0.0
    assert recall_at_k(scores, relevant, 3) == 1.0  # 1 hit / 1 relevant
    # AP@3 = precision@3 = 1/3, divided by min(1 relevant, 3) = 1.
    assert map_at_k(scores, relevant, 3) == pytest.approx(1 / 3)


def test_two_relevant_at_ranks_1_and_3() -> None:
    scores, relevant = [SCORES_5], [_relevant_at(1, 2)]  # columns 1, 2 rank 1st and 3rd
    assert hit_rate_at_k(scores, relevant, 1) == 1.0
    assert mrr(scores, relevant) == 1.0
    # AP@3 = (P@1 + P@3) / min(2, 3) = (1/1 + 2/3) / 2 = 5/6.
    assert map_at_k(scores, relevant, 3) == pytest.approx((1 / 1 + 2 / 3) / 2)
    # AP@2 = P@1 / min(2, 2) = 1/2 (the rank-3 item is outside k).
    assert map_at_k(scores, relevant, 2) == pytest.approx(1 / 2)
    # DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; IDCG@3 = 1/log2(2) + 1/log2(3).
    assert ndcg_at_k(scores, relevant, 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert precision_at_k(scores, relevant, 2) == pytest.approx(1 / 2)  # 1 hit / 2
    assert precision_at_k(scores, relevant, 3) == pytest.approx(2 / 3)  # 2 hits / 3
    assert recall_at_k(scores, relevant, 2) == pytest.approx(1 / 2)  # 1 hit / 2 relevant
    assert recall_at_k(scores, relevant, 3) == 1.0


def test_three_relevant_more_than_k() -> None:
    scores, relevant = [SCORES_5], [_relevant_at(3, 0, 4)]  # ranks 2, 4, 5
    # AP@2 = P@2 / min(3, 2) = (1/2) / 2 = 1/4.
    assert map_at_k(scores, relevant, 2) == pytest.approx(1 / 4)
    # DCG@2 = 1/log2(3); IDCG@2 over min(3, 2) = 2 positions = 1 + 1/log2(3).
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(scores, relevant, 2) == pytest.approx(expected)
    assert precision_at_k(scores, relevant, 2) == pytest.approx(1 / 2)
    assert recall_at_k(scores, relevant, 2) == pytest.approx(1 / 3)
    assert mrr(scores, relevant) == pytest.approx(1 / 2)
    # All relevant ranked: DCG@5 = 1/log2(3) + 1/log2(5) + 1/log2(6), IDCG = first three terms.
    dcg = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(scores, relevant, 5) == pytest.approx(dcg / idcg)


def test_averages_over_users_and_skips_users_without_positives() -> None:
    scores = [SCORES_5, SCORES_5, SCORES_5]
    relevant = [_relevant_at(2), _relevant_at(1, 2), _relevant_at()]  # user 2 has none
    report = ranking_report(scores, relevant, 3)
    assert report["users"] == 2.0
    assert report["hr@3"] == 1.0
    assert report["mrr"] == pytest.approx((1 / 3 + 1) / 2)
    assert report["precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert report["recall@3"] == 1.0
    assert report["map@3"] == pytest.approx((1 / 3 + 5 / 6) / 2)
    assert report["ndcg@3"] == pytest.approx((0.5 + 1.5 / (1 + 1 / math.log2(3))) / 2)
    assert hit_rate_at_k(scores, relevant, 2) == pytest.approx(1 / 2)  # (0 + 1) / 2 users


def test_ranking_report_keys_and_agreement_with_each_metric() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 12))
    relevant = rng.random((30, 12)) < 0.2
    mask = rng.random((30, 12)) < 0.8
    report = ranking_report(scores, relevant, 4, mask)
    assert list(report) == ["hr@4", "ndcg@4", "mrr", "precision@4", "recall@4", "map@4", "users"]
    assert report["hr@4"] == hit_rate_at_k(scores, relevant, 4, mask)
    assert report["ndcg@4"] == ndcg_at_k(scores, relevant, 4, mask)
    assert report["mrr"] == mrr(scores, relevant, mask=mask)
    assert report["precision@4"] == precision_at_k(scores, relevant, 4, mask)
    assert report["recall@4"] == recall_at_k(scores, relevant, 4, mask)
    assert report["map@4"] == map_at_k(scores, relevant, 4, mask)
    assert report["users"] == np.count_nonzero((relevant & mask).any(axis=1))


def test_ranking_report_sorts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = rm._order

    def counting_order(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        calls.append(scores.shape)
        return original(scores, mask)

    monkeypatch.setattr(rm, "_order", counting_order)
    ranking_report([SCORES_5, SCORES_5], [_relevant_at(2), _relevant_at(0)], 3)
    assert len(calls) == 1


# --- masks, ties, k beyond the candidates ------------------------------------------------------


def test_masked_candidates_are_never_ranked_nor_counted() -> None:
    # Column 0 is masked: its top score and its relevance are ignored (NaN is allowed there).
    scores = [[np.nan, 1.0, 2.0, 3.0]]
    mask = [[False, True, True, True]]
    # Column 1 ranks 3rd of the 3 real candidates: MRR = 1/3.
    assert mrr(scores, [[True, True, False, False]], mask=mask) == pytest.approx(1 / 3)
    # Its relevance does not count towards recall's denominator: 1 hit / 1 relevant.
    assert recall_at_k(scores, [[True, False, False, True]], 1, mask) == 1.0
    # A user whose only relevant slot is masked has no positive and is skipped.
    scores2 = [[np.nan, 1.0, 2.0, 3.0], [5.0, 1.0, 2.0, 3.0]]
    mask2 = [[False, True, True, True], [False, True, True, True]]
    relevant2 = [[False, False, False, True], [True, False, False, False]]
    assert ranking_report(scores2, relevant2, 2, mask2)["users"] == 1.0


def test_masked_slots_rank_after_real_ones_when_k_exceeds_real_candidates() -> None:
    # Two real candidates, relevant at rank 1; k=3 reaches a padded slot, which never hits.
    scores = [[0.5, 0.9, 0.99]]
    mask = [[True, True, False]]
    relevant = [[False, True, True]]
    assert precision_at_k(scores, relevant, 3, mask) == pytest.approx(1 / 3)  # 1 hit / k=3
    assert recall_at_k(scores, relevant, 3, mask) == 1.0
    assert ndcg_at_k(scores, relevant, 3, mask) == 1.0
    assert map_at_k(scores, relevant, 3, mask) == 1.0


def test_k_larger_than_candidates() -> None:
    scores, relevant = [SCORES_5], [_relevant_at(2)]
    assert hit_rate_at_k(scores, relevant, 50) == 1.0
    assert ndcg_at_k(scores, relevant, 50) == pytest.approx(0.5)
    assert precision_at_k(scores, relevant, 50) == pytest.approx(1 / 50)


def test_ties_are_broken_by_column_position() -> None:
    scores = [[0.5, 0.5, 0.5, 0.5]]
    assert mrr(scores, [[False, False, True, False]]) == pytest.approx(1 / 3)
    assert mrr(scores, [[True, False, False, False]]) == 1.0
    assert hit_rate_at_k(scores, [[False, False, False, True]], 3) == 0.0
    # 0.5 ties 0.5 at columns 1, 3; column 3 ranks after column 1 and after 0.7 at column 2.
    assert mrr([[0.1, 0.5, 0.7, 0.5]], [[False, False, False, True]]) == pytest.approx(1 / 3)


def test_relevant_and_mask_accept_zero_one_numbers() -> None:
    scores, relevant = [SCORES_5], [_relevant_at(1, 2)]
    numeric = np.asarray(relevant, dtype=np.int64)
    assert map_at_k(scores, numeric, 3, np.ones((1, 5))) == map_at_k(scores, relevant, 3)


# --- a per-user Python reference on random data ------------------------------------------------


def _reference(
    scores: np.ndarray, relevant: np.ndarray, mask: np.ndarray, k: int
) -> dict[str, float]:
    """The metrics written per user with Python loops, from the definitions."""
    per_user: dict[str, list[float]] = {m: [] for m in ("hr", "ndcg", "mrr", "p", "r", "map")}
    for u in range(scores.shape[0]):
        candidates = [c for c in range(scores.shape[1]) if mask[u, c]]
        ranked = sorted(candidates, key=lambda c: (-scores[u, c], c))
        rel = [bool(relevant[u, c]) for c in ranked]
        n_rel = sum(rel)
        if n_rel == 0:
            continue
        top = rel[:k]
        hits = sum(top)
        per_user["hr"].append(float(hits > 0))
        dcg = sum(1 / math.log2(i + 2) for i, hit in enumerate(top) if hit)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(n_rel, k)))
        per_user["ndcg"].append(dcg / idcg)
        per_user["mrr"].append(1 / (rel.index(True) + 1))
        per_user["p"].append(hits / k)
        per_user["r"].append(hits / n_rel)
        ap = sum(sum(top[: i + 1]) / (i + 1) for i, hit in enumerate(top) if hit)
        per_user["map"].append(ap / min(n_rel, k))
    return {name: float(np.mean(values)) for name, values in per_user.items()}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 10, 25])
def test_matches_per_user_reference_with_masks_and_ties(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(40, 20)), 1)  # rounding makes many ties
    relevant = rng.random((40, 20)) < 0.15
    mask = rng.random((40, 20)) < 0.7
    expected = _reference(scores, relevant, mask, k)
    report = ranking_report(scores, relevant, k, mask)
    assert report[f"hr@{k}"] == pytest.approx(expected["hr"], abs=1e-12)
    assert report[f"ndcg@{k}"] == pytest.approx(expected["ndcg"], abs=1e-12)
    assert report["mrr"] == pytest.approx(expected["mrr"], abs=1e-12)
    assert report[f"precision@{k}"] == pytest.approx(expected["p"], abs=1e-12)
    assert report[f"recall@{k}"] == pytest.approx(expected["r"], abs=1e-12)
    assert report[f"map@{k}"] == pytest.approx(expected["map"], abs=1e-12)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_perfect_ranking_scores_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_candidates = 50, 15
    scores = rng.normal(size=(n_users, n_candidates))
    n_relevant = rng.integers(1, n_candidates + 1, size=n_users)
    # Relevant items are exactly each user's n_relevant top-scored candidates.
    rank_of = np.argsort(np.argsort(-scores, axis=1), axis=1)
    relevant = rank_of < n_relevant[:, None]
    assert ndcg_at_k(scores, relevant, n_candidates) == pytest.approx(1.0, abs=1e-12)
    for k in (1, 4, n_candidates):
        assert ndcg_at_k(scores, relevant, k) == pytest.approx(1.0, abs=1e-12)
        assert map_at_k(scores, relevant, k) == pytest.approx(1.0, abs=1e-12)
        assert hit_rate_at_k(scores, relevant, k) == 1.0
    assert recall_at_k(scores, relevant, n_candidates) == 1.0
    assert mrr(scores, relevant) == 1.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 5, 30])
def test_all_metrics_lie_in_unit_interval(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(60, 20))
    relevant = rng.random((60, 20)) < rng.uniform(0.02, 0.6)
    mask = rng.random((60, 20)) < 0.8
    report = ranking_report(scores, relevant, k, mask)
    for name, value in report.items():
        if name != "users":
            assert 0.0 <= value <= 1.0, name


# --- gauc --------------------------------------------------------------------------------------


def _gauc_data(seed: int, n: int = 3000, n_users: int = 60) -> tuple[np.ndarray, ...]:
    """Users with uneven row counts, some with one class only, and heavily tied scores."""
    rng = np.random.default_rng(seed)
    user_ids = rng.integers(0, n_users, size=n) * 7 + 3  # non-contiguous ids
    labels = (rng.random(n) < 0.3).astype(np.int64)
    labels[user_ids == 3] = 1  # user 3 only positive
    labels[user_ids == 10] = 0  # user 10 only negative
    scores = np.round(rng.normal(size=n) + labels, 1)
    return user_ids, labels, scores


def _sklearn_gauc(
    user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, weighted: bool
) -> float:
    aucs, weights = [], []
    for user in np.unique(user_ids):
        rows = user_ids == user
        if len(np.unique(labels[rows])) < 2:
            continue
        aucs.append(roc_auc_score(labels[rows], scores[rows]))
        weights.append(np.count_nonzero(rows))
    return float(np.average(aucs, weights=weights if weighted else None))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gauc_matches_sklearn_per_user(seed: int, weighted: bool) -> None:
    user_ids, labels, scores = _gauc_data(seed)
    expected = _sklearn_gauc(user_ids, labels, scores, weighted)
    assert gauc(user_ids, labels, scores, weighted=weighted) == pytest.approx(expected, abs=1e-12)


def test_gauc_with_string_user_ids_and_shuffled_rows() -> None:
    user_ids, labels, scores = _gauc_data(0, n=500, n_users=10)
    names = np.array([f"user-{u}" for u in user_ids])
    perm = np.random.default_rng(1).permutation(names.size)
    expected = _sklearn_gauc(user_ids, labels, scores, weighted=True)
    assert gauc(names[perm], labels[perm], scores[perm], weighted=True) == pytest.approx(expected)
    # A single column is accepted for each input.
    column = gauc(user_ids[:, None], labels[:, None], scores[:, None], weighted=True)
    assert column == pytest.approx(expected)


def test_gauc_of_one_user_is_auc() -> None:
    labels = [0, 1, 1, 0, 1, 0]
    scores = [0.1, 0.4, 0.4, 0.4, 0.9, 0.2]
    # Pairs (pos, neg): 3 positives x 3 negatives = 9; 0.4 vs 0.4 ties count half twice → 8/9.
    assert gauc([7] * 6, labels, scores) == pytest.approx(8 / 9)
    assert gauc([7] * 6, labels, scores) == pytest.approx(auc(labels, scores))


def test_gauc_hand_computed_two_users() -> None:
    # User a (2 rows): positive 0.9 beats negative 0.1 → AUC 1.
    # User b (4 rows): positive 0.2 vs negatives 0.5, 0.1, 0.5 beats one of 3 pairs → AUC 1/3.
    # User c has one class only and is skipped.
    user_ids = ["a", "a", "b", "b", "b", "b", "c"]
    labels = [1, 0, 1, 0, 0, 0, 1]
    scores = [0.9, 0.1, 0.2, 0.5, 0.1, 0.5, 0.3]
    assert gauc(user_ids, labels, scores) == pytest.approx((1 + 1 / 3) / 2)
    assert gauc(user_ids, labels, scores, weighted=True) == pytest.approx((2 * 1 + 4 / 3) / 6)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", AT_K)
def test_nan_score_names_metric_and_position(metric: Callable[..., float]) -> None:
    scores = [SCORES_5, [0.1, 0.2, 0.3, np.nan, np.nan]]
    with pytest.raises(ConfigError, match=rf"{metric.__name__}.*NaN.*row 1, column 3"):
        metric(scores, [_relevant_at(1), _relevant_at(2)], 3)


@pytest.mark.parametrize("metric", AT_K)
def test_no_user_with_a_positive_is_an_error(metric: Callable[..., float]) -> None:
    with pytest.raises(ConfigError, match="at least one user with a relevant"):
        metric([SCORES_5, SCORES_5], [_relevant_at(), _relevant_at()], 3)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_k(k: object) -> None:
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        ndcg_at_k([SCORES_5], [_relevant_at(1)], k)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        mrr([SCORES_5], [_relevant_at(1)], k)  # type: ignore[arg-type]


def test_shape_errors() -> None:
    with pytest.raises(ConfigError, match=r"relevant must have the shape of scores \(1, 5\)"):
        hit_rate_at_k([SCORES_5], [[True, False]], 1)
    with pytest.raises(ConfigError, match="mask must have the shape"):
        hit_rate_at_k([SCORES_5], [_relevant_at(1)], 1, mask=[[True] * 4])
    with pytest.raises(ConfigError, match="scores must be 2-D"):
        hit_rate_at_k(SCORES_5, _relevant_at(1), 1)
    with pytest.raises(ConfigError, match="scores must be 2-D"):
        rank_candidates(SCORES_5)


def test_non_boolean_relevance_and_non_numeric_scores() -> None:
    with pytest.raises(ConfigError, match=r"relevant must be booleans.*got 2.0 at \(row 0, col"):
        recall_at_k([SCORES_5], [[0, 2, 0, 0, 0]], 1)
    with pytest.raises(ConfigError, match="scores must be numbers"):
        rank_candidates([["a", "b"]])


def test_gauc_errors() -> None:
    with pytest.raises(ConfigError, match="gauc needs at least one user with both classes"):
        gauc([1, 1, 2, 2], [1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ConfigError, match="differ in length"):
        gauc([1, 1, 2], [1, 0], [0.1, 0.2])
    with pytest.raises(ConfigError, match="scores must be finite, got nan at index 1"):
        gauc([1, 1], [1, 0], [0.1, np.nan])
    with pytest.raises(ConfigError, match=r"labels must be 0 or 1, got 2\.0 at index 0"):
        gauc([1, 1], [2, 0], [0.1, 0.2])
    with pytest.raises(ConfigError, match="at least one row"):
        gauc([], [], [])
    with pytest.raises(ConfigError, match="user_ids must not be NaN, got NaN at index 2"):
        gauc([1.0, 1.0, np.nan], [1, 0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="user_ids must be mutually comparable"):
        gauc(np.array([1, "a", 1, "a"], dtype=object), [1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ConfigError, match="scores must be 1-D"):
        gauc([1, 1], [1, 0], [[0.1, 0.2], [0.3, 0.4]])
