"""Warm start: rows matched by value across refitted vocabularies, dense layers carried."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import (
    Outcome,
    config_dict,
    make_table,
    one_thread,
    run_config,
    run_main,
    skip_plots,
)
from widedeep.bundle import Bundle, build_model, load_bundle, save_bundle
from widedeep.config import RunConfig
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FIRST_ID, PADDING_ID, UNKNOWN_ID
from widedeep.model.widedeep import WideDeep
from widedeep.optim import FTRL
from widedeep.training.loop import train
from widedeep.warmstart import seed_ftrl_state, warm_start

ROWS = 400
SHARED_USERS = [f"u{i}" for i in range(2, 10)]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def old_table() -> pl.DataFrame:
    """Users u0..u9, tags t0..t5."""
    return make_table(ROWS, seed=1)


def new_table() -> pl.DataFrame:
    """Another sample where u0, u1 and t5 are gone and u10, u11 and t6 are new."""
    frame = make_table(ROWS, seed=5)
    return frame.with_columns(
        pl.col("user").replace({"u0": "u10", "u1": "u11"}),
        pl.col("tags").str.replace("t5", "t6"),
    )


def schema_config(city_dim: int = 3, **changes: Any) -> RunConfig:
    """The fixtures' config; ``city_dim=4`` makes every single-valued deep field 4 wide (fused)."""
    base = config_dict(Path("unused.parquet"))
    features = base["schema"]["features"]
    for feature in features:
        if feature["name"] == "city":
            feature["embedding_dim"] = city_dim
        feature.update(changes.get(feature["name"], {}))
    if "deep" in changes:
        base["schema"]["deep"] = changes["deep"]
    if "label" in changes:
        base["schema"]["label"] = changes["label"]
    return run_config(base)


def fitted(config: RunConfig, frame: pl.DataFrame) -> tuple[WideDeep, Preprocessor]:
    preprocessor = Preprocessor(config.feature_schema).fit(frame)
    return build_model(config, preprocessor, sparse_gradients=False), preprocessor


def old_bundle(folder: Path, config: RunConfig) -> Bundle:
    """A saved bundle over the old table whose every weight is random (the wide part too)."""
    model, preprocessor = fitted(config, old_table())
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return load_bundle(save_bundle(folder, model, preprocessor, config))


def vocab_id(preprocessor: Preprocessor, feature: str, value: str) -> int:
    assert preprocessor.state_ is not None
    return FIRST_ID + preprocessor.state_[feature]["vocabulary"].index(value)


def deep_row(model: WideDeep, feature: str, index: int) -> torch.Tensor:
    """The deep embedding of ``feature``'s id ``index``, through the fused table if fused."""
    deep = model.deep
    assert deep is not None
    if feature in deep.single_names:
        j = deep.single_names.index(feature)
        if deep.fused:
            return deep.embeddings[0].weight[int(deep.fused_offsets[j]) + index]
        return deep.embeddings[j].weight[index]
    return deep.multi_embeddings[deep.multi_names.index(feature)].weight[index]


def wide_row(model: WideDeep, feature: str, index: int) -> torch.Tensor:
    wide = model.wide
    assert wide is not None
    if feature in wide.single_names:
        offset = int(wide.single_offsets[wide.single_names.index(feature)])
    else:
        offset = wide.multi_offsets[wide.multi_names.index(feature)]
    return wide.weight.weight[offset + index]


# ------------------------------------------------------------------------- rows by value


@pytest.mark.parametrize("city_dim", [3, 4], ids=["tables", "fused"])
def test_rows_follow_their_values_across_vocabulary_growth(tmp_path: Path, city_dim: int) -> None:
    config = schema_config(city_dim)
    old = old_bundle(tmp_path / "old", config)
    model, preprocessor = fitted(config, new_table())
    assert model.deep is not None and model.deep.fused == (city_dim == 4)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}

    report = warm_start(model, preprocessor, old)

    for feature, values in (("user", SHARED_USERS), ("tags", [f"t{i}" for i in range(5)])):
        for value in values:
            new_id = vocab_id(preprocessor, feature, value)
            old_id = vocab_id(old.preprocessor, feature, value)
            assert torch.equal(
                deep_row(model, feature, new_id), deep_row(old.model, feature, old_id)
            )
            assert torch.equal(
                wide_row(model, feature, new_id), wide_row(old.model, feature, old_id)
            )
        for reserved in (PADDING_ID, UNKNOWN_ID):
            assert torch.equal(
                deep_row(model, feature, reserved), deep_row(old.model, feature, reserved)
            )
            assert torch.equal(
                wide_row(model, feature, reserved), wide_row(old.model, feature, reserved)
            )
    # New values keep their fresh rows: the fresh model's, not any old row.
    fresh_model, _ = fitted(config, new_table())
    fresh_model.load_state_dict(fresh)
    for feature, value in (("user", "u10"), ("user", "u11"), ("tags", "t6")):
        new_id = vocab_id(preprocessor, feature, value)
        assert torch.equal(deep_row(model, feature, new_id), deep_row(fresh_model, feature, new_id))
        assert torch.equal(wide_row(model, feature, new_id), wide_row(fresh_model, feature, new_id))
    # Dropped values are gone from the new vocabulary.
    assert preprocessor.state_ is not None
    assert {"u0", "u1"}.isdisjoint(preprocessor.state_["user"]["vocabulary"])
    assert "t5" not in preprocessor.state_["tags"]["vocabulary"]

    fields = {f.name: f for f in report.fields}
    assert (fields["user"].match, fields["user"].copied) == ("value", 8)
    assert (fields["user"].new, fields["user"].dropped) == (2, 2)
    assert (fields["tags"].copied, fields["tags"].new, fields["tags"].dropped) == (5, 1, 1)
    assert fields["user"].parts == ("wide", "deep")
    assert fields["user_x_item"].parts == ("wide",)  # a wide-only cross


def test_hashed_bucketized_and_crossed_rows_are_copied_by_position(tmp_path: Path) -> None:
    config = schema_config()
    old = old_bundle(tmp_path / "old", config)
    model, preprocessor = fitted(config, new_table())
    report = warm_start(model, preprocessor, old)
    fields = {f.name: f for f in report.fields}
    for name, buckets in (("city", 8), ("price_bucket", 4), ("user_x_item", 200)):
        assert (fields[name].match, fields[name].copied) == ("position", buckets), name
        every = range(FIRST_ID + buckets)
        assert torch.equal(
            torch.stack([wide_row(model, name, i) for i in every]),
            torch.stack([wide_row(old.model, name, i) for i in every]),
        )
    every = range(FIRST_ID + 8)
    assert torch.equal(
        torch.stack([deep_row(model, "city", i) for i in every]),
        torch.stack([deep_row(old.model, "city", i) for i in every]),
    )


def test_a_changed_number_of_buckets_leaves_the_field_fresh(tmp_path: Path) -> None:
    old = old_bundle(tmp_path / "old", schema_config())
    model, preprocessor = fitted(schema_config(city={"num_buckets": 16}), new_table())
    before = deep_row(model, "city", 3).clone()
    report = warm_start(model, preprocessor, old)
    city = next(f for f in report.fields if f.name == "city")
    assert (city.match, city.copied, city.new, city.dropped) == ("none", 0, 16, 8)
    assert "num_buckets changed from 8 to 16" in city.note
    assert torch.equal(deep_row(model, "city", 3), before)


def test_model_outputs_of_shared_values_are_the_old_models(tmp_path: Path) -> None:
    config = schema_config(4)
    old = old_bundle(tmp_path / "old", config)
    model, preprocessor = fitted(config, new_table())
    warm_start(model, preprocessor, old)
    # Rows holding only values both vocabularies know encode differently, score the same
    # (numeric statistics are refitted, so 'price' is left out of the comparison).
    rows = old_table().filter(
        pl.col("user").is_in(SHARED_USERS) & ~pl.col("tags").str.contains("t5")
    )
    names = {"user", "item", "city", "price_bucket", "tags", "user_x_item"}
    new_batch = TensorTable.from_encoded(preprocessor.transform(rows)).slice(0, len(rows))
    old_batch = TensorTable.from_encoded(old.preprocessor.transform(rows)).slice(0, len(rows))
    assert not torch.equal(new_batch.ids, old_batch.ids)  # the ids did move
    model.eval()
    with torch.no_grad():
        new_wide, new_deep = model.partial(new_batch, names)
        old_wide, old_deep = old.model.partial(old_batch, names)
    assert torch.allclose(new_wide, old_wide, atol=1e-6)
    assert new_deep is not None and old_deep is not None
    assert torch.allclose(new_deep, old_deep, atol=1e-6)


# -------------------------------------------------------------------------- dense layers


def test_dense_layers_are_carried_exactly_when_the_layout_is_identical(tmp_path: Path) -> None:
    config = schema_config()
    old = old_bundle(tmp_path / "old", config)
    model, preprocessor = fitted(config, new_table())
    report = warm_start(model, preprocessor, old)
    assert model.deep is not None and old.model.deep is not None
    assert model.wide is not None and old.model.wide is not None
    for mine, theirs in (
        (model.deep.mlp, old.model.deep.mlp),
        (model.deep.head, old.model.deep.head),
    ):
        for (name, a), (_, b) in zip(
            mine.state_dict().items(), theirs.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    assert model.wide.bias is not None and old.model.wide.bias is not None
    assert torch.equal(model.wide.bias, old.model.wide.bias)
    assert report.layers_carried == (
        "wide.bias",
        "deep.mlp.layers.0",
        "deep.mlp.layers.2",
        "deep.head",
    )
    assert report.layers_fresh == {}


def test_a_changed_deep_input_leaves_the_first_layer_fresh(tmp_path: Path) -> None:
    old = old_bundle(tmp_path / "old", schema_config())
    config = schema_config(deep=["user", "item", "city", "tags"])  # no 'price'
    model, preprocessor = fitted(config, new_table())
    assert model.deep is not None and old.model.deep is not None
    first = model.deep.mlp.layers[0].weight.clone()
    report = warm_start(model, preprocessor, old)
    assert "deep.mlp.layers.0" in report.layers_fresh
    assert "removed ['price']" in report.layers_fresh["deep.mlp.layers.0"]
    assert torch.equal(model.deep.mlp.layers[0].weight, first)
    assert torch.equal(model.deep.mlp.layers[2].weight, old.model.deep.mlp.layers[2].weight)
    assert "deep.head" in report.layers_carried
    assert "input layout differs" in report.summary()


def test_ftrl_continues_from_copied_weights(tmp_path: Path) -> None:
    """Seeded accumulators reproduce the weights; a zero gradient leaves them in place."""
    weight = torch.nn.Parameter(torch.tensor([[0.5], [-0.25], [0.0]]))
    optimizer = FTRL([weight], lr=0.3, beta=1.0, l1=0.01, l2=0.1)
    seed_ftrl_state([optimizer])
    weight.grad = torch.zeros_like(weight)
    optimizer.step()
    assert torch.allclose(weight, torch.tensor([[0.5], [-0.25], [0.0]]), atol=1e-6)


# -------------------------------------------------------------------------------- refusals


def test_a_changed_embedding_dim_is_refused_naming_the_field(tmp_path: Path) -> None:
    old = old_bundle(tmp_path / "old", schema_config())
    model, preprocessor = fitted(schema_config(user={"embedding_dim": 8}), new_table())
    with pytest.raises(ConfigError, match=r"feature 'user' has embedding_dim 8 here and 4"):
        warm_start(model, preprocessor, old)


def test_a_changed_kind_is_refused_naming_the_field(tmp_path: Path) -> None:
    old = old_bundle(tmp_path / "old", schema_config())
    changed = {"kind": "hashed", "num_buckets": 16}
    model, preprocessor = fitted(schema_config(item=changed), new_table())
    with pytest.raises(ConfigError, match=r"feature 'item' is hashed here and categorical"):
        warm_start(model, preprocessor, old)


def test_a_changed_objective_is_refused(tmp_path: Path) -> None:
    old = old_bundle(tmp_path / "old", schema_config())
    config = schema_config(label={"column": "rating", "objective": "regression"})
    model, preprocessor = fitted(config, new_table())
    with pytest.raises(ConfigError, match=r"objective is 'regression' here and 'binary'"):
        warm_start(model, preprocessor, old)


# ------------------------------------------------------------------------------ training


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / "data" / f"{name}.parquet" for name in ("old", "new", "test")}
    paths["old"].parent.mkdir()
    make_table(2400, seed=1).write_parquet(paths["old"])
    new_table_big = make_table(2400, seed=3).with_columns(
        pl.col("user").replace({"u0": "u10", "u1": "u11"})
    )
    new_table_big.write_parquet(paths["new"])
    make_table(800, seed=2).write_parquet(paths["test"])
    return paths


def test_train_from_a_bundle_records_the_warm_start_and_starts_ahead(
    tables: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_plots(monkeypatch)
    old = train(run_config(config_dict(tables["old"], tables["test"])), tmp_path / "old")
    # One epoch at a small deep learning rate: too little for a cold start to learn much.
    config = run_config(
        config_dict(tables["new"], tables["test"]),
        ["train.epochs=1", "train.deep_optimizer.lr=0.02", "train.wide_optimizer.lr=0.1"],
    )
    cold = train(config, tmp_path / "cold")
    warm = train(config, tmp_path / "warm", warm_start_from=old.bundle_dir)

    record = json.loads((warm.run_dir / "warm_start.json").read_text())
    assert record["source"] == str(old.bundle_dir)
    assert record["fields"]["user"]["copied"] == 8
    assert record["fields"]["user"]["new"] == record["fields"]["user"]["dropped"] == 2
    assert json.loads((warm.run_dir / "metrics.json").read_text())["warm_start"] == record
    assert not (cold.run_dir / "warm_start.json").exists()
    assert "warm_start" not in json.loads((cold.run_dir / "metrics.json").read_text())
    assert warm.test_metrics is not None and cold.test_metrics is not None
    assert warm.test_metrics["auc"] > cold.test_metrics["auc"]


def test_cli_train_warm_start(
    tables: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    skip_plots(monkeypatch)
    old = train(
        run_config(config_dict(tables["old"], tables["test"]), ["train.epochs=1"]),
        tmp_path / "old",
    )
    config_file = tmp_path / "new.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(tables["new"], tables["test"])))

    def warm(output: str, *overrides: str) -> Outcome:
        settings = [part for o in overrides for part in ("--set", o)]
        argv = ["train", str(config_file), "-o", str(tmp_path / output), *settings]
        return run_main([*argv, "--warm-start", str(old.bundle_dir)], monkeypatch, capsys)

    outcome = warm("warm", "train.epochs=1")
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "warm" / "warm_start.json").is_file()

    outcome = warm("bad", "train.epochs=1", "schema.features.0.embedding_dim=6")
    assert outcome.code == 2
    assert outcome.stderr.startswith("error: cannot warm start from")
    assert "feature 'user' has embedding_dim 6 here and 4" in outcome.stderr
