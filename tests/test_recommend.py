"""Top-K recommendation: the pair path, ``top_k``'s contract, candidates and retrieval.

The module also owns ``shared_rec_run``: one tiny app-store recommendation run, trained once
per session and shared (read only) by ``test_ranking.py`` and ``test_cli_recommend.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import one_thread
from widedeep.bundle import Bundle, load_bundle
from widedeep.config import RunConfig
from widedeep.data.appstore import make_appstore
from widedeep.data.interactions import RecTables, key_positions
from widedeep.demo import packaged_config
from widedeep.errors import ConfigError, SchemaError
from widedeep.features.schema import PADDING_ID
from widedeep.recommend import load_catalog, retrieve, score_pairs, top_k
from widedeep.tables import write_table
from widedeep.training.loop import TrainResult, train

USER, ITEM, LABEL = "user_id", "app_id", "installed"
RESULT_COLUMNS = [USER, "rank", ITEM, "score"]


@dataclass(frozen=True)
class RecRun:
    """A trained app-store run and the tables it came from (read only: copy to tamper)."""

    result: TrainResult
    bundle: Bundle
    users_path: Path
    apps_path: Path
    train_path: Path  # run_dir/interactions/train.parquet (labelled impressions)
    test_path: Path

    @property
    def users(self) -> pl.DataFrame:
        return pl.read_parquet(self.users_path)

    @property
    def apps(self) -> pl.DataFrame:
        return pl.read_parquet(self.apps_path)

    @property
    def train(self) -> pl.DataFrame:
        return pl.read_parquet(self.train_path)

    @property
    def test(self) -> pl.DataFrame:
        return pl.read_parquet(self.test_path)


_RUNS: dict[str, RecRun] = {}


def shared_rec_run(tmp_path_factory: pytest.TempPathFactory) -> RecRun:
    """300 users, 60 apps, 20k impressions; two epochs of a small Wide & Deep (~3 s)."""
    if "default" not in _RUNS:
        folder = tmp_path_factory.mktemp("rec-run")
        files = make_appstore(folder / "data", users=300, apps=60, impressions=20_000, seed=1)
        base = packaged_config("appstore").to_dict()
        base["data"].update(
            builtin=None,
            train=str(files.impressions),
            users=str(files.users),
            items=str(files.apps),
        )
        base["model"]["hidden_units"] = [16, 8]
        base["train"].update(epochs=2, progress=False, device="cpu")
        config = RunConfig.from_dict(base)
        with pytest.MonkeyPatch.context() as patch, one_thread():
            # No PNGs: these tests never look at them (see fixtures_train.skip_plots).
            patch.setattr(sys.modules["widedeep.training.loop"], "_plots", lambda *a, **k: [])
            result = train(config, folder / "run")
        interactions = result.run_dir / "interactions"
        _RUNS["default"] = RecRun(
            result=result,
            bundle=load_bundle(result.bundle_dir),
            users_path=files.users,
            apps_path=files.apps,
            train_path=interactions / "train.parquet",
            test_path=interactions / "test.parquet",
        )
    return _RUNS["default"]


@pytest.fixture(scope="session")
def rec(tmp_path_factory: pytest.TempPathFactory) -> RecRun:
    return shared_rec_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def pairs(frame: pl.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame[USER].cast(pl.String), frame[ITEM].cast(pl.String), strict=True))


def pair_key() -> pl.Expr:
    """One string per (user, item) pair, for order-keeping membership filters."""
    return pl.concat_str(pl.col(USER).cast(pl.String), pl.col(ITEM).cast(pl.String), separator="\t")


def assert_ranked_lists(recs: pl.DataFrame, k: int) -> None:
    """Columns (user, rank, item, score); per user ranks 1..n <= k, scores non-increasing."""
    assert recs.columns == RESULT_COLUMNS
    for (user,), group in recs.group_by(USER, maintain_order=True):
        assert group["rank"].to_list() == list(range(1, group.height + 1)), user
        assert group.height <= k
        scores = group["score"].to_numpy()
        assert np.all(np.diff(scores) <= 0), user
        assert group[ITEM].n_unique() == group.height, user


def cold_users() -> pl.DataFrame:
    """Users never seen in training: features only, one with no installed apps at all."""
    return pl.DataFrame(
        {
            USER: ["cold-1", "cold-2"],
            "country": ["atlantis", "c00"],  # an unseen country, and a known one
            "device": ["ios_phone", "toaster"],
            "age_bucket": ["25-34", "18-24"],
            "installed_apps": [[], ["a000001", "a000002"]],
        },
        schema_overrides={"installed_apps": pl.List(pl.String)},
    )


# ---------------------------------------------------------------- pair path == table path


def joined_and_pair_scores(rec: RecRun) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the test interactions: Bundle.predict on the joined table, and score_pairs
    over (user row, item row) of the same interactions."""
    users = rec.users
    joined = RecTables(users, rec.apps, USER, ITEM).join(rec.test)
    expected = rec.bundle.predict(joined)
    catalog = load_catalog(rec.bundle)
    user_side = rec.bundle.preprocessor.encode_side(users)
    user_rows = key_positions(joined[USER], users[USER])
    item_rows = key_positions(joined[ITEM], catalog.keys)
    assert (user_rows >= 0).all() and (item_rows >= 0).all()
    scores = score_pairs(rec.bundle, user_side, user_rows, catalog, item_rows)
    assert scores.dtype == expected.dtype == np.float32
    return scores, expected


def test_pair_scores_match_the_scores_of_the_joined_table(rec: RecRun) -> None:
    scores, expected = joined_and_pair_scores(rec)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_pair_encoding_equals_transform_including_the_multi_valued_cross(rec: RecRun) -> None:
    preprocessor = rec.bundle.preprocessor
    users = rec.users
    joined = RecTables(users, rec.apps, USER, ITEM).join(rec.test)
    table = preprocessor.transform(joined, with_labels=False)
    catalog = load_catalog(rec.bundle)
    pair = preprocessor.encode_pairs(
        [
            (preprocessor.encode_side(users), key_positions(joined[USER], users[USER])),
            (catalog.side, key_positions(joined[ITEM], catalog.keys)),
        ]
    )
    multi = [f.name for f in preprocessor.layout.multi]
    assert "installed_x_app" in multi
    assert np.array_equal(pair.ids, table.ids)
    assert np.array_equal(pair.dense, table.dense)
    for name, from_pairs, from_table in zip(multi, pair.multi_ids, table.multi_ids, strict=True):
        assert from_pairs.shape == from_table.shape, name
        assert np.array_equal(from_pairs, from_table), name
    cross = pair.multi_ids[multi.index("installed_x_app")]
    assert (cross != PADDING_ID).any(axis=1).mean() > 0.5  # most users have installed apps


# ------------------------------------------------------------------------------- top_k


def test_top_k_returns_k_ranked_items_per_user(rec: RecRun) -> None:
    users = rec.users.head(20)
    recs = top_k(rec.bundle, users, k=5)
    assert_ranked_lists(recs, k=5)
    assert recs.group_by(USER).len()["len"].to_list() == [5] * 20
    assert recs[USER].unique(maintain_order=True).to_list() == users[USER].to_list()
    assert recs["score"].dtype == pl.Float32
    assert ((recs["score"] > 0) & (recs["score"] < 1)).all()
    assert recs["rank"].to_list() == [1, 2, 3, 4, 5] * 20
    assert set(recs[ITEM]) <= set(rec.apps[ITEM])


def test_top_k_is_deterministic(rec: RecRun) -> None:
    users = rec.users.head(30)
    first = top_k(rec.bundle, users, k=7, exclude_seen=rec.train_path)
    second = top_k(rec.bundle, users, k=7, exclude_seen=rec.train_path)
    assert first.equals(second)


def test_top_k_scores_are_the_pair_scores(rec: RecRun) -> None:
    users = rec.users.head(4)
    recs = top_k(rec.bundle, users, k=3)
    joined = RecTables(users, rec.apps, USER, ITEM).join(recs)
    expected = rec.bundle.predict(joined)
    np.testing.assert_allclose(joined["score"].to_numpy(), expected, rtol=0, atol=1e-6)


def test_top_k_in_chunks_equals_one_chunk(rec: RecRun) -> None:
    users = rec.users.head(25)
    whole = top_k(rec.bundle, users, k=4, exclude_seen=rec.train_path)
    chunked = top_k(rec.bundle, users, k=4, exclude_seen=rec.train_path, pairs_per_chunk=7 * 60)
    assert chunked.drop("score").equals(whole.drop("score"))
    np.testing.assert_allclose(chunked["score"], whole["score"], rtol=0, atol=1e-6)


def test_exclude_seen_removes_exactly_the_listed_pairs(rec: RecRun) -> None:
    users = rec.users.head(40)
    n_items = rec.apps.height
    seen = rec.train.filter(pl.col(USER).is_in(users[USER].to_list())).select(USER, ITEM)
    assert seen.height > 0
    recs = top_k(rec.bundle, users, k=10, exclude_seen=seen)
    assert not pairs(recs) & pairs(seen)

    # Nothing else is removed: the full ranking minus the seen pairs, cut at 10.
    full = top_k(rec.bundle, users, k=n_items)
    expected = (
        full.filter(~pair_key().is_in(seen.select(pair_key()).to_series().to_list()))
        .with_columns(pl.int_range(1, pl.len() + 1).over(USER).alias("rank"))
        .filter(pl.col("rank") <= 10)
    )
    assert recs.equals(expected.select(RESULT_COLUMNS))


def test_exclude_seen_may_name_unknown_users_and_items(rec: RecRun) -> None:
    users = rec.users.head(3)
    seen = pl.DataFrame({USER: ["nobody", users[USER][0]], ITEM: ["a000000", "no-such-app"]})
    assert top_k(rec.bundle, users, k=5, exclude_seen=seen).equals(top_k(rec.bundle, users, k=5))


def test_k_larger_than_the_candidates_returns_every_candidate(rec: RecRun) -> None:
    users = rec.users.head(3)
    n_items = rec.apps.height
    recs = top_k(rec.bundle, users, k=n_items + 50)
    assert_ranked_lists(recs, k=n_items)
    for (_,), group in recs.group_by(USER):
        assert sorted(group[ITEM]) == sorted(rec.apps[ITEM])

    seen = rec.train.filter(pl.col(USER) == users[USER][0]).select(USER, ITEM)
    unseen = set(rec.apps[ITEM]) - set(seen[ITEM])
    recs = top_k(rec.bundle, users.head(1), k=n_items + 50, exclude_seen=seen)
    assert set(recs[ITEM]) == unseen
    assert recs.height == len(unseen)


def test_cold_start_users_get_k_recommendations(rec: RecRun) -> None:
    users = cold_users()
    assert not set(users[USER]) & set(rec.train[USER])
    recs = top_k(rec.bundle, users, k=6, exclude_seen=rec.train_path)
    assert_ranked_lists(recs, k=6)
    assert recs.group_by(USER, maintain_order=True).len().rows() == [("cold-1", 6), ("cold-2", 6)]
    assert np.isfinite(recs["score"].to_numpy()).all()


def test_users_table_may_lack_feature_columns(rec: RecRun) -> None:
    users = rec.users.head(3).select(USER, "country")
    recs = top_k(rec.bundle, users, k=2)
    assert recs.height == 6


def test_a_candidates_table_limits_the_items(rec: RecRun) -> None:
    users = rec.users.head(3)
    keys = users[USER].to_list()
    candidates = pl.DataFrame(
        {
            USER: [keys[0]] * 4 + [keys[1]] * 2,
            ITEM: ["a000003", "a000010", "a000011", "a000050", "a000020", "a000021"],
        }
    )
    recs = top_k(rec.bundle, users, k=3, candidates=candidates)
    assert_ranked_lists(recs, k=3)
    assert pairs(recs) <= pairs(candidates)
    counts = dict(recs.group_by(USER).len().rows())
    assert counts == {keys[0]: 3, keys[1]: 2}  # the third user has no candidates

    # The same ranking as the full catalog's, restricted to the candidates.
    full = top_k(rec.bundle, users.head(1), k=rec.apps.height)
    expected = full.filter(pl.col(ITEM).is_in(candidates[ITEM].head(4).to_list()))
    assert recs.filter(pl.col(USER) == keys[0])[ITEM].to_list() == expected[ITEM].head(3).to_list()


def test_a_candidate_matrix_of_catalog_positions(rec: RecRun) -> None:
    users = rec.users.head(2)
    catalog = load_catalog(rec.bundle)
    matrix = np.array([[5, 9, -1], [0, -1, -1]])
    recs = top_k(rec.bundle, users, k=5, candidates=matrix)
    assert recs.filter(pl.col(USER) == users[USER][0])[ITEM].sort().to_list() == sorted(
        [catalog.keys[5], catalog.keys[9]]
    )
    assert recs.filter(pl.col(USER) == users[USER][1])[ITEM].to_list() == [catalog.keys[0]]


def test_an_unknown_candidate_item_is_an_error_by_default(rec: RecRun) -> None:
    users = rec.users.head(2)
    candidates = pl.DataFrame({USER: [users[USER][0]] * 2, ITEM: ["a000001", "no-such-app"]})
    with pytest.raises(SchemaError, match="no-such-app"):
        top_k(rec.bundle, users, k=2, candidates=candidates)


def test_unknown_candidate_items_can_be_skipped_with_a_warning(
    rec: RecRun, caplog: pytest.LogCaptureFixture
) -> None:
    users = rec.users.head(2)
    candidates = pl.DataFrame({USER: [users[USER][0]] * 2, ITEM: ["a000001", "no-such-app"]})
    with caplog.at_level(logging.WARNING, logger="widedeep.recommend"):
        recs = top_k(rec.bundle, users, k=2, candidates=candidates, on_unknown_items="skip")
    assert recs.select(USER, ITEM).rows() == [(users[USER][0], "a000001")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no-such-app" in warnings[0].getMessage()


def test_popular_retrieval_ranks_the_most_popular_unseen_items(rec: RecRun) -> None:
    users = rec.users.head(15)
    seen = rec.train.filter(pl.col(USER).is_in(users[USER].to_list())).select(USER, ITEM)
    recs = top_k(rec.bundle, users, k=4, exclude_seen=seen, retrieval="popular", num_candidates=8)
    assert_ranked_lists(recs, k=4)
    assert not pairs(recs) & pairs(seen)
    # Independently: each user's 8 most popular unseen items (ties by catalog order).
    popularity = rec.bundle.table("popularity")
    assert popularity is not None
    catalog = load_catalog(rec.bundle).keys.to_list()
    counts = dict(popularity.rows())
    by_popularity = sorted(catalog, key=lambda item: (-counts.get(item, 0), catalog.index(item)))
    for (user,), group in recs.group_by(USER):
        own = set(seen.filter(pl.col(USER) == user)[ITEM])
        allowed = [item for item in by_popularity if item not in own][:8]
        assert set(group[ITEM]) <= set(allowed), user
        assert group.height == 4


def test_cooccurrence_retrieval_returns_retrieved_unseen_items(rec: RecRun) -> None:
    users = rec.users.head(15)
    seen = rec.train.filter(pl.col(USER).is_in(users[USER].to_list())).select(USER, ITEM)
    recs = top_k(
        rec.bundle, users, k=4, exclude_seen=seen, retrieval="cooccurrence", num_candidates=10
    )
    assert_ranked_lists(recs, k=4)
    assert recs.group_by(USER).len()["len"].to_list() == [4] * 15
    assert not pairs(recs) & pairs(seen)

    catalog = load_catalog(rec.bundle)
    history = pl.DataFrame(
        {
            "row": key_positions(seen[USER], users[USER]),
            "item": key_positions(seen[ITEM], catalog.keys),
        }
    )
    matrix = retrieve(rec.bundle, catalog, "cooccurrence", history, users.height, 10)
    assert matrix.shape == (15, 10)
    for row, user in enumerate(users[USER]):
        retrieved = {catalog.keys[int(i)] for i in matrix[row] if i >= 0}
        own = set(seen.filter(pl.col(USER) == user)[ITEM])
        assert not retrieved & own, user
        assert set(recs.filter(pl.col(USER) == user)[ITEM]) <= retrieved, user


def test_cooccurrence_retrieval_for_users_without_history(rec: RecRun) -> None:
    users = pl.concat([rec.users.head(3), cold_users()], how="diagonal_relaxed")
    seen = rec.train.filter(pl.col(USER) == users[USER][0]).select(USER, ITEM)
    recs = top_k(
        rec.bundle, users, k=3, exclude_seen=seen, retrieval="cooccurrence", num_candidates=5
    )
    assert recs.group_by(USER).len()["len"].to_list() == [3] * users.height
    assert not pairs(recs) & pairs(seen)


def test_an_explicit_items_table_equals_the_bundles_catalog(rec: RecRun) -> None:
    users = rec.users.head(5)
    assert top_k(rec.bundle, users, k=4, items=rec.apps_path).equals(top_k(rec.bundle, users, k=4))


def test_an_items_table_limits_the_catalog(rec: RecRun) -> None:
    apps = rec.apps.head(10)
    recs = top_k(rec.bundle, rec.users.head(3), k=20, items=apps)
    assert recs.height == 30
    assert set(recs[ITEM]) == set(apps[ITEM])


# ------------------------------------------------------------------------------ mistakes


def test_users_without_the_key_column_are_a_schema_error(rec: RecRun) -> None:
    with pytest.raises(SchemaError, match="'user_id'"):
        top_k(rec.bundle, rec.users.head(3).drop(USER), k=2)


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_a_config_error(rec: RecRun, k: int) -> None:
    with pytest.raises(ConfigError, match="k must be >= 1"):
        top_k(rec.bundle, rec.users.head(2), k=k)


def test_retrieval_and_candidates_together_are_a_config_error(rec: RecRun) -> None:
    users = rec.users.head(2)
    candidates = pl.DataFrame({USER: [users[USER][0]], ITEM: ["a000001"]})
    with pytest.raises(ConfigError, match="not both"):
        top_k(rec.bundle, users, candidates=candidates, retrieval="popular")


def test_seen_interactions_without_the_item_key_are_a_schema_error(rec: RecRun) -> None:
    seen = rec.train.select(USER)
    with pytest.raises(SchemaError, match="'app_id'"):
        top_k(rec.bundle, rec.users.head(2), exclude_seen=seen)


def test_duplicate_items_in_an_items_table_are_a_schema_error(rec: RecRun) -> None:
    apps = pl.concat([rec.apps, rec.apps.head(1)])
    with pytest.raises(SchemaError, match="more than once"):
        top_k(rec.bundle, rec.users.head(2), items=apps)


def test_candidates_without_the_user_key_are_a_schema_error(rec: RecRun) -> None:
    candidates = pl.DataFrame({ITEM: ["a000001"]})
    with pytest.raises(SchemaError, match="'user_id'"):
        top_k(rec.bundle, rec.users.head(2), candidates=candidates)


def test_a_users_csv_keeps_zero_padded_user_ids(rec: RecRun, tmp_path: Path) -> None:
    users = (
        rec.users.head(3)
        .with_columns(pl.Series(USER, ["0001", "0002", "0003"]))
        .with_columns(pl.col("installed_apps").list.join("|"))
    )
    path = tmp_path / "users.csv"
    users.write_csv(path)
    recs = top_k(rec.bundle, path, k=2)
    assert recs[USER].unique(maintain_order=True).to_list() == ["0001", "0002", "0003"]


def test_an_item_feature_in_the_users_table_does_not_override_the_catalog(rec: RecRun) -> None:
    users = rec.users.head(5)
    expected = top_k(rec.bundle, users, k=5)
    try:
        recs = top_k(rec.bundle, users.with_columns(pl.lit("cat01").alias("category")), k=5)
    except SchemaError:
        return  # refusing the table, as training does, is fine too
    assert recs.drop("score").equals(expected.drop("score"))


def test_a_run_from_csv_files_keeps_keys_and_ids_that_look_like_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys and ids such as '00000016' stay text all the way: in training's CSV tables and
    in ``top_k``'s users, candidates and exclude_seen CSVs (polars alone reads them as 16)."""
    files = make_appstore(tmp_path / "data", users=40, apps=30, impressions=3000, seed=2)
    digits = {USER: "u", ITEM: "a"}

    def numeric_looking(path: Path) -> pl.DataFrame:
        frame = pl.read_parquet(path)
        for column in frame.columns:
            if column in digits:
                frame = frame.with_columns(pl.col(column).str.strip_prefix(digits[column]))
        if "installed_apps" in frame.columns:
            stripped = pl.col("installed_apps").list.eval(pl.element().str.strip_prefix("a"))
            frame = frame.with_columns(stripped)
        return frame

    tables = {}
    for name, path in (("train", files.impressions), ("users", files.users), ("items", files.apps)):
        tables[name] = numeric_looking(path)
        write_table(tables[name], tmp_path / f"{name}.csv")
    base = packaged_config("appstore").to_dict()
    base["data"].update(builtin=None, **{name: str(tmp_path / f"{name}.csv") for name in tables})
    base["model"]["hidden_units"] = [8]
    base["train"].update(epochs=1, progress=False, device="cpu")
    monkeypatch.setattr(sys.modules["widedeep.training.loop"], "_plots", lambda *a, **k: [])
    bundle = load_bundle(train(RunConfig.from_dict(base), tmp_path / "run").bundle_dir)

    vocabulary = bundle.preprocessor.state_[ITEM]["vocabulary"]
    assert set(tables["items"][ITEM]) <= set(vocabulary)  # '000015', not '15'
    seen = tables["train"].head(200).select(USER, ITEM)
    write_table(seen, tmp_path / "seen.csv")
    recs = top_k(bundle, tmp_path / "users.csv", k=5, exclude_seen=tmp_path / "seen.csv")
    assert recs[USER].n_unique() == 40 and set(recs[USER]) == set(tables["users"][USER])
    assert not pairs(recs) & pairs(seen)
    candidates = seen.head(12)
    write_table(candidates, tmp_path / "candidates.csv")
    limited = top_k(bundle, tmp_path / "users.csv", k=5, candidates=tmp_path / "candidates.csv")
    assert limited.height and pairs(limited) <= pairs(candidates)
