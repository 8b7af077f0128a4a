"""From a data config to labelled train / validation / test tables.

A flat table is split as configured. Interactions with users and items tables are split
first (so held-out interactions stay held out), get sampled negatives if the feedback is
implicit, and are then joined with the user and item features by key.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from widedeep.config import DataConfig
from widedeep.data.appstore import make_appstore
from widedeep.data.datasets import load_builtin
from widedeep.data.interactions import RecTables, with_sampled_negatives
from widedeep.data.splits import random_split, split_table
from widedeep.features.schema import LabelSpec
from widedeep.tables import TableSource, read_table


@dataclass(frozen=True)
class RecSplits:
    """What ranking needs beside the joined tables: the side tables and raw interactions."""

    tables: RecTables
    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame | None


@dataclass(frozen=True)
class Splits:
    """Labelled train, validation and (optional) test tables, ready for the preprocessor."""

    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame | None
    rec: RecSplits | None = None


def _split(
    frame: pl.DataFrame,
    data: DataConfig,
    validation: pl.DataFrame | None,
    test: pl.DataFrame | None,
    user_key: str | None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    if validation is not None and _nothing_split_off(data, test is not None):
        return frame, validation, test
    validation_fraction = 0.0 if validation is not None else data.validation_fraction
    test_fraction = 0.0 if test is not None else data.test_fraction
    if data.split == "random":
        parts = random_split(frame, validation_fraction, test_fraction, data.split_seed)
    else:
        parts = split_table(
            frame,
            data.split,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            seed=data.split_seed,
            user_key=user_key,
            time_column=data.time_column,
            last_n=data.last_n,
        )
    train, split_validation, split_test = parts
    return (
        train,
        validation if validation is not None else split_validation,
        test if test is not None else (split_test if split_test.height else None),
    )


def load_appstore() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The default synthetic app store (generated, seeded): impressions, users, apps."""
    with tempfile.TemporaryDirectory(prefix="widedeep-appstore-") as folder:
        files = make_appstore(folder)
        return (
            pl.read_parquet(files.impressions),
            pl.read_parquet(files.users),
            pl.read_parquet(files.apps),
        )


def _keys_alike(
    frames: list[pl.DataFrame | None], keys: Sequence[str]
) -> list[pl.DataFrame | None]:
    """``frames`` with each key column of one type in all of them: where they differ (keys
    read as text from a CSV file, as integers from a Parquet one), as text in all, so that
    the tables concatenate and join (keys are compared as text when scoring, too)."""
    for key in keys:
        types = {frame.schema[key] for frame in frames if frame is not None and key in frame}
        if len(types) > 1:
            frames = [
                frame.with_columns(pl.col(key).cast(pl.String))
                if frame is not None and key in frame
                else frame
                for frame in frames
            ]
    return frames


def _nothing_split_off(data: DataConfig, has_test: bool) -> bool:
    """With validation rows from a table of their own: whether the test rows, if any are
    asked for, do too, so that nothing is split off the training table."""
    return has_test or data.test_fraction == 0


def held_out_in_own_files(data: DataConfig) -> bool:
    """Whether a flat table's validation and test rows all come from their own files, with
    nothing split off the training table: it can then be encoded before they are read."""
    has_validation, has_test = data.validation is not None, data.test is not None
    return not data.is_recommendation and has_validation and _nothing_split_off(data, has_test)


def read_flat_table(data: DataConfig, id_columns: Sequence[str] = ()) -> pl.DataFrame:
    """A flat run's whole training table (``data.builtin`` or ``data.train``), before any
    split; ``id_columns`` as for ``load_splits``."""
    return read_table(flat_source(data), text_columns=id_columns)


def flat_source(data: DataConfig) -> TableSource:
    """A flat run's training table as ``data`` names it: the built-in table, or the path."""
    assert not data.is_recommendation and (data.builtin is not None or data.train is not None)
    return load_builtin(data.builtin) if data.builtin else data.train


def load_splits(data: DataConfig, label: LabelSpec, id_columns: Sequence[str] = ()) -> Splits:
    """Read, split, label and join the tables that ``data`` names. ``id_columns`` (the
    schema's, ``FeatureSchema.id_columns``) and the user and item keys are read from CSV
    files as text, as the fitted preprocessor reads them when it scores: '007' stays '007'."""
    text = [*id_columns, data.user_key, data.item_key] if data.is_recommendation else id_columns

    def read(source: TableSource) -> pl.DataFrame:
        return read_table(source, text_columns=text)

    validation = read(data.validation) if data.validation else None
    test = read(data.test) if data.test else None
    if not data.is_recommendation:
        frame = read_flat_table(data, id_columns)
        return Splits(*_split(frame, data, validation, test, user_key=None))

    users: pl.DataFrame | None
    items: pl.DataFrame | None
    if data.builtin == "appstore":
        interactions, users, items = load_appstore()
    else:
        assert data.train is not None
        interactions = read(data.train)
        users = read(data.users) if data.users else None
        items = read(data.items) if data.items else None
    keys = (data.user_key, data.item_key)
    alike, users, items, validation, test = _keys_alike(
        [interactions, users, items, validation, test], keys
    )
    assert alike is not None
    interactions = alike
    tables = RecTables(users, items, data.user_key, data.item_key)
    train, validation, test = _split(interactions, data, validation, test, data.user_key)
    if data.negatives is not None:
        known = pl.concat(
            [
                part.select(data.user_key, data.item_key)
                for part in (train, validation, test)
                if part is not None
            ]
        )
        catalog = (
            items.get_column(data.item_key)
            if items is not None
            else known.get_column(data.item_key)
        )

        def label_part(part: pl.DataFrame, offset: int) -> pl.DataFrame:
            assert data.negatives is not None
            return with_sampled_negatives(
                part,
                label_column=label.column,
                user_key=data.user_key,
                item_key=data.item_key,
                catalog=catalog,
                ratio=data.negatives.ratio,
                strategy=data.negatives.strategy,
                seed=data.negatives.seed + offset,
                known_positives=known,
                popularity=train,
            )

        train, validation = label_part(train, 0), label_part(validation, 1)
        test = label_part(test, 2) if test is not None else None
    return Splits(
        train=tables.join(train),
        validation=tables.join(validation),
        test=tables.join(test) if test is not None else None,
        rec=RecSplits(tables, train, validation, test),
    )
