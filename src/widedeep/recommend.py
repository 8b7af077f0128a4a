"""Top-K recommendation: candidates -> batched pair scores -> the K best items per user.

Each user's features and each item's features are encoded once; the (user, item) pairs of a
chunk of users are then assembled by indexing, with user x item crosses hashed per pair, and
scored by the model in large batches. No Python-level join, no row-by-row loop.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray
from torch import Tensor

from widedeep.bundle import Bundle
from widedeep.data.interactions import key_positions
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError, SchemaError
from widedeep.features.preprocessor import SideTable
from widedeep.retrieval import ItemCooccurrence, MostPopular, fill_with
from widedeep.tables import TableSource, describe_source

log = logging.getLogger(__name__)

UnknownItems = Literal["error", "skip"]
Retrieval = Literal["popular", "cooccurrence"]


@dataclass(frozen=True)
class Catalog:
    """The items that can be recommended: their keys and their encoded features."""

    keys: pl.Series
    side: SideTable
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return self.keys.len()


def _key_column(frame: pl.DataFrame, key: str, what: str, where: str) -> pl.Series:
    if key not in frame.columns:
        raise SchemaError(f"{where}: the {what} table has no key column '{key}'")
    keys = frame.get_column(key)
    if keys.null_count():
        row = int(keys.is_null().arg_true()[0])
        raise SchemaError(f"{where}: the {what} key '{key}' is missing in row {row}")
    return keys


def load_catalog(bundle: Bundle, items: TableSource | None = None) -> Catalog:
    """The catalog from ``items`` (a table with the item key and features) or the bundle's."""
    key = bundle.config.data.item_key
    if items is None:
        frame = bundle.table("items")
        if frame is None:
            raise ConfigError("this bundle stores no item catalog; give an items table (--items)")
        where = "the bundle's items table"
    else:
        frame = bundle.preprocessor.read(items, keys=[key])
        where = describe_source(items)
    keys = _key_column(frame, key, "items", where)
    if keys.is_duplicated().any():
        row = int(keys.is_duplicated().arg_true()[0])
        raise SchemaError(f"{where}: item {keys[row]!r} appears more than once (row {row})")
    side = bundle.preprocessor.encode_side(
        frame, [c for c in frame.columns if c != bundle.config.data.user_key]
    )
    return Catalog(keys=keys.cast(pl.String), side=side, columns=tuple(frame.columns))


def encode_users(
    bundle: Bundle, users: TableSource, catalog: Catalog
) -> tuple[pl.Series, SideTable]:
    """The user keys and user side of ``users``; columns that the catalog holds are item
    features, so they are left out rather than overriding every item's value."""
    key = bundle.config.data.user_key
    frame = bundle.preprocessor.read(users, keys=[key])
    keys = _key_column(frame, key, "users", describe_source(users)).cast(pl.String)
    columns = [c for c in frame.columns if c not in catalog.columns]
    return keys, bundle.preprocessor.encode_side(frame, columns)


def seen_mask_rows(
    interactions: pl.DataFrame | None,
    user_keys: pl.Series,
    catalog: Catalog,
    user_key: str,
    item_key: str,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(user row, catalog position) of every interaction to exclude."""
    if interactions is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    for key in (user_key, item_key):
        if key not in interactions.columns:
            raise SchemaError(f"the seen-interactions table has no column '{key}'")
    users = key_positions(interactions.get_column(user_key), user_keys)
    items = key_positions(interactions.get_column(item_key), catalog.keys)
    known = (users >= 0) & (items >= 0)
    return users[known], items[known]


def candidate_matrix(
    candidates: pl.DataFrame,
    user_keys: pl.Series,
    catalog: Catalog,
    user_key: str,
    item_key: str,
    on_unknown: UnknownItems,
) -> NDArray[np.int64]:
    """(U, N) catalog positions from a (user, item) candidates table, padded with -1."""
    for key in (user_key, item_key):
        if key not in candidates.columns:
            raise SchemaError(f"the candidates table has no column '{key}'")
    users = key_positions(candidates.get_column(user_key), user_keys)
    items = key_positions(candidates.get_column(item_key), catalog.keys)
    unknown = items < 0
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        message = (
            f"{int(unknown.sum())} candidate(s) name items not in the catalog, first "
            f"{candidates.get_column(item_key)[row]!r} in row {row}"
        )
        if on_unknown == "error":
            raise SchemaError(message + " (use skip to leave them out)")
        log.warning("%s; skipped", message)
    keep = (users >= 0) & ~unknown
    frame = (
        pl.DataFrame({"row": users[keep], "item": items[keep]})
        .unique(maintain_order=True)
        .with_columns(pl.int_range(pl.len()).over("row").alias("slot"))
    )
    width = int(frame.get_column("slot").to_numpy().max()) + 1 if frame.height else 1
    out = np.full((user_keys.len(), width), -1, dtype=np.int64)
    out[frame.get_column("row").to_numpy(), frame.get_column("slot").to_numpy()] = frame.get_column(
        "item"
    ).to_numpy()
    return out


class PairScorer:
    """Scores (user, item) pairs, computing each side's share of the model only once.

    The model is additive in its fields up to the deep part's first activation, so a user's
    fields (their embeddings through the first layer, their wide weights) are evaluated once
    per user, an item's once per item, and only the fields that mix both sides (user x item
    crosses) once per pair. Scores equal the joined-table path up to float rounding (~1e-7).
    """

    def __init__(
        self, bundle: Bundle, users: SideTable, catalog: Catalog, batch_size: int = 65_536
    ) -> None:
        self.model = bundle.model
        self.preprocessor = bundle.preprocessor
        self.users = users
        self.catalog = catalog
        self.batch_size = batch_size
        owners = self.preprocessor.owners([users, catalog.side])
        self.pair_fields = {name for name, owner in owners.items() if owner is None}
        self.model.eval()
        self.user_share = self._side_share(users, {n for n, o in owners.items() if o == 0})
        self.item_share = self._side_share(catalog.side, {n for n, o in owners.items() if o == 1})

    def for_users(self, users: SideTable, batch_size: int | None = None) -> PairScorer:
        """This scorer for other users: the catalog's share is reused, only the users' share
        is computed (what a server does per request)."""
        scorer = copy.copy(self)
        scorer.users = users
        scorer.batch_size = self.batch_size if batch_size is None else batch_size
        owners = self.preprocessor.owners([users, self.catalog.side])
        scorer.user_share = scorer._side_share(users, {n for n, o in owners.items() if o == 0})
        return scorer

    @torch.no_grad()
    def _side_share(self, side: SideTable, fields: set[str]) -> tuple[Tensor, Tensor | None]:
        rows = np.arange(side.report.rows)
        table = TensorTable.from_encoded(
            self.preprocessor.encode_pairs([(side, rows)], fields=fields)
        )
        wides, deeps = [], []
        for start in range(0, len(table), self.batch_size):
            batch = table.slice(start, min(start + self.batch_size, len(table)))
            wide, deep = self.model.partial(batch, fields)
            wides.append(wide)
            deeps.append(deep)
        deep_share = torch.cat(deeps) if deeps and deeps[0] is not None else None  # type: ignore[arg-type]
        return torch.cat(wides), deep_share

    @torch.no_grad()
    def score(
        self, user_rows: NDArray[np.int64], item_rows: NDArray[np.int64]
    ) -> NDArray[np.float32]:
        """Probabilities (binary) or predictions of the pairs (user_rows[i], item_rows[i])."""
        n = len(user_rows)
        out = np.empty(n, dtype=np.float32)
        if n == 0:
            return out
        pairs = None
        if self.pair_fields:
            pairs = TensorTable.from_encoded(
                self.preprocessor.encode_pairs(
                    [(self.users, user_rows), (self.catalog.side, item_rows)],
                    fields=self.pair_fields,
                )
            )
        users = torch.from_numpy(np.require(user_rows, np.int64, ["C", "W"]))
        items = torch.from_numpy(np.require(item_rows, np.int64, ["C", "W"]))
        user_wide, user_deep = self.user_share
        item_wide, item_deep = self.item_share
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            u, i = users[start:stop], items[start:stop]
            wide = user_wide[u] + item_wide[i]
            deep = None
            if user_deep is not None and item_deep is not None:
                deep = user_deep[u] + item_deep[i]
            if pairs is not None:
                pair_wide, pair_deep = self.model.partial(
                    pairs.slice(start, stop), self.pair_fields
                )
                wide = wide + pair_wide
                if deep is not None and pair_deep is not None:
                    deep = deep + pair_deep
            logits = self.model.finish(wide, deep)
            scores = torch.sigmoid(logits) if self.model.objective == "binary" else logits
            out[start:stop] = scores.numpy()
        return out


def score_pairs(
    bundle: Bundle,
    users: SideTable,
    user_rows: NDArray[np.int64],
    catalog: Catalog,
    item_rows: NDArray[np.int64],
) -> NDArray[np.float32]:
    """Model scores of the (user_rows[i], item_rows[i]) pairs (see ``PairScorer``)."""
    return PairScorer(bundle, users, catalog).score(user_rows, item_rows)


def top_k(
    bundle: Bundle,
    users: TableSource,
    *,
    k: int = 10,
    items: TableSource | None = None,
    exclude_seen: TableSource | None = None,
    candidates: TableSource | NDArray[np.int64] | None = None,
    on_unknown_items: UnknownItems = "error",
    retrieval: Retrieval | None = None,
    num_candidates: int = 200,
    pairs_per_chunk: int = 262_144,
) -> pl.DataFrame:
    """The ``k`` best items for every user of ``users``: rows (user, rank, item, score).

    Users are scored from their features, so users unseen in training get recommendations
    too (cold start). ``candidates`` limits each user's items (a (user, item) table or a
    (U, N) matrix of catalog positions, -1 = none); ``retrieval`` ('popular' or
    'cooccurrence', from the bundle's training counts) picks ``num_candidates`` per user
    instead; by default every catalog item is a candidate. ``exclude_seen`` removes the
    (user, item) pairs it lists (and is the history co-occurrence starts from). Ties keep
    catalog order, so the output is deterministic.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    data = bundle.config.data
    keys = [data.user_key, data.item_key]  # read from CSV as text, as users and items are
    catalog = load_catalog(bundle, items)
    user_keys, user_side = encode_users(bundle, users, catalog)
    n_users, n_items = user_keys.len(), len(catalog)
    if isinstance(candidates, np.ndarray):
        matrix: NDArray[np.int64] | None = candidates.astype(np.int64)
    elif candidates is not None:
        matrix = candidate_matrix(
            bundle.preprocessor.read(candidates, keys=keys),
            user_keys,
            catalog,
            data.user_key,
            data.item_key,
            on_unknown_items,
        )
    else:
        matrix = None
    seen = bundle.preprocessor.read(exclude_seen, keys=keys) if exclude_seen is not None else None
    seen_users, seen_items = seen_mask_rows(seen, user_keys, catalog, data.user_key, data.item_key)
    if retrieval is not None:
        if matrix is not None:
            raise ConfigError("give candidates or retrieval, not both")
        # Co-occurrence was fitted on positives: a user's history is their positive rows.
        label = bundle.config.feature_schema.label
        if seen is not None and label is not None and label.column in seen.columns:
            seen = seen.filter(pl.Series(bundle.preprocessor.encode_labels(seen) > 0.5))
        history_users, history_items = seen_mask_rows(
            seen, user_keys, catalog, data.user_key, data.item_key
        )
        history = pl.DataFrame({"row": history_users, "item": history_items})
        matrix = retrieve(bundle, catalog, retrieval, history, n_users, num_candidates)
    scorer = PairScorer(bundle, user_side, catalog)
    width = n_items if matrix is None else matrix.shape[1]
    chunk = max(1, pairs_per_chunk // max(width, 1))
    rows_out, ranks_out, items_out, scores_out = [], [], [], []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        block = np.arange(start, stop)
        if matrix is None:
            item_grid = np.broadcast_to(np.arange(n_items), (len(block), n_items))
        else:
            item_grid = matrix[start:stop]
        valid = item_grid >= 0
        user_rows = np.repeat(block, item_grid.shape[1])
        scores = np.full(item_grid.shape, -np.inf, dtype=np.float32)
        flat_valid = valid.reshape(-1)
        scores.reshape(-1)[flat_valid] = scorer.score(
            user_rows[flat_valid], item_grid.reshape(-1)[flat_valid]
        )
        valid = valid & ~_seen(seen_users, seen_items, block, item_grid)
        scores[~valid] = -np.inf
        take = min(k, item_grid.shape[1])
        # Stable ordering: sort by -score, ties by column (catalog or candidate order).
        order = np.argsort(-scores, axis=1, kind="stable")[:, :take]
        best = np.take_along_axis(scores, order, axis=1)
        keep = np.isfinite(best)
        rows_out.append(np.repeat(block, take)[keep.reshape(-1)])
        ranks_out.append(np.tile(np.arange(1, take + 1), len(block))[keep.reshape(-1)])
        items_out.append(np.take_along_axis(item_grid, order, axis=1)[keep])
        scores_out.append(best[keep])
    rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    return pl.DataFrame(
        {
            data.user_key: user_keys.gather(rows),
            "rank": np.concatenate(ranks_out) if ranks_out else np.zeros(0, np.int64),
            data.item_key: catalog.keys.gather(
                np.concatenate(items_out) if items_out else np.zeros(0, np.int64)
            ),
            "score": np.concatenate(scores_out) if scores_out else np.zeros(0, np.float32),
        }
    )


def retrieve(
    bundle: Bundle,
    catalog: Catalog,
    retrieval: Retrieval,
    history: pl.DataFrame,
    n_users: int,
    n: int,
) -> NDArray[np.int64]:
    """(U, n) candidates from the bundle's retrieval stage, leaving out each user's history."""
    if n < 1:
        raise ConfigError(f"num_candidates must be >= 1, got {n}")
    stored = bundle.table("popularity")
    if stored is None:
        raise ConfigError("this bundle has no retrieval data (train it on interactions)")
    popular = MostPopular.from_frame(stored, catalog.keys)
    if retrieval == "popular":
        empty = np.full((n_users, min(n, len(catalog))), -1, dtype=np.int64)
        return fill_with(empty, popular.ranking(), history)
    if retrieval == "cooccurrence":
        pairs = bundle.table("cooccurrence")
        assert pairs is not None
        model = ItemCooccurrence.from_frame(pairs, popular, catalog.keys)
        rows = model.candidates(history, min(n, len(catalog)))
        if rows.shape[0] < n_users:  # users after the last one with a history
            rows = np.vstack([rows, np.full((n_users - rows.shape[0], rows.shape[1]), -1)])
            rows = fill_with(rows, popular.ranking(), history)
        return rows
    raise ConfigError(f"retrieval must be 'popular' or 'cooccurrence', got {retrieval!r}")


def _seen(
    seen_users: NDArray[np.int64],
    seen_items: NDArray[np.int64],
    block: NDArray[np.int64],
    item_grid: NDArray[np.int64],
) -> NDArray[np.bool_]:
    """Which cells of ``item_grid`` (rows = users of ``block``) are seen pairs."""
    out = np.zeros(item_grid.shape, dtype=bool)
    if not len(seen_users):
        return out
    in_block = (seen_users >= block[0]) & (seen_users <= block[-1])
    if not in_block.any():
        return out
    n_items = int(max(item_grid.max(initial=0), seen_items.max(initial=0))) + 1
    seen_keys = np.unique(seen_users[in_block] * n_items + seen_items[in_block])
    keys = (block[:, None] * n_items + np.maximum(item_grid, 0)).reshape(-1)
    at = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
    out.reshape(-1)[:] = (seen_keys[at] == keys) & (item_grid.reshape(-1) >= 0)
    return out
