"""FTRL-Proximal against a plain per-coordinate reference, dense and sparse."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from widedeep.optim import FTRL

LR, BETA, L1, L2 = 0.5, 1.0, 0.5, 0.1


class ReferenceFTRL:
    """FTRL-Proximal written as in the paper: a Python loop over coordinates, float64."""

    def __init__(self, size: int, lr: float, beta: float, l1: float, l2: float) -> None:
        self.lr, self.beta, self.l1, self.l2 = lr, beta, l1, l2
        self.w = [0.0] * size
        self.z = [0.0] * size
        self.n = [0.0] * size

    def step(self, grad: np.ndarray) -> None:
        for i, g in enumerate(grad.tolist()):
            sigma = (math.sqrt(self.n[i] + g * g) - math.sqrt(self.n[i])) / self.lr
            self.z[i] += g - sigma * self.w[i]
            self.n[i] += g * g
            z = self.z[i]
            if abs(z) <= self.l1:
                self.w[i] = 0.0
            else:
                sign = 1.0 if z > 0 else -1.0
                rate = (self.beta + math.sqrt(self.n[i])) / self.lr + self.l2
                self.w[i] = -(z - sign * self.l1) / rate

    def weights(self) -> np.ndarray:
        return np.array(self.w)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logistic_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """200 rows, 12 features; only the first 4 features carry signal."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(200, 12))
    true_w = np.zeros(12)
    true_w[:4] = [2.0, -1.5, 1.0, -0.5]
    labels = (rng.random(200) < _sigmoid(features @ true_w)).astype(np.float64)
    return features, labels


def _wide_ids(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """5 batches of (8 rows, 6 ids); ids in [0, 20) of a 30-row table, so many duplicates."""
    rng = np.random.default_rng(seed)
    wide_ids = rng.integers(0, 20, size=(5, 8, 6))
    wide_ids[:, :, 0] = 3  # id 3 repeats in every row
    labels = rng.integers(0, 2, size=(5, 8)).astype(np.float64)
    return wide_ids, labels


def test_dense_logistic_regression_matches_reference() -> None:
    features, labels = _logistic_data()
    weight = nn.Parameter(torch.zeros(12, dtype=torch.float64))
    opt = FTRL([weight], lr=LR, beta=BETA, l1=L1, l2=L2)
    ref = ReferenceFTRL(12, LR, BETA, L1, L2)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for step in range(10):
        rows = slice(50 * (step % 4), 50 * (step % 4 + 1))
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(x[rows] @ weight, y[rows]).backward()
        opt.step()
        probs = _sigmoid(features[rows] @ ref.weights())
        ref.step(features[rows].T @ (probs - labels[rows]) / 50)
        np.testing.assert_allclose(weight.detach().numpy(), ref.weights(), rtol=0, atol=1e-6)
    got = weight.detach().numpy()
    np.testing.assert_array_equal(got == 0, ref.weights() == 0)
    assert 0 < (got == 0).sum() < 12, got  # L1 zeroes some weights, not all


def test_sparse_embedding_with_duplicate_ids_matches_dense_reference() -> None:
    wide_ids, labels = _wide_ids()
    table = nn.Embedding(30, 1, sparse=True, dtype=torch.float64)
    nn.init.zeros_(table.weight)
    opt = FTRL(table.parameters(), lr=LR, beta=BETA, l1=0.05, l2=L2)
    ref = ReferenceFTRL(30, LR, BETA, 0.05, L2)
    for ids, y in zip(wide_ids, labels, strict=True):
        opt.zero_grad()
        logits = table(torch.from_numpy(ids)).sum(dim=(1, 2))  # (B,)
        F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)).backward()
        assert table.weight.grad is not None and table.weight.grad.is_sparse
        opt.step()
        ref_w = ref.weights()
        grad = np.zeros(30)
        np.add.at(grad, ids, ((_sigmoid(ref_w[ids].sum(axis=1)) - y) / len(y))[:, None])
        ref.step(grad)
        got = table.weight.detach().numpy()[:, 0]
        np.testing.assert_allclose(got, ref.weights(), rtol=0, atol=1e-6)
    got = table.weight.detach().numpy()[:, 0]
    assert (got[:20] != 0).any() and (got[:20] == 0).any(), got
    state = opt.state[table.weight]
    for untouched in (table.weight[20:], state["z"][20:], state["n"][20:]):
        assert torch.equal(untouched, torch.zeros_like(untouched))


def test_sparse_step_leaves_untouched_rows_bit_identical() -> None:
    table = nn.Embedding(6, 2, sparse=True, dtype=torch.float64)
    before = table.weight.detach().clone()  # random, nonzero: shows rows are not rewritten
    opt = FTRL(table.parameters(), lr=LR, beta=BETA, l1=L1, l2=L2)
    table(torch.tensor([1, 3, 1])).sum().backward()
    opt.step()
    state = opt.state[table.weight]
    untouched = [0, 2, 4, 5]
    assert torch.equal(table.weight[untouched], before[untouched])
    assert torch.equal(state["z"][untouched], torch.zeros(4, 2, dtype=torch.float64))
    assert torch.equal(state["n"][untouched], torch.zeros(4, 2, dtype=torch.float64))
    # Row 1 was looked up twice: its gradient is 2, summed, not 1 twice.
    assert torch.equal(state["n"][1], torch.full((2,), 4.0, dtype=torch.float64))


def test_sparse_and_dense_gradients_give_the_same_multi_column_table() -> None:
    wide_ids, labels = _wide_ids(seed=1)
    tables = [nn.Embedding(30, 3, sparse=sparse, dtype=torch.float64) for sparse in (True, False)]
    for table in tables:
        nn.init.zeros_(table.weight)
    opts = [FTRL(table.parameters(), lr=LR, beta=BETA, l1=0.05, l2=L2) for table in tables]
    for ids, y in zip(wide_ids, labels, strict=True):
        for table, opt in zip(tables, opts, strict=True):
            opt.zero_grad()
            logits = table(torch.from_numpy(ids)).sum(dim=(1, 2))
            F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)).backward()
            opt.step()
        torch.testing.assert_close(tables[0].weight, tables[1].weight, rtol=0, atol=1e-12)


def test_large_l1_keeps_every_weight_exactly_zero() -> None:
    features, labels = _logistic_data()
    weight = nn.Parameter(torch.zeros(12, dtype=torch.float64))
    opt = FTRL([weight], lr=LR, l1=1e3)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(5):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(x @ weight, y).backward()
        opt.step()
    assert torch.equal(weight, torch.zeros_like(weight))
    assert (opt.state[weight]["z"] != 0).all()  # it learned something, L1 hid it


def test_state_dict_round_trip_continues_identically() -> None:
    features, labels = _logistic_data(seed=2)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)

    def train(weight: nn.Parameter, opt: FTRL, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(x @ weight, y).backward()
            opt.step()

    weight = nn.Parameter(torch.zeros(12, dtype=torch.float64))
    opt = FTRL([weight], lr=LR, beta=BETA, l1=L1, l2=L2)
    train(weight, opt, 3)
    buffer = io.BytesIO()
    torch.save({"weight": weight.detach(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    resumed = nn.Parameter(saved["weight"].clone())
    resumed_opt = FTRL([resumed], lr=1.0)  # hyperparameters come back from the state dict
    resumed_opt.load_state_dict(saved["opt"])
    assert resumed_opt.param_groups[0]["lr"] == LR
    train(weight, opt, 3)
    train(resumed, resumed_opt, 3)
    assert torch.equal(resumed, weight)
    for key in ("z", "n"):
        assert torch.equal(resumed_opt.state[resumed][key], opt.state[weight][key])


def test_step_returns_the_closure_loss() -> None:
    weight = nn.Parameter(torch.zeros(3))

    def closure() -> float:
        opt.zero_grad()
        loss = (weight - 1.0).pow(2).sum()
        loss.backward()
        return float(loss.detach())

    opt = FTRL([weight])
    assert opt.step(closure) == 3.0
    assert (weight > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": -0.1}, "lr=-0.1"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"beta": -1.0}, "beta=-1.0"),
        ({"l1": -0.5}, "l1=-0.5"),
        ({"l2": -2.0}, "l2=-2.0"),
    ],
)
def test_constructor_rejects_bad_hyperparameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FTRL([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_dense_and_sparse() -> None:
    wide_ids, labels = _wide_ids(seed=3)
    results = []
    for device in ("cpu", "cuda"):
        table = nn.Embedding(30, 2, sparse=True, dtype=torch.float64, device=device)
        dense = nn.Parameter(torch.zeros(30, dtype=torch.float64, device=device))
        nn.init.zeros_(table.weight)
        opt = FTRL([table.weight, dense], lr=LR, beta=BETA, l1=0.05, l2=L2)
        for ids, y in zip(wide_ids, labels, strict=True):
            opt.zero_grad()
            ids_t = torch.from_numpy(ids).to(device)
            logits = table(ids_t).sum(dim=(1, 2)) + dense[ids_t].sum(dim=1)
            F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y).to(device)).backward()
            opt.step()
        results.append((table.weight.detach().cpu(), dense.detach().cpu()))
    for cpu, cuda in zip(*results, strict=True):
        torch.testing.assert_close(cuda, cpu, rtol=0, atol=1e-10)
