"""The command line (in process and as ``python -m widedeep``) and the public Python surface."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import widedeep
from fixtures_train import (
    config_dict,
    one_thread,
    run_main,
    shared_run,
    skip_plots,
    write_tables,
)
from widedeep.bundle import load_bundle
from widedeep.cli import app
from widedeep.training.loop import TrainResult

ROOT = Path(__file__).resolve().parents[1]


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
    test = load_bundle(result.bundle_dir).config.data.test
    assert test is not None
    return Path(test)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A run config YAML over freshly written synthetic tables."""
    train_path, test_path = write_tables(tmp_path / "data")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict(train_path, test_path), sort_keys=False))
    return path


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m widedeep ARGS...`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "widedeep", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", "OMP_NUM_THREADS": "1"},
        check=False,
    )


def assert_user_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    assert stderr.startswith("error:"), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr


# ------------------------------------------------------------------------------ happy paths


def test_train_writes_the_run_directory(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_plots(monkeypatch)
    out = tmp_path / "out"
    outcome = CliRunner().invoke(
        app, ["train", str(config_file), "--output", str(out), "--set", "train.epochs=2"]
    )
    assert outcome.exit_code == 0, outcome.output
    for name in ("metrics.jsonl", "metrics.csv", "metrics.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "bundle" / "manifest.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2
    assert "validation (best epoch 2): auc" in outcome.output
    assert f"bundle:  {out / 'bundle'}" in outcome.output


def test_evaluate_json_in_a_fresh_process_matches_bundle_evaluate(
    result: TrainResult, test_path: Path
) -> None:
    completed = run_module("evaluate", str(result.bundle_dir), str(test_path), "--json")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert printed == load_bundle(result.bundle_dir).evaluate(test_path)
    assert printed == result.test_metrics


def test_evaluate_without_json_prints_one_line_of_metrics(
    result: TrainResult, test_path: Path
) -> None:
    outcome = CliRunner().invoke(app, ["evaluate", str(result.bundle_dir), str(test_path)])
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.startswith(f"{test_path}: auc ")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_predict_keeps_the_input_columns_and_adds_scores(
    result: TrainResult, test_path: Path, tmp_path: Path, suffix: str
) -> None:
    frame = pl.read_parquet(test_path)
    source = tmp_path / f"input{suffix}"
    if suffix == ".csv":
        frame.write_csv(source)
    else:
        frame.write_parquet(source)
    output = tmp_path / f"scored{suffix}"
    outcome = CliRunner().invoke(
        app, ["predict", str(result.bundle_dir), str(source), "--output", str(output)]
    )
    assert outcome.exit_code == 0, outcome.output
    assert f"wrote {frame.height} rows" in outcome.output
    scored = pl.read_parquet(output) if suffix == ".parquet" else pl.read_csv(output)
    assert scored.columns == [*frame.columns, "score"]
    assert scored.drop("score").equals(frame)
    expected = load_bundle(result.bundle_dir).predict(frame)
    scores = scored["score"].cast(pl.Float32).to_numpy()
    if suffix == ".parquet":
        assert scored["score"].dtype == pl.Float32
        assert np.array_equal(scores, expected)
    else:  # written as text: equal to float32 precision
        np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_predict_with_a_custom_column_name(
    result: TrainResult, test_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "scored.parquet"
    outcome = CliRunner().invoke(
        app,
        ["predict", str(result.bundle_dir), str(test_path), "-o", str(output), "--column", "p"],
    )
    assert outcome.exit_code == 0, outcome.output
    assert pl.read_parquet(output).columns[-1] == "p"


def test_predict_and_evaluate_in_bf16_equal_the_library_in_bf16(
    result: TrainResult,
    test_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    bundle = load_bundle(result.bundle_dir)
    output = tmp_path / "scored.parquet"
    argv = ["predict", str(result.bundle_dir), str(test_path), "-o", str(output)]
    outcome = run_main([*argv, "--precision", "bf16"], monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr
    expected = bundle.predict(test_path, precision="bf16")
    assert np.array_equal(pl.read_parquet(output)["score"].to_numpy(), expected)
    assert not np.array_equal(expected, bundle.predict(test_path))
    evaluate = ["evaluate", str(result.bundle_dir), str(test_path), "--json"]
    outcome = run_main([*evaluate, "--precision", "bf16"], monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr
    assert json.loads(outcome.stdout) == bundle.evaluate(test_path, precision="bf16")


def test_an_unknown_precision_is_a_user_error_before_any_scoring(
    result: TrainResult,
    test_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    output = tmp_path / "scored.parquet"
    argv = ["predict", str(result.bundle_dir), str(test_path), "-o", str(output)]
    outcome = run_main([*argv, "--precision", "fp16"], monkeypatch, capsys)
    assert_user_error(outcome.code, outcome.stderr, "--precision must be one of", "'fp16'")
    assert not output.exists()
    ranking = ["evaluate", str(result.bundle_dir), str(test_path), "--ranking"]
    outcome = run_main([*ranking, "--precision", "bf16"], monkeypatch, capsys)
    assert_user_error(outcome.code, outcome.stderr, "--ranking is fp32")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "demo"])
def test_help_of_each_command_shows_an_example(command: str) -> None:
    outcome = CliRunner().invoke(app, [command, "--help"], terminal_width=120)
    assert outcome.exit_code == 0
    assert "Example" in outcome.output
    assert f"widedeep {command}" in outcome.output


def test_console_script_points_at_main() -> None:
    scripts = metadata.entry_points(group="console_scripts")
    assert [s.value for s in scripts if s.name == "widedeep"] == ["widedeep.cli:main"]


# ------------------------------------------------------------------------------ user errors


def test_missing_data_column_in_a_fresh_process_is_one_error_line(
    result: TrainResult, test_path: Path, tmp_path: Path
) -> None:
    data = tmp_path / "no_item.parquet"
    pl.read_parquet(test_path).drop("item").write_parquet(data)
    completed = run_module("evaluate", str(result.bundle_dir), str(data))
    assert_user_error(completed.returncode, completed.stderr, "missing column 'item'", str(data))
    assert completed.stderr.count("\n") == 1


def test_missing_data_column_for_predict(
    result: TrainResult,
    test_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    data = tmp_path / "no_user.csv"
    pl.read_parquet(test_path).drop("user").write_csv(data)
    output = tmp_path / "out.parquet"
    outcome = run_main(
        ["predict", str(result.bundle_dir), str(data), "--output", str(output)],
        monkeypatch,
        capsys,
    )
    assert_user_error(outcome.code, outcome.stderr, "missing column 'user'")
    assert not output.exists()


def test_nonexistent_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    missing = tmp_path / "absent.yaml"
    outcome = run_main(["train", str(missing), "-o", str(tmp_path / "run")], monkeypatch, capsys)
    assert_user_error(outcome.code, outcome.stderr, "cannot read config", str(missing))


def test_config_typo(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data = yaml.safe_load(config_file.read_text())
    data["model"]["hiden_units"] = data["model"].pop("hidden_units")
    config_file.write_text(yaml.safe_dump(data))
    outcome = run_main(
        ["train", str(config_file), "-o", str(tmp_path / "run")], monkeypatch, capsys
    )
    assert_user_error(outcome.code, outcome.stderr, "model.hiden_units: unknown key")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs", "--set expects key=value"),
        ("train.epochs=-1", "train.epochs"),
        ("schema.features.50.name=x", "not an index"),
    ],
)
def test_bad_set_overrides(
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    override: str,
    fragment: str,
) -> None:
    outcome = run_main(
        ["train", str(config_file), "-o", str(tmp_path / "run"), "--set", override],
        monkeypatch,
        capsys,
    )
    assert_user_error(outcome.code, outcome.stderr, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["train", str(config_file), "-o", str(tmp_path / "run"), "--set", "train.device=cuda"]
    outcome = run_main(argv, monkeypatch, capsys)
    assert_user_error(outcome.code, outcome.stderr, "no CUDA device")


def test_nonexistent_bundle(
    tmp_path: Path, test_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    outcome = run_main(["evaluate", str(tmp_path / "nope"), str(test_path)], monkeypatch, capsys)
    assert_user_error(outcome.code, outcome.stderr, "no bundle folder")


def test_unknown_output_suffix(
    result: TrainResult,
    test_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    output = tmp_path / "scored.xlsx"
    outcome = run_main(
        ["predict", str(result.bundle_dir), str(test_path), "-o", str(output)], monkeypatch, capsys
    )
    assert_user_error(outcome.code, outcome.stderr, ".xlsx")


def test_predict_writes_a_list_column_to_csv_as_joined_values(
    result: TrainResult, test_path: Path, tmp_path: Path
) -> None:
    frame = pl.read_parquet(test_path).with_columns(pl.col("tags").str.split("|"))
    data = tmp_path / "lists.parquet"
    frame.write_parquet(data)
    output = tmp_path / "out.csv"
    outcome = CliRunner().invoke(
        app, ["predict", str(result.bundle_dir), str(data), "--output", str(output)]
    )
    assert outcome.exit_code == 0, outcome.output
    scored = pl.read_csv(output)
    assert scored.columns == [*frame.columns, "score"]
    assert scored["tags"].to_list() == pl.read_parquet(test_path)["tags"].to_list()
    expected = load_bundle(result.bundle_dir).predict(frame)
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, rtol=1e-6)


def test_evaluate_json_is_strict_json_when_auc_is_undefined(
    result: TrainResult,
    test_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    data = tmp_path / "negatives.parquet"
    pl.read_parquet(test_path).filter(pl.col("click") == 0).write_parquet(data)
    argv = ["evaluate", str(result.bundle_dir), str(data), "--json"]
    outcome = run_main(argv, monkeypatch, capsys)
    assert outcome.code == 0

    def refuse(constant: str) -> float:
        raise ValueError(f"not JSON: {constant}")

    printed = json.loads(outcome.stdout, parse_constant=refuse)
    assert printed["auc"] is None
    assert math.isfinite(printed["logloss"])


# ---------------------------------------------------------------------- the public surface


def test_every_public_name_is_importable() -> None:
    names = widedeep.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(widedeep, name) is not None, name
    namespace: dict[str, Any] = {}
    exec("from widedeep import *", namespace)
    assert set(names) <= set(namespace)


def test_all_is_sorted() -> None:
    # ruff's RUF022 order: CONSTANTS, then Classes, then everything else; each alphabetical.
    def key(name: str) -> tuple[int, str]:
        if name.isupper():
            return 0, name
        if name[0].isupper():
            return 1, name
        return 2, name

    assert widedeep.__all__ == sorted(widedeep.__all__, key=key)


def test_public_classes_and_functions_are_exported() -> None:
    public = {
        name
        for name, value in vars(widedeep).items()
        if not name.startswith("_") and not isinstance(value, type(sys))
    }
    assert public <= set(widedeep.__all__)


def test_export_writes_a_program_that_scores_as_the_bundle(
    result: TrainResult, test_path: Path, tmp_path: Path
) -> None:
    from widedeep.export import ExportedScorer

    output = tmp_path / "model.pt2"
    outcome = CliRunner().invoke(
        app, ["export", str(result.bundle_dir), "--format", "pt2", "--output", str(output)]
    )
    assert outcome.exit_code == 0, outcome.output
    assert f"wrote {output}" in outcome.output
    frame = pl.read_parquet(test_path)
    expected = load_bundle(result.bundle_dir).predict(frame)
    np.testing.assert_allclose(ExportedScorer.load(output).predict(frame), expected, atol=1e-6)


def test_export_to_an_unknown_format_names_the_choices(
    result: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["export", str(result.bundle_dir), "--format", "tflite", "-o", str(tmp_path / "m")]
    outcome = run_main(argv, monkeypatch, capsys)
    assert outcome.code == 2
    assert "--format must be one of ['pt2', 'onnx'], got 'tflite'" in outcome.stderr
