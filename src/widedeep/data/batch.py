"""The batch type: the encoded columns of a slice of rows, as tensors on one device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """ids (B, F) int32 (as the preprocessor gives them) or int64; multi_ids: one (B, L)
    matrix of the same kind per multi-valued field; dense (B, D) float32; labels (B,)
    float32 or None."""

    ids: Tensor
    multi_ids: tuple[Tensor, ...] = ()
    dense: Tensor | None = None
    labels: Tensor | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on ``device``."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            ids=self.ids.to(device, non_blocking=non_blocking),
            multi_ids=tuple(m.to(device, non_blocking=non_blocking) for m in self.multi_ids),
            dense=move(self.dense),
            labels=move(self.labels),
        )

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory, for fast non-blocking copies to a GPU."""
        return Batch(
            ids=self.ids.pin_memory(),
            multi_ids=tuple(m.pin_memory() for m in self.multi_ids),
            dense=None if self.dense is None else self.dense.pin_memory(),
            labels=None if self.labels is None else self.labels.pin_memory(),
        )
