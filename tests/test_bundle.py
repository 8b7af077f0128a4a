"""Saved bundles: exact predictions after a round trip, integrity checks, no unpickling."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import (
    TRAIN_ROWS,
    config_dict,
    make_table,
    one_thread,
    run_config,
    shared_run,
    skip_plots,
    write_tables,
)
from widedeep.bundle import Bundle, load_bundle, save_bundle, verify_bundle
from widedeep.config import RunConfig
from widedeep.data.tensors import TensorTable
from widedeep.errors import BundleError, ConfigError, SchemaError
from widedeep.inference import predict
from widedeep.metrics import binary_report
from widedeep.training.loop import TrainResult, train


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def result(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The shared trained run (read only)."""
    return shared_run(tmp_path_factory)


@pytest.fixture
def test_path(result: TrainResult) -> Path:
    config = RunConfig.from_dict(json.loads((result.bundle_dir / "config.json").read_text()))
    assert config.data.test is not None
    return Path(config.data.test)


@pytest.fixture
def bundle_copy(result: TrainResult, tmp_path: Path) -> Path:
    """A private copy of the run's bundle, free to tamper with."""
    return Path(shutil.copytree(result.bundle_dir, tmp_path / "bundle"))


# ------------------------------------------------------------------------------ round trip


def test_loaded_bundle_predicts_exactly_like_the_trained_model(
    result: TrainResult, test_path: Path
) -> None:
    assert result.model is not None and result.preprocessor is not None
    bundle = load_bundle(result.bundle_dir)
    table = TensorTable.from_encoded(result.preprocessor.transform(test_path))
    in_memory = predict(result.model, table)
    loaded = bundle.predict(test_path)
    assert loaded.shape == (800,) and loaded.dtype == np.float32
    assert np.array_equal(loaded, in_memory)
    assert np.array_equal(predict(bundle.model, table), in_memory)
    result.model.eval()
    with torch.no_grad():
        direct = result.model(table.slice(0, len(table))).numpy()
    assert np.array_equal(loaded, direct)


def test_loaded_bundle_has_the_same_weights_and_config(result: TrainResult) -> None:
    assert result.model is not None
    bundle = load_bundle(result.bundle_dir)
    assert not bundle.model.training
    saved, loaded = result.model.state_dict(), bundle.model.state_dict()
    assert saved.keys() == loaded.keys()
    for name in saved:
        assert torch.equal(saved[name], loaded[name]), name
    trained = RunConfig.from_dict(yaml.safe_load((result.run_dir / "config.yaml").read_text()))
    assert bundle.config.model == trained.model
    assert bundle.config.feature_schema == trained.feature_schema
    assert bundle.preprocessor.layout == result.model.layout
    assert bundle.manifest["metrics"]["test"] == result.test_metrics


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            [
                "model.batch_norm=true",
                "model.dropout=0.3",
                "model.combine=mean",
                "train.early_stopping={patience: 1}",
            ],
            id="batch_norm+dropout+mean",
        ),
        pytest.param(["model.parts=deep", "model.activation=gelu"], id="deep"),
        pytest.param(["model.parts=wide", "model.wide_bias=false"], id="wide"),
        pytest.param(
            [
                "schema.label={column: rating, objective: regression}",
                "train.early_stopping={metric: mae}",
            ],
            id="regression",
        ),
    ],
)
def test_round_trip_is_exact_for_each_model_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]
) -> None:
    skip_plots(monkeypatch)
    train_path, test_path = write_tables(tmp_path / "data")
    config = run_config(config_dict(train_path, test_path), [*overrides, "train.epochs=2"])
    run = train(config, tmp_path / "run")
    assert run.model is not None and run.preprocessor is not None
    bundle = load_bundle(run.bundle_dir)
    table = TensorTable.from_encoded(run.preprocessor.transform(test_path))
    assert np.array_equal(bundle.predict(test_path), predict(run.model, table))
    assert bundle.evaluate(test_path) == run.test_metrics
    assert bundle.model.objective == config.feature_schema.label.objective  # type: ignore[union-attr]


def test_save_bundle_writes_a_loadable_folder(result: TrainResult, tmp_path: Path) -> None:
    assert result.model is not None and result.preprocessor is not None
    config = load_bundle(result.bundle_dir).config
    folder = save_bundle(tmp_path / "again", result.model, result.preprocessor, config)
    manifest = verify_bundle(folder)
    assert manifest["format_version"] == 1
    assert set(manifest["files"]) == {"config.json", "preprocessor.json", "weights.safetensors"}
    assert manifest["metrics"] == {}
    again = load_bundle(folder)
    frame = pl.read_parquet(load_bundle(result.bundle_dir).config.data.test)  # type: ignore[arg-type]
    assert np.array_equal(again.predict(frame), load_bundle(result.bundle_dir).predict(frame))


def test_bundle_predicts_rows_with_unseen_categories(result: TrainResult, test_path: Path) -> None:
    bundle = load_bundle(result.bundle_dir)
    known = pl.read_parquet(test_path).head(4).drop("click", "rating")
    unseen = known.with_columns(
        pl.Series("user", ["new-user", None, "u1", "u2"]),
        pl.Series("item", ["new-item", "i1", None, "i3"]),
        pl.Series("city", ["atlantis", "c1", "c2", None]),
        pl.Series("tags", ["new-tag", "t1|never-seen", "t0", "t2"]),
    )
    probs = bundle.predict(unseen)
    assert probs.shape == (4,)
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
    _, report = bundle.encode(unseen)
    assert report.columns["user"].unseen == 1 and report.columns["user"].missing == 1
    assert report.columns["tags"].unseen == 2


def zero_padded_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bundle:
    """A quick bundle trained where user ids look like numbers ('007'), and rows.parquet/.csv."""
    skip_plots(monkeypatch)
    padded = pl.col("user").str.slice(1).str.zfill(3)  # 'u7' -> '007', which CSV reads as 7
    make_table(TRAIN_ROWS, seed=1).with_columns(padded).write_parquet(tmp_path / "train.parquet")
    rows = make_table(200, seed=2).with_columns(padded)
    rows.write_parquet(tmp_path / "rows.parquet")
    rows.write_csv(tmp_path / "rows.csv")
    config = run_config(config_dict(tmp_path / "train.parquet"), ["train.epochs=1"])
    return load_bundle(train(config, tmp_path / "run").bundle_dir)


def test_csv_and_parquet_give_the_same_predictions_for_zero_padded_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = zero_padded_bundle(tmp_path, monkeypatch)
    _, report = bundle.encode(tmp_path / "rows.csv")
    assert report.columns["user"].unseen == 0
    from_csv = bundle.predict(tmp_path / "rows.csv")
    assert np.array_equal(from_csv, bundle.predict(tmp_path / "rows.parquet"))
    assert bundle.evaluate(tmp_path / "rows.csv") == bundle.evaluate(tmp_path / "rows.parquet")


def test_a_run_trained_from_csv_files_keeps_zero_padded_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training reads its CSV tables (train, validation, test) with the id columns as text,
    as the bundle reads rows to score: the ids it learned are the ones it is later given."""
    skip_plots(monkeypatch)
    padded = pl.col("user").str.slice(1).str.zfill(3)
    for name, rows, seed in (("train", TRAIN_ROWS, 1), ("validation", 300, 3), ("test", 300, 4)):
        make_table(rows, seed=seed).with_columns(padded).write_csv(tmp_path / f"{name}.csv")
    rows = make_table(200, seed=2).with_columns(padded)
    rows.write_csv(tmp_path / "rows.csv")
    config = run_config(
        config_dict(tmp_path / "train.csv", tmp_path / "test.csv"),
        ["train.epochs=1", f"data.validation={tmp_path / 'validation.csv'}"],
    )
    result = train(config, tmp_path / "run")
    bundle = load_bundle(result.bundle_dir)
    vocabulary = bundle.preprocessor.state_["user"]["vocabulary"]
    assert "007" in vocabulary and "7" not in vocabulary
    _, report = bundle.encode(tmp_path / "rows.csv")
    assert report.columns["user"].unseen == 0
    assert bundle.evaluate(tmp_path / "test.csv") == result.test_metrics


def test_predict_frame_of_a_csv_keeps_zero_padded_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = zero_padded_bundle(tmp_path, monkeypatch)
    scored = bundle.predict_frame(tmp_path / "rows.csv")
    expected = pl.read_parquet(tmp_path / "rows.parquet")["user"].to_list()
    assert scored["user"].to_list() == expected
    assert np.array_equal(scored["score"].to_numpy(), bundle.predict(tmp_path / "rows.csv"))


def test_bundle_evaluate_matches_the_runs_test_metrics(
    result: TrainResult, test_path: Path
) -> None:
    bundle = load_bundle(result.bundle_dir)
    metrics = bundle.evaluate(test_path)
    on_disk = json.loads((result.run_dir / "metrics.json").read_text())["test"]
    assert metrics == on_disk == result.test_metrics
    labels = pl.read_parquet(test_path)["click"].to_numpy().astype(np.float32)
    assert metrics == binary_report(labels, bundle.predict(test_path))
    assert metrics["auc"] > 0.8


def test_bundle_explain_parts_give_the_prediction(result: TrainResult, test_path: Path) -> None:
    bundle = load_bundle(result.bundle_dir)
    parts = bundle.explain(test_path)
    logits = torch.from_numpy(parts["wide_logit"] + parts["deep_logit"])
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), bundle.predict(test_path))


def test_predict_frame_keeps_the_columns_and_adds_scores(
    result: TrainResult, test_path: Path
) -> None:
    bundle = load_bundle(result.bundle_dir)
    frame = pl.read_parquet(test_path)
    scored = bundle.predict_frame(frame)
    assert scored.columns == [*frame.columns, "score"]
    assert scored.drop("score").equals(frame)
    assert np.array_equal(scored["score"].to_numpy(), bundle.predict(frame))
    with pytest.raises(SchemaError, match="already has a column 'click'"):
        bundle.predict_frame(frame, column="click")


def test_bf16_scoring_is_close_to_fp32_and_agrees_across_the_bundles_methods(
    result: TrainResult, test_path: Path
) -> None:
    bundle = load_bundle(result.bundle_dir)
    fp32, bf16 = bundle.predict(test_path), bundle.predict(test_path, precision="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)  # it ran in bf16
    assert float(np.abs(bf16 - fp32).max()) < 0.02  # bf16 keeps 8 bits of mantissa
    labels = pl.read_parquet(test_path)["click"].to_numpy().astype(np.float32)
    metrics = bundle.evaluate(test_path, precision="bf16")
    assert metrics == binary_report(labels, bf16)
    assert abs(metrics["auc"] - bundle.evaluate(test_path)["auc"]) < 0.005
    parts = bundle.explain(test_path, precision="bf16")
    logits = torch.from_numpy(parts["wide_logit"] + parts["deep_logit"])
    assert np.array_equal(torch.sigmoid(logits).numpy(), bf16)
    scored = bundle.predict_frame(test_path, precision="bf16")
    assert np.array_equal(scored["score"].to_numpy(), bf16)
    with pytest.raises(ConfigError, match=r"precision must be one of .* got 'fp16'"):
        bundle.predict(test_path, precision="fp16")


def test_predicting_a_table_without_a_feature_column_names_it(
    result: TrainResult, test_path: Path
) -> None:
    bundle = load_bundle(result.bundle_dir)
    with pytest.raises(SchemaError, match="missing column 'item'"):
        bundle.predict(pl.read_parquet(test_path).drop("item"))
    with pytest.raises(SchemaError, match="'click'"):
        bundle.evaluate(pl.read_parquet(test_path).drop("click"))


# ------------------------------------------------------------------------------ integrity


def test_a_changed_byte_is_caught_by_sha256(bundle_copy: Path) -> None:
    weights = bundle_copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(bundle_copy)


def test_a_truncated_file_is_caught_by_its_size(bundle_copy: Path) -> None:
    weights = bundle_copy / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(BundleError, match="bytes") as error:
        load_bundle(bundle_copy)
    assert "truncated" in str(error.value)


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json", "preprocessor.json"])
def test_a_missing_file_is_a_bundle_error(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=re.escape(f"'{name}' is missing")):
        load_bundle(bundle_copy)


def test_a_missing_manifest_is_a_bundle_error(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(bundle_copy)


def test_a_missing_folder_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle folder"):
        load_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format_version": 2}, "format version 2"),
        ({"format_version": None}, "format version None"),
        ({"format": "something-else"}, "not a widedeep bundle manifest"),
    ],
)
def test_another_format_or_version_is_a_bundle_error(
    bundle_copy: Path, change: dict[str, object], match: str
) -> None:
    manifest_path = bundle_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(change)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle_copy)


def test_a_manifest_that_is_not_json_is_a_bundle_error(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def rewrite(bundle: Path, name: str, data: bytes) -> None:
    """Replace one bundle file and record its new size and SHA-256 in the manifest."""
    (bundle / name).write_bytes(data)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))


def test_weights_of_another_model_are_a_bundle_error(bundle_copy: Path) -> None:
    config = json.loads((bundle_copy / "config.json").read_text())
    config["model"]["hidden_units"] = [5]
    rewrite(bundle_copy, "config.json", json.dumps(config).encode())
    with pytest.raises(BundleError, match="does not fit the model"):
        load_bundle(bundle_copy)


def test_unreadable_weights_with_a_matching_manifest_are_a_bundle_error(
    bundle_copy: Path,
) -> None:
    rewrite(bundle_copy, "weights.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(BundleError, match="cannot be read"):
        load_bundle(bundle_copy)


def test_a_preprocessor_of_another_version_is_a_bundle_error(bundle_copy: Path) -> None:
    state = json.loads((bundle_copy / "preprocessor.json").read_text())
    state["version"] = 99
    rewrite(bundle_copy, "preprocessor.json", json.dumps(state).encode())
    with pytest.raises(BundleError, match="version"):
        load_bundle(bundle_copy)


def test_an_invalid_config_with_a_matching_manifest_is_a_bundle_error(bundle_copy: Path) -> None:
    config = json.loads((bundle_copy / "config.json").read_text())
    config["model"]["unknown_setting"] = 1  # e.g. written by a newer widedeep
    rewrite(bundle_copy, "config.json", json.dumps(config).encode())
    with pytest.raises(BundleError, match=r"config\.json"):
        load_bundle(bundle_copy)


def test_loading_never_unpickles(
    result: TrainResult, test_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bundle must never be unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    bundle = load_bundle(result.bundle_dir)
    assert isinstance(bundle, Bundle)
    assert bundle.predict(test_path).shape == (800,)
    assert bundle.evaluate(test_path) == result.test_metrics
