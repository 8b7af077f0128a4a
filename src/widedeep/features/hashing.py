"""Stable, vectorized 64-bit hashing of strings and id tuples.

Python's ``hash()`` is salted per process, and library hashes change between versions, so a
model trained today would look up different buckets tomorrow. These functions implement
FNV-1a over the UTF-8 bytes followed by the SplitMix64 finalizer: a fixed definition that gives
the same buckets in every process, run and machine. All work is numpy over whole columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

UInt64Array = NDArray[np.uint64]


def mix64(values: UInt64Array) -> UInt64Array:
    """SplitMix64 finalizer: spreads every input bit over the output, so `% buckets` is fair."""
    z = values.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def hash_strings(values: pa.Array | pa.ChunkedArray) -> UInt64Array:
    """Hash each string of an Arrow string array; nulls hash like the empty string.

    Callers that treat nulls specially mask them out themselves.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.large_string())
    array = pc.cast(values, pa.large_string())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.zeros(0, dtype=np.uint8)
    )
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if array.null_count:
        lengths = np.where(array.is_null().to_numpy(zero_copy_only=False), 0, lengths)
    hashes = np.full(n, FNV_OFFSET, dtype=np.uint64)
    # Walk byte position j over all strings at once; only strings longer than j take part.
    by_length = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    longest = int(sorted_lengths[0]) if n else 0
    for j in range(longest):
        active = by_length[: int(np.searchsorted(-sorted_lengths, -j, side="left"))]
        hashes[active] ^= data[starts[active] + j].astype(np.uint64)
        hashes[active] *= FNV_PRIME
    return mix64(hashes)


def hash_string_list(values: list[str]) -> UInt64Array:
    """Hash a Python list of strings (convenience for tests and small inputs)."""
    return hash_strings(pa.array(values, type=pa.large_string()))


def hash_ints(values: NDArray[np.integer]) -> UInt64Array:
    """Hash integer tokens (bucket indices) into the same 64-bit space as strings."""
    return mix64(values.astype(np.uint64) + _GOLDEN)


def combine(left: UInt64Array, right: UInt64Array) -> UInt64Array:
    """Hash an ordered pair of hashes (broadcasting): the key of one cross-product cell."""
    seed = left.astype(np.uint64)
    mixed = seed ^ (right + _GOLDEN + (seed << np.uint64(6)) + (seed >> np.uint64(2)))
    return mix64(mixed)


def fnv1a_reference(text: str) -> int:
    """The same hash written plainly, one byte at a time: the definition tests compare with."""
    value = int(FNV_OFFSET)
    for byte in text.encode("utf-8"):
        value ^= byte
        value = (value * int(FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 30
    value = (value * int(_MIX1)) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 27
    value = (value * int(_MIX2)) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 31
    return value
