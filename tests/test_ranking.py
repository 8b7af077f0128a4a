"""Ranking evaluation of a bundle beside the popularity baseline: full and sampled protocols."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import one_thread
from test_recommend import ITEM, LABEL, USER, RecRun, shared_rec_run
from widedeep.errors import ConfigError, SchemaError
from widedeep.ranking import RankingResult, evaluate_ranking
from widedeep.recommend import top_k

LIST_METRICS = {"hr@10", "ndcg@10", "mrr", "precision@10", "recall@10", "map@10"}


@pytest.fixture(scope="session")
def rec(tmp_path_factory: pytest.TempPathFactory) -> RecRun:
    return shared_rec_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def full(rec: RecRun) -> RankingResult:
    with one_thread():
        return evaluate_ranking(rec.bundle, rec.test_path, rec.users_path, train=rec.train_path)


@pytest.fixture(scope="session")
def sampled(rec: RecRun) -> RankingResult:
    with one_thread():
        return evaluate_ranking(
            rec.bundle, rec.test_path, rec.users_path, train=rec.train_path, protocol="sampled"
        )


def train_positives(rec: RecRun) -> pl.DataFrame:
    return rec.train.filter(pl.col(LABEL) == 1).select(USER, ITEM)


def assert_metrics(metrics: dict[str, float], expected_keys: set[str]) -> None:
    assert set(metrics) == expected_keys
    for key, value in metrics.items():
        if key != "users":
            assert 0.0 <= value <= 1.0, (key, value)
    assert metrics["users"] >= 1 and float(metrics["users"]).is_integer()
    assert metrics["hr@10"] >= metrics["recall@10"] >= metrics["precision@10"]


# ------------------------------------------------------------------------------ protocols


def test_full_protocol_reports_model_and_popularity(full: RankingResult) -> None:
    assert full.protocol == "full" and full.k == 10
    assert_metrics(full.model, LIST_METRICS | {"users", "gauc"})
    assert_metrics(full.popularity, LIST_METRICS | {"users"})
    assert full.model["users"] == full.popularity["users"]
    assert 0.5 < full.model["gauc"] <= 1.0
    assert full.to_dict() == {
        "protocol": "full",
        "k": 10,
        "model": full.model,
        "popularity": full.popularity,
    }


def test_sampled_protocol_reports_model_and_popularity(sampled: RankingResult) -> None:
    assert sampled.protocol == "sampled"
    assert_metrics(sampled.model, LIST_METRICS | {"users"})
    assert_metrics(sampled.popularity, LIST_METRICS | {"users"})
    # One held-out positive per user: hit rate and recall coincide, precision is a tenth.
    for metrics in (sampled.model, sampled.popularity):
        assert metrics["hr@10"] == metrics["recall@10"]
        assert metrics["precision@10"] == pytest.approx(metrics["hr@10"] / 10)


def test_the_trained_model_beats_chance(full: RankingResult, sampled: RankingResult) -> None:
    # 1 positive among 100 candidates: a random ranking hits the top 10 one time in ten.
    assert sampled.model["hr@10"] > 0.2
    assert full.model["ndcg@10"] > 0.0


def test_the_sampled_protocol_is_seeded(rec: RecRun, sampled: RankingResult) -> None:
    again = evaluate_ranking(
        rec.bundle, rec.test, rec.users, train=rec.train, protocol="sampled", seed=0
    )
    assert again == sampled
    others = [
        evaluate_ranking(
            rec.bundle, rec.test, rec.users, train=rec.train, protocol="sampled", seed=seed
        )
        for seed in (1, 2)
    ]
    assert all(other.model["users"] == sampled.model["users"] for other in others)
    assert any(other.model != sampled.model for other in others)  # other seeds, other negatives


def test_a_different_cut_off_names_the_metrics(rec: RecRun) -> None:
    result = evaluate_ranking(rec.bundle, rec.test, rec.users, train=rec.train, k=3)
    assert result.k == 3
    assert {"hr@3", "ndcg@3", "precision@3", "recall@3", "map@3", "mrr"} <= set(result.model)


def test_chunks_of_users_give_the_same_metrics(rec: RecRun, full: RankingResult) -> None:
    chunked = evaluate_ranking(rec.bundle, rec.test, rec.users, train=rec.train, users_per_chunk=7)
    assert chunked.model == pytest.approx(full.model)
    assert chunked.popularity == pytest.approx(full.popularity)


def test_full_protocol_agrees_with_top_k(rec: RecRun, full: RankingResult) -> None:
    """HR@10 and precision@10 recomputed from top_k's lists (training positives left out)."""
    seen = train_positives(rec)
    relevant = (
        rec.test.filter(pl.col(LABEL) == 1)
        .select(USER, ITEM)
        .unique()
        .join(seen, on=[USER, ITEM], how="anti")
    )
    users = rec.users.filter(pl.col(USER).is_in(relevant[USER].to_list()))
    recs = top_k(rec.bundle, users, k=10, exclude_seen=seen)
    hits = recs.join(relevant, on=[USER, ITEM]).group_by(USER).len()
    assert full.model["users"] == users.height
    assert full.model["hr@10"] == pytest.approx(hits.height / users.height)
    assert full.model["precision@10"] == pytest.approx(hits["len"].sum() / (10 * users.height))


def test_the_bundle_keeps_the_training_popularity(rec: RecRun) -> None:
    popularity = rec.bundle.table("popularity")
    assert popularity is not None
    counts = dict(popularity.rows())
    expected = train_positives(rec).group_by(ITEM).len()
    assert {item: n for item, n in counts.items() if n} == dict(expected.rows())
    assert set(counts) == set(rec.apps[ITEM])


def test_without_training_interactions_the_bundles_popularity_is_used(rec: RecRun) -> None:
    result = evaluate_ranking(rec.bundle, rec.test, rec.users, protocol="sampled")
    assert_metrics(result.popularity, LIST_METRICS | {"users"})


# -------------------------------------------------------------------------- hand checks


def most_popular_item(rec: RecRun) -> str:
    counts = train_positives(rec).group_by(ITEM).len().sort("len", descending=True)
    top, second = counts["len"][0], counts["len"][1]
    assert top > second, "the hand check needs one strictly most popular item"
    return str(counts[ITEM][0])


@pytest.mark.parametrize("protocol", ["full", "sampled"])
def test_popularity_is_perfect_when_every_test_positive_is_the_top_item(
    rec: RecRun, protocol: str
) -> None:
    top = most_popular_item(rec)
    owners = set(train_positives(rec).filter(pl.col(ITEM) == top)[USER])
    users = [u for u in rec.users[USER].head(40) if u not in owners]
    test = pl.DataFrame({USER: users, ITEM: [top] * len(users)})  # no label: all positives
    result = evaluate_ranking(
        rec.bundle,
        test,
        rec.users,
        train=rec.train,
        protocol=protocol,  # type: ignore[arg-type]
    )
    expected = {
        "hr@10": 1.0,
        "ndcg@10": 1.0,
        "mrr": 1.0,
        "precision@10": 0.1,
        "recall@10": 1.0,
        "map@10": 1.0,
        "users": float(len(users)),
    }
    assert result.popularity == pytest.approx(expected)
    assert "gauc" not in result.model  # no labels, no pointwise AUC


def test_the_model_is_perfect_when_every_test_positive_is_its_top_item(rec: RecRun) -> None:
    seen = train_positives(rec)
    users = rec.users.head(30)
    best = top_k(rec.bundle, users, k=1, exclude_seen=seen).select(USER, ITEM)
    for protocol in ("full", "sampled"):
        result = evaluate_ranking(
            rec.bundle,
            best,
            rec.users,
            train=rec.train,
            protocol=protocol,
        )
        assert result.model["users"] == 30
        assert result.model["mrr"] == pytest.approx(1.0), protocol
        assert result.model["ndcg@10"] == pytest.approx(1.0), protocol


def test_a_positive_ranked_last_by_popularity(rec: RecRun) -> None:
    """Full protocol, one user, one positive: the least popular item ranks last among the
    user's unseen items, so its reciprocal rank is 1 / (number of unseen items)."""
    counts = dict(rec.bundle.table("popularity").rows())  # type: ignore[union-attr]
    user = rec.users[USER][0]
    own = set(train_positives(rec).filter(pl.col(USER) == user)[ITEM])
    catalog = [item for item in rec.apps[ITEM] if item not in own]
    # Least popular, the last in catalog order among ties (ties keep catalog order).
    last = max(catalog, key=lambda item: (-counts[item], catalog.index(item)))
    test = pl.DataFrame({USER: [user], ITEM: [last]})
    result = evaluate_ranking(rec.bundle, test, rec.users, train=rec.train)
    assert result.popularity["mrr"] == pytest.approx(1 / len(catalog))
    assert result.popularity["hr@10"] == 0.0


# ------------------------------------------------------------------------------ mistakes


def test_test_users_missing_from_the_users_table_are_a_config_error(rec: RecRun) -> None:
    test = rec.test.with_columns(pl.lit("ghost").alias(USER))
    with pytest.raises(ConfigError, match="none of the test users"):
        evaluate_ranking(rec.bundle, test, rec.users, train=rec.train)


def test_a_users_table_without_the_key_is_a_schema_error(rec: RecRun) -> None:
    with pytest.raises(SchemaError, match="'user_id'"):
        evaluate_ranking(rec.bundle, rec.test, rec.users.drop(USER), train=rec.train)


def test_an_unknown_protocol_is_a_config_error(rec: RecRun) -> None:
    with pytest.raises(ConfigError, match="protocol"):
        evaluate_ranking(rec.bundle, rec.test, rec.users, protocol="loo")  # type: ignore[arg-type]


def test_a_test_set_without_positives_is_a_config_error(rec: RecRun) -> None:
    negatives = rec.test.filter(pl.col(LABEL) == 0)
    with pytest.raises(ConfigError):
        evaluate_ranking(rec.bundle, negatives, rec.users, train=rec.train)


@pytest.mark.parametrize("negatives", [0, -1])
def test_sampled_negatives_below_one_are_a_config_error(rec: RecRun, negatives: int) -> None:
    with pytest.raises(ConfigError, match="negatives"):
        evaluate_ranking(
            rec.bundle,
            rec.test,
            rec.users,
            train=rec.train,
            protocol="sampled",
            negatives=negatives,
        )


def test_a_users_csv_with_zero_padded_ids(rec: RecRun, tmp_path: Path) -> None:
    ids = {u: f"{i:04d}" for i, u in enumerate(rec.users[USER])}
    users = rec.users.with_columns(
        pl.col(USER).replace_strict(ids), pl.col("installed_apps").list.join("|")
    )
    test = rec.test.with_columns(pl.col(USER).replace_strict(ids))
    train = rec.train.with_columns(pl.col(USER).replace_strict(ids))
    path = tmp_path / "users.csv"
    users.write_csv(path)
    from_csv = evaluate_ranking(rec.bundle, test, path, train=train)
    from_frame = evaluate_ranking(rec.bundle, test, users, train=train)
    assert from_csv.model == pytest.approx(from_frame.model)


def test_metric_values_are_finite(full: RankingResult, sampled: RankingResult) -> None:
    for result in (full, sampled):
        for metrics in (result.model, result.popularity):
            assert all(math.isfinite(v) for v in metrics.values())
            assert np.isfinite(list(metrics.values())).all()
