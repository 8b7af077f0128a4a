"""Row-sparse LazyAdam / LazyAdagrad: torch's updates on touched rows, nothing elsewhere."""

from __future__ import annotations

import pytest
import torch

from widedeep.errors import ConfigError
from widedeep.optim import LazyAdagrad, LazyAdam

PAIRS = [
    (LazyAdam, lambda params: torch.optim.Adam(params, lr=0.01)),
    (LazyAdagrad, lambda params: torch.optim.Adagrad(params, lr=0.01)),
]


def twin_tables(rows: int = 6, dim: int = 3) -> tuple[torch.nn.Embedding, torch.nn.Embedding]:
    torch.manual_seed(0)
    sparse = torch.nn.Embedding(rows, dim, sparse=True).double()
    dense = torch.nn.Embedding(rows, dim).double()
    dense.weight.data.copy_(sparse.weight.data)
    return sparse, dense


@pytest.mark.parametrize(("lazy", "reference"), PAIRS)
def test_equals_torch_when_every_row_is_touched(lazy: type, reference: object) -> None:
    sparse, dense = twin_tables()
    ours, theirs = lazy(sparse.parameters(), lr=0.01), reference(dense.parameters())  # type: ignore[operator]
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 5, 0])  # every row, some twice (summed)
    for step in range(6):
        for table, optimizer in ((sparse, ours), (dense, theirs)):
            optimizer.zero_grad()
            (table(ids) ** 2 * (step + 1)).sum().backward()
            optimizer.step()
    torch.testing.assert_close(sparse.weight, dense.weight, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lazy", [LazyAdam, LazyAdagrad])
def test_untouched_rows_keep_weights_and_state(lazy: type) -> None:
    sparse, _ = twin_tables(rows=10)
    optimizer = lazy(sparse.parameters(), lr=0.1)
    before = sparse.weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        sparse(torch.tensor([1, 3, 3])).sum().backward()
        optimizer.step()
    untouched = [0, 2, 4, 5, 6, 7, 8, 9]
    assert torch.equal(sparse.weight[untouched], before[untouched])
    assert not torch.equal(sparse.weight[[1, 3]], before[[1, 3]])
    for tensor in optimizer.state[sparse.weight].values():
        if isinstance(tensor, torch.Tensor):
            assert not tensor[untouched].any()


@pytest.mark.parametrize(("lazy", "reference"), PAIRS)
def test_dense_gradients_get_the_ordinary_update(lazy: type, reference: object) -> None:
    torch.manual_seed(1)
    ours_layer = torch.nn.Linear(4, 2).double()
    theirs_layer = torch.nn.Linear(4, 2).double()
    theirs_layer.load_state_dict(ours_layer.state_dict())
    ours, theirs = lazy(ours_layer.parameters(), lr=0.01), reference(theirs_layer.parameters())  # type: ignore[operator]
    x = torch.randn(8, 4, dtype=torch.float64)
    for _ in range(4):
        for layer, optimizer in ((ours_layer, ours), (theirs_layer, theirs)):
            optimizer.zero_grad()
            layer(x).pow(2).sum().backward()
            optimizer.step()
    for a, b in zip(ours_layer.parameters(), theirs_layer.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lazy", [LazyAdam, LazyAdagrad])
def test_a_bad_learning_rate_is_refused(lazy: type) -> None:
    with pytest.raises(ConfigError, match="lr"):
        lazy([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
