"""The promotion gate: score two bundles on a holdout, record the decision, install the winner."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import Outcome, one_thread, run_main, shared_run
from widedeep.bundle import load_bundle, save_bundle, verify_bundle
from widedeep.cli import app
from widedeep.errors import ConfigError
from widedeep.promote import promote, promotion_decision
from widedeep.training.loop import TrainResult


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def good(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The shared trained run (read only)."""
    return shared_run(tmp_path_factory)


@pytest.fixture
def holdout(good: TrainResult) -> Path:
    test = load_bundle(good.bundle_dir).config.data.test
    assert test is not None
    return Path(test)


def copy_run(result: TrainResult, folder: Path) -> Path:
    """A copy of the good bundle inside its own run directory ``folder``; returns the bundle."""
    bundle = folder / "bundle"
    shutil.copytree(result.bundle_dir, bundle)
    return bundle


@pytest.fixture
def worse(good: TrainResult, tmp_path: Path) -> Path:
    """The good bundle with every weight zeroed: it scores every row alike (AUC 0.5)."""
    loaded = load_bundle(good.bundle_dir)
    with torch.no_grad():
        for tensor in loaded.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.zero_()
    return save_bundle(
        tmp_path / "worse" / "bundle", loaded.model, loaded.preprocessor, loaded.config
    )


def gate(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Outcome:
    return run_main(["promote", *argv], monkeypatch, capsys)


def record_of(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle.parent / "promotion.json").read_text())
    return data


def test_a_worse_model_is_refused(
    good: TrainResult,
    worse: Path,
    holdout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    target = tmp_path / "serving" / "bundle"
    argv = [str(worse), str(good.bundle_dir), "--holdout", str(holdout), "--target", str(target)]
    outcome = gate(argv, monkeypatch, capsys)
    assert outcome.code == 1, outcome.stderr
    assert "refused: auc: new 0.5 < old" in outcome.stdout
    assert not target.exists()
    record = record_of(worse)
    assert record["decision"] == "refused" and record["promoted"] is False
    assert record["metric"] == "auc" and record["tolerance"] == 0.0
    assert record["new"]["value"] == pytest.approx(0.5)
    assert record["old"]["value"] == pytest.approx(good.test_metrics["auc"])  # type: ignore[index]
    assert record["old"]["bundle"] == str(good.bundle_dir)
    assert record["installed"] is None and record["target"] == str(target)
    assert record["started_utc"] <= record["finished_utc"]
    assert record["new"]["created_utc"] and record["old"]["created_utc"]


def test_an_equal_model_is_promoted_and_installed(
    good: TrainResult,
    holdout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    new = copy_run(good, tmp_path / "new-run")
    target = tmp_path / "serving" / "bundle"
    # The serving bundle is the one being replaced: the gate compares against it in place.
    shutil.copytree(good.bundle_dir, target)
    argv = [str(new), str(target), "--holdout", str(holdout), "--target", str(target)]
    outcome = gate(argv, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr
    assert "promoted: auc: new" in outcome.stdout
    assert f"installed at {target}" in outcome.stdout
    verify_bundle(target)
    verify_bundle(target.with_name("bundle.previous"))
    assert (target / "weights.safetensors").read_bytes() == (
        new / "weights.safetensors"
    ).read_bytes()
    assert [p.name for p in target.parent.iterdir() if "incoming" in p.name] == []
    record = record_of(new)
    assert record["decision"] == "promoted"
    assert record["new"]["value"] == record["old"]["value"]
    assert record["installed"] == str(target)


def test_tolerance_admits_a_model_that_much_worse(
    good: TrainResult, worse: Path, holdout: Path
) -> None:
    auc = load_bundle(good.bundle_dir).evaluate(holdout)["auc"]
    gap = auc - 0.5
    refused = promotion_decision(worse, good.bundle_dir, holdout, tolerance=gap - 0.01)
    admitted = promotion_decision(worse, good.bundle_dir, holdout, tolerance=gap + 0.01)
    assert not refused.promoted
    assert admitted.promoted
    assert admitted.reason.startswith("auc: new 0.5 >= old")


def test_lower_is_better_metrics_compare_the_other_way(
    good: TrainResult, worse: Path, holdout: Path
) -> None:
    decision = promotion_decision(good.bundle_dir, worse, holdout, metric="logloss")
    assert decision.promoted and not decision.higher_is_better
    assert decision.new_value < decision.old_value  # type: ignore[operator]
    backwards = promotion_decision(worse, good.bundle_dir, holdout, metric="logloss")
    assert not backwards.promoted
    assert "> old" in backwards.reason
    # A tolerance as large as the gap lets the worse one through.
    assert backwards.old_value is not None
    gap = backwards.new_value - backwards.old_value
    assert promotion_decision(
        worse, good.bundle_dir, holdout, metric="logloss", tolerance=gap + 1e-6
    ).promoted


def test_without_an_old_bundle_the_first_model_is_promoted(
    good: TrainResult,
    holdout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    new = copy_run(good, tmp_path / "first")
    target = tmp_path / "serving" / "bundle"
    argv = [str(new), str(target), "--holdout", str(holdout), "--target", str(target)]
    outcome = gate(argv, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr
    assert f"old: none  ({target} does not exist)" in outcome.stdout
    assert "first model is promoted unconditionally" in outcome.stdout
    verify_bundle(target)
    assert not target.with_name("bundle.previous").exists()
    record = record_of(new)
    assert record["old"] == {
        "bundle": str(target),
        "created_utc": None,
        "value": None,
        "metrics": None,
    }


def test_a_record_dir_can_be_chosen(good: TrainResult, holdout: Path, tmp_path: Path) -> None:
    new = copy_run(good, tmp_path / "run")
    decision = promote(new, good.bundle_dir, holdout, record_dir=tmp_path / "records")
    assert decision.record == tmp_path / "records" / "promotion.json"
    assert decision.record.is_file() and not (new.parent / "promotion.json").exists()
    assert decision.installed is None


def test_an_unknown_metric_is_an_error(
    good: TrainResult,
    holdout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    new = copy_run(good, tmp_path / "run")
    for metric in ("auroc", "rmse"):
        argv = [str(new), str(good.bundle_dir), "--holdout", str(holdout), "--metric", metric]
        outcome = gate(argv, monkeypatch, capsys)
        assert outcome.code == 2
        assert outcome.stderr.strip() == (
            f"error: unknown metric '{metric}' for the binary objective; "
            "expected one of auc, accuracy, logloss, ece"
        )
    assert not (new.parent / "promotion.json").exists()


def test_a_negative_tolerance_and_a_non_bundle_target_are_errors(
    good: TrainResult, holdout: Path, tmp_path: Path
) -> None:
    new = copy_run(good, tmp_path / "run")
    with pytest.raises(ConfigError, match="tolerance must be a finite number >= 0"):
        promotion_decision(new, good.bundle_dir, holdout, tolerance=-0.1)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("not a bundle")
    outcome = CliRunner().invoke(
        app,
        [
            "promote",
            str(new),
            str(good.bundle_dir),
            "--holdout",
            str(holdout),
            "--target",
            str(occupied),
        ],
    )
    assert "is not a bundle folder" in str(outcome.exception)
    assert (occupied / "notes.txt").is_file()


def test_help_documents_the_exit_codes_with_an_example() -> None:
    outcome = CliRunner().invoke(app, ["promote", "--help"], terminal_width=120)
    assert outcome.exit_code == 0
    assert "0 promoted, 1 refused, 2 error" in outcome.output
    assert "Example: widedeep promote" in outcome.output
