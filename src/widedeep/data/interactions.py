"""Interaction logs with separate user and item tables: joins and negative sampling.

Users and items keep their features in their own tables (one row per key), as they do in
production; an interaction row carries the two keys, a label and any context. Training
joins them by key; scoring encodes each side once (see ``widedeep.features.pairs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from numpy.typing import NDArray

from widedeep.errors import ConfigError, SchemaError

Strategy = Literal["uniform", "popularity"]


@dataclass(frozen=True)
class RecTables:
    """Users and items tables keyed by ``user_key`` / ``item_key`` (either may be absent)."""

    users: pl.DataFrame | None
    items: pl.DataFrame | None
    user_key: str
    item_key: str

    def __post_init__(self) -> None:
        for name, table, key in (
            ("users", self.users, self.user_key),
            ("items", self.items, self.item_key),
        ):
            if table is None:
                continue
            if key not in table.columns:
                raise SchemaError(f"the {name} table has no key column '{key}'")
            duplicated = table.get_column(key).is_duplicated()
            if duplicated.any():
                row = int(duplicated.arg_true()[0])
                raise SchemaError(
                    f"the {name} table repeats key {table.get_column(key)[row]!r} "
                    f"(row {row}); each {key} must appear once"
                )
        if self.users is not None and self.items is not None:
            shared = (set(self.users.columns) & set(self.items.columns)) - {
                self.user_key,
                self.item_key,
            }
            if shared:
                raise SchemaError(
                    f"the users and items tables both have column(s) {sorted(shared)}; "
                    "rename them so each feature has one source"
                )

    def join(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """The interactions with their user's and item's features (left joins by key)."""
        for key in (self.user_key, self.item_key):
            if key not in interactions.columns:
                raise SchemaError(f"the interactions table has no key column '{key}'")
        frame = interactions
        for table, key in ((self.users, self.user_key), (self.items, self.item_key)):
            if table is None:
                continue
            clash = (set(table.columns) & set(frame.columns)) - {key}
            if clash:
                raise SchemaError(
                    f"column(s) {sorted(clash)} are in the interactions table and in the table "
                    f"keyed by '{key}'; keep each feature in one table"
                )
            keyed = table.with_columns(pl.col(key).cast(frame.schema[key]))
            frame = frame.join(keyed, on=key, how="left", maintain_order="left")
        return frame


def key_positions(values: pl.Series, keys: pl.Series) -> NDArray[np.int64]:
    """Positions of ``values`` in ``keys`` (-1 when absent), compared as strings."""
    mapping = {value: i for i, value in enumerate(keys.cast(pl.String).to_list())}
    positions = values.cast(pl.String).replace_strict(mapping, default=-1, return_dtype=pl.Int64)
    return np.asarray(positions.to_numpy(), dtype=np.int64)


def sample_negatives(
    positives: pl.DataFrame,
    *,
    user_key: str,
    item_key: str,
    catalog: pl.Series,
    ratio: int,
    strategy: Strategy = "uniform",
    seed: int = 0,
    known_positives: pl.DataFrame | None = None,
    popularity: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``ratio`` sampled negatives per positive row, for the same user, never a known positive.

    Each negative copies its positive's other columns (time, context) with another item.
    ``strategy`` 'popularity' draws items in proportion to their positive count in
    ``popularity`` (default: ``positives``); 'uniform' draws every catalog item alike.
    """
    if ratio < 1:
        raise ConfigError(f"negative sampling ratio must be >= 1, got {ratio}")
    catalog = catalog.unique(maintain_order=True)
    n_items = catalog.len()
    known = positives.select(user_key, item_key)
    if known_positives is not None:  # a row's own positive always counts as known
        known = pl.concat(
            [known, known_positives.select(user_key, item_key)], how="vertical_relaxed"
        )
    user_catalog = known.get_column(user_key).unique(maintain_order=True)
    known_users = key_positions(known.get_column(user_key), user_catalog)
    known_items = key_positions(known.get_column(item_key), catalog)
    in_catalog = known_items >= 0  # an item outside the catalog can never be drawn anyway
    known_keys = np.unique(known_users[in_catalog] * n_items + known_items[in_catalog])
    if strategy == "popularity":
        counted = (popularity if popularity is not None else positives).get_column(item_key)
        codes = key_positions(counted, catalog)
        counts = np.bincount(codes[codes >= 0], minlength=n_items)
        weights = counts + 1.0  # every item stays possible
        probabilities = weights / weights.sum()
    elif strategy == "uniform":
        probabilities = None
    else:
        raise ConfigError(f"unknown negative sampling strategy '{strategy}'")

    rng = np.random.default_rng(seed)
    source_rows = np.repeat(np.arange(positives.height), ratio)
    users = np.repeat(key_positions(positives.get_column(user_key), user_catalog), ratio)
    items = np.full(len(source_rows), -1, dtype=np.int64)
    pending = np.arange(len(source_rows))
    for _ in range(50):  # rejection sampling; each round redraws only the rejected
        if probabilities is None:
            draws = rng.integers(0, n_items, len(pending))
        else:
            draws = rng.choice(n_items, len(pending), p=probabilities)
        keys = users[pending] * n_items + draws
        at = np.minimum(np.searchsorted(known_keys, keys), max(len(known_keys) - 1, 0))
        rejected = known_keys[at] == keys if len(known_keys) else np.zeros(len(keys), bool)
        items[pending[~rejected]] = draws[~rejected]
        pending = pending[rejected]
        if not len(pending):
            break
    if len(pending):  # users with few free items left: draw from exactly those
        _draw_from_free_items(items, pending, users, known_keys, n_items, probabilities, rng)
    kept = items >= 0  # only a user with no free item at all gets fewer negatives
    negatives = positives[source_rows[kept]].with_columns(
        pl.Series(item_key, catalog.gather(items[kept])).cast(positives.schema[item_key])
    )
    return negatives


def _draw_from_free_items(
    items: NDArray[np.int64],
    pending: NDArray[np.int64],
    users: NDArray[np.int64],
    known_keys: NDArray[np.int64],
    n_items: int,
    probabilities: NDArray[np.float64] | None,
    rng: np.random.Generator,
) -> None:
    """Fill ``items[pending]`` from each user's free items (catalog minus known), in place."""
    all_items = np.arange(n_items)
    for user in np.unique(users[pending]):  # only the few users rejection sampling left
        rows = pending[users[pending] == user]
        keys = user * n_items + all_items
        at = np.minimum(np.searchsorted(known_keys, keys), max(len(known_keys) - 1, 0))
        free = all_items[known_keys[at] != keys] if len(known_keys) else all_items
        if not len(free):
            continue
        weights = None
        if probabilities is not None:
            weights = probabilities[free] / probabilities[free].sum()
        items[rows] = rng.choice(free, len(rows), p=weights)


def with_sampled_negatives(
    interactions: pl.DataFrame,
    *,
    label_column: str,
    user_key: str,
    item_key: str,
    catalog: pl.Series,
    ratio: int,
    strategy: Strategy,
    seed: int,
    known_positives: pl.DataFrame,
    popularity: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Implicit feedback: every interaction is a positive (label 1) plus sampled 0s."""
    if label_column in interactions.columns:
        raise ConfigError(
            f"with negative sampling every interaction is a positive, but the interactions "
            f"already have a label column '{label_column}'; drop it or use explicit labels"
        )
    negatives = sample_negatives(
        interactions,
        user_key=user_key,
        item_key=item_key,
        catalog=catalog,
        ratio=ratio,
        strategy=strategy,
        seed=seed,
        known_positives=known_positives,
        popularity=popularity,
    )
    return pl.concat(
        [
            interactions.with_columns(pl.lit(1, pl.Int8).alias(label_column)),
            negatives.with_columns(pl.lit(0, pl.Int8).alias(label_column)),
        ]
    )
