"""The precision the deep part's matrix products run in: float32, or bfloat16 autocast.

Training (``train.precision``) and scoring (``precision=`` of ``predict`` and its callers)
name it the same way: ``fp32``, ``bf16`` or ``auto`` (bf16 on a CPU that multiplies bfloat16
natively, with AMX or AVX-512 BF16; else fp32).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, cast, get_args

import torch

from widedeep.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def precision_problem(precision: object, what: str = "precision") -> str | None:
    """What is wrong with ``precision`` as a setting named ``what``, or None if nothing."""
    if precision in PRECISIONS:
        return None
    return f"{what} must be one of {list(PRECISIONS)}, got {precision!r}"


def check_precision(precision: str, what: str = "precision") -> Precision:
    """``precision`` as a ``Precision``, or a clear error naming the setting ``what``."""
    problem = precision_problem(precision, what)
    if problem is not None:
        raise ConfigError(problem)
    return cast(Precision, precision)


def resolve_precision(device: torch.device, precision: str) -> str:
    """``precision`` made concrete: ``auto`` is bf16 on a CPU with AMX or AVX-512 BF16
    instructions, else fp32. Training steps of the benchmark's model ran 1.48x faster in
    bf16 than in fp32 on an AMD EPYC with AVX-512 BF16 and no AMX (one process, 9
    alternating rounds of 60 steps), as on the Intel CPU with AMX the default was set on."""
    check_precision(precision)
    if precision != "auto":
        return precision
    if device.type != "cpu":
        return "fp32"
    return "bf16" if _native_bf16() else "fp32"


def _native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (torch's own probes)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        try:
            if getattr(torch.cpu, probe)():
                return True
        except (AttributeError, RuntimeError):  # a torch without the probe: assume none
            continue
    return False


def mixed_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The context a forward pass runs in: bfloat16 autocast for ``bf16``, else nothing."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
