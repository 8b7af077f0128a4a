"""Shared helpers for the model, training, bundle and CLI tests: a tiny learnable table.

Not a test module and not a conftest: test modules import it explicitly (``tests/`` is put
on ``sys.path`` by the importing module), so these helpers never collide with other fixtures.

The table: ``click`` depends on a user x item interaction (parity of their indices), on
``price`` and on whether the ``tags`` list holds ``t0``; ``rating`` is a regression target
built from the same signal. The schema uses every feature kind once.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from widedeep.cli import main
from widedeep.config import RunConfig, apply_overrides
from widedeep.training.loop import TrainResult, train

N_USERS, N_ITEMS, N_TAGS = 10, 8, 6
TRAIN_ROWS, TEST_ROWS = 2400, 800


def make_table(n: int, seed: int) -> pl.DataFrame:
    """``n`` rows with a learnable signal; the same ``seed`` gives the same table."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, N_USERS, n)
    item = rng.integers(0, N_ITEMS, n)
    price = rng.normal(0.0, 1.0, n)
    n_tags = rng.integers(1, 4, n)
    tag_ids = [rng.choice(N_TAGS, size=k, replace=False) for k in n_tags]
    has_t0 = np.array([0 in t for t in tag_ids], dtype=float)
    interaction = np.where((user + item) % 2 == 0, 1.0, -1.0)
    logit = 2.0 * interaction + 1.0 * price + 1.0 * has_t0 - 0.3
    click = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    rating = 3.0 + interaction + 0.5 * price + rng.normal(0.0, 0.3, n)
    return pl.DataFrame(
        {
            "user": [f"u{u}" for u in user],
            "item": [f"i{i}" for i in item],
            "city": [f"c{c}" for c in rng.integers(0, 12, n)],
            "price": price,
            "tags": ["|".join(f"t{t}" for t in tags) for tags in tag_ids],
            "click": click,
            "rating": rating,
        }
    )


def write_tables(folder: Path) -> tuple[Path, Path]:
    """The training and test tables as Parquet files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = folder / "train.parquet", folder / "test.parquet"
    make_table(TRAIN_ROWS, seed=1).write_parquet(train_path)
    make_table(TEST_ROWS, seed=2).write_parquet(test_path)
    return train_path, test_path


def config_dict(train_path: Path, test_path: Path | None = None) -> dict[str, Any]:
    """A small, fast run config over the synthetic table (plain data, as a YAML file holds)."""
    data: dict[str, Any] = {"train": str(train_path), "validation_fraction": 0.2}
    if test_path is not None:
        data["test"] = str(test_path)
    else:
        data["test_fraction"] = 0.1
    return {
        "data": data,
        "schema": {
            "label": {"column": "click"},
            "features": [
                {"name": "user", "kind": "categorical", "embedding_dim": 4},
                {"name": "item", "kind": "categorical", "embedding_dim": 4},
                {"name": "city", "kind": "hashed", "num_buckets": 8, "embedding_dim": 3},
                {"name": "price", "kind": "numeric"},
                {
                    "name": "price_bucket",
                    "column": "price",
                    "kind": "bucketized",
                    "boundaries": [-1.0, 0.0, 1.0],
                },
                {"name": "tags", "kind": "multi_categorical", "embedding_dim": 4},
                {
                    "name": "user_x_item",
                    "kind": "cross",
                    "features": ["user", "item"],
                    "num_buckets": 200,
                },
            ],
            "wide": ["user", "item", "city", "price_bucket", "tags", "user_x_item"],
            "deep": ["user", "item", "city", "price", "tags"],
        },
        "model": {"hidden_units": [16, 8]},
        "train": {
            "epochs": 3,
            "batch_size": 64,
            "seed": 0,
            "device": "cpu",
            "progress": False,
            "early_stopping": None,
            "wide_optimizer": {"name": "ftrl", "lr": 1.0},
            "deep_optimizer": {"name": "adagrad", "lr": 0.2},
        },
    }


def run_config(base: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """``base`` with ``--set``-style overrides, validated."""
    return RunConfig.from_dict(apply_overrides(copy.deepcopy(base), overrides or []))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the count.

    These models and batches are tiny: a second intra-op thread gains nothing, and on a busy
    2-core machine its spin-waiting makes a run 10x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def skip_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``train`` draw no PNGs (a second per run) where a test does not look at them."""
    # Not the dotted string: ``widedeep.train`` is the train function, shadowing the package.
    loop = importlib.import_module("widedeep.training.loop")
    monkeypatch.setattr(loop, "_plots", lambda *args, **kwargs: [])


_RUNS: dict[str, TrainResult] = {}


def shared_run(tmp_path_factory: pytest.TempPathFactory, name: str = "default") -> TrainResult:
    """One default wide_deep run (with a test file), trained once per session and shared.

    Callers must not modify its run directory: copy the bundle before tampering with it.
    """
    if name not in _RUNS:
        folder = tmp_path_factory.mktemp(f"shared-{name}")
        train_path, test_path = write_tables(folder / "data")
        config = run_config(config_dict(train_path, test_path))
        with one_thread():
            _RUNS[name] = train(config, folder / "run")
    return _RUNS[name]


@dataclass
class Outcome:
    """What one command-line call ended with."""

    code: int
    stdout: str
    stderr: str


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Outcome:
    """Call the console entry point in this process, as ``widedeep ARGV...`` would."""
    monkeypatch.setattr(sys, "argv", ["widedeep", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    code = exit_info.value.code
    return Outcome(0 if code is None else int(code), captured.out, captured.err)
