"""Scoring's first layer through projected tables: a small field's embeddings multiplied by
its block of the first layer's weight once, so each row's share is one table row.

The deep part's first layer is linear in each field's embedding,
``W x + b = sum_f W_f e_f(id_f) + W_d d + b``. For a field with few ids, ``E_f W_f^T``
(cardinality x H) is small, and scoring then adds one H-wide row per field (an embedding
bag) where it multiplied a D x H block per row. The sum equals the one product up to
float32 rounding (under 1e-6 in the benchmark's probabilities).

Single-valued fields are projected, whether they share one table (the fused case) or have
a table each; multi-valued fields, the other fields and the dense columns go through the
product as before.

On the 2-core CPU, ``predict`` over the benchmark's 200k test rows ran 1.30x, 1.37x and
1.51x faster with 2.7, 26 and 62 MB of projected tables (11, 16 and 18 of its 26 fields),
and 1.62x with 394 MB (25 fields), in one process, 9 alternating rounds each (paired
medians). ``PROJECTED_BYTES`` caps the memory of the tables and of the copies of the
embeddings they are checked against; the smallest fields go first, as they save the same
work per row for the least memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

# The most memory the projected tables of one model, and the copies of the embeddings they
# are checked against, may take together.
PROJECTED_BYTES = 80 * 2**20
# Below this embedding size a projected row (H floats) is not much less work than the
# product it replaces (D x H multiply-adds).
MIN_PROJECTED_DIM = 4


def projected_fields(
    cardinalities: Sequence[int],
    embedding_dims: Sequence[int],
    width: int,
    budget: int | None = None,
) -> list[int]:
    """The fields (indices into ``cardinalities``) whose projected tables (H floats a row)
    and embedding copies (D floats a row) fit ``budget`` bytes together (default
    ``PROJECTED_BYTES``), smallest first, leaving out embeddings narrower than
    ``MIN_PROJECTED_DIM``; ``width``: the first layer's output size H."""
    budget = PROJECTED_BYTES if budget is None else budget
    chosen, used = [], 0
    candidates = [f for f in range(len(cardinalities)) if embedding_dims[f] >= MIN_PROJECTED_DIM]
    for field in sorted(candidates, key=lambda f: (cardinalities[f], f)):
        size = cardinalities[field] * (width + embedding_dims[field]) * 4
        if used + size > budget:
            break
        chosen.append(field)
        used += size
    return sorted(chosen)


@dataclass(frozen=True, eq=False)
class FieldRows:
    """Where a single-valued field's embeddings are: rows ``start:stop`` of ``table``
    (its own table, or its share of a fused one); its ids in column ``column`` of the ids;
    its block of the first layer's input at ``block``."""

    table: Tensor
    start: int
    stop: int
    column: int
    block: slice

    @property
    def rows(self) -> Tensor:
        return self.table[self.start : self.stop]


@dataclass(frozen=True, eq=False)
class ProjectedFirstLayer:
    """The first layer's output (B, H), bias included: the projected fields by an
    embedding bag over ``table``, each other input (the other fields' embeddings, pooled
    multi-valued fields, the dense columns) by a product with its columns of the weight.
    Holds copies of the weights it was made from, to know when it is stale."""

    fields: tuple[int, ...]  # the projected fields, indices into the single-valued fields
    table: Tensor  # (sum of the projected fields' cardinalities, H)
    columns: Tensor  # the projected fields' columns in the ids
    offsets: Tensor  # their first rows in ``table``
    rest_weights_t: tuple[Tensor, ...]  # per other input, (its width, H)
    bias: Tensor | None
    made_from: tuple[Tensor, ...]  # copies of the projected fields' embedding rows
    weight: Tensor  # a copy of the first layer's weight

    def matches(self, fields: Sequence[FieldRows], weight: Tensor, bias: Tensor | None) -> bool:
        """Whether the weights still equal, bit for bit, those it was made from (``fields``:
        where the single-valued fields' embeddings are now). Compared by value: an
        optimizer that writes through numpy views, or a write to ``.data``, does not bump
        torch's version counters. About 0.2 ms for 4 MB of embeddings."""
        if (bias is None) != (self.bias is None):
            return False
        if bias is not None and self.bias is not None and not _same_bits(bias, self.bias):
            return False
        if not _same_bits(weight, self.weight):
            return False
        return all(
            _same_bits(fields[f].rows, rows)
            for f, rows in zip(self.fields, self.made_from, strict=True)
        )

    def __call__(self, ids: Tensor, inputs: Sequence[Tensor]) -> Tensor:
        """(B, H) first-layer outputs of the rows ``ids`` (B, C) and the other ``inputs``,
        each (B, its width), in the order of ``rest_weights_t``."""
        out = functional.embedding_bag(
            ids.index_select(1, self.columns) + self.offsets, self.table, mode="sum"
        )
        if self.bias is not None:
            out.add_(self.bias)
        for values, weight_t in zip(inputs, self.rest_weights_t, strict=True):
            out.addmm_(values, weight_t)
        return out


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two float32 tensors hold the same bits (NaN equals itself; 2.5x faster
    than ``torch.equal`` here)."""
    if a.shape != b.shape:
        return False
    bits = [t.detach().reshape(-1).numpy().view(np.int32) for t in (a, b)]
    return bool(np.array_equal(bits[0], bits[1]))


@torch.no_grad()
def project_first_layer(
    fields: Sequence[FieldRows],
    chosen: Sequence[int],
    weight: Tensor,
    bias: Tensor | None,
    rest_blocks: Sequence[Sequence[slice]],
) -> ProjectedFirstLayer:
    """Project the fields ``chosen`` (indices into ``fields``) through the first layer
    (``weight``: (H, input width)); ``rest_blocks``: for each other input the call will
    get, the blocks of the first layer's input it holds, in order."""
    made_from = tuple(fields[f].rows.clone() for f in chosen)
    starts = [0]
    for rows in made_from:
        starts.append(starts[-1] + rows.shape[0])
    table = weight.new_empty((starts[-1], weight.shape[0]))
    for f, rows, start, stop in zip(chosen, made_from, starts, starts[1:], strict=False):
        torch.mm(rows, weight[:, fields[f].block].t(), out=table[start:stop])
    return ProjectedFirstLayer(
        fields=tuple(chosen),
        table=table,
        columns=torch.tensor([fields[f].column for f in chosen], dtype=torch.long),
        offsets=torch.tensor(starts[:-1], dtype=torch.long),
        rest_weights_t=tuple(
            torch.cat([weight[:, block] for block in blocks], 1).t().contiguous()
            for blocks in rest_blocks
        ),
        bias=None if bias is None else bias.clone(),
        made_from=made_from,
        weight=weight.clone(),
    )
