"""Ranking evaluation of a bundle on held-out interactions, always beside a popularity baseline.

Two protocols:

* ``full``: each test user ranks every catalog item except their training positives; the
  relevant items are their test positives.
* ``sampled``: each test user's latest held-out positive is ranked among ``negatives``
  (99 by default) items sampled, seeded, from those the user has no positive for.

The popularity baseline ranks the same candidates by their number of training positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from numpy.typing import NDArray

from widedeep.bundle import Bundle
from widedeep.config import DataConfig
from widedeep.data.interactions import key_positions
from widedeep.errors import ConfigError, SchemaError
from widedeep.ranking_metrics import gauc, ranking_report
from widedeep.recommend import Catalog, PairScorer, encode_users, load_catalog
from widedeep.retrieval import MostPopular
from widedeep.tables import TableSource, describe_source

Protocol = Literal["full", "sampled"]


@dataclass(frozen=True)
class RankingResult:
    """Metrics of the model and of the popularity baseline on the same candidates."""

    protocol: Protocol
    k: int
    model: dict[str, float]
    popularity: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """Plain data for JSON."""
        return {
            "protocol": self.protocol,
            "k": self.k,
            "model": self.model,
            "popularity": self.popularity,
        }


def positive_rows(bundle: Bundle, interactions: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``interactions`` whose label is positive (all rows when it has no label)."""
    label = bundle.config.feature_schema.label
    assert label is not None
    if label.column not in interactions.columns:
        return interactions
    labels = bundle.preprocessor.encode_labels(interactions)
    return interactions.filter(pl.Series(labels > 0.5))


def _merge(total: dict[str, float], part: dict[str, float]) -> None:
    """Accumulate a chunk's user-averaged metrics, weighted by its user count."""
    users = part["users"]
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + (value * users if key != "users" else users)


def _finish(total: dict[str, float]) -> dict[str, float]:
    users = total.get("users", 0.0)
    if not users:
        raise ConfigError("no test user has a held-out positive among the candidates")
    return {k: (v / users if k != "users" else v) for k, v in total.items()}


def evaluate_ranking(
    bundle: Bundle,
    test: TableSource,
    users: TableSource,
    *,
    train: TableSource | None = None,
    items: TableSource | None = None,
    protocol: Protocol = "full",
    k: int = 10,
    negatives: int = 99,
    seed: int = 0,
    users_per_chunk: int | None = None,
) -> RankingResult:
    """Rank held-out positives of ``test`` for the users of ``users`` (see module docs).

    ``train`` interactions are excluded from each user's candidates (full protocol) and
    give the popularity baseline; without them the bundle's popularity counts are used.
    """
    if protocol not in ("full", "sampled"):
        raise ConfigError(f"protocol must be 'full' or 'sampled', got {protocol!r}")
    if protocol == "sampled" and negatives < 1:
        raise ConfigError(f"the sampled protocol needs negatives >= 1, got {negatives}")
    data = bundle.config.data
    catalog = load_catalog(bundle, items)
    keys = [data.user_key, data.item_key]
    test_frame = bundle.preprocessor.read(test, keys=keys)
    test_positives = positive_rows(bundle, test_frame)
    user_frame = bundle.preprocessor.read(users, keys=keys)
    if data.user_key not in user_frame.columns:
        raise SchemaError(
            f"{describe_source(users)}: the users table has no column '{data.user_key}'"
        )
    evaluated = test_positives.get_column(data.user_key).cast(pl.String).unique(maintain_order=True)
    user_frame = user_frame.filter(pl.col(data.user_key).cast(pl.String).is_in(evaluated.to_list()))
    if user_frame.height == 0:
        raise ConfigError("none of the test users is in the users table")
    user_keys, user_side = encode_users(bundle, user_frame, catalog)
    if train is not None:
        train_frame = bundle.preprocessor.read(train, keys=keys)
        train_positives = positive_rows(bundle, train_frame)
        popular = MostPopular.fit(train_positives, data.item_key, catalog.keys)
    else:
        train_positives = None
        stored = bundle.table("popularity")
        if stored is None:
            raise ConfigError(
                "give the training interactions (--train): the bundle has no popularity"
            )
        popular = MostPopular.from_frame(stored, catalog.keys)

    def pairs_of(frame: pl.DataFrame | None) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        if frame is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = key_positions(frame.get_column(data.user_key), user_keys)
        cols = key_positions(frame.get_column(data.item_key), catalog.keys)
        keep = (rows >= 0) & (cols >= 0)
        return rows[keep], cols[keep]

    scorer = PairScorer(bundle, user_side, catalog)
    test_rows, test_cols = pairs_of(test_positives)
    train_rows, train_cols = pairs_of(train_positives)
    if protocol == "full":
        model, baseline = _full(
            scorer,
            catalog,
            popular,
            test_rows,
            test_cols,
            train_rows,
            train_cols,
            k,
            users_per_chunk,
        )
    else:
        # As in the full protocol, a test positive the user already had in training is no
        # held-out item: rank each user's latest *new* positive.
        fresh = test_positives
        if train_positives is not None:
            fresh = test_positives.join(
                train_positives.select(data.user_key, data.item_key).unique(),
                on=[data.user_key, data.item_key],
                how="anti",
            )
        latest = _latest_positive(fresh, data.user_key, data.time_column)
        model, baseline = _sampled(
            scorer,
            user_keys,
            catalog,
            popular,
            latest,
            data,
            test_rows,
            test_cols,
            train_rows,
            train_cols,
            k,
            negatives,
            seed,
        )
    label = bundle.config.feature_schema.label
    if label is not None and label.column in test_frame.columns and protocol == "full":
        model["gauc"] = _pointwise_gauc(bundle, test_frame, user_frame, scorer, catalog)
    return RankingResult(protocol=protocol, k=k, model=model, popularity=baseline)


def _full(
    scorer: PairScorer,
    catalog: Catalog,
    popular: MostPopular,
    test_rows: NDArray[np.int64],
    test_cols: NDArray[np.int64],
    train_rows: NDArray[np.int64],
    train_cols: NDArray[np.int64],
    k: int,
    users_per_chunk: int | None,
) -> tuple[dict[str, float], dict[str, float]]:
    n_users = int(scorer.users.report.rows)
    n_items = len(catalog)
    chunk = users_per_chunk or max(1, 262_144 // max(n_items, 1))
    model_total: dict[str, float] = {}
    baseline_total: dict[str, float] = {}
    popularity_scores = popular.counts.astype(np.float64)
    for start in range(0, n_users, chunk):
        block = np.arange(start, min(start + chunk, n_users))
        relevant = np.zeros((len(block), n_items), dtype=bool)
        in_block = (test_rows >= block[0]) & (test_rows <= block[-1])
        relevant[test_rows[in_block] - start, test_cols[in_block]] = True
        mask = np.ones((len(block), n_items), dtype=bool)
        in_block = (train_rows >= block[0]) & (train_rows <= block[-1])
        mask[train_rows[in_block] - start, train_cols[in_block]] = False
        if not (relevant & mask).any():
            continue
        user_rows = np.repeat(block, n_items)
        item_rows = np.tile(np.arange(n_items), len(block))
        scores = scorer.score(user_rows, item_rows).reshape(len(block), n_items)
        _merge(model_total, ranking_report(scores, relevant, k, mask))
        baseline = np.broadcast_to(popularity_scores, (len(block), n_items))
        _merge(baseline_total, ranking_report(baseline, relevant, k, mask))
    return _finish(model_total), _finish(baseline_total)


def _latest_positive(
    positives: pl.DataFrame, user_key: str, time_column: str | None
) -> pl.DataFrame:
    """One held-out positive per user: the latest by time (or the last row without time)."""
    frame = positives.with_row_index("__row")
    order = [time_column, "__row"] if time_column and time_column in frame.columns else ["__row"]
    return frame.sort(order).group_by(user_key, maintain_order=True).last().drop("__row")


def _sampled(
    scorer: PairScorer,
    user_keys: pl.Series,
    catalog: Catalog,
    popular: MostPopular,
    latest: pl.DataFrame,
    data: DataConfig,
    test_rows: NDArray[np.int64],
    test_cols: NDArray[np.int64],
    train_rows: NDArray[np.int64],
    train_cols: NDArray[np.int64],
    k: int,
    negatives: int,
    seed: int,
) -> tuple[dict[str, float], dict[str, float]]:
    n_items = len(catalog)
    rows = key_positions(latest.get_column(data.user_key), user_keys)
    positives = key_positions(latest.get_column(data.item_key), catalog.keys)
    keep = (rows >= 0) & (positives >= 0)
    rows, positives = rows[keep], positives[keep]
    known = np.unique(
        np.concatenate([test_rows * n_items + test_cols, train_rows * n_items + train_cols])
    )
    rng = np.random.default_rng(seed)
    sampled = np.full((len(rows), negatives), -1, dtype=np.int64)
    pending = np.ones(sampled.shape, dtype=bool)
    for _ in range(100):
        draws = rng.integers(0, n_items, int(pending.sum()))
        keys = np.repeat(rows, negatives).reshape(sampled.shape)[pending] * n_items + draws
        at = np.minimum(np.searchsorted(known, keys), max(len(known) - 1, 0))
        ok = known[at] != keys if len(known) else np.ones(len(keys), bool)
        where = np.argwhere(pending)
        sampled[where[ok, 0], where[ok, 1]] = draws[ok]
        pending[where[ok, 0], where[ok, 1]] = False
        if not pending.any():
            break
    candidates = np.concatenate([positives[:, None], sampled], axis=1)  # positive first
    shuffle = np.argsort(rng.random(candidates.shape), axis=1)  # then a seeded shuffle
    candidates = np.take_along_axis(candidates, shuffle, axis=1)
    relevant = shuffle == 0
    mask = candidates >= 0
    flat = mask.reshape(-1)
    scores = np.full(candidates.shape, -np.inf)
    scores.reshape(-1)[flat] = scorer.score(
        np.repeat(rows, candidates.shape[1])[flat], candidates.reshape(-1)[flat]
    )
    baseline = popular.counts[np.maximum(candidates, 0)].astype(np.float64)
    return ranking_report(scores, relevant, k, mask), ranking_report(baseline, relevant, k, mask)


def _pointwise_gauc(
    bundle: Bundle,
    test_frame: pl.DataFrame,
    user_frame: pl.DataFrame,
    scorer: PairScorer,
    catalog: Catalog,
) -> float:
    """Per-user AUC of the test impressions themselves, averaged over users with both labels."""
    data = bundle.config.data
    label = bundle.config.feature_schema.label
    assert label is not None
    rows = key_positions(test_frame.get_column(data.user_key), user_frame.get_column(data.user_key))
    cols = key_positions(test_frame.get_column(data.item_key), catalog.keys)
    keep = (rows >= 0) & (cols >= 0)
    if not keep.any():
        return float("nan")
    labels = bundle.preprocessor.encode_labels(test_frame)[keep]
    scores = scorer.score(rows[keep], cols[keep])
    try:
        return gauc(rows[keep], labels, scores)
    except ConfigError:
        return float("nan")
