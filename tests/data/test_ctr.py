"""The synthetic click log: files, columns, dtypes, missing values, seeding, chunking, structure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from widedeep.data import ctr
from widedeep.data.ctr import CtrFiles, make_ctr
from widedeep.errors import ConfigError

SMALL = {"rows": 20_000, "test_rows": 5_000, "max_vocabulary": 5_000}
SEED = 3
SCHEMA = {
    "label": pl.Int8,
    **{f"I{i}": pl.Float64 for i in range(1, 14)},
    **{f"C{i}": pl.String for i in range(1, 27)},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> CtrFiles:
    return make_ctr(tmp_path_factory.mktemp("ctr") / "small", seed=SEED, **SMALL)


@pytest.fixture(scope="module")
def train(small: CtrFiles) -> pl.DataFrame:
    return pl.read_parquet(small.train)


def test_writes_both_files_with_the_documented_columns_and_dtypes(small: CtrFiles) -> None:
    assert (small.train, small.test) == (
        small.folder / "train.parquet",
        small.folder / "test.parquet",
    )
    train, test = pl.read_parquet(small.train), pl.read_parquet(small.test)
    assert dict(train.schema) == SCHEMA
    assert dict(test.schema) == SCHEMA
    assert (len(train), len(test)) == (SMALL["rows"], SMALL["test_rows"])
    assert len(ctr.NUMERIC_FIELDS) == 13
    assert len(ctr.CATEGORICAL_FIELDS) == 26
    assert set(train.get_column("label").unique()) == {0, 1}


def test_settings_and_positive_rate_match_the_files(small: CtrFiles, train: pl.DataFrame) -> None:
    assert small.settings == {**SMALL, "seed": SEED}
    assert small.positive_rate == pytest.approx(train.get_column("label").mean())
    written = json.loads((small.folder / "settings.json").read_text())
    assert written["positive_rate"] == pytest.approx(small.positive_rate)
    assert sorted(written["vocabulary_sizes"].values()) == sorted(
        np.round(np.geomspace(10, SMALL["max_vocabulary"], 26)).astype(int).tolist()
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        small.positive_rate = 0.5  # type: ignore[misc]


def test_counts_are_non_negative_integers_with_some_missing(train: pl.DataFrame) -> None:
    numeric = train.select(ctr.NUMERIC_FIELDS)
    missing = numeric.null_count().row(0)
    for rate in (m / len(train) for m in missing):
        assert 0.03 <= rate <= 0.23
    values = numeric.to_numpy()
    values = values[~np.isnan(values)]
    assert values.min() >= 0
    assert np.array_equal(values, np.round(values))
    medians = numeric.median().row(0)
    assert max(medians) / max(min(medians), 1.0) > 10  # a different scale per field


def test_categorical_ids_look_hashed_and_are_never_missing(train: pl.DataFrame) -> None:
    categorical = train.select(ctr.CATEGORICAL_FIELDS)
    assert sum(categorical.null_count().row(0)) == 0
    for field in ("C1", "C26"):
        column = train.get_column(field)
        assert column.str.contains(rf"^{field}_[0-9a-f]{{8}}$").all()
        most_frequent = column.value_counts(sort=True).get_column(field)[0]
        assert most_frequent != f"{field}_00000000"


def test_vocabulary_sizes_are_spread_and_ids_are_skewed(train: pl.DataFrame) -> None:
    distinct = train.select(pl.col(ctr.CATEGORICAL_FIELDS).n_unique()).row(0)
    assert min(distinct) <= 10
    assert max(distinct) > 1_000
    # Zipf: in the largest field the most frequent id alone takes a few percent of the rows.
    largest = ctr.CATEGORICAL_FIELDS[int(np.argmax(distinct))]
    counts = train.get_column(largest).value_counts(sort=True).get_column("count")
    assert counts[0] / len(train) > 0.02


def test_base_rate_is_plausible_in_train_and_test(small: CtrFiles) -> None:
    assert 0.15 <= small.positive_rate <= 0.35
    test_rate = pl.read_parquet(small.test).get_column("label").mean()
    assert abs(test_rate - small.positive_rate) < 0.03  # type: ignore[operator]


def test_planted_pairs_click_much_more_than_the_base_rate(
    small: CtrFiles, train: pl.DataFrame
) -> None:
    world = ctr._build_world(SMALL["max_vocabulary"], np.random.default_rng(SEED))
    for (a, b), planted in zip(ctr.CROSSES, world.crosses, strict=True):
        rank_a, rank_b = np.nonzero(planted)
        tokens_a = world.tokens[ctr.CATEGORICAL_FIELDS.index(a)].take(rank_a).to_pylist()
        tokens_b = world.tokens[ctr.CATEGORICAL_FIELDS.index(b)].take(rank_b).to_pylist()
        pairs = pl.DataFrame({a: tokens_a, b: tokens_b, "planted": True})
        joined = train.join(pairs, on=[a, b], how="left").with_columns(
            pl.col("planted").fill_null(False)
        )
        rates = joined.group_by("planted").agg(pl.len(), pl.col("label").mean())
        hit = rates.filter(pl.col("planted")).row(0, named=True)
        assert hit["len"] >= 100
        assert hit["label"] > small.positive_rate + 0.2


def test_same_seed_same_files_other_seed_different(small: CtrFiles, tmp_path: Path) -> None:
    again = make_ctr(tmp_path / "again", seed=SEED, **SMALL)
    other = make_ctr(tmp_path / "other", seed=SEED + 1, **SMALL)
    for name in ("train", "test"):
        first = pl.read_parquet(getattr(small, name))
        assert_frame_equal(first, pl.read_parquet(getattr(again, name)))
        assert not first.equals(pl.read_parquet(getattr(other, name)))


def test_chunking_does_not_change_the_rows(small: CtrFiles, tmp_path: Path) -> None:
    chunked = make_ctr(tmp_path / "chunked", seed=SEED, chunk_rows=3_000, **SMALL)
    assert chunked.positive_rate == small.positive_rate
    for name in ("train", "test"):
        assert_frame_equal(
            pl.read_parquet(getattr(small, name)), pl.read_parquet(getattr(chunked, name))
        )


def test_test_rows_continue_the_stream_instead_of_repeating_it(small: CtrFiles) -> None:
    train = pl.read_parquet(small.train).head(SMALL["test_rows"])
    assert not train.equals(pl.read_parquet(small.test))


def test_tiny_sizes_and_no_test_rows_work(tmp_path: Path) -> None:
    files = make_ctr(tmp_path / "tiny", rows=1, test_rows=0, max_vocabulary=10, chunk_rows=1)
    assert len(pl.read_parquet(files.train)) == 1
    test = pl.read_parquet(files.test)
    assert len(test) == 0
    assert dict(test.schema) == SCHEMA


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"rows": 0}, "rows must be >= 1"),
        ({"test_rows": -1}, "test_rows must be >= 0"),
        ({"seed": -2}, "seed must be >= 0"),
        ({"chunk_rows": 0}, "chunk_rows must be >= 1"),
        ({"max_vocabulary": 9}, "max_vocabulary must be >= 10"),
        ({"max_vocabulary": 10**9}, "max_vocabulary must be <="),
        ({"rows": 1.5}, "rows must be an integer"),
        ({"seed": True}, "seed must be an integer"),
    ],
)
def test_bad_arguments_are_config_errors(
    tmp_path: Path, arguments: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_ctr(tmp_path / "bad", **arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()


def test_every_bad_argument_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_ctr(tmp_path / "bad", rows=0, chunk_rows=0, max_vocabulary=1)
    message = str(caught.value)
    assert "rows must be >= 1" in message
    assert "chunk_rows must be >= 1" in message
    assert "max_vocabulary must be >= 10" in message
