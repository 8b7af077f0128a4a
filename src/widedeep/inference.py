"""Batched, gradient-free scoring of encoded tables: shared by evaluation, bundles and predict."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from widedeep.data.tensors import TensorTable
from widedeep.model.widedeep import WideDeep


@torch.no_grad()
def predict_parts(
    model: WideDeep, table: TensorTable, batch_size: int = 16384, device: str | torch.device = "cpu"
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The wide and deep contributions to the joint logit, each (N,)."""
    was_training = model.training
    model.eval()
    wide_parts, deep_parts = [], []
    try:
        placed = table.place(device)
        model.check_inputs(placed.slice(0, len(placed)))  # once for all rows, not per batch
        # Parts stay on the device until the end: one copy back, no sync per batch.
        for batch in placed.batches(batch_size):
            wide, deep = model.parts(batch.to(device, non_blocking=True), checked=True)
            wide_parts.append(wide.float())
            deep_parts.append(deep.float())
    finally:
        model.train(was_training)
    if not wide_parts:
        empty = np.zeros(0, dtype=np.float32)
        return empty, empty
    return torch.cat(wide_parts).cpu().numpy(), torch.cat(deep_parts).cpu().numpy()


def predict(
    model: WideDeep, table: TensorTable, batch_size: int = 16384, device: str | torch.device = "cpu"
) -> NDArray[np.float32]:
    """Probabilities (binary) or predictions (regression), (N,)."""
    wide, deep = predict_parts(model, table, batch_size, device)
    logits = torch.from_numpy(wide + deep)
    if model.objective == "binary":
        return torch.sigmoid(logits).numpy()
    return logits.numpy()
