"""The fused CPU loops give what the torch ops they replace give: lookups, gradients, updates."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from widedeep import kernels
from widedeep.data.batch import Batch
from widedeep.features.layout import FeatureLayout, SparseField
from widedeep.model.gather import gather_fields, sum_fields
from widedeep.model.widedeep import WideDeep
from widedeep.optim import FTRL, LazyAdagrad, LazyAdam

pytestmark = pytest.mark.skipif(not kernels.ENABLED, reason="numba is not installed")


FUSED = ("gather_fields_", "sum_fields_", "adam_rows_", "adagrad_rows_", "ftrl_rows_")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times each fused entry point ran (so a test of equality cannot pass by
    silently taking the torch ops twice)."""
    counts = dict.fromkeys(FUSED, 0)
    for name in FUSED:
        original = getattr(kernels, name)

        def counted(*args: object, _name: str = name, _original: Any = original) -> object:
            counts[_name] += 1
            return _original(*args)

        monkeypatch.setattr(kernels, name, counted)
    return counts


@pytest.fixture
def torch_ops(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Switch between the fused loops (True) and the torch ops (False)."""

    def use(fused: bool) -> None:
        monkeypatch.setattr(kernels, "ENABLED", fused)

    return use


def fields_and_ids(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (B, 5) of which columns 0, 2, 3 are looked up, each field offset into one table."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 7, (64, 5), generator=generator)  # few distinct ids: duplicates
    return ids, torch.tensor([0, 2, 3]), torch.tensor([0, 7, 14])


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("with_dense", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_lookup_and_its_gradient_equal_torchs(
    torch_ops: Callable[[bool], None],
    calls: dict[str, int],
    sparse: bool,
    with_dense: bool,
    dtype: torch.dtype,
) -> None:
    ids, columns, offsets = fields_and_ids()
    dense = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) if with_dense else None
    results = []
    for fused in (True, False):
        torch_ops(fused)
        torch.manual_seed(0)
        table = torch.nn.Embedding(21, 4, sparse=sparse).to(dtype)
        out = gather_fields(table, ids, columns, offsets, dense)
        weights = torch.linspace(-1, 1, out.shape[1], dtype=dtype)
        (out * weights).pow(2).sum().backward()
        assert table.weight.grad is not None
        assert table.weight.grad.is_sparse == sparse
        results.append((out.detach(), table.weight.grad.to_dense()))
    assert calls["gather_fields_"] == 1  # the first run only
    (fused_out, fused_grad), (torch_out, torch_grad) = results
    assert fused_out.shape == (64, 3 * 4 + (2 if with_dense else 0))
    assert torch.equal(fused_out, torch_out)
    torch.testing.assert_close(fused_grad, torch_grad)


@pytest.mark.parametrize("sparse", [True, False])
def test_under_bf16_autocast_the_fused_lookup_writes_what_the_autocast_cast_would(
    torch_ops: Callable[[bool], None], calls: dict[str, int], sparse: bool
) -> None:
    """The loop writes bfloat16 itself, rounded as autocast casts the float32 lookup (bit
    for bit); a layer after it computes the same, and the table's gradient is the same."""
    ids, columns, offsets = fields_and_ids()
    dense = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    results = []
    for fused in (True, False):
        torch_ops(fused)
        torch.manual_seed(0)
        table, layer = torch.nn.Embedding(21, 4, sparse=sparse), torch.nn.Linear(14, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = gather_fields(table, ids, columns, offsets, dense)
            hidden = layer(out)
        hidden.float().pow(2).sum().backward()
        assert table.weight.grad is not None and table.weight.grad.dtype == torch.float32
        results.append((out.detach(), hidden.detach(), table.weight.grad.to_dense()))
    assert calls["gather_fields_"] == 1
    (fused_out, fused_hidden, fused_grad), (torch_out, torch_hidden, torch_grad) = results
    assert fused_out.dtype == torch.bfloat16 and torch_out.dtype == torch.float32
    cast = torch_out.to(torch.bfloat16)
    assert torch.equal(fused_out.view(torch.int16), cast.view(torch.int16))
    assert torch.equal(fused_hidden.view(torch.int16), torch_hidden.view(torch.int16))
    torch.testing.assert_close(fused_grad, torch_grad)


def test_the_bf16_lookup_rounds_special_values_as_torchs_cast() -> None:
    """Rounding to nearest even, overflow to infinity, NaN and infinities as torch writes them."""
    ids, columns, offsets = fields_and_ids()
    table = torch.randn(21, 4) * torch.logspace(-30, 30, 4)
    table[0] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.3895314e38])
    table[1] = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 2**-130])
    dense = torch.randn(64, 2)
    dense[3, 1] = float("nan")
    ids[:2, 0] = torch.tensor([0, 1])
    exact, _ = kernels.gather_fields_(table, ids, columns, offsets, dense, False)
    rounded, _ = kernels.gather_fields_(table, ids, columns, offsets, dense, False, True)
    assert rounded.dtype == torch.bfloat16
    assert torch.equal(rounded.view(torch.int16), exact.to(torch.bfloat16).view(torch.int16))


def test_fused_lookup_reads_int32_ids(torch_ops: Callable[[bool], None]) -> None:
    ids, columns, offsets = fields_and_ids()
    table = torch.nn.Embedding(21, 3)
    with torch.no_grad():
        fused = gather_fields(table, ids.int(), columns, offsets)
        torch_ops(False)
        reference = gather_fields(table, ids, columns, offsets)
    assert torch.equal(fused, reference)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_lookup_and_sum_and_its_gradient_equal_torchs(
    torch_ops: Callable[[bool], None], calls: dict[str, int], sparse: bool, dtype: torch.dtype
) -> None:
    """A linear model's terms summed as they are read: the sums and the table's gradient."""
    ids, columns, offsets = fields_and_ids()
    results = []
    for fused in (True, False):
        torch_ops(fused)
        torch.manual_seed(0)
        table = torch.nn.Embedding(21, 1, sparse=sparse).to(dtype)
        sums = sum_fields(table, ids, columns, offsets)
        (sums * torch.linspace(-1, 1, 64, dtype=dtype)).pow(2).sum().backward()
        assert table.weight.grad is not None
        assert table.weight.grad.is_sparse == sparse
        results.append((sums.detach(), table.weight.grad.to_dense()))
    assert calls["sum_fields_"] == 1  # the first run only
    (fused_sums, fused_grad), (torch_sums, torch_grad) = results
    assert fused_sums.shape == (64,)
    torch.testing.assert_close(fused_sums, torch_sums)  # summed in another order
    torch.testing.assert_close(fused_grad, torch_grad)


def test_lookups_without_gradients_give_what_lookups_with_them_give(calls: dict[str, int]) -> None:
    """Scoring does not record the rows it reads (no backward pass to feed)."""
    ids, columns, offsets = fields_and_ids()
    dense, table, linear = torch.randn(64, 2), torch.nn.Embedding(21, 3), torch.nn.Embedding(21, 1)
    with torch.no_grad():
        scored = (
            gather_fields(table, ids, columns, offsets, dense),
            sum_fields(linear, ids, columns, offsets),
        )
    trained = (
        gather_fields(table, ids, columns, offsets, dense),
        sum_fields(linear, ids, columns, offsets),
    )
    assert all(t.requires_grad for t in trained) and not any(s.requires_grad for s in scored)
    assert all(torch.equal(s, t) for s, t in zip(scored, trained, strict=True))
    assert (calls["gather_fields_"], calls["sum_fields_"]) == (2, 2)


@pytest.mark.parametrize("grad", [True, False])
def test_an_id_outside_the_table_is_an_index_error_naming_the_batch_row(grad: bool) -> None:
    ids, columns, offsets = fields_and_ids()
    ids[41, 2] = 99
    table, linear = torch.nn.Embedding(21, 3), torch.nn.Embedding(21, 1)
    with torch.set_grad_enabled(grad):
        with pytest.raises(IndexError, match="batch row 41"):
            gather_fields(table, ids, columns, offsets)
        with pytest.raises(IndexError, match="batch row 41"):
            sum_fields(linear, ids, columns, offsets)


def test_ids_or_dense_inputs_of_the_wrong_shape_are_refused_before_the_loop_reads_them() -> None:
    ids, columns, offsets = fields_and_ids()
    table = torch.nn.Embedding(21, 3)
    with pytest.raises(ValueError, match="lack the columns"):
        gather_fields(table, ids[:, :3].contiguous(), columns, offsets)  # no column 3
    with pytest.raises(ValueError, match="for 64 rows"):
        gather_fields(table, ids, columns, offsets, torch.zeros(10, 2))


def test_a_model_trained_with_the_fused_loops_equals_one_trained_with_torch_ops(
    torch_ops: Callable[[bool], None], calls: dict[str, int]
) -> None:
    """Wide and deep lookups, sparse gradients, LazyAdam / FTRL updates: five steps agree."""
    layout = FeatureLayout(
        single=tuple(SparseField(name=f"f{i}", cardinality=9, embedding_dim=4) for i in range(3)),
        dense=("x",),
    )
    generator = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.randint(0, 9, (32, 3), generator=generator),
            torch.randn(32, 1, generator=generator, dtype=torch.float64),
            torch.randint(0, 2, (32,), generator=generator).double(),
        )
        for _ in range(5)
    ]
    states = []
    for fused in (True, False):
        torch_ops(fused)
        torch.manual_seed(0)
        model = WideDeep.from_layout(layout, hidden_units=[8], sparse_gradients=True).double()
        groups = model.parameter_groups()
        optimizers = [
            FTRL(groups["wide_tables"], lr=0.1, l1=0.01),
            LazyAdam(groups["deep_tables"], lr=0.01),
            torch.optim.Adam([*groups["deep_dense"], *groups["wide_dense"]], lr=0.01),
        ]
        for ids, dense, labels in batches:
            logits = model.logits(Batch(ids=ids, dense=dense))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
        states.append(model.state_dict())
        if fused:  # 5 steps: a wide and a deep lookup each, one FTRL and one Adam update
            counts = [calls[name] for name in FUSED if name != "adagrad_rows_"]
            assert counts == [5, 5, 5, 5]
    for name, value in states[0].items():
        torch.testing.assert_close(value, states[1][name], rtol=0, atol=1e-12, msg=name)


def sparse_steps(table_rows: int = 50, steps: int = 4) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    for _ in range(steps):
        yield torch.randint(0, table_rows // 2, (40,), generator=generator) * 2  # repeats


OPTIMIZERS = {
    "adam": lambda p: LazyAdam(p, lr=0.05),
    "adagrad": lambda p: LazyAdagrad(p, lr=0.05),
    "ftrl": lambda p: FTRL(p, lr=0.05, l1=0.02, l2=0.01),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_row_updates_equal_the_torch_ops(
    torch_ops: Callable[[bool], None], calls: dict[str, int], kind: str, dtype: torch.dtype
) -> None:
    make = OPTIMIZERS[kind]
    finals = []
    for fused in (True, False):
        torch_ops(fused)
        torch.manual_seed(0)
        table = torch.nn.Embedding(50, 3, sparse=True).to(dtype)
        optimizer = make(table.parameters())
        for ids in sparse_steps():
            optimizer.zero_grad()
            (table(ids) * torch.arange(3, dtype=dtype)).sum().backward()
            optimizer.step()
        finals.append((table.weight.detach().clone(), optimizer.state[table.weight]))
        assert calls[f"{kind}_rows_"] == 4  # four fused steps, then none with torch's ops
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(finals[0][0], finals[1][0], rtol=0, atol=tolerance)
    for key, value in finals[0][1].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, finals[1][1][key], rtol=0, atol=tolerance)


def test_a_bad_row_leaves_the_scratch_space_clean_for_the_next_step() -> None:
    grouper = kernels.RowGrouper()
    param = torch.zeros(10, 2)
    values = torch.ones(4, 2)
    with pytest.raises(IndexError, match="outside its table of 10 rows"):
        grouper(param, torch.tensor([1, 3, 12, 1]), values)
    rows, sums = grouper(param, torch.tensor([3, 1, 3, 5]), values)
    assert rows.tolist() == [3, 1, 5]
    assert sums.tolist() == [[2.0, 2.0], [1.0, 1.0], [1.0, 1.0]]


def test_dense_inputs_that_need_a_gradient_get_it() -> None:
    """The fused loop does not differentiate its dense columns; torch's ops then do."""
    ids, columns, offsets = fields_and_ids()
    table = torch.nn.Embedding(21, 3)
    dense = torch.randn(64, 2, requires_grad=True)
    gather_fields(table, ids, columns, offsets, dense).sum().backward()
    assert dense.grad is not None
    assert torch.equal(dense.grad, torch.ones(64, 2))


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_rows_outside_the_table_or_mismatched_state_are_refused(kind: str) -> None:
    """The loops write rows unchecked; a coalesced gradient naming row 50 of a 3-row table,
    or state of another shape (a wrong checkpoint), is refused before they run."""
    param = torch.nn.Parameter(torch.zeros(3, 4))
    optimizer = OPTIMIZERS[kind]([param])
    indices, values = torch.tensor([[2, 50]]), torch.ones(2, 4)
    bad = torch.sparse_coo_tensor(indices, values, (3, 4), check_invariants=False)
    for grad in (bad, bad.coalesce()):  # summed by the fused loop, or passed through
        param.grad = grad
        with pytest.raises(IndexError, match="outside its table of 3 rows"):
            optimizer.step()
    assert not param.detach().any()
    param.grad = torch.sparse_coo_tensor(
        torch.tensor([[1]]), torch.ones(1, 4), (3, 4), check_invariants=True
    )
    optimizer.step()  # the state exists now
    for key, value in list(optimizer.state[param].items()):
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            optimizer.state[param][key] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="optimizer state of shape"):
        optimizer.step()


def test_half_precision_dense_inputs_take_torchs_ops(calls: dict[str, int]) -> None:
    ids, columns, offsets = fields_and_ids()
    table = torch.nn.Embedding(21, 3)
    dense = torch.randn(64, 2).bfloat16()
    out = gather_fields(table, ids, columns, offsets, dense)
    assert calls["gather_fields_"] == 0
    assert torch.equal(out[:, -2:], dense.float())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_column_ranges_match_torch_on_every_layout(dtype: torch.dtype) -> None:
    ids = torch.randint(-5, 100, (1000, 7), generator=torch.Generator().manual_seed(0)).to(dtype)
    want = (ids.amin(dim=0).tolist(), ids.amax(dim=0).tolist())
    assert kernels.column_ranges(ids) == want
    assert kernels.column_ranges(ids.t().contiguous().t()) == want  # strided: torch's path
    one = ids[:1].contiguous()
    assert kernels.column_ranges(one) == (one[0].tolist(), one[0].tolist())
