"""The distinct rows of a sparse embedding gradient and their summed gradients, without a sort.

``nn.Embedding(sparse=True)`` yields one gradient row per looked-up id, duplicates included.
``Tensor.coalesce()`` sums them by sorting every index (measured on Criteo shapes: the largest
single cost of a training step). ``RowSums`` finds each id's group in O(ids) instead, with a
scratch vector of one int32 per table row: scatter the positions, keep the id whose position
survived, number the survivors with a cumulative sum, and add the gradient rows into them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from widedeep import kernels


class RowSums:
    """Per-table scratch space for summing sparse gradients by row (one per optimizer)."""

    def __init__(self) -> None:
        self._slots: dict[int, Tensor] = {}
        self._grouper = kernels.RowGrouper()

    def __call__(self, param: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """``(rows, sums)``: each row ``grad`` touches once, and its gradient summed."""
        if grad.sparse_dim() != 1:
            raise ValueError(
                f"expected a row-sparse gradient (sparse_dim 1), got {grad.sparse_dim()}"
            )
        if grad.is_coalesced():
            return grad.indices()[0], grad.values()
        ids, values = grad._indices()[0], grad._values()
        if kernels.usable(param, values):
            return self._grouper(param, ids, values)  # the same, in one fused loop
        slot = self._slots.get(id(param))
        if slot is None or slot.shape[0] != param.shape[0] or slot.device != param.device:
            slot = torch.empty(param.shape[0], dtype=torch.int32, device=param.device)
            self._slots[id(param)] = slot
        positions = torch.arange(ids.numel(), dtype=torch.int32, device=ids.device)
        slot.scatter_(0, ids, positions)  # one position per distinct id survives
        owner = slot.index_select(0, ids)
        survivor = owner == positions
        group = torch.cumsum(survivor, 0) - 1  # survivors numbered 0..distinct-1
        inverse = group.index_select(0, owner.long())
        rows = ids[survivor]
        sums = values.new_zeros((rows.numel(), *values.shape[1:]))
        return rows, sums.index_add_(0, inverse, values)
