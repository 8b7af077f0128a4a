"""The GPU path: the same training on CUDA as on CPU (run where a GPU is present)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_train import config_dict, run_config, skip_plots, write_tables
from widedeep.data.tensors import TensorTable
from widedeep.optim import FTRL, LazyAdam
from widedeep.optim.rows import RowSums
from widedeep.training.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_row_sums_on_the_gpu_equal_the_dense_gradient() -> None:
    emb = torch.nn.Embedding(5000, 8, sparse=True).cuda()
    ids = torch.randint(0, 300, (1024, 26), device="cuda")
    emb(ids).pow(2).sum().backward()
    assert emb.weight.grad is not None
    rows, sums = RowSums()(emb.weight, emb.weight.grad)
    rebuilt = torch.zeros(5000, 8, device="cuda").index_add_(0, rows, sums)
    torch.testing.assert_close(rebuilt, emb.weight.grad.to_dense())


@pytest.mark.parametrize("kind", [LazyAdam, FTRL])
def test_a_sparse_step_on_the_gpu_matches_the_cpu(kind: type[torch.optim.Optimizer]) -> None:
    ids = torch.randint(0, 40, (256, 4))
    weights = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(100, 4, sparse=True).to(device)
        optimizer = kind(emb.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            emb(ids.to(device)).pow(2).sum().backward()
            optimizer.step()
        weights[device] = emb.weight.detach().cpu()
    torch.testing.assert_close(weights["cuda"], weights["cpu"], rtol=1e-4, atol=1e-5)


def test_a_table_placed_on_the_gpu_batches_there() -> None:
    table = TensorTable(
        ids=torch.arange(20).view(10, 2), multi_ids=(), dense=torch.zeros(10, 1), labels=None
    )
    placed = table.place("cuda")
    assert placed.ids.is_cuda
    generator = torch.Generator().manual_seed(0)
    batch = next(placed.batches(4, shuffle=True, generator=generator))
    assert batch.ids.is_cuda and batch.ids.shape == (4, 2)


def test_training_on_cuda_learns_as_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_plots(monkeypatch)
    base: dict[str, Any] = config_dict(*write_tables(tmp_path / "data"))
    results = {
        device: train(run_config(base, [f"train.device={device}"]), tmp_path / device)
        for device in ("cpu", "cuda")
    }
    cpu, gpu = results["cpu"].test_metrics, results["cuda"].test_metrics
    assert cpu is not None and gpu is not None
    # Same seed and batches; kernels differ (atomics, reductions), so close, not equal.
    assert abs(cpu["auc"] - gpu["auc"]) < 0.01
    assert gpu["auc"] > 0.75


@pytest.mark.parametrize("name", ["adam", "adagrad"])
def test_every_dense_optimizer_steps_on_the_gpu(name: str) -> None:
    from widedeep.config import OptimizerConfig
    from widedeep.training.optimizers import _dense

    layer = torch.nn.Linear(4, 2).cuda()
    optimizer = _dense(OptimizerConfig(name=name, lr=0.1), list(layer.parameters()))
    layer(torch.ones(3, 4, device="cuda")).sum().backward()
    before = layer.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, layer.weight)
