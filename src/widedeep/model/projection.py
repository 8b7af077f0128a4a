"""Scoring's first layer through projected tables: a small field's embeddings multiplied by
its block of the first layer's weight once, so each row's share is one table row.

The deep part's first layer is linear in each field's embedding,
``W x + b = sum_f W_f e_f(id_f) + W_d d + b``. For a field with few ids, ``E_f W_f^T``
(cardinality x H) is small, and scoring then adds one H-wide row per field (an embedding
bag) where it multiplied a D x H block per row. The sum equals the one product up to
float32 rounding (under 1e-6 in the benchmark's probabilities).

On the 2-core CPU, ``predict`` over the benchmark's 200k test rows ran 1.30x, 1.37x and
1.51x faster with 2.7, 26 and 62 MB of projected tables (11, 16 and 18 of its 26 fields),
and 1.62x with 394 MB (25 fields), in one process, 9 alternating rounds each (paired
medians). ``PROJECTED_BYTES`` caps the tables' memory; the smallest fields go first, as
they save the same work per row for the least memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

# The most memory the projected tables of one model may take.
PROJECTED_BYTES = 64 * 2**20
# Below this embedding size a projected row (H floats) is not much less work than the
# product it replaces (D x H multiply-adds).
MIN_PROJECTED_DIM = 4


def projected_fields(
    cardinalities: Sequence[int], embedding_dim: int, width: int, budget: int | None = None
) -> list[int]:
    """The fields (indices into ``cardinalities``) whose projected tables fit ``budget``
    bytes together (default ``PROJECTED_BYTES``), smallest first; ``width``: the first
    layer's output size H."""
    budget = PROJECTED_BYTES if budget is None else budget
    if embedding_dim < MIN_PROJECTED_DIM:
        return []
    chosen, used = [], 0
    for field in sorted(range(len(cardinalities)), key=lambda f: (cardinalities[f], f)):
        size = cardinalities[field] * width * 4
        if used + size > budget:
            break
        chosen.append(field)
        used += size
    return sorted(chosen)


@dataclass(frozen=True, eq=False)
class ProjectedFirstLayer:
    """The first layer's output (B, H), bias included, for the fused table's fields: the
    projected fields by an embedding bag over ``table``, the rest and the dense columns by
    products. Holds copies of the weights it was made from, to know when it is stale."""

    fields: tuple[int, ...]  # the projected fields, indices into the fused table's fields
    table: Tensor  # (sum of the projected fields' cardinalities, H)
    columns: Tensor  # the projected fields' columns in the ids
    offsets: Tensor  # their first rows in ``table``
    rest_columns: Tensor  # the other fields' columns in the ids
    rest_offsets: Tensor  # their first rows in the embedding table
    rest_weight_t: Tensor  # (their D * count, H)
    dense_weight_t: Tensor  # (K, H)
    bias: Tensor | None
    made_from: tuple[tuple[Tensor, int, int], ...]  # (copy of embedding rows, start, stop)
    weight: Tensor  # a copy of the first layer's weight

    def matches(self, embeddings: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
        """Whether the weights still equal, bit for bit, those it was made from. Compared
        by value: an optimizer that writes through numpy views, or a write to ``.data``,
        does not bump torch's version counters. About 0.2 ms for 4 MB of embeddings."""
        if (bias is None) != (self.bias is None):
            return False
        if bias is not None and self.bias is not None and not _same_bits(bias, self.bias):
            return False
        if not _same_bits(weight, self.weight):
            return False
        return all(_same_bits(embeddings[a:b], rows) for rows, a, b in self.made_from)

    def __call__(self, embeddings: Tensor, ids: Tensor, dense: Tensor | None) -> Tensor:
        """(B, H) first-layer outputs of the rows ``ids`` (B, C) and ``dense`` (B, K)."""
        out = functional.embedding_bag(
            ids.index_select(1, self.columns) + self.offsets, self.table, mode="sum"
        )
        if self.bias is not None:
            out.add_(self.bias)
        if dense is not None:
            out.addmm_(dense, self.dense_weight_t)
        if len(self.rest_columns):
            rows = (ids.index_select(1, self.rest_columns) + self.rest_offsets).view(-1)
            embedded = embeddings.index_select(0, rows).view(ids.shape[0], -1)
            out.addmm_(embedded, self.rest_weight_t)
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
    embeddings: Tensor,
    columns: Sequence[int],
    offsets: Sequence[int],
    weight: Tensor,
    bias: Tensor | None,
    fields: Sequence[int],
) -> ProjectedFirstLayer:
    """Project ``fields`` of a fused table ``embeddings`` (rows, D), whose field i sits at
    ids column ``columns[i]`` and table row ``offsets[i]``, through the first layer
    (``weight``: (H, F * D + K), field i's block at columns i*D to (i+1)*D)."""
    dim, count = embeddings.shape[1], len(columns)
    stops = [*offsets[1:], embeddings.shape[0]]
    rest = [f for f in range(count) if f not in set(fields)]

    def block(f: int) -> Tensor:
        return weight[:, f * dim : (f + 1) * dim]

    made_from = tuple(
        (embeddings[offsets[f] : stops[f]].clone(), offsets[f], stops[f]) for f in fields
    )
    starts = [0]
    for rows, _, _ in made_from:
        starts.append(starts[-1] + rows.shape[0])
    table = weight.new_empty((starts[-1], weight.shape[0]))
    for f, (rows, _, _), start, stop in zip(fields, made_from, starts, starts[1:], strict=False):
        torch.mm(rows, block(f).t(), out=table[start:stop])

    def longs(values: Sequence[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long)

    empty = weight.new_zeros((0, weight.shape[0]))
    return ProjectedFirstLayer(
        fields=tuple(fields),
        table=table,
        columns=longs([columns[f] for f in fields]),
        offsets=longs(starts[:-1]),
        rest_columns=longs([columns[f] for f in rest]),
        rest_offsets=longs([offsets[f] for f in rest]),
        rest_weight_t=torch.cat([block(f) for f in rest], 1).t().contiguous() if rest else empty,
        dense_weight_t=weight[:, count * dim :].t().contiguous(),
        bias=None if bias is None else bias.clone(),
        made_from=made_from,
        weight=weight.clone(),
    )
