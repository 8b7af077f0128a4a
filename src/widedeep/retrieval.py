"""Candidate generation, the paper's first stage: a few hundred items per user to rank.

Two generators, fitted on positive interactions (user, item):

* ``MostPopular``: the items with the most positives, the same for everyone;
* ``ItemCooccurrence``: items that co-occur with the user's own positives in other users'
  histories (item-to-item), topped up with popular items when a history is short.

Both return candidates as positions in an item catalog, padded with -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.typing import NDArray

from widedeep.data.interactions import key_positions
from widedeep.errors import ConfigError

IndexMatrix = NDArray[np.int64]


@dataclass(frozen=True)
class MostPopular:
    """Items ranked by their number of positive interactions (ties by catalog position)."""

    counts: NDArray[np.int64]  # (I,) positives per catalog item

    @classmethod
    def fit(cls, positives: pl.DataFrame, item_key: str, catalog: pl.Series) -> MostPopular:
        """Count positives per catalog item."""
        positions = key_positions(positives.get_column(item_key), catalog)
        counts = np.bincount(positions[positions >= 0], minlength=catalog.len())
        return cls(counts=counts.astype(np.int64))

    def ranking(self) -> NDArray[np.int64]:
        """All catalog positions, most popular first."""
        return np.argsort(-self.counts, kind="stable")

    def candidates(self, n_users: int, n: int) -> IndexMatrix:
        """The ``n`` most popular items for each of ``n_users`` users."""
        top = self.ranking()[:n]
        return np.broadcast_to(top, (n_users, len(top))).copy()

    def to_frame(self, catalog: pl.Series) -> pl.DataFrame:
        """(item, positives) rows, for a bundle."""
        return pl.DataFrame({"item": catalog.cast(pl.String), "positives": self.counts})

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, catalog: pl.Series) -> MostPopular:
        """Inverse of ``to_frame`` against the same catalog."""
        counts = np.zeros(catalog.len(), dtype=np.int64)
        positions = key_positions(frame.get_column("item"), catalog)
        known = positions >= 0
        counts[positions[known]] = frame.get_column("positives").to_numpy()[known]
        return cls(counts=counts)


@dataclass(frozen=True)
class ItemCooccurrence:
    """For each item, its ``neighbors`` most co-occurring items in users' positive histories."""

    neighbors: pl.DataFrame  # columns item, neighbor (catalog positions), count
    popular: MostPopular

    @classmethod
    def fit(
        cls,
        positives: pl.DataFrame,
        user_key: str,
        item_key: str,
        catalog: pl.Series,
        neighbors: int = 100,
        max_history: int = 50,
    ) -> ItemCooccurrence:
        """Count co-occurring pairs over each user's most recent ``max_history`` positives."""
        if neighbors < 1 or max_history < 2:
            raise ConfigError("cooccurrence needs neighbors >= 1 and max_history >= 2")
        frame = pl.DataFrame(
            {
                "user": positives.get_column(user_key).cast(pl.String),
                "item": key_positions(positives.get_column(item_key), catalog),
            }
        ).filter(pl.col("item") >= 0)
        history = (
            frame.unique(maintain_order=True)
            .with_columns(pl.int_range(pl.len()).reverse().over("user").alias("age"))
            .filter(pl.col("age") < max_history)
            .select("user", "item")
        )
        pairs = (
            history.join(history, on="user", suffix="_other")
            .filter(pl.col("item") != pl.col("item_other"))
            .group_by("item", "item_other")
            .len("count")
            .sort(["item", "count", "item_other"], descending=[False, True, False])
            .with_columns(pl.int_range(pl.len()).over("item").alias("slot"))
            .filter(pl.col("slot") < neighbors)
            .select("item", pl.col("item_other").alias("neighbor"), "count")
        )
        return cls(neighbors=pairs, popular=MostPopular.fit(positives, item_key, catalog))

    def to_frame(self, catalog: pl.Series) -> pl.DataFrame:
        """(item, neighbor, count) rows with item keys, for a bundle."""
        keys = catalog.cast(pl.String)
        return pl.DataFrame(
            {
                "item": keys.gather(self.neighbors.get_column("item").to_numpy()),
                "neighbor": keys.gather(self.neighbors.get_column("neighbor").to_numpy()),
                "count": self.neighbors.get_column("count"),
            }
        )

    @classmethod
    def from_frame(
        cls, frame: pl.DataFrame, popular: MostPopular, catalog: pl.Series
    ) -> ItemCooccurrence:
        """Inverse of ``to_frame`` against ``catalog`` (pairs of unknown items dropped)."""
        neighbors = pl.DataFrame(
            {
                "item": key_positions(frame.get_column("item"), catalog),
                "neighbor": key_positions(frame.get_column("neighbor"), catalog),
                "count": frame.get_column("count"),
            }
        ).filter((pl.col("item") >= 0) & (pl.col("neighbor") >= 0))
        return cls(neighbors=neighbors, popular=popular)

    def candidates(self, histories: pl.DataFrame, n: int) -> IndexMatrix:
        """(U, n) candidates for users whose ``histories`` rows are (row, item position).

        A candidate's score is the sum of its co-occurrence counts with the user's items;
        items already in the history are left out; popular items fill short lists. An item
        repeated in a history counts once, as in ``fit``.
        """
        histories = histories.unique(subset=["row", "item"], maintain_order=True)
        users = int(histories.get_column("row").to_numpy().max()) + 1 if histories.height else 0
        scored = (
            histories.join(self.neighbors, on="item")
            .join(
                histories.rename({"item": "neighbor"}).with_columns(pl.lit(True).alias("own")),
                on=["row", "neighbor"],
                how="left",
            )
            .filter(pl.col("own").is_null())
            .group_by("row", "neighbor")
            .agg(pl.col("count").sum())
            .sort(["row", "count", "neighbor"], descending=[False, True, False])
            .with_columns(pl.int_range(pl.len()).over("row").alias("slot"))
            .filter(pl.col("slot") < n)
        )
        out = np.full((users, n), -1, dtype=np.int64)
        out[scored.get_column("row").to_numpy(), scored.get_column("slot").to_numpy()] = (
            scored.get_column("neighbor").to_numpy()
        )
        return fill_with(out, self.popular.ranking(), histories)


def fill_with(
    candidates: IndexMatrix, ranking: NDArray[np.int64], histories: pl.DataFrame
) -> IndexMatrix:
    """Fill each row's -1 slots with the first items of ``ranking`` not already in the row
    or the user's history."""
    out = candidates.copy()
    users = out.shape[0]
    own = np.zeros((users, len(ranking)), dtype=bool) if users else np.zeros((0, 0), bool)
    if histories.height:
        own[histories.get_column("row").to_numpy(), histories.get_column("item").to_numpy()] = True
    for row in np.flatnonzero((out < 0).any(axis=1)):  # only short rows; vectorized inside
        present = out[row][out[row] >= 0]
        taken = own[row].copy()
        taken[present] = True
        slots = np.flatnonzero(out[row] < 0)
        extra = ranking[~taken[ranking]][: len(slots)]
        out[row, slots[: len(extra)]] = extra
    return out
