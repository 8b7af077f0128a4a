"""Batched, gradient-free scoring of encoded tables: shared by evaluation, bundles and predict."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from widedeep.data.tensors import TensorTable
from widedeep.model.projection import ProjectedFirstLayer
from widedeep.model.widedeep import WideDeep
from widedeep.precision import Precision, mixed_precision, resolve_precision

# Rows scored per batch by default. On the 2-core CPU, scoring the benchmark's 200k test rows
# ran 4-17% faster in batches of 4096 than of 16384 (three processes, 7-11 alternating rounds
# each; not profiled, likely the caches: the MLP's input is 7 MB at 4096 rows, 28 MB at
# 16384, and each core has 2 MB of L2).
SCORE_BATCH_SIZE = 4096
# Batches of at least this many rows score through the projected first layer
# (``widedeep.model.projection``). Checking that it is current costs 0.5-1 ms a call with
# the benchmark's 62 MB of tables, more than it saves on a few hundred rows; a server's
# micro-batches are 512 rows by default.
PROJECTED_MIN_BATCH = 1024


def projected_for(
    model: WideDeep, rows: int, device: str | torch.device, precision: Precision
) -> ProjectedFirstLayer | None:
    """The projected first layer a batch of ``rows`` rows scores through (made now if need
    be), or None where it scores without: off the CPU, in bf16, or under
    ``PROJECTED_MIN_BATCH`` rows."""
    where = torch.device(device)
    if where.type != "cpu" or rows < PROJECTED_MIN_BATCH:
        return None
    if resolve_precision(where, precision) != "fp32":
        return None
    return model.projected_first_layer()


@torch.no_grad()
def predict_parts(
    model: WideDeep,
    table: TensorTable,
    batch_size: int = SCORE_BATCH_SIZE,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The wide and deep contributions to the joint logit, each (N,).

    ``precision``: ``fp32`` (the default), or ``bf16`` to run the deep part's hidden layers
    under bfloat16 autocast as training's ``train.precision: bf16`` does (faster on a CPU
    with AMX or AVX-512 BF16; probabilities within a few 1e-3), or ``auto`` (bf16 on such a
    CPU, else fp32). In fp32 on CPU, a batch of ``PROJECTED_MIN_BATCH`` rows or more
    computes the first layer with its small fields' projected tables (equal up to rounding;
    the choice depends on the batch's rows alone, so the same batches give the same bits).
    """
    where = torch.device(device)
    autocast = mixed_precision(where, precision)  # checks ``precision`` before any work
    was_training = model.training
    model.eval()
    rows = len(table)
    # Each batch's parts go straight into their rows of these: they stay on the device until
    # the end (one copy back, no sync per batch), and no small tensor is kept per batch. Kept
    # in a list, those landed in the holes a batch's freed buffers left on the CPU heap, so
    # the next batch's buffers took fresh memory: scoring 200k rows in a training run grew
    # the heap by 58-88 MB (2 runs).
    wide_out = torch.empty(rows, dtype=torch.float32, device=where)
    deep_out = torch.empty(rows, dtype=torch.float32, device=where)
    try:
        placed = table.place(where)
        model.check_inputs(placed.slice(0, rows))  # once for all rows, not per batch
        # made or checked once a call, where its largest batch takes it
        projected = projected_for(model, min(batch_size, rows), where, precision)
        start = 0
        with autocast:
            for batch in placed.batches(batch_size):
                batch = batch.to(where, non_blocking=True)
                first = projected if len(batch) >= PROJECTED_MIN_BATCH else None
                wide, deep = model.parts(batch, checked=True, projected=first)
                stop = start + len(batch)
                wide_out[start:stop] = wide
                deep_out[start:stop] = deep
                start = stop
    finally:
        model.train(was_training)
    return wide_out.cpu().numpy(), deep_out.cpu().numpy()


def predict(
    model: WideDeep,
    table: TensorTable,
    batch_size: int = SCORE_BATCH_SIZE,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
) -> NDArray[np.float32]:
    """Probabilities (binary) or predictions (regression), (N,); ``precision`` as for
    ``predict_parts``."""
    wide, deep = predict_parts(model, table, batch_size, device, precision)
    logits = torch.from_numpy(wide + deep)
    if model.objective == "binary":
        return torch.sigmoid(logits).numpy()
    return logits.numpy()
