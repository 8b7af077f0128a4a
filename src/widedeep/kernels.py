"""Fused CPU loops (numba) for the embedding work of a step: lookups and row-sparse updates.

**Lookups.** Many fields' ids are looked up in one table (their ids offset into one index
space). ``gather_fields_`` reads each id, adds its field's offset and copies the table row
into the MLP's input in one pass, dense columns included, where torch ops take four (select
the columns, add the offsets, gather, concatenate).

**Updates.** A sparse step written with torch ops makes a dozen passes over the batch's
rows: find the distinct ids, sum their gradients, gather each state tensor's rows, update
them in several element-wise ops, write every tensor back. On CPU each pass is memory-bound
and they added up to a third of a training step. Here it is two passes: one sums the
gradient rows by id (with a scratch vector of one int32 per table row, no sort), one updates
the weights and state of each distinct row in place.

They run where numba is installed and the tensors are contiguous float32/float64 CPU
tensors; anywhere else (CUDA, other dtypes, an export being traced, no numba) the lookups
and the optimizers use torch ops. numba compiles each loop on first use and caches the
machine code where it can write (beside this file, else a user cache folder); without a
writable place it compiles in memory once per process.
"""

from __future__ import annotations

import math
import threading
import types as types_module
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from widedeep.jit import AVAILABLE, compiled

if AVAILABLE:
    from widedeep.jit import prefetch as _prefetch

try:
    from numba import get_num_threads, njit, prange, set_num_threads
except ImportError:  # pragma: no cover - without numba the optimizers use torch ops
    njit = None  # type: ignore[assignment]

_MAX_THREADS = 1
if njit is not None:
    from numba import config as _numba_config

    _MAX_THREADS = _numba_config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]

# Tests switch this off to exercise the torch ops the optimizers fall back to.
ENABLED = njit is not None


def usable(*tensors: Tensor) -> bool:
    """Whether the fused loops can update these tensors in place."""
    return ENABLED and all(
        t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and t.layout == torch.strided
        and t.is_contiguous()
        for t in tensors
    )


def _rows_view(tensor: Tensor) -> np.ndarray:
    """A (rows, width) numpy view of a contiguous CPU tensor (shares its memory)."""
    return tensor.detach().numpy().reshape(tensor.shape[0], -1)


# How many rows ahead a loop asks the memory for the rows it will update: the tables are far
# larger than the caches, each row is a miss, and waiting for them one at a time was most of
# an update (measured: 2.6 -> 1.6 ms for 8.7k random rows of three 2.7M x 16 tables).
AHEAD = 8

GATHER_AHEAD = 2  # batch rows ahead that a lookup prefetches (each row: one table row per field)


def _scalar_type(tensor: Tensor) -> type[np.floating[Any]]:
    """numpy's scalar type for a tensor's dtype: hyperparameters passed as such keep a
    float32 loop in float32 (a Python float would promote it to float64, 2x slower)."""
    return np.float32 if tensor.dtype == torch.float32 else np.float64


# numba's fallback thread pool ("workqueue") must not be entered from two threads at once.
_POOL = threading.Lock()


class _Threaded:
    """An update loop compiled twice: split over threads with ``prange`` (an update waits on
    memory, and two threads keep twice the misses in flight: measured in a training step on
    2 cores, 0.56 -> 0.19 ms for the benchmark's deep table), and on the calling thread
    alone, for processes that run torch on one thread (as each rank under torchrun does by
    default), which then never start numba's thread pool."""

    def __init__(self, function: Any) -> None:
        # A renamed copy: numba names its on-disk cache after the function, and the two
        # compilations must not read each other's machine code.
        alone = types_module.FunctionType(function.__code__, function.__globals__)
        alone.__qualname__ = f"{function.__qualname__}_one_thread"
        self.one_thread = compiled(alone)
        self.threaded = (
            njit(nogil=True, cache=True, parallel=True)(function) if njit is not None else function
        )

    def __call__(self, *args: Any) -> Any:
        """Run on as many threads as torch uses (``train.threads``)."""
        threads = max(1, min(torch.get_num_threads(), _MAX_THREADS))
        if threads == 1:
            return self.one_thread(*args)
        with _POOL:
            before = get_num_threads()
            set_num_threads(threads)
            try:
                return self.threaded(*args)
            finally:
                set_num_threads(before)


@compiled
def _sum_rows(ids, values, slot, rows, sums):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Distinct ``ids`` into ``rows`` and their summed ``values`` into ``sums``; returns
    how many, or -1 if an id is outside the table. ``slot`` is -1 everywhere on entry and
    on exit (it numbers the ids seen so far)."""
    count = 0
    width = values.shape[1]
    total = ids.shape[0]
    for i in range(total):
        if i + 2 * AHEAD < total:
            ahead = ids[i + 2 * AHEAD]
            if 0 <= ahead < slot.shape[0]:
                _prefetch(slot, ahead)
        row = ids[i]
        if row < 0 or row >= slot.shape[0]:
            count = -1
            break
        k = slot[row]
        if k < 0:
            k = count
            slot[row] = k
            rows[k] = row
            count += 1
            for d in range(width):
                sums[k, d] = values[i, d]
        else:
            for d in range(width):
                sums[k, d] += values[i, d]
    seen = count if count >= 0 else 0
    if count < 0:  # restore every id numbered before the bad one
        for j in range(ids.shape[0]):
            row = ids[j]
            if 0 <= row < slot.shape[0]:
                slot[row] = -1
    for k in range(seen):
        slot[rows[k]] = -1
    return count


@compiled
def _fetch_ahead(rows, k, first, second, third):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Prefetch the row that the update of ``rows[k]`` will be followed by, AHEAD later,
    in the weights and the optimizer's state tensors."""
    if k + AHEAD < rows.shape[0]:
        ahead = rows[k + AHEAD]
        _prefetch(first, ahead)
        _prefetch(second, ahead)
        _prefetch(third, ahead)


@_Threaded
def _adam_rows(  # type: ignore[no-untyped-def]  # pragma: no cover
    param,
    exp_avg,
    exp_avg_sq,
    rows,
    sums,
    size,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    root_bc2,
    eps,
):
    """torch.optim.Adam's update on the listed rows only (lazy Adam)."""
    count = rows.shape[0]
    for k in prange(count):
        _fetch_ahead(rows, k, param, exp_avg, exp_avg_sq)
        row = rows[k]
        weights, m, v, grad = param[row], exp_avg[row], exp_avg_sq[row], sums[k]
        for d in range(grad.shape[0]):
            g = grad[d]
            m[d] = m[d] * beta1 + one_minus_beta1 * g
            v[d] = v[d] * beta2 + one_minus_beta2 * g * g
            weights[d] -= size * (m[d] / (math.sqrt(v[d]) / root_bc2 + eps))


@_Threaded
def _adagrad_rows(param, total, rows, sums, lr, eps):  # type: ignore[no-untyped-def]  # pragma: no cover
    """torch.optim.Adagrad's update on the listed rows only."""
    count = rows.shape[0]
    for k in prange(count):
        _fetch_ahead(rows, k, param, total, total)
        row = rows[k]
        weights, squares, grad = param[row], total[row], sums[k]
        for d in range(grad.shape[0]):
            g = grad[d]
            squares[d] += g * g
            weights[d] -= lr * (g / (math.sqrt(squares[d]) + eps))


@_Threaded
def _ftrl_rows(param, z, n, rows, sums, lr, beta, l1, l2):  # type: ignore[no-untyped-def]  # pragma: no cover
    """FTRL-Proximal's update (see ``widedeep.optim.ftrl``) on the listed rows only."""
    zero = l1 - l1
    count = rows.shape[0]
    for k in prange(count):
        _fetch_ahead(rows, k, param, z, n)
        row = rows[k]
        weights, zs, ns, grad = param[row], z[row], n[row], sums[k]
        for d in range(grad.shape[0]):
            g = grad[d]
            old_n = ns[d]
            new_n = old_n + g * g
            root = math.sqrt(new_n)
            new_z = zs[d] + g - (root - math.sqrt(old_n)) / lr * weights[d]
            zs[d] = new_z
            ns[d] = new_n
            if abs(new_z) <= l1:
                weights[d] = zero
            else:
                shrunk = new_z - l1 if new_z > 0 else new_z + l1
                weights[d] = -shrunk / ((beta + root) / lr + l2)


def _prefetch_fields(table, ids, b, columns, offsets):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Ask the memory for the table rows that batch row ``b``'s fields will read."""
    for f in range(columns.shape[0]):
        ahead = ids[b, columns[f]] + offsets[f]
        if 0 <= ahead < table.shape[0]:
            _prefetch(table, ahead)


def _gather_fields(table, ids, columns, offsets, dense, out, rows, record):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``out[b, f*D:(f+1)*D] = table[ids[b, columns[f]] + offsets[f]]``, and with ``record``
    the rows looked up into ``rows[b, f]`` (for the backward pass); ``dense[b]`` into the
    columns after the fields. Returns the first batch row with an id outside the table, or -1."""
    batch, fields = ids.shape[0], columns.shape[0]
    width = table.shape[1]
    tail = fields * width
    for b in range(batch):
        if b + GATHER_AHEAD < batch:
            _prefetch_fields(table, ids, b + GATHER_AHEAD, columns, offsets)
        for f in range(fields):
            row = ids[b, columns[f]] + offsets[f]
            if row < 0 or row >= table.shape[0]:
                return b
            if record:
                rows[b, f] = row
            source = table[row]
            start = f * width
            for d in range(width):
                out[b, start + d] = source[d]
        for j in range(dense.shape[1]):
            out[b, tail + j] = dense[b, j]
    return -1


def _gather_fields_bf16(table, ids, columns, offsets, dense, out, rows, record):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``_gather_fields`` writing bfloat16: ``table`` and ``dense`` are float32 read as
    uint32, ``out`` is bfloat16 written as uint16. Each value is rounded to nearest even,
    and NaN is 0xFFFF, as torch's vectorized float32 -> bfloat16 conversion (the one a bf16
    autocast region casts with) writes them: ``out`` is bit for bit the cast of the float32
    lookup, without that second pass over the batch."""
    batch, fields = ids.shape[0], columns.shape[0]
    width = table.shape[1]
    tail = fields * width
    for b in range(batch):
        if b + GATHER_AHEAD < batch:
            _prefetch_fields(table, ids, b + GATHER_AHEAD, columns, offsets)
        for f in range(fields):
            row = ids[b, columns[f]] + offsets[f]
            if row < 0 or row >= table.shape[0]:
                return b
            if record:
                rows[b, f] = row
            source = table[row]
            start = f * width
            for d in range(width):
                bits = source[d]
                if (bits & 0x7FFFFFFF) > 0x7F800000:  # NaN
                    out[b, start + d] = 0xFFFF
                else:
                    out[b, start + d] = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        for j in range(dense.shape[1]):
            bits = dense[b, j]
            if (bits & 0x7FFFFFFF) > 0x7F800000:
                out[b, tail + j] = 0xFFFF
            else:
                out[b, tail + j] = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return -1


def _sum_fields(table, ids, columns, offsets, out, rows, record):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``out[b] += sum_f table[ids[b, columns[f]] + offsets[f], 0]`` (a one-column table: a
    linear model's weights), the rows as ``_gather_fields`` records them. Returns the first
    batch row with an id outside the table, or -1."""
    batch, fields = ids.shape[0], columns.shape[0]
    for b in range(batch):
        if b + GATHER_AHEAD < batch:
            _prefetch_fields(table, ids, b + GATHER_AHEAD, columns, offsets)
        total = out[b]
        for f in range(fields):
            row = ids[b, columns[f]] + offsets[f]
            if row < 0 or row >= table.shape[0]:
                return b
            if record:
                rows[b, f] = row
            total += table[row, 0]
        out[b] = total
    return -1


# One thread: split over two, lookups were slower in place, in training steps and in scoring
# (numba's threads wait for the cores torch's threads hold between its operators). The
# lookup loops repeat their first lines on purpose: that step as a compiled helper, called
# per field, made them 2.5x (gather) and 10x (sum) slower.
_prefetch_fields = compiled(_prefetch_fields)
_gather_fields = compiled(_gather_fields)
_gather_fields_bf16 = compiled(_gather_fields_bf16)
_sum_fields = compiled(_sum_fields)


def _check_lookup(ids: Tensor, columns: Tensor) -> None:
    """The loops read ``ids[b, columns[f]]`` unchecked: the shapes are checked here."""
    if ids.dim() != 2 or (
        columns.shape[0] and not 0 <= int(columns.min()) <= int(columns.max()) < ids.shape[1]
    ):
        raise ValueError(f"ids of shape {tuple(ids.shape)} lack the columns {columns.tolist()}")


def _raise_if_outside(first_bad: int, table: Tensor) -> None:
    """A lookup loop's return value (the first batch row with an id outside ``table``, or
    -1) as the error it stands for."""
    if first_bad >= 0:
        raise IndexError(
            f"batch row {first_bad}: an id outside the embedding table of {table.shape[0]} rows"
        )


def _looked_up_rows(batch: int, fields: int, record: bool) -> Tensor:
    """Where a lookup records the table rows it read: (B, F), or empty when not recorded."""
    return torch.empty((batch, fields) if record else (0, fields), dtype=torch.int64)


def gather_fields_(
    table: Tensor,
    ids: Tensor,
    columns: Tensor,
    offsets: Tensor,
    dense: Tensor | None,
    record: bool = True,
    bf16: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(out, rows)``: each batch row's fields' table rows side by side, then ``dense``
    (B, F*D [+ D_dense]), and the table rows looked up (B, F), or an empty (0, F) without
    ``record`` (scoring, which has no backward pass to feed). ``bf16``: ``out`` in bfloat16
    (from a float32 table and dense columns), as a bf16 autocast region would cast it."""
    batch, fields, width = ids.shape[0], columns.shape[0], table.shape[1]
    extra = 0 if dense is None else dense.shape[1]
    _check_lookup(ids, columns)
    if dense is not None and (dense.dim() != 2 or dense.shape[0] != batch):
        raise ValueError(f"dense inputs of shape {tuple(dense.shape)} for {batch} rows of ids")
    if bf16 and (
        table.dtype != torch.float32 or (dense is not None and dense.dtype != torch.float32)
    ):
        raise ValueError("a bfloat16 lookup reads a float32 table and float32 dense inputs")
    out = torch.empty(
        (batch, fields * width + extra), dtype=torch.bfloat16 if bf16 else table.dtype
    )
    rows = _looked_up_rows(batch, fields, record)
    no_dense = torch.empty((batch, 0), dtype=torch.float32)
    given = no_dense if dense is None else dense
    if bf16:  # the loop reads float32 bits as uint32 and writes bfloat16 bits as uint16
        values = _rows_view(table.view(torch.int32)).view(np.uint32)
        inputs = given.view(torch.int32).numpy().view(np.uint32)
        output = out.view(torch.int16).numpy().view(np.uint16)
    else:
        values, inputs, output = _rows_view(table), given.numpy(), out.numpy()
    arrays = (values, ids.numpy(), columns.numpy(), offsets.numpy(), inputs, output, rows.numpy())
    loop = _gather_fields_bf16 if bf16 else _gather_fields
    _raise_if_outside(loop(*arrays, record), table)
    return out, rows


def sum_fields_(
    table: Tensor, ids: Tensor, columns: Tensor, offsets: Tensor, record: bool = True
) -> tuple[Tensor, Tensor]:
    """``(sums, rows)``: each batch row's fields' entries of a one-column table summed (B,),
    in field order, and the rows looked up as ``gather_fields_`` gives them."""
    if table.dim() != 2 or table.shape[1] != 1:
        raise ValueError(f"a table of shape {tuple(table.shape)} is not one column wide")
    _check_lookup(ids, columns)
    sums = torch.zeros(ids.shape[0], dtype=table.dtype)
    rows = _looked_up_rows(ids.shape[0], columns.shape[0], record)
    arrays = (
        _rows_view(table),
        ids.numpy(),
        columns.numpy(),
        offsets.numpy(),
        sums.numpy(),
        rows.numpy(),
    )
    _raise_if_outside(_sum_fields(*arrays, record), table)
    return sums, rows


@compiled
def _column_ranges(ids, lows, highs):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Each column's smallest and largest value, in one pass over the rows."""
    for j in range(ids.shape[1]):
        lows[j] = ids[0, j]
        highs[j] = ids[0, j]
    for i in range(1, ids.shape[0]):
        for j in range(ids.shape[1]):
            value = ids[i, j]
            lows[j] = min(lows[j], value)
            highs[j] = max(highs[j], value)


def column_ranges(ids: Tensor) -> tuple[list[int], list[int]]:
    """The smallest and the largest id of each column of a (rows >= 1, F) id matrix: one
    pass over its rows here, where torch's column-wise ``amin`` and ``amax`` made two
    strided passes (22 ms against ~3 ms for 200k x 26 ids, checked before every scoring)."""
    if ENABLED and ids.device.type == "cpu" and ids.is_contiguous() and ids.dim() == 2:
        lows = np.empty(ids.shape[1], dtype=np.int64)
        highs = np.empty(ids.shape[1], dtype=np.int64)
        _column_ranges(ids.numpy(), lows, highs)
        return lows.tolist(), highs.tolist()
    low, high = torch.aminmax(ids, dim=0)
    return low.tolist(), high.tolist()


class RowGrouper:
    """Sums a row-sparse gradient by row with ``_sum_rows``; one scratch vector per table."""

    def __init__(self) -> None:
        self._slots: dict[int, np.ndarray] = {}

    def __call__(self, param: Tensor, ids: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """``(rows, sums)`` for the ids (1-D int64) and their gradient rows."""
        slot = self._slots.get(id(param))
        if slot is None or slot.shape[0] != param.shape[0]:
            slot = np.full(param.shape[0], -1, dtype=np.int32)
            self._slots[id(param)] = slot
        flat_ids = ids.contiguous().numpy()
        flat_values = _rows_view(values.contiguous())
        rows = np.empty(flat_ids.shape[0], dtype=np.int64)
        sums = np.empty_like(flat_values)
        count = _sum_rows(flat_ids, flat_values, slot, rows, sums)
        if count < 0:
            raise _outside(param)
        sums_tensor = torch.from_numpy(sums[:count]).view(count, *values.shape[1:])
        return torch.from_numpy(rows[:count]), sums_tensor


def _outside(param: Tensor) -> IndexError:
    return IndexError(f"a sparse gradient names a row outside its table of {param.shape[0]} rows")


def _update_rows(
    kernel: Callable[..., None],
    param: Tensor,
    states: tuple[Tensor, ...],
    rows: Tensor,
    sums: Tensor,
    *hyper: float,
) -> None:
    """Run an update loop on ``rows`` of ``param`` and its optimizer ``states``, in place,
    with the hyperparameters in the table's dtype (so a float32 table is updated in float32
    vector arithmetic). The loops write ``param[rows]`` and ``state[rows]`` unchecked: the
    rows must lie in the table and the states (e.g. from a checkpoint) match it."""
    for state in states:
        if state.shape != param.shape or state.dtype != param.dtype:
            raise ValueError(
                f"optimizer state of shape {tuple(state.shape)} ({state.dtype}) for a "
                f"parameter of shape {tuple(param.shape)} ({param.dtype})"
            )
    if sums.shape[0] != rows.shape[0] or sums[0].numel() != param[0].numel():
        raise ValueError(f"{rows.shape[0]} rows with gradients of shape {tuple(sums.shape)}")
    if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < param.shape[0]:
        raise _outside(param)
    cast = _scalar_type(param)
    tables = [_rows_view(t) for t in (param, *states)]
    kernel(*tables, rows.numpy(), _rows_view(sums), *(cast(x) for x in hyper))


def adam_rows_(
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    rows: Tensor,
    sums: Tensor,
    size: float,
    betas: tuple[float, float],
    root_bc2: float,
    eps: float,
) -> None:
    """Adam on ``rows`` of ``param`` and its moments, in place (``size`` = lr / bc1)."""
    # (1 - beta) computed in float64, as torch does: 1 - float32(0.999) is 1.3e-5 off
    beta1, beta2 = betas
    hyper = (size, beta1, 1 - beta1, beta2, 1 - beta2, root_bc2, eps)
    _update_rows(_adam_rows, param, (exp_avg, exp_avg_sq), rows, sums, *hyper)


def adagrad_rows_(
    param: Tensor, total: Tensor, rows: Tensor, sums: Tensor, lr: float, eps: float
) -> None:
    """AdaGrad on ``rows`` of ``param`` and its squared-gradient sum, in place."""
    _update_rows(_adagrad_rows, param, (total,), rows, sums, lr, eps)


def ftrl_rows_(
    param: Tensor,
    z: Tensor,
    n: Tensor,
    rows: Tensor,
    sums: Tensor,
    hyper: tuple[float, float, float, float],
) -> None:
    """FTRL-Proximal on ``rows`` of ``param`` and its ``z``/``n`` state, in place;
    ``hyper`` = (lr, beta, l1, l2)."""
    _update_rows(_ftrl_rows, param, (z, n), rows, sums, *hyper)
