"""Encoded tables as contiguous tensors, batched by slicing: no per-row Dataset, no workers.

Tabular data is preprocessed once; an epoch then takes a seeded permutation and gathers each
batch with one ``index_select`` per tensor, which is many times faster than a DataLoader over
``__getitem__`` rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from widedeep.data.batch import Batch
from widedeep.features.preprocessor import EncodedTable


@dataclass(frozen=True)
class TensorTable:
    """The columns of an ``EncodedTable`` as CPU tensors that share the numpy memory."""

    ids: Tensor
    multi_ids: tuple[Tensor, ...]
    dense: Tensor
    labels: Tensor | None

    @classmethod
    def from_encoded(cls, encoded: EncodedTable) -> TensorTable:
        """Wrap the arrays without copying them."""
        return cls(
            ids=torch.from_numpy(encoded.ids),
            multi_ids=tuple(torch.from_numpy(m) for m in encoded.multi_ids),
            dense=torch.from_numpy(encoded.dense),
            labels=None if encoded.labels is None else torch.from_numpy(encoded.labels),
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, rows: Tensor) -> Batch:
        """The rows at the int64 positions ``rows``, gathered into one new batch."""
        return Batch(
            ids=self.ids.index_select(0, rows),
            multi_ids=tuple(m.index_select(0, rows) for m in self.multi_ids),
            dense=self.dense.index_select(0, rows),
            labels=None if self.labels is None else self.labels.index_select(0, rows),
        )

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as views (no copy)."""
        return Batch(
            ids=self.ids[start:stop],
            multi_ids=tuple(m[start:stop] for m in self.multi_ids),
            dense=self.dense[start:stop],
            labels=None if self.labels is None else self.labels[start:stop],
        )

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Consecutive batches; with ``shuffle``, in the order of a seeded random permutation."""
        n = len(self)
        if not shuffle:
            for start in range(0, n, batch_size):
                yield self.slice(start, min(start + batch_size, n))
            return
        order = torch.randperm(n, generator=generator)
        for rows in order.split(batch_size):
            yield self.take(rows)
