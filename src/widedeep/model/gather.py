"""Many fields' ids looked up in one embedding table, side by side: the input of an MLP
or the terms of a linear model.

On CPU with numba this is one fused loop (``widedeep.kernels.gather_fields_``) with its own
backward pass; elsewhere (CUDA, an export being traced, no numba) the same result comes
from torch ops, which is also what an exported graph records.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from widedeep import kernels


class _GatherFields(torch.autograd.Function):
    """The fused lookup, with the table's gradient as ``nn.Embedding`` gives it: sparse
    (one row per looked-up id, duplicates not summed) or dense."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: Tensor,
        ids: Tensor,
        columns: Tensor,
        offsets: Tensor,
        dense: Tensor | None,
        sparse: bool,
    ) -> Tensor:
        out, rows = kernels.gather_fields_(weight, ids, columns, offsets, dense)
        ctx.save_for_backward(rows)
        ctx.table_shape = weight.shape
        ctx.sparse = sparse
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rows,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        width = ctx.table_shape[1]
        values = grad[:, : rows.shape[1] * width].reshape(-1, width)
        flat = rows.reshape(-1)
        if ctx.sparse:
            table_grad = torch.sparse_coo_tensor(
                flat.unsqueeze(0), values.contiguous(), ctx.table_shape, check_invariants=False
            )
        else:
            table_grad = values.new_zeros(ctx.table_shape).index_add_(0, flat, values)
        return table_grad, None, None, None, None, None


def _traced() -> bool:
    """Whether an export or compiler is tracing: the graph must record torch ops."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def gather_fields(
    table: nn.Embedding, ids: Tensor, columns: Tensor, offsets: Tensor, dense: Tensor | None = None
) -> Tensor:
    """``table(ids[:, columns] + offsets)`` flattened to (B, F * D), with ``dense`` (B, K)
    appended as K more columns when given."""
    weight = table.weight
    fused = (
        not _traced()
        and kernels.usable(weight)
        # what the loop does not implement: nn.Embedding's norm cap, padding row, scaling
        and table.max_norm is None
        and table.padding_idx is None
        and not table.scale_grad_by_freq
        and ids.device.type == "cpu"
        and ids.dtype in (torch.int64, torch.int32)
        and ids.is_contiguous()
        and (
            dense is None
            # its gradient is not computed: a dense input that needs one takes torch's ops
            or (
                dense.device.type == "cpu"
                and dense.dtype in (torch.float32, torch.float64)
                and dense.is_contiguous()
                and not dense.requires_grad
            )
        )
    )
    if fused:
        return _GatherFields.apply(weight, ids, columns, offsets, dense, table.sparse)
    rows = ids.index_select(1, columns) + offsets
    vectors = table(rows).flatten(1)
    return vectors if dense is None else torch.cat([vectors, dense.to(vectors.dtype)], dim=1)
