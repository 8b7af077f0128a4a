"""Summing row-sparse gradients without a sort gives what the dense gradient says."""

from __future__ import annotations

import pytest
import torch

from widedeep.optim.rows import RowSums


def sparse_grad(table_rows: int, ids: torch.Tensor, dim: int = 4) -> torch.Tensor:
    """The sparse gradient of sum(emb(ids)^2) for a fresh seeded embedding."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(table_rows, dim, sparse=True)
    emb(ids).pow(2).sum().backward()
    assert emb.weight.grad is not None
    return emb.weight.grad


@pytest.mark.parametrize("distinct", [1, 7, 400])
def test_row_sums_equal_the_dense_gradient(distinct: int) -> None:
    ids = torch.randint(0, distinct, (256, 5), generator=torch.Generator().manual_seed(2)) * 3
    grad = sparse_grad(1300, ids)
    table = torch.zeros(1300, 4)
    sums = RowSums()
    for _ in range(2):  # the scratch space is reused between steps
        rows, summed = sums(table, grad)
        assert rows.unique().numel() == rows.numel() == ids.unique().numel()
        rebuilt = torch.zeros(1300, 4).index_add_(0, rows, summed)
        torch.testing.assert_close(rebuilt, grad.to_dense())


def test_coalesced_gradients_pass_through() -> None:
    grad = sparse_grad(50, torch.tensor([[3, 3, 9]])).coalesce()
    rows, summed = RowSums()(torch.zeros(50, 4), grad)
    assert rows.tolist() == [3, 9]
    torch.testing.assert_close(summed, grad.values())


def test_only_row_sparse_gradients_are_accepted() -> None:
    grad = torch.sparse_coo_tensor(
        torch.tensor([[0, 1], [1, 0]]), torch.ones(2), (2, 2), check_invariants=False
    )
    with pytest.raises(ValueError, match="sparse_dim 1"):
        RowSums()(torch.zeros(2, 2), grad)
