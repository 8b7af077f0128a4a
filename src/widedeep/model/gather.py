"""Many fields' ids looked up in one embedding table, side by side: the input of an MLP
or the terms of a linear model.

On CPU with numba this is one fused loop (``widedeep.kernels.gather_fields_``, and
``sum_fields_`` for a linear model's one-column table) with its own backward pass; elsewhere
(CUDA, an export being traced, no numba) the same result comes from torch ops, which is also
what an exported graph records.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from widedeep import kernels


class _Lookup(torch.autograd.Function):
    """The fused lookup (``summed``: of a one-column table, each batch row's terms summed),
    with the table's gradient as ``nn.Embedding`` gives it: sparse (one row per lookup,
    duplicates not summed) or dense. ``bf16``: the output in bfloat16 (its gradient comes
    back in bfloat16 and is widened to the table's float32)."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: Tensor,
        ids: Tensor,
        columns: Tensor,
        offsets: Tensor,
        dense: Tensor | None,
        sparse: bool,
        summed: bool,
        record: bool,
        bf16: bool,
    ) -> Tensor:
        if summed:
            out, rows = kernels.sum_fields_(weight, ids, columns, offsets, record)
        else:
            out, rows = kernels.gather_fields_(weight, ids, columns, offsets, dense, record, bf16)
        ctx.save_for_backward(rows)
        ctx.table_shape, ctx.table_dtype = weight.shape, weight.dtype
        ctx.sparse, ctx.summed = sparse, summed
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rows,) = ctx.saved_tensors
        unused: tuple[None, ...] = (None,) * 8
        if not ctx.needs_input_grad[0]:
            return (None, *unused)
        width = ctx.table_shape[1]
        if ctx.summed:  # each term's gradient is its row's
            values = grad.unsqueeze(1).expand(rows.shape).reshape(-1, 1).to(ctx.table_dtype)
        else:
            # A bf16 lookup's gradient is widened in the same pass that copies the
            # embeddings' columns out of the (B, F * D + K) input gradient.
            embedded = grad[:, : rows.shape[1] * width]
            values = embedded.to(ctx.table_dtype).reshape(-1, width)
        flat = rows.reshape(-1)
        if ctx.sparse:
            table_grad = torch.sparse_coo_tensor(
                flat.unsqueeze(0), values.contiguous(), ctx.table_shape, check_invariants=False
            )
        else:
            table_grad = values.new_zeros(ctx.table_shape).index_add_(0, flat, values)
        return (table_grad, *unused)


def traced() -> bool:
    """Whether an export or compiler is tracing: the graph must record torch ops."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _fusable(table: nn.Embedding, ids: Tensor) -> bool:
    """Whether the fused loops can look ``ids`` up in ``table``."""
    return (
        not traced()
        and kernels.usable(table.weight)
        # what the loops do not implement: nn.Embedding's norm cap, padding row, scaling
        and table.max_norm is None
        and table.padding_idx is None
        and not table.scale_grad_by_freq
        and ids.device.type == "cpu"
        and ids.dtype in (torch.int64, torch.int32)
        and ids.is_contiguous()
    )


def _records(table: nn.Embedding) -> bool:
    """Whether a lookup must record the rows it reads: only for a backward pass to come
    (``Function.forward`` itself runs with gradients off, so this is asked before)."""
    return torch.is_grad_enabled() and table.weight.requires_grad


def _into_bf16_autocast(table: nn.Embedding, dense: Tensor | None) -> bool:
    """Whether the lookup feeds a CPU bfloat16 autocast region, which would cast a float32
    result to bfloat16 as its first step: the fused loop then writes bfloat16 itself."""
    return (
        torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and table.weight.dtype == torch.float32
        and (dense is None or dense.dtype == torch.float32)
    )


def gather_fields(
    table: nn.Embedding, ids: Tensor, columns: Tensor, offsets: Tensor, dense: Tensor | None = None
) -> Tensor:
    """``table(ids[:, columns] + offsets)`` flattened to (B, F * D), with ``dense`` (B, K)
    appended as K more columns when given. Inside a CPU bf16 autocast region the fused loop
    returns it in bfloat16, rounded as the region's own cast would round it: in the
    benchmark's bf16 training step (batch 1024, 7.4 ms) the cast and its gradient's took
    0.27 ms, and steps ran 1.4-4.9% faster without them (paired rounds, 4 processes)."""
    fused = _fusable(table, ids) and (
        dense is None
        # its gradient is not computed: a dense input that needs one takes torch's ops
        or (
            dense.device.type == "cpu"
            and dense.dtype in (torch.float32, torch.float64)
            and dense.is_contiguous()
            and not dense.requires_grad
        )
    )
    if fused:
        bf16 = _into_bf16_autocast(table, dense)
        return _Lookup.apply(
            table.weight, ids, columns, offsets, dense, table.sparse, False, _records(table), bf16
        )
    rows = ids.index_select(1, columns) + offsets
    vectors = table(rows).flatten(1)
    return vectors if dense is None else torch.cat([vectors, dense.to(vectors.dtype)], dim=1)


def sum_fields(table: nn.Embedding, ids: Tensor, columns: Tensor, offsets: Tensor) -> Tensor:
    """``gather_fields(table, ids, columns, offsets).sum(dim=1)`` for a one-column table (B,):
    fused, the terms are summed as they are read, with no (B, F) matrix between. The sums
    may differ from torch's in the last bit (torch sums in another order)."""
    if _fusable(table, ids) and table.embedding_dim == 1:
        record = _records(table)
        return _Lookup.apply(
            table.weight, ids, columns, offsets, None, table.sparse, True, record, False
        )
    return gather_fields(table, ids, columns, offsets).sum(dim=1)
