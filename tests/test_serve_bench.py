"""``widedeep bench-serve``: a latency row per layout and candidate count, the table printed,
and a bad option named. No timing is asserted: only that the numbers are consistent."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import one_thread, run_main, shared_run
from widedeep.bundle import Bundle, load_bundle
from widedeep.errors import ConfigError
from widedeep.serve_bench import (
    Layout,
    bench_serve,
    format_table,
    parse_counts,
    parse_layouts,
    request_bodies,
    request_table,
    scaled_layouts,
)

COLUMNS = ["user", "item", "city", "price", "tags"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory).bundle_dir


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


def test_the_papers_layouts_keep_their_micro_batches_at_fewer_candidates() -> None:
    layouts = parse_layouts("1x200,2x100,4x50")
    assert layouts == [Layout(1, 200), Layout(2, 100), Layout(4, 50)]
    assert scaled_layouts(layouts, parse_counts("200,50")) == [
        (200, Layout(1, 200)),
        (200, Layout(2, 100)),
        (200, Layout(4, 50)),
        (50, Layout(1, 50)),
        (50, Layout(2, 25)),
        (50, Layout(4, 13)),
    ]
    assert scaled_layouts([Layout(1, 8), Layout(1, 16)], [4]) == [(4, Layout(1, 4))]


def test_a_row_per_layout_with_consistent_numbers(bundle: Bundle) -> None:
    table = request_table(bundle)
    assert "test file" in table.source and table.frame.columns == COLUMNS
    rows = bench_serve(bundle, table, parse_layouts("1x8,2x4"), [8, 3], requests=6, warmup=1)
    layouts = [(r.candidates, r.threads, r.micro_batch) for r in rows]
    assert layouts == [(8, 1, 8), (8, 2, 4), (3, 1, 3), (3, 2, 2)]
    for r in rows:
        assert r.requests == 6 and 0 < r.p50_ms <= r.p99_ms
        assert r.requests_per_s > 0 and r.torch_threads >= 1
    assert format_table(rows).count("\n") == len(rows) + 1


def test_rows_are_made_from_the_schema_without_test_data(bundle: Bundle) -> None:
    data = bundle.config.data.model_copy(update={"test": None})
    config = bundle.config.model_copy(update={"data": data})
    no_test = Bundle(bundle.model, bundle.preprocessor, config, bundle.manifest, bundle.folder)
    table = request_table(no_test, synthetic_rows=30)
    assert "made from the schema" in table.source and table.frame.shape == (30, len(COLUMNS))
    rows = bench_serve(no_test, table, [Layout(1, 40)], [40], requests=2, warmup=0)
    assert rows[0].p50_ms > 0  # every request answered 200 (the rows wrap around)
    assert len(request_bodies(table, 40, 3)) == 3


def test_a_table_without_an_input_column_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pl.DataFrame({"user": ["u1"], "item": ["i1"]}).write_parquet(path)
    with pytest.raises(ConfigError, match=r"no column\(s\) \['city', 'price', 'tags'\]"):
        request_table(bundle, path)


def test_the_cli_prints_the_machine_settings_and_table(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    argv = ["bench-serve", str(bundle_dir), "--requests", "4"]
    argv += ["--threads-batches", "1x6,2x3", "--candidates", "6,2"]
    result = run_main(argv, monkeypatch, capsys)
    assert result.code == 0, result.stderr
    for text in ("cores", "load average", "in-process", "ASGITransport", "torch threads"):
        assert text in result.stdout
    assert "| 6 | 2 x 3 |" in result.stdout and "| 2 | 2 x 1 |" in result.stdout
    assert "| candidates | threads x micro-batch |" in result.stdout


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--threads-batches", "3x"),
        ("--threads-batches", "x4"),
        ("--threads-batches", "0x10"),
        ("--threads-batches", "2x100,abc"),
        ("--threads-batches", "2*100"),
        ("--candidates", "0"),
        ("--candidates", "50,"),
        ("--requests", "0"),
    ],
)
def test_a_bad_option_is_one_error_line_naming_it(
    bundle_dir: Path, option: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    result = run_main(["bench-serve", str(bundle_dir), option, value], monkeypatch, capsys)
    assert result.code == 2
    assert result.stderr.startswith(f"error: {option}") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
