"""The benchmark's own helpers: which columns every runner reads as features, the Adult table
it benchmarks on, the model config it builds from a file, its per-epoch quality table and
its report; and the scoring profile runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench  # noqa: E402
from peers.columns import Columns  # noqa: E402
from run_widedeep import criteo_config  # noqa: E402

CRITEO_SCHEMA = pl.Schema(
    {
        "label": pl.Int8,
        **{f"I{i}": pl.Float64 for i in range(1, 14)},
        **{f"C{i}": pl.String for i in range(1, 27)},
    }
)


def test_criteo_columns_are_the_I_fields_numeric_and_the_C_fields_categorical() -> None:
    columns = Columns.of(CRITEO_SCHEMA)
    assert columns.numeric == [f"I{i}" for i in range(1, 14)]
    assert columns.categorical == [f"C{i}" for i in range(1, 27)]


def test_adult_table_has_a_binary_label_and_names_without_hyphens() -> None:
    table = bench.adult_table()
    assert table.height == 48_842
    assert table["label"].sum() == 11_687  # the rows with income >50K
    assert set(table["label"].unique()) == {0, 1}
    assert not [name for name in table.columns if "-" in name]
    columns = Columns.of(table.schema)
    assert columns.numeric == [
        "age",
        "fnlwgt",
        "educational_num",
        "capital_gain",
        "capital_loss",
        "hours_per_week",
    ]
    assert len(columns.categorical) == 8 and "native_country" in columns.categorical


@pytest.fixture
def adult_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setattr(bench, "SCRATCH", tmp_path)
    return bench.adult_data(argparse.Namespace(seed=0))


def test_adult_split_is_seeded_and_keeps_every_row_once(adult_files: tuple[Path, Path]) -> None:
    train, test = (pl.read_parquet(path) for path in adult_files)
    assert (train.height, test.height) == (39_074, 9_768)
    assert pl.concat([train, test]).sort(pl.all()).equals(bench.adult_table().sort(pl.all()))
    again = bench.random_split(bench.adult_table(), 0.0, bench.ADULT_TEST_FRACTION, seed=0)[2]
    assert again.equals(test)


def test_widedeep_config_takes_its_features_from_the_file(adult_files: tuple[Path, Path]) -> None:
    args = argparse.Namespace(
        hashed_buckets=0, embedding_dim=8, optimizer="adam", lr=1e-3, hidden="32,16", epochs=1,
        batch_size=256, threads=1, device="cpu", precision="fp32",
    )  # fmt: skip
    config = criteo_config(args, str(adult_files[0]), str(adult_files[1]))
    columns = Columns.of_file(adult_files[0])
    assert list(config.feature_schema.wide or ()) == columns.categorical
    assert list(config.feature_schema.deep or ()) == columns.numeric + columns.categorical


def test_epochs_table_has_a_row_per_library_and_a_column_per_epoch() -> None:
    rows = [
        {"library": "widedeep", "version": "0.1.0", "precision": "bf16",
         "epochs": [(0.71, 0.52), (0.74, 0.49)]},
        {"library": "peer", "version": "1.0", "precision": "fp32", "epochs": [(0.70, 0.55)]},
    ]  # fmt: skip
    lines = bench.epochs_table(rows).splitlines()
    assert lines[0] == "| library | epoch 1: AUC / logloss | epoch 2: AUC / logloss |"
    assert lines[2] == "| widedeep 0.1.0 (bf16) | 0.7100 / 0.5200 | 0.7400 / 0.4900 |"
    assert lines[3] == "| peer 1.0 (fp32) | 0.7000 / 0.5500 |  |"


def test_the_table_reports_opt_in_bf16_scoring_against_fp32_and_the_bare_forward() -> None:
    report = {
        "library": "widedeep", "version": "0.1.0", "precision": "bf16",
        "preprocess_rows_per_s": 1e6, "train_samples_per_s": [1e5, 1.2e5],
        "infer_samples_per_s": 5e5, "bare_infer_samples_per_s": 8e5,
        "infer_bf16_samples_per_s": 9e5, "bare_infer_bf16_samples_per_s": 1.2e6,
        "train_beside_samples_per_s": 1e5, "bare_train_samples_per_s": 2e5,
        "bare_train_fp32_samples_per_s": 2e5, "peak_rss_mb": 1000.0,
        "epochs": [{"auc": 0.7400, "logloss": 0.49}], "test_auc_bf16_scoring": 0.7399,
    }  # fmt: skip
    peer = {**report, "library": "peer", "infer_samples_per_s": 2.5e5, "precision": "fp32"}
    rows = [bench.summarize("widedeep", [report]), bench.summarize("peer", [peer])]
    limits = {"mlp_train": 2e5, "mlp_infer": 8e5, "mlp_train_bf16": 0.0, "roofline": 3e5,
              "gflops": 278.0, "batch_size": 1024}  # fmt: skip
    text = bench.table(rows, limits)
    assert (
        "- opt-in bf16 scoring (`precision='bf16'`, `--precision bf16`): 900,000 samples/s, "
        "1.80x the default fp32 scoring and 75% of the bare-MLP forward under bf16 autocast "
        "beside it (per run, median over runs; the bare forward's median 1,200,000 "
        "samples/s); 3.6x the fastest peer's inference; test AUC 0.7399 (fp32: 0.7400)"
    ) in text
    assert "- widedeep inference = 62% of the bare-MLP forward rate" in text
    assert "inference 2.0x (peer)" in text


def test_scoring_shares_are_taken_within_each_run_then_the_median() -> None:
    """Three runs whose scoring and bare forward drift together: two score at 0.7 of their
    bare forward and one at 0.6, so the median share is 0.7, where the ratio of the two
    medians (0.6 / 1.0) would say 0.6."""
    runs = [
        {"infer_samples_per_s": 0.7 * bare, "bare_infer_samples_per_s": bare,
         "infer_bf16_samples_per_s": 1.4 * bare, "bare_infer_bf16_samples_per_s": 2 * bare}
        for bare in (0.5, 1.0, 2.0)
    ]  # fmt: skip
    runs[1]["infer_samples_per_s"] = 0.6  # the middle run: 0.6 of its bare forward
    assert bench._median_ratio(runs, "infer_samples_per_s", "bare_infer_samples_per_s") == 0.7
    assert bench._median_ratio(runs, "infer_bf16_samples_per_s", "infer_samples_per_s") == 2.0
    assert bench._median_ratio([{"infer_samples_per_s": 1.0}], "infer_samples_per_s", "x") == 0.0


def test_the_scoring_profile_times_predict_its_pieces_and_the_bare_forward(
    adult_files: tuple[Path, Path],
) -> None:
    train, test = adult_files
    command = [sys.executable, str(BENCHMARKS / "profile_scoring.py"), "--train", str(train),
               "--test", str(test), "--rounds", "1", "--threads", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in (
        "predict fp32",
        "predict bf16",
        "bare forward fp32",
        "first layer apart",
        "rest of deep part",
        "wide part",
        "fused lookup",
    ):
        assert f"  {line} " in done.stdout
    assert "of the bare forward's rate, and" in done.stdout
    assert "aten::addmm" in done.stdout  # torch.profiler's table of operators


def test_runs_go_in_rounds_with_a_peers_single_run_in_the_middle() -> None:
    """Each round runs every library once; the VM drifts, so a peer's one run sits between
    widedeep's runs, not after them all."""
    order = bench.run_order({"widedeep": 3, "widedeep fp32": 3, "keras": 1, "deepctr": 1})
    assert order == [
        ("widedeep", 0), ("widedeep fp32", 0),
        ("widedeep", 1), ("widedeep fp32", 1), ("keras", 0), ("deepctr", 0),
        ("widedeep", 2), ("widedeep fp32", 2),
    ]  # fmt: skip
    assert bench.run_order({"widedeep": 2, "peer": 2}) == [
        ("widedeep", 0), ("peer", 0), ("widedeep", 1), ("peer", 1)
    ]  # fmt: skip
    assert bench.run_order({"widedeep": 4, "peer": 2}) == [
        ("widedeep", 0), ("widedeep", 1), ("peer", 0), ("widedeep", 2), ("peer", 1),
        ("widedeep", 3),
    ]  # fmt: skip
    assert bench.run_order({}) == []
