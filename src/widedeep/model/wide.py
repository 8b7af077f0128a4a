"""The wide part: a linear model over sparse ids, written as a sum of 1-dim embeddings.

Every wide field's ids are offset into one index space, so one weight vector holds the whole
linear model (the notebook's ``Linear`` layer); a multi-valued field adds one weight per value.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor, nn

from widedeep.features.layout import SparseField
from widedeep.model.gather import sum_fields


def _offsets(fields: Sequence[SparseField], start: int) -> tuple[list[int], int]:
    offsets = []
    for field in fields:
        offsets.append(start)
        start += field.cardinality
    return offsets, start


class Wide(nn.Module):
    """Sum of one weight per active id, plus an optional bias: a one-hot linear model.

    ``single_columns`` are the positions of the wide fields in the (B, F) id matrix;
    ``multi_positions`` the positions of the wide multi-valued fields among ``multi_ids``.
    """

    def __init__(
        self,
        single: Sequence[SparseField],
        single_columns: Sequence[int],
        multi: Sequence[SparseField] = (),
        multi_positions: Sequence[int] = (),
        bias: bool = True,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        single_offsets, end = _offsets(single, 0)
        multi_offsets, total = _offsets(multi, end)
        self.single_columns: Tensor
        self.single_offsets: Tensor
        self.register_buffer("single_columns", torch.tensor(list(single_columns), dtype=torch.long))
        self.register_buffer("single_offsets", torch.tensor(single_offsets, dtype=torch.long))
        self.multi_positions = list(multi_positions)
        self.multi_offsets = multi_offsets
        self.single_names = [f.name for f in single]
        self.multi_names = [f.name for f in multi]
        self.weight = nn.Embedding(max(total, 1), 1, sparse=sparse)
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(1)) if bias else None

    def partial(self, ids: Tensor, multi_ids: Sequence[Tensor], names: Collection[str]) -> Tensor:
        """The summed weights of the fields in ``names`` only (B,), without the bias."""
        logits = ids.new_zeros(ids.shape[0], dtype=self.weight.weight.dtype)
        chosen = [i for i, name in enumerate(self.single_names) if name in names]
        if chosen:
            columns, offsets = self.single_columns[chosen], self.single_offsets[chosen]
            logits = logits + sum_fields(self.weight, ids, columns, offsets)
        for name, position, offset in zip(
            self.multi_names, self.multi_positions, self.multi_offsets, strict=True
        ):
            if name in names:
                values = multi_ids[position]
                weights = self.weight(values + offset).squeeze(-1) * (values != 0)
                logits = logits + weights.sum(dim=1)
        return logits

    def forward(self, ids: Tensor, multi_ids: Sequence[Tensor] = ()) -> Tensor:
        """(B, F) ids and (B, L) multi-valued ids -> (B,) wide logits."""
        if len(self.single_offsets):
            logits = sum_fields(self.weight, ids, self.single_columns, self.single_offsets)
        else:
            logits = ids.new_zeros(ids.shape[0], dtype=self.weight.weight.dtype)
        for position, offset in zip(self.multi_positions, self.multi_offsets, strict=True):
            values = multi_ids[position]  # (B, L), 0 = padding
            weights = self.weight(values + offset).squeeze(-1) * (values != 0)
            logits = logits + weights.sum(dim=1)
        if self.bias is not None:
            logits = logits + self.bias
        return logits
