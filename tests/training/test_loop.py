"""``widedeep.train`` end to end on a tiny synthetic table, and once on the bundled Adult data."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_train import (
    TRAIN_ROWS,
    config_dict,
    one_thread,
    run_config,
    shared_run,
    skip_plots,
    write_tables,
)
from widedeep.bundle import load_bundle
from widedeep.config import RunConfig, TrainConfig, load_config
from widedeep.errors import ConfigError, SchemaError, WideDeepError
from widedeep.features.preprocessor import Preprocessor
from widedeep.inference import predict
from widedeep.model import gather
from widedeep.optim import FTRL, LazyAdagrad, LazyAdam
from widedeep.optim.eager import SGD, Adagrad, Adam
from widedeep.tables import ParquetColumns
from widedeep.training import loop
from widedeep.training.loop import EarlyStopping, TrainResult, train
from widedeep.training.optimizers import build_optimizers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    skip_plots(monkeypatch)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The synthetic training and test tables, written once for this module."""
    return write_tables(tmp_path_factory.mktemp("data"))


@pytest.fixture
def base(tables: tuple[Path, Path]) -> dict[str, Any]:
    """A fresh config over the tables (with a separate test file); tests may edit it."""
    return config_dict(*tables)


def run(base: dict[str, Any], folder: Path, *overrides: str) -> TrainResult:
    return train(run_config(base, list(overrides)), folder)


def assert_same_weights(a: TrainResult, b: TrainResult) -> None:
    assert a.model is not None and b.model is not None
    left, right = a.model.state_dict(), b.model.state_dict()
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def validation_row(result: TrainResult, epoch: int) -> dict[str, float]:
    """The validation metrics logged for ``epoch`` (1-based), without their prefix."""
    row = result.history[epoch - 1]
    prefix = "validation_"
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------- what it learns


@pytest.mark.parametrize("parts", ["wide_deep", "wide", "deep"])
def test_each_part_learns_from_one_schema(
    base: dict[str, Any], tmp_path: Path, no_plots: None, parts: str
) -> None:
    result = run(base, tmp_path, f"model.parts={parts}")
    assert result.model is not None and result.model.parts_used == parts
    assert (result.model.wide is None) == (parts == "deep")
    assert (result.model.deep is None) == (parts == "wide")
    assert result.test_metrics is not None
    assert result.validation_metrics["auc"] > 0.7
    assert result.test_metrics["auc"] > 0.7
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("deep", [["user", "item", "city", "price"], ["user", "city", "tags"]])
def test_bf16_training_is_the_same_whether_the_lookup_or_autocast_rounds_to_bf16(
    base: dict[str, Any],
    tmp_path: Path,
    no_plots: None,
    monkeypatch: pytest.MonkeyPatch,
    deep: list[str],
) -> None:
    """In bf16 the fused lookup writes the MLP's input in bfloat16 itself; the weights come
    out bit for bit as when it writes float32 and autocast casts it. With one table for the
    single-valued fields: their lookup and the dense columns alone, or beside a pooled
    multi-valued field."""
    base["schema"]["features"][2]["embedding_dim"] = 4  # city: every single field one size
    base["schema"]["deep"] = deep
    asked = []
    original = gather._into_bf16_autocast

    def recorded(table: Any, dense: Any) -> bool:
        asked.append(original(table, dense))
        return asked[-1]

    monkeypatch.setattr(gather, "_into_bf16_autocast", recorded)
    written = run(base, tmp_path / "written", "train.precision=bf16")
    assert any(asked)  # the bf16 lookup ran in training steps
    monkeypatch.setattr(gather, "_into_bf16_autocast", lambda table, dense: False)
    cast = run(base, tmp_path / "cast", "train.precision=bf16")
    assert_same_weights(written, cast)


def test_compiled_mlp_trains_what_eager_trains_and_its_bundle_loads_eager(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    """``train.compile``: the MLP runs through torch.compile, in place, so the weights keep
    their names and the bundle loads into a plain model that scores like the trained one."""
    eager = run(base, tmp_path / "eager", "train.precision=fp32", "train.epochs=2")
    compiled = run(
        base, tmp_path / "compiled", "train.precision=fp32", "train.epochs=2", "train.compile=true"
    )
    assert compiled.model is not None and compiled.model.deep is not None
    assert compiled.model.deep.mlp._compiled_call_impl is not None  # it did compile
    assert eager.test_metrics is not None and compiled.test_metrics is not None
    assert abs(compiled.test_metrics["auc"] - eager.test_metrics["auc"]) < 0.005
    assert eager.model is not None
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    loaded = load_bundle(compiled.bundle_dir)
    assert loaded.model.deep is not None and loaded.model.deep.mlp._compiled_call_impl is None
    test_file = loaded.config.data.test
    assert test_file is not None
    table, _ = loaded.encode(test_file, with_labels=False)
    np.testing.assert_allclose(
        loaded.predict(test_file), predict(compiled.model, table), rtol=0, atol=1e-5
    )


def test_bf16_training_learns_what_fp32_training_learns(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    """bf16 autocast of the hidden layers: same data, same seed, about the same AUC; the
    weights stay float32 (autocast computes in bf16, it does not store in it)."""
    fp32 = run(base, tmp_path / "fp32", "train.precision=fp32")
    bf16 = run(base, tmp_path / "bf16", "train.precision=bf16")
    assert fp32.test_metrics is not None and bf16.test_metrics is not None
    assert abs(bf16.test_metrics["auc"] - fp32.test_metrics["auc"]) < 0.01
    assert bf16.model is not None
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert not torch.equal(  # it did run in bf16: the weights differ in the last bits
        bf16.model.state_dict()["deep.head.weight"],
        fp32.model.state_dict()["deep.head.weight"],  # type: ignore[union-attr]
    )


def test_run_directory_holds_bundle_metrics_config_and_plots(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    result = shared_run(tmp_path_factory)
    run_dir = result.run_dir
    for name in ("metrics.jsonl", "metrics.csv", "metrics.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    for name in ("manifest.json", "config.json", "preprocessor.json", "weights.safetensors"):
        assert (run_dir / "bundle" / name).is_file(), name
    assert result.bundle_dir == run_dir / "bundle"
    for name in ("history.png", "reliability.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC, name
    assert sorted(p.name for p in result.plots) == ["history.png", "reliability.png"]

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.history
    assert len(result.history) == 3
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "validation_auc", "validation_logloss"} <= set(rows[0])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] == result.best_epoch == 3  # no early stopping: the last
    assert metrics["validation"] == result.validation_metrics
    assert metrics["test"] == result.test_metrics
    assert metrics["rows"] == {"train": 1920, "validation": 480, "test": 800}
    # fitting and encoding, and apart from it hashing the encoded table for the checkpoints
    assert metrics["preprocess_seconds"] > 0 and metrics["fingerprint_seconds"] >= 0

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    trained_with = RunConfig.from_dict(
        config_dict(Path(saved["data"]["train"]), Path(saved["data"]["test"]))
    )
    assert load_config(run_dir / "config.yaml") == trained_with  # the run can be repeated


def test_without_a_test_split_the_reliability_plot_uses_validation(
    base: dict[str, Any], tmp_path: Path
) -> None:
    del base["data"]["test"]
    result = run(base, tmp_path, "data.test_fraction=0", "train.epochs=1")
    assert result.test_metrics is None
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"] is None
    assert metrics["rows"] == {"train": TRAIN_ROWS - 480, "validation": 480, "test": 0}
    assert (tmp_path / "reliability.png").read_bytes()[:8] == PNG_MAGIC


def test_a_split_test_fraction_gives_test_metrics(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    del base["data"]["test"]
    result = run(base, tmp_path, "data.test_fraction=0.25", "train.epochs=1")
    assert result.test_metrics is not None
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rows"] == {"train": 1320, "validation": 480, "test": 600}


# --------------------------------------------------------------------------- reproducible


def test_same_seed_gives_identical_weights_and_history(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    first = run(base, tmp_path / "a", "train.epochs=2", "model.dropout=0.2")
    second = run(base, tmp_path / "b", "train.epochs=2", "model.dropout=0.2")
    assert_same_weights(first, second)
    for a, b in zip(first.history, second.history, strict=True):
        assert a["train_loss"] == b["train_loss"]
        assert validation_row(first, a["epoch"]) == validation_row(second, b["epoch"])
    assert first.test_metrics == second.test_metrics

    other = run(base, tmp_path / "c", "train.epochs=2", "model.dropout=0.2", "train.seed=1")
    assert other.history[0]["train_loss"] != first.history[0]["train_loss"]


def test_a_stream_kept_encoded_trains_the_run_of_the_table_read_whole(
    base: dict[str, Any], tables: tuple[Path, Path], tmp_path: Path, no_plots: None
) -> None:
    """``data.stream.keep_encoded``: the training table is read in chunks (never whole),
    fitted and encoded chunk by chunk, then trained from memory as a table read whole is."""
    held_out = f"data.validation={tables[1]}"
    whole = run(base, tmp_path / "whole", held_out, "train.epochs=2")
    kept = run(
        base,
        tmp_path / "kept",
        held_out,
        "train.epochs=2",
        "data.stream={chunk_rows: 97, keep_encoded: true}",
    )
    # The same state, up to the last bits of a mean merged chunk by chunk ...
    assert whole.preprocessor is not None and kept.preprocessor is not None
    fitted, merged = whole.preprocessor.state_, kept.preprocessor.state_
    assert fitted is not None and merged is not None
    assert fitted["user"] == merged["user"] and fitted["item"] == merged["item"]
    assert fitted["price"] == pytest.approx(merged["price"], rel=1e-12)
    # ... so the same model, up to those bits' effect on the standardized prices
    assert whole.model is not None and kept.model is not None
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(kept.model.state_dict()[name], value, rtol=0, atol=1e-5)
    assert [row["train_loss"] for row in kept.history] == pytest.approx(
        [row["train_loss"] for row in whole.history], abs=1e-6
    )
    assert kept.test_metrics == pytest.approx(whole.test_metrics, abs=1e-5)


# ------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_and_restores_the_best_weights(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    # No epoch can beat the first by 0.5 AUC: stop after epoch 2, keep epoch 1's weights.
    stopped = run(
        base,
        tmp_path / "stopped",
        "train.epochs=5",
        "train.early_stopping={metric: auc, patience: 1, min_delta: 0.5}",
    )
    assert len(stopped.history) == 2
    assert stopped.best_epoch == 1
    assert stopped.validation_metrics == validation_row(stopped, 1)
    one_epoch = run(base, tmp_path / "one", "train.epochs=1")
    assert_same_weights(stopped, one_epoch)
    assert stopped.test_metrics == one_epoch.test_metrics
    manifest = json.loads((stopped.bundle_dir / "manifest.json").read_text())
    assert manifest["metrics"]["best_epoch"] == 1
    assert manifest["metrics"]["validation"] == validation_row(stopped, 1)


def test_the_last_epochs_validation_scores_are_the_runs_unless_weights_are_restored(
    base: dict[str, Any], tmp_path: Path, no_plots: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final validation metrics and plots take the last epoch's scores (the same
    weights) rather than scoring the validation table again; with early stopping's best
    weights restored, the table is scored again with them."""
    scored: list[int] = []  # rows of each table scored
    score = loop.predict

    def spy(model: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
        scored.append(len(table))
        return score(model, table, *args, **kwargs)

    monkeypatch.setattr(loop, "predict", spy)
    plain = run(base, tmp_path / "plain", "train.epochs=2")
    validation, test = scored[0], scored[-1]  # told apart by their sizes
    assert validation != test
    assert scored == [validation, validation, test]  # one pass per epoch, none after; the test
    assert plain.validation_metrics == validation_row(plain, 2)

    scored.clear()
    stopped = run(
        base,
        tmp_path / "stopped",
        "train.epochs=5",
        "train.early_stopping={metric: auc, patience: 1, min_delta: 0.5}",
    )
    assert scored == [validation] * 3 + [test]  # epochs 1 and 2, then epoch 1's weights
    assert stopped.validation_metrics == validation_row(stopped, 1)


@pytest.mark.parametrize(("metric", "best"), [("auc", np.argmax), ("logloss", np.argmin)])
def test_early_stopping_keeps_the_best_epoch_in_the_metrics_direction(
    base: dict[str, Any], tmp_path: Path, no_plots: None, metric: str, best: Any
) -> None:
    # Huge Adam steps make the validation metrics go up and down from epoch to epoch.
    result = run(
        base,
        tmp_path,
        "train.epochs=4",
        f"train.early_stopping={{metric: {metric}, patience: 10}}",
        "train.wide_optimizer={name: adam, lr: 5}",
        "train.deep_optimizer={name: adam, lr: 1}",
    )
    values = [row[f"validation_{metric}"] for row in result.history]
    assert len(values) == 4 and all(np.isfinite(values))
    assert result.best_epoch == int(best(values)) + 1
    assert result.validation_metrics == validation_row(result, result.best_epoch)


@pytest.mark.parametrize(
    ("metric", "values", "best_epoch", "stops_at"),
    [
        ("auc", [0.70, 0.80, 0.75, 0.85, 0.60, 0.84], 4, None),
        ("logloss", [0.70, 0.50, 0.55, 0.45, 0.90, 0.46], 4, None),
        ("auc", [0.70, 0.80, 0.79, 0.78, 0.90], 2, 4),  # patience 2 runs out at epoch 4
        ("rmse", [float("nan"), 2.0, 1.0, 1.5], 3, None),  # a NaN epoch is never the best
    ],
)
def test_early_stopping_tracks_the_best_state(
    metric: str, values: list[float], best_epoch: int, stops_at: int | None
) -> None:
    stopper = EarlyStopping(metric, patience=2 if stops_at else 10, min_delta=0.0)
    model = torch.nn.Linear(1, 1, bias=False)
    for epoch, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights remember their epoch
        if stopper.update(epoch, value, model):
            assert epoch == stops_at
            break
    else:
        assert stops_at is None
    assert stopper.best_epoch == best_epoch
    assert stopper.best_state is not None
    assert stopper.best_state["weight"].item() == float(best_epoch)


# ------------------------------------------------------------------------ objectives


def test_regression_objective_reports_rmse_and_mae(base: dict[str, Any], tmp_path: Path) -> None:
    result = run(
        base,
        tmp_path,
        "schema.label={column: rating, objective: regression}",
        "train.early_stopping={metric: rmse, patience: 2}",
    )
    assert set(result.validation_metrics) == {"rmse", "mae"}
    assert result.test_metrics is not None and set(result.test_metrics) == {"rmse", "mae"}
    spread = float(pl.read_parquet(base["data"]["test"])["rating"].std())  # type: ignore[arg-type]
    assert result.test_metrics["rmse"] < 0.9 * spread
    assert "validation_rmse" in result.history[0]
    assert (tmp_path / "history.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "reliability.png").exists()


def test_regression_with_default_early_stopping_watches_rmse(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    result = run(
        base,
        tmp_path,
        "schema.label={column: rating, objective: regression}",
        "train.early_stopping={patience: 5}",
    )
    values = [row["validation_rmse"] for row in result.history]
    assert len(values) == 3
    assert result.best_epoch == int(np.argmin(values)) + 1
    assert result.validation_metrics == validation_row(result, result.best_epoch)


def test_no_validation_rows_is_refused_with_a_clear_message(base: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no validation data"):
        run_config(base, ["data.validation_fraction=0"])


# ---------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="ftrl+adagrad"),
        pytest.param(["train.deep_optimizer={name: adam, lr: 0.01}"], id="ftrl+adam"),
        pytest.param(
            [
                "train.wide_optimizer={name: adam, lr: 0.05}",
                "train.deep_optimizer={name: adam, lr: 0.01}",
            ],
            id="adam+adam",
        ),
        pytest.param(
            [
                "train.wide_optimizer={name: sgd, lr: 2.0}",
                "train.deep_optimizer={name: sgd, lr: 0.5}",
            ],
            id="sgd+sgd",
        ),
        pytest.param(["model.embed_reg=0.0001", "model.w_reg=0.0001"], id="ftrl+adagrad+l2"),
        pytest.param(
            ["model.embed_reg=0.0001", "train.deep_optimizer={name: adam, lr: 0.01}"],
            id="ftrl+adam+l2",
        ),
    ],
)
def test_each_optimizer_pairing_trains(
    base: dict[str, Any], tmp_path: Path, no_plots: None, overrides: list[str]
) -> None:
    result = run(base, tmp_path, "train.epochs=2", *overrides)
    assert result.model is not None
    dense_path = any("_reg=" in override for override in overrides)
    tables = result.model.parameter_groups()
    assert tables["wide_tables"] and tables["deep_tables"]
    modules = [m for m in result.model.modules() if isinstance(m, torch.nn.Embedding)]
    assert all(m.sparse == (not dense_path) for m in modules)
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses))
    assert result.validation_metrics["auc"] > 0.6


@pytest.mark.parametrize(
    ("wide", "deep", "sparse", "expected"),
    [
        ("ftrl", "adagrad", True, [FTRL, LazyAdagrad, Adagrad]),
        ("ftrl", "adagrad", False, [FTRL, Adagrad]),
        ("ftrl", "adam", True, [FTRL, LazyAdam, Adam]),
        ("ftrl", "adam", False, [FTRL, Adam]),
        ("adam", "adam", True, [LazyAdam, Adam] * 2),
        ("sgd", "sgd", True, [SGD, SGD]),
    ],
)
def test_build_optimizers_picks_one_per_part(
    tmp_path_factory: pytest.TempPathFactory,
    wide: str,
    deep: str,
    sparse: bool,
    expected: list[type],
) -> None:
    model = shared_run(tmp_path_factory).model
    assert model is not None
    settings = TrainConfig(
        wide_optimizer={"name": wide, "lr": 0.1},  # type: ignore[arg-type]
        deep_optimizer={"name": deep, "lr": 0.1},  # type: ignore[arg-type]
    )
    optimizers = build_optimizers(model, settings, sparse_tables=sparse)
    assert [type(o) for o in optimizers] == expected
    handled = [id(p) for o in optimizers for group in o.param_groups for p in group["params"]]
    assert sorted(handled) == sorted(id(p) for p in model.parameters())


# ------------------------------------------------------------------------ refused configs


def test_deep_ftrl_is_refused(base: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="deep_optimizer"):
        run_config(base, ["train.deep_optimizer={name: ftrl, lr: 0.1}"])


def test_a_typo_key_is_refused_by_name(base: dict[str, Any]) -> None:
    base["train"]["ephocs"] = 2
    with pytest.raises(ConfigError, match=r"train\.ephocs: unknown key"):
        RunConfig.from_dict(base)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        run(base, tmp_path, "train.device=cuda")


def test_a_missing_training_file_is_a_widedeep_error(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    with pytest.raises(WideDeepError, match="no such file"):
        run(base, tmp_path / "run", f"data.train={tmp_path / 'absent.parquet'}")


def read_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tables read, and 'encoded' where the training table's encoding ends,
    in the order they happen in a run ('x.parquet (by column)': columns of x.parquet read one
    at a time, as ParquetColumns reads them; a run of such reads is one event)."""
    events: list[str] = []
    original_read = sys.modules["widedeep.tables"].read_table
    original_fit_transform = Preprocessor.fit_transform

    def read_table(source: Any, *args: Any, **kwargs: Any) -> pl.DataFrame:
        if isinstance(source, str | Path):  # not the frames already read, passed through
            events.append(Path(source).name)
        return original_read(source, *args, **kwargs)

    def fit_transform(self: Preprocessor, source: Any) -> Any:
        encoded = original_fit_transform(self, source)
        events.append("encoded")
        return encoded

    original_get_column = ParquetColumns.get_column

    def get_column(self: ParquetColumns, name: str) -> pl.Series:
        event = f"{self.path.name} (by column)"
        if not events or events[-1] != event:
            events.append(event)
        return original_get_column(self, name)

    for module in ("widedeep.tables", "widedeep.data.sources", "widedeep.features.preprocessor"):
        monkeypatch.setattr(sys.modules[module], "read_table", read_table)
    monkeypatch.setattr(Preprocessor, "fit_transform", fit_transform)
    monkeypatch.setattr(ParquetColumns, "get_column", get_column)
    return events


def test_validation_and_test_files_are_read_after_the_training_table_is_encoded(
    base: dict[str, Any], tables: tuple[Path, Path], tmp_path: Path, no_plots: None
) -> None:
    """Their raw rows and the training table's are never in memory together (the
    benchmark's peak RSS at 1M rows: 1,828 -> 1,625 MB), and none of them is whole in memory:
    each is read a column at a time as it is encoded, the test table at the end."""
    validation = tmp_path / "validation.parquet"
    pl.read_parquet(tables[1]).head(150).write_parquet(validation)
    with pytest.MonkeyPatch.context() as patch:
        events = read_log(patch)
        result = run(base, tmp_path / "run", f"data.validation={validation}")
    assert events[:4] == [
        "train.parquet (by column)",
        "encoded",
        "validation.parquet (by column)",
        "test.parquet (by column)",
    ]
    assert load_bundle(result.bundle_dir).evaluate(validation) == result.validation_metrics


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("absent.parquet", "no such file"),
        ("empty-folder", "the folder holds no .parquet files"),
        ("validation.json", "expected a .parquet or .csv file"),
        ("broken.parquet", "cannot be read as a table"),
    ],
)
def test_an_unreadable_validation_file_fails_before_the_training_table_is_read(
    base: dict[str, Any], tmp_path: Path, no_plots: None, name: str, message: str
) -> None:
    bad = tmp_path / name
    if name == "empty-folder":
        bad.mkdir()
    elif name != "absent.parquet":
        bad.write_text("not a table")
    with pytest.MonkeyPatch.context() as patch:
        events = read_log(patch)
        with pytest.raises(WideDeepError, match=rf"{name}: {message}"):
            run(base, tmp_path / "run", f"data.validation={bad}")
    assert not [e for e in events if e.startswith("train.parquet")] and "encoded" not in events


@pytest.mark.parametrize(("held_out", "drop"), [("validation", "click"), ("test", "city")])
def test_a_held_out_file_missing_a_column_fails_before_the_training_table_is_read(
    base: dict[str, Any],
    tables: tuple[Path, Path],
    tmp_path: Path,
    no_plots: None,
    held_out: str,
    drop: str,
) -> None:
    """Its header is checked first: a missing column is not found only after training."""
    lacking = tmp_path / f"{held_out}.parquet"
    pl.read_parquet(tables[1]).drop(drop).write_parquet(lacking)
    with pytest.MonkeyPatch.context() as patch:
        events = read_log(patch)
        with pytest.raises(SchemaError, match=rf"{held_out}\.parquet: missing column '{drop}'"):
            run(base, tmp_path / "run", f"data.{held_out}={lacking}")
    assert not [e for e in events if e.startswith("train.parquet")] and "encoded" not in events


def test_a_split_validation_is_taken_from_the_training_table_read_first(
    base: dict[str, Any], tmp_path: Path, no_plots: None
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        events = read_log(patch)
        run(base, tmp_path / "run")  # validation_fraction 0.2 of the training table
    assert events[:3] == ["test.parquet", "train.parquet", "encoded"]


# ---------------------------------------------------------------------------- Adult


@pytest.mark.slow
def test_adult_reaches_the_published_auc(tmp_path: Path) -> None:
    from importlib import resources

    source = resources.files("widedeep") / "configs" / "adult.yaml"
    with resources.as_file(source) as path:
        config = load_config(path, ["train.progress=false", "train.device=cpu"])
    result = train(config, tmp_path)
    assert result.test_metrics is not None
    assert result.test_metrics["auc"] >= 0.90
