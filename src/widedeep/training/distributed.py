"""Data-parallel training under torchrun: the process group and the gradient exchange.

``torchrun --nproc-per-node N -m widedeep train CONFIG -o RUN`` starts N copies of the same
command; torchrun tells each one who it is through the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). ``process_group`` joins them
(gloo on CPU, NCCL on CUDA with one GPU per process, ``cuda:LOCAL_RANK``); outside torchrun
it does nothing and training runs as one process.

Every rank holds the whole model and the whole encoded table and walks the same seeded
batch order; rank ``r`` of ``N`` trains rows ``[r*B/N, (r+1)*B/N)`` of each global batch of
``B`` rows (``shard_batches``). ``GradientExchange`` then sums the ranks' gradients, so each
rank applies the same optimizer step to the same weights as one process over the global
batch would:

- dense parameters (the MLP, biases): one ``all_reduce`` of all their gradients, flattened
  into one buffer (which also carries the step's loss);
- embedding tables with sparse gradients: only the rows a rank touched travel. Each rank
  sums its gradient by row (``RowSums``), the ranks ``all_gather`` their row counts, then
  their rows and row sums (padded to the longest), and every rank rebuilds one sparse
  gradient from all of them. Traffic is O(ids in the batch), never O(table rows).

Failure: when one rank raises, its exception ends that process (the group is left as it
is: leaving the process closes its connections). torchrun then stops the other workers and
exits non-zero; with gloo a peer blocked in a collective also fails at once on the closed
connection. As a last guard the group has a timeout (``WIDEDEEP_DISTRIBUTED_TIMEOUT``
seconds, default 600): a collective that waits longer raises instead of hanging.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from widedeep.data.batch import Batch
from widedeep.data.stream import share
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError
from widedeep.optim.rows import RowSums

log = logging.getLogger(__name__)

TIMEOUT_VARIABLE = "WIDEDEEP_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0

T = TypeVar("T")


def launched() -> bool:
    """This process is one of several that torchrun started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """A process group of more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside torchrun); read from the environment once the group
    is gone, so the command line knows after training who reports."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    """How many processes train together (1 outside torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """The process that writes the run directory and reports (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process); under NCCL on this process's GPU (named,
    so that torch need not guess it and warn)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA, this process's GPU (``cuda:LOCAL_RANK``); else ``device``.

    Once a process group exists, the GPU its creator made current: ``process_group`` makes
    it ``cuda:LOCAL_RANK``; Ray Train the GPU it assigned, which need not be that one.
    """
    if launched() and device.type == "cuda":
        if dist.is_available() and dist.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def timeout() -> timedelta:
    """How long a collective may wait for the other ranks before it raises."""
    raw = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_VARIABLE}: expected seconds, got {raw!r}") from None
    return timedelta(seconds=seconds)


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the body, then leave it; outside torchrun, or when
    a group is already there (Ray Train starts one), do nothing: that group stays its
    creator's to destroy.

    On an exception the group is not destroyed (that could wait on the peers): the error
    propagates, the process ends, and torchrun stops the others (see the module docstring).
    """
    if not launched() or dist.is_initialized():
        yield
        return
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout())
    log.info("rank %d of %d joined (%s, %s)", rank(), world_size(), backend, device)
    try:
        yield
    except BaseException:
        log.error("rank %d failed; torchrun stops the other ranks", rank())
        raise
    dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where the tensors of a collective must live: NCCL's on this process's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(tensor: Tensor) -> list[Tensor]:
    """``tensor`` from every rank (same shape everywhere), in rank order."""
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor)
    return gathered


def check_same(what: str, text: str) -> None:
    """Fail on every rank, naming the ranks that differ, unless ``text`` is the same on all
    of them (compares an 8-byte SHA-256 prefix: one tiny all_gather)."""
    if not is_distributed():
        return
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)
    mine = torch.tensor([digest], dtype=torch.int64, device=_collective_device())
    values = [int(t.item()) for t in _all_gather(mine)]
    differing = [r for r, value in enumerate(values) if value != values[0]]
    if differing:
        raise ConfigError(
            f"{what} differs between ranks: rank 0 and rank(s) {differing} disagree. Under "
            "torchrun every rank must read the same data and fit the same preprocessor."
        )


def broadcast_model(model: nn.Module) -> None:
    """Rank 0's weights and buffers on every rank (they start equal from the same seed;
    this makes it certain, once, as DDP does)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def gather_to_main(value: T) -> list[T]:
    """Every rank's ``value`` in rank order on rank 0, ``[]`` on the other ranks; ``[value]``
    in one process. Pickled between the ranks (``gather_object``): for small things only."""
    if not is_distributed():
        return [value]
    main = is_main()
    gathered: list[Any] = [None] * world_size() if main else []
    dist.gather_object(value, gathered if main else None, dst=0)
    return gathered


def broadcast_text(text: str | None) -> str:
    """Rank 0's ``text`` on every rank (the others pass None); ``text`` in one process."""
    if not is_distributed():
        assert text is not None
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def agree(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=_collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def shard_batches(
    table: TensorTable, batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    """This rank's slice of each shuffled global batch: rows ``[r*B/N, (r+1)*B/N)`` of a
    batch of ``B`` rows (``B`` is ``batch_size`` except for the last one; a slice may be
    empty when ``B < N``). The order is ``TensorTable.batches(shuffle=True)``'s: the same
    permutation drawn from the same generator."""
    r, n = rank(), world_size()
    order = torch.randperm(len(table), generator=generator).to(table.ids.device)
    for rows in order.split(batch_size):
        low, high = share(rows.numel(), r, n)
        yield table.take(rows[low:high])


class GradientExchange:
    """Replaces every gradient by its sum over the ranks, before the optimizers step.

    ``tables``: the parameters whose gradients are row-sparse (``nn.Embedding(sparse=True)``);
    they are exchanged as touched rows. Every other parameter is dense and all-reduced.
    """

    def __init__(self, model: nn.Module, tables: Sequence[nn.Parameter]) -> None:
        table_ids = {id(t) for t in tables}
        self.tables = list(tables)
        self.dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table_ids]
        self._row_sums = RowSums()

    def __call__(self, loss_sum: Tensor) -> Tensor:
        """Sum the gradients over the ranks; return ``loss_sum`` (this rank's summed loss,
        a scalar) summed over the ranks, in float64."""
        total = self._dense(loss_sum)
        self._sparse()
        return total

    def _dense(self, loss_sum: Tensor) -> Tensor:
        """One all_reduce for every dense gradient and the loss (a missing gradient, from
        an empty slice, counts as zeros)."""
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.dense]
        dtype = grads[0].dtype if grads else torch.float32
        flat = torch.cat([*(g.reshape(-1) for g in grads), loss_sum.reshape(1).to(dtype)])
        dist.all_reduce(flat)
        offset = 0
        for param in self.dense:
            param.grad = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
        return flat[-1].double()

    def _sparse(self) -> None:
        """Each table's gradient rebuilt from the rows every rank touched (three collectives
        for all tables: row counts, rows, row sums)."""
        if not self.tables:
            return
        device = self.tables[0].device
        rows: list[Tensor] = []
        values: list[Tensor] = []
        for table in self.tables:
            grad = table.grad
            if grad is None:  # this rank's slice was empty
                ids = torch.empty(0, dtype=torch.int64, device=device)
                sums = table.new_empty((0, *table.shape[1:]))
            else:
                ids, sums = self._row_sums(table, grad)
            rows.append(ids)
            values.append(sums.reshape(-1))
        widths = [table[0].numel() for table in self.tables]
        counts = torch.tensor([r.numel() for r in rows], dtype=torch.int64, device=device)
        all_counts = [c.tolist() for c in _all_gather(counts)]  # [rank][table]
        row_totals = [sum(c) for c in all_counts]
        value_totals = [sum(k * w for k, w in zip(c, widths, strict=True)) for c in all_counts]
        flat_rows = _padded(torch.cat(rows), max(row_totals))
        flat_values = _padded(torch.cat(values), max(value_totals))
        gathered_rows = _all_gather(flat_rows)
        gathered_values = _all_gather(flat_values)
        per_table_rows: list[list[Tensor]] = [[] for _ in self.tables]
        per_table_values: list[list[Tensor]] = [[] for _ in self.tables]
        for r, (rank_counts, rank_rows, rank_values) in enumerate(
            zip(all_counts, gathered_rows, gathered_values, strict=True)
        ):
            row_parts = rank_rows[: row_totals[r]].split(rank_counts)
            sizes = [k * w for k, w in zip(rank_counts, widths, strict=True)]
            value_parts = rank_values[: value_totals[r]].split(sizes)
            for t, (part_rows, part_values) in enumerate(zip(row_parts, value_parts, strict=True)):
                per_table_rows[t].append(part_rows)
                per_table_values[t].append(part_values)
        for t, table in enumerate(self.tables):
            indices = torch.cat(per_table_rows[t]).unsqueeze(0)
            summed = torch.cat(per_table_values[t]).view(-1, *table.shape[1:])
            # Uncoalesced: a row touched on two ranks appears twice; the optimizers' RowSums
            # adds them up as it does a batch's repeated ids.
            table.grad = torch.sparse_coo_tensor(indices, summed, table.shape)


def _padded(tensor: Tensor, length: int) -> Tensor:
    """``tensor`` (1-D) with zeros appended up to ``length``."""
    if tensor.numel() == length:
        return tensor
    padding = tensor.new_zeros(length - tensor.numel())
    return torch.cat([tensor, padding])
