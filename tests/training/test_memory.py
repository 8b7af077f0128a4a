"""The memory plan adds up to what the model and its optimizers really allocate, and a plan
larger than the machine is refused before any table exists."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_train import config_dict, make_table, run_config, skip_plots, write_tables
from widedeep.bundle import build_model
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError
from widedeep.features.preprocessor import Preprocessor
from widedeep.training import memory
from widedeep.training.loop import loss_fn, train
from widedeep.training.memory import plan_memory
from widedeep.training.optimizers import build_optimizers


@pytest.mark.parametrize(
    ("wide", "deep"), [("ftrl", "adagrad"), ("adam", "adam"), ("sgd", "adagrad")]
)
def test_the_plan_equals_the_allocated_tables_and_optimizer_state(
    tmp_path: Path, wide: str, deep: str
) -> None:
    base: dict[str, Any] = config_dict(*write_tables(tmp_path))
    config = run_config(
        base,
        [f"train.wide_optimizer={{name: {wide}, lr: 0.1}}",
         f"train.deep_optimizer={{name: {deep}, lr: 0.1}}"],
    )  # fmt: skip
    preprocessor = Preprocessor(config.feature_schema)
    encoded = preprocessor.fit_transform(make_table(300, seed=1))
    plan = plan_memory(config, preprocessor.layout, sparse_gradients=True)

    model = build_model(config, preprocessor, sparse_gradients=True)
    groups = model.parameter_groups()
    bytes_of = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    assert plan.wide_tables == bytes_of(groups["wide_tables"])
    assert plan.deep_tables == bytes_of(groups["deep_tables"])

    optimizers = build_optimizers(model, config.train, sparse_tables=True)
    batch = TensorTable.from_encoded(encoded).slice(0, 64)
    assert batch.labels is not None
    loss_fn(model.logits(batch), batch.labels, model.objective).backward()
    for optimizer in optimizers:
        optimizer.step()
    tables = {id(t) for t in [*groups["wide_tables"], *groups["deep_tables"]]}
    state = [
        value
        for optimizer in optimizers
        for param, entries in optimizer.state.items()
        if id(param) in tables
        for value in entries.values()
        if isinstance(value, torch.Tensor) and value.numel() > 1
    ]
    assert plan.optimizer_state == bytes_of(state)


def test_dense_table_gradients_are_counted_when_a_penalty_makes_them_dense(
    tmp_path: Path,
) -> None:
    config = run_config(config_dict(*write_tables(tmp_path)))
    preprocessor = Preprocessor(config.feature_schema)
    preprocessor.fit(make_table(300, seed=1))
    sparse = plan_memory(config, preprocessor.layout, sparse_gradients=True)
    dense = plan_memory(config, preprocessor.layout, sparse_gradients=False)
    assert sparse.dense_gradients == 0
    assert dense.dense_gradients == dense.wide_tables + dense.deep_tables


def test_a_hundred_million_hashed_ids_are_planned_and_refused_before_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_plots(monkeypatch)
    base: dict[str, Any] = config_dict(*write_tables(tmp_path / "data"))
    city = next(f for f in base["schema"]["features"] if f["name"] == "city")
    city.update(num_buckets=100_000_000, embedding_dim=16)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 10**9)
    with pytest.raises(ConfigError) as refused:
        train(run_config(base), tmp_path / "run")
    message = str(refused.value)
    # 10^8 x (1 wide + 16 deep) floats = 6.8 GB of weights; FTRL keeps 2 copies of the
    # 0.4 GB wide vector, AdaGrad 1 of the 6.4 GB deep table: 7.2 GB of state
    assert "model memory: 14.00 GB (tables 6.80 GB, optimizer state 7.20 GB)" in message
    assert "cpu has 8.00 GB available" in message
    assert "'city' 6.80 GB" in message
    assert not (tmp_path / "run" / "bundle").exists()


def test_a_plan_that_fits_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_plots(monkeypatch)
    base: dict[str, Any] = config_dict(*write_tables(tmp_path / "data"))
    base["train"]["epochs"] = 1
    result = train(run_config(base), tmp_path / "run")
    assert result.bundle_dir.exists()
