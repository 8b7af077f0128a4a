"""The recommendation commands: recommend, evaluate --ranking, datasets make, demo --task."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import Outcome, one_thread, run_main
from test_recommend import ITEM, USER, RecRun, shared_rec_run
from widedeep.cli import app
from widedeep.ranking import evaluate_ranking
from widedeep.recommend import top_k

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def rec(tmp_path_factory: pytest.TempPathFactory) -> RecRun:
    return shared_rec_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def some_users(rec: RecRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A users file of 12 users (a subset, so the commands stay quick)."""
    path = tmp_path_factory.mktemp("cli-users") / "users.parquet"
    rec.users.head(12).write_parquet(path)
    return path


def assert_user_error(outcome: Outcome, *fragments: str) -> None:
    assert outcome.code == 2, outcome.stderr
    assert outcome.stderr.startswith("error:"), outcome.stderr
    assert "Traceback" not in outcome.stderr
    for fragment in fragments:
        assert fragment in outcome.stderr


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> float:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- recommend


def test_recommend_writes_the_rows_of_top_k(rec: RecRun, some_users: Path, tmp_path: Path) -> None:
    output = tmp_path / "recs.parquet"
    argv = ["recommend", str(rec.result.bundle_dir), "--users", str(some_users)]
    argv += ["--output", str(output), "-k", "3", "--exclude-seen", str(rec.train_path)]
    outcome = CliRunner().invoke(app, argv)
    assert outcome.exit_code == 0, outcome.output
    assert f"wrote 36 recommendations to {output}" in outcome.output
    expected = top_k(rec.bundle, some_users, k=3, exclude_seen=rec.train_path)
    written = pl.read_parquet(output)
    assert written.equals(expected)
    assert written.columns == [USER, "rank", ITEM, "score"]


def test_recommend_writes_csv(rec: RecRun, some_users: Path, tmp_path: Path) -> None:
    output = tmp_path / "recs.csv"
    argv = ["recommend", str(rec.result.bundle_dir), "--users", str(some_users), "-o", str(output)]
    outcome = CliRunner().invoke(app, [*argv, "-k", "2"])
    assert outcome.exit_code == 0, outcome.output
    written = pl.read_csv(output)
    expected = top_k(rec.bundle, some_users, k=2)
    assert written.columns == expected.columns
    assert written.select(USER, "rank", ITEM).equals(expected.select(USER, "rank", ITEM))
    np.testing.assert_allclose(written["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-6)


def test_recommend_with_retrieval_and_candidates(
    rec: RecRun, some_users: Path, tmp_path: Path
) -> None:
    output = tmp_path / "recs.parquet"
    base = ["recommend", str(rec.result.bundle_dir), "--users", str(some_users), "-o", str(output)]
    outcome = CliRunner().invoke(
        app, [*base, "--retrieval", "popular", "--num-candidates", "6", "-k", "2"]
    )
    assert outcome.exit_code == 0, outcome.output
    expected = top_k(rec.bundle, some_users, k=2, retrieval="popular", num_candidates=6)
    assert pl.read_parquet(output).equals(expected)

    candidates = tmp_path / "candidates.parquet"
    first = pl.read_parquet(some_users)[USER][0]
    pl.DataFrame({USER: [first, first], ITEM: ["a000004", "not-an-app"]}).write_parquet(candidates)
    outcome = CliRunner().invoke(
        app, [*base, "--candidates", str(candidates), "--skip-unknown-items"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert pl.read_parquet(output).select(USER, ITEM).rows() == [(first, "a000004")]


def test_recommend_an_unknown_candidate_is_one_error_line(
    rec: RecRun,
    some_users: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    candidates = tmp_path / "candidates.parquet"
    first = pl.read_parquet(some_users)[USER][0]
    pl.DataFrame({USER: [first], ITEM: ["not-an-app"]}).write_parquet(candidates)
    output = tmp_path / "recs.parquet"
    argv = ["recommend", str(rec.result.bundle_dir), "--users", str(some_users), "-o", str(output)]
    outcome = run_main([*argv, "--candidates", str(candidates)], monkeypatch, capsys)
    assert_user_error(outcome, "not-an-app")
    assert not output.exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--retrieval", "magic"], "--retrieval must be"),
        (["-k", "0"], "k must be >= 1"),
    ],
)
def test_recommend_bad_options_are_user_errors(
    rec: RecRun,
    some_users: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    extra: list[str],
    fragment: str,
) -> None:
    argv = ["recommend", str(rec.result.bundle_dir), "--users", str(some_users)]
    outcome = run_main([*argv, "-o", str(tmp_path / "r.parquet"), *extra], monkeypatch, capsys)
    assert_user_error(outcome, fragment)


def test_recommend_help_shows_an_example() -> None:
    outcome = CliRunner().invoke(app, ["recommend", "--help"], terminal_width=120)
    assert outcome.exit_code == 0
    assert "Example" in outcome.output
    assert "widedeep recommend" in outcome.output


# ------------------------------------------------------------------------ evaluate --ranking


def test_evaluate_ranking_json_is_strict_json_with_model_and_popularity(
    rec: RecRun, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["evaluate", str(rec.result.bundle_dir), str(rec.test_path), "--ranking"]
    argv += ["--users", str(rec.users_path), "--train", str(rec.train_path), "--json"]
    outcome = run_main(argv, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr
    lines = outcome.stdout.strip().splitlines()
    assert len(lines) == 1
    printed = strict_json(lines[-1])
    assert set(printed) == {"protocol", "k", "model", "popularity"}
    assert printed["protocol"] == "full" and printed["k"] == 10
    expected = evaluate_ranking(rec.bundle, rec.test_path, rec.users_path, train=rec.train_path)
    assert printed["model"] == pytest.approx(expected.model)
    assert printed["popularity"] == pytest.approx(expected.popularity)


def test_evaluate_ranking_sampled_prints_a_table(rec: RecRun) -> None:
    argv = ["evaluate", str(rec.result.bundle_dir), str(rec.test_path), "--ranking"]
    argv += ["--users", str(rec.users_path), "--train", str(rec.train_path)]
    argv += ["--protocol", "sampled", "--negatives", "20", "--seed", "3", "-k", "5"]
    outcome = CliRunner().invoke(app, argv, terminal_width=160)
    assert outcome.exit_code == 0, outcome.output
    assert "ranking, sampled protocol" in outcome.output
    assert "Wide & Deep" in outcome.output and "popularity" in outcome.output
    assert "hr@5" in outcome.output


def test_evaluate_ranking_without_users_exits_2(
    rec: RecRun, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["evaluate", str(rec.result.bundle_dir), str(rec.test_path), "--ranking"]
    outcome = run_main(argv, monkeypatch, capsys)
    assert_user_error(outcome, "--users")
    assert outcome.stderr.count("\n") == 1


def test_evaluate_ranking_with_an_unknown_protocol_exits_2(
    rec: RecRun, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["evaluate", str(rec.result.bundle_dir), str(rec.test_path), "--ranking"]
    argv += ["--users", str(rec.users_path), "--protocol", "loo"]
    assert_user_error(run_main(argv, monkeypatch, capsys), "--protocol")


# ----------------------------------------------------------------------------- datasets


def test_datasets_make_appstore_writes_three_parquet_files(tmp_path: Path) -> None:
    output = tmp_path / "store"
    argv = ["datasets", "make", "appstore", "--users", "50", "--apps", "30"]
    outcome = CliRunner().invoke(app, [*argv, "--impressions", "2000", "--output", str(output)])
    assert outcome.exit_code == 0, outcome.output
    assert "install rate" in outcome.output
    users = pl.read_parquet(output / "users.parquet")
    apps = pl.read_parquet(output / "apps.parquet")
    impressions = pl.read_parquet(output / "impressions.parquet")
    assert (users.height, apps.height, impressions.height) == (50, 30, 2000)
    assert {USER, "installed_apps"} <= set(users.columns)
    assert ITEM in apps.columns
    assert {USER, ITEM, "installed", "timestamp"} <= set(impressions.columns)
    assert set(impressions[USER]) <= set(users[USER])
    assert set(impressions[ITEM]) <= set(apps[ITEM])


def test_datasets_make_an_unknown_name_exits_2_in_a_fresh_process(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "widedeep", "datasets", "make", "nope", "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("error:")
    assert "unknown data set 'nope'" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "x").exists()


def test_datasets_make_bad_sizes_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["datasets", "make", "appstore", "--apps", "3", "-o", str(tmp_path / "x")]
    assert_user_error(run_main(argv, monkeypatch, capsys), "apps must be")


def test_demo_with_an_unknown_task_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["demo", "--task", "nope", "--output", str(tmp_path / "demo")]
    assert_user_error(run_main(argv, monkeypatch, capsys), "--task must be")
