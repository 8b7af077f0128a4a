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

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's tensors."""
        tensors = [self.ids, *self.multi_ids, self.dense]
        if self.labels is not None:
            tensors.append(self.labels)
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> TensorTable:
        """The same table on ``device`` (one copy per tensor; shuffled batches then never
        leave the device)."""
        return TensorTable(
            ids=self.ids.to(device),
            multi_ids=tuple(m.to(device) for m in self.multi_ids),
            dense=self.dense.to(device),
            labels=None if self.labels is None else self.labels.to(device),
        )

    def pin_memory(self) -> TensorTable:
        """The table in page-locked host memory, so batch copies to a GPU can overlap work."""
        return TensorTable(
            ids=self.ids.pin_memory(),
            multi_ids=tuple(m.pin_memory() for m in self.multi_ids),
            dense=self.dense.pin_memory(),
            labels=None if self.labels is None else self.labels.pin_memory(),
        )

    def place(self, device: torch.device | str) -> TensorTable:
        """The table where batches for ``device`` are best cut from: on a GPU when it fits in
        half of the free memory (batches are then gathered on the device, no copies), else in
        pinned host memory (batch copies overlap the work). On CPU, the table itself."""
        device = torch.device(device)
        if device.type != "cuda" or self.ids.device == device:
            return self
        free, _ = torch.cuda.mem_get_info(device)
        if self.nbytes <= free // 2:
            return self.to(device)
        return self.pin_memory()

    @classmethod
    def empty_like(cls, table: TensorTable, rows: int) -> TensorTable:
        """An uninitialized table of ``rows`` rows with ``table``'s columns and dtypes."""

        def like(t: Tensor) -> Tensor:
            return torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)

        return TensorTable(
            ids=like(table.ids),
            multi_ids=tuple(like(m) for m in table.multi_ids),
            dense=like(table.dense),
            labels=None if table.labels is None else like(table.labels),
        )

    @classmethod
    def concat(cls, tables: list[TensorTable]) -> TensorTable:
        """The tables' rows one after the other."""
        if len(tables) == 1:
            return tables[0]
        labels = [t.labels for t in tables]
        return TensorTable(
            ids=torch.cat([t.ids for t in tables]),
            multi_ids=tuple(
                torch.cat(ms) for ms in zip(*(t.multi_ids for t in tables), strict=True)
            ),
            dense=torch.cat([t.dense for t in tables]),
            labels=None if any(x is None for x in labels) else torch.cat(labels),  # type: ignore[arg-type]
        )

    def rows(self, positions: Tensor) -> TensorTable:
        """The rows at the int64 ``positions``, gathered into a new table."""
        batch = self.take(positions)
        assert batch.dense is not None
        return TensorTable(batch.ids, batch.multi_ids, batch.dense, batch.labels)

    def part(self, start: int, stop: int) -> TensorTable:
        """Rows ``start:stop`` as a table of views."""
        batch = self.slice(start, stop)
        assert batch.dense is not None
        return TensorTable(batch.ids, batch.multi_ids, batch.dense, batch.labels)

    def write(self, positions: Tensor | slice, table: TensorTable) -> None:
        """Overwrite the rows at ``positions`` with ``table``'s rows, in place."""
        self.ids[positions] = table.ids
        for mine, theirs in zip(self.multi_ids, table.multi_ids, strict=True):
            mine[positions] = theirs
        self.dense[positions] = table.dense
        if self.labels is not None and table.labels is not None:
            self.labels[positions] = table.labels

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
        # The permutation comes from the (CPU) generator, so a seed gives the same order on
        # every device; the positions then move once to where the table lives.
        order = torch.randperm(n, generator=generator).to(self.ids.device)
        for rows in order.split(batch_size):
            yield self.take(rows)
