"""What a model's tables and optimizer state will take in memory, known before they exist.

Hashed ids make tables as large as a config says (10^8 buckets x 16 dims is 6.4 GB of
weights, and Adam keeps two more copies): ``plan_memory`` adds it up from the fitted layout,
and ``check_memory`` refuses a plan the device cannot hold, before anything is allocated,
instead of letting the process die in the middle of building the model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from widedeep.config import RunConfig
from widedeep.errors import ConfigError
from widedeep.features.layout import FeatureLayout

FLOAT_BYTES = 4
# float32 copies an optimizer keeps per weight: Adam's two moments, AdaGrad's sum, FTRL's z, n
STATE_PER_WEIGHT = {"adam": 2, "adagrad": 1, "ftrl": 2, "sgd": 0}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of the embedding tables, their optimizer state and (when dense) gradients."""

    wide_tables: int
    deep_tables: int
    optimizer_state: int
    dense_gradients: int
    largest: tuple[tuple[str, int], ...]  # the biggest fields and their bytes of weights

    @property
    def total(self) -> int:
        return self.wide_tables + self.deep_tables + self.optimizer_state + self.dense_gradients

    def describe(self) -> str:
        """One line: the total and its parts, in GB."""
        parts = [
            f"tables {(self.wide_tables + self.deep_tables) / 1e9:.2f} GB",
            f"optimizer state {self.optimizer_state / 1e9:.2f} GB",
        ]
        if self.dense_gradients:
            parts.append(f"dense table gradients {self.dense_gradients / 1e9:.2f} GB")
        return f"model memory: {self.total / 1e9:.2f} GB ({', '.join(parts)})"


def plan_memory(config: RunConfig, layout: FeatureLayout, sparse_gradients: bool) -> MemoryPlan:
    """The plan for the model ``config`` builds over ``layout`` (the MLP is left out: small)."""
    parts = config.model.parts
    fields = (*layout.single, *layout.multi)
    wide = {f.name: f.cardinality for f in fields if f.wide} if parts != "deep" else {}
    deep = (
        {f.name: f.cardinality * f.embedding_dim for f in fields if f.deep}
        if parts != "wide"
        else {}
    )
    wide_bytes = sum(wide.values()) * FLOAT_BYTES
    deep_bytes = sum(deep.values()) * FLOAT_BYTES
    train = config.train
    state = (
        wide_bytes * STATE_PER_WEIGHT[train.wide_optimizer.name]
        + deep_bytes * STATE_PER_WEIGHT[train.deep_optimizer.name]
    )
    per_field: dict[str, int] = {}
    for name, count in [*wide.items(), *deep.items()]:
        per_field[name] = per_field.get(name, 0) + count * FLOAT_BYTES
    largest = tuple(sorted(per_field.items(), key=lambda item: -item[1])[:3])
    gradients = 0 if sparse_gradients else wide_bytes + deep_bytes
    return MemoryPlan(wide_bytes, deep_bytes, state, gradients, largest)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new allocations on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(plan: MemoryPlan, device: torch.device) -> None:
    """Refuse a plan larger than what ``device`` has free, naming the biggest fields."""
    free = available_bytes(device)
    if free is None or plan.total <= free:
        return
    biggest = ", ".join(f"'{name}' {size / 1e9:.2f} GB" for name, size in plan.largest)
    raise ConfigError(
        f"{plan.describe()}, but {device} has {free / 1e9:.2f} GB available. Largest fields "
        f"(weights): {biggest}. Lower their num_buckets or embedding_dim, or choose an "
        "optimizer with less state (adagrad keeps 1 copy per weight, adam and ftrl 2)."
    )


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (another C library, or none found)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:  # pragma: no cover - no loadable C library
        return None


def release_freed_memory() -> None:
    """Hand memory the process has freed back to the system. glibc keeps freed blocks for
    reuse, and after encoding a million-row table it held ~200 MB of them (resident,
    counted in the peak); elsewhere this does nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
