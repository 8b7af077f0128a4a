"""Exact hash tables over polars string columns, compiled with numba.

Fitting and encoding a categorical column needs its distinct values, how often each occurs,
each row's value number, and each value's position in the vocabulary. Arrow's
``dictionary_encode`` and ``index_in`` give these, but with the conversion of polars' strings
to Arrow's layout they took most of a preprocessing run (``index_in`` also rebuilt its table
from the vocabulary on every call). Here the loops read polars' own memory (Arrow string
views: 16 bytes per row, the string itself inline up to 12 bytes), one pass gives codes and
counts together, and a vocabulary's table is built once and reused by every ``transform``.

Two strings are the same value only when their bytes are equal: a hash match is checked
byte for byte, so a collision of the 64-bit hashes costs a probe, never a wrong id.

Without numba (``ENABLED`` false; tests switch it off) the callers use Arrow's kernels.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from numpy.typing import NDArray

from widedeep.jit import AVAILABLE, compiled

if AVAILABLE:
    from widedeep.jit import load_word as _word

ENABLED = AVAILABLE


_SHORT = 12  # strings up to this many bytes sit inside their 16-byte view
_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # an odd constant: times it, a word's bits spread up
_FIRST_CAPACITY = 1024  # slots of a new table (a power of two); it doubles when half full


@compiled
def _mix(value):  # type: ignore[no-untyped-def]  # pragma: no cover
    """SplitMix64's finalizer (uint64 in, int64 out: numba turns uint64 mixed with int64
    into float64, so the hashes are kept as int64)."""
    value ^= value >> np.uint64(30)
    value *= np.uint64(0xBF58476D1CE4E5B9)
    value ^= value >> np.uint64(27)
    value *= np.uint64(0x94D049BB133111EB)
    value ^= value >> np.uint64(31)
    return np.int64(value)


@compiled
def _low_bytes(word, count):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The first ``count`` (0..8) bytes of a little-endian word, the rest zero."""
    if count >= 8:
        return word
    if count <= 0:
        return np.uint64(0)
    return word & ((np.uint64(1) << np.uint64(8 * count)) - np.uint64(1))


@compiled
def _key(views, row):  # type: ignore[no-untyped-def]  # pragma: no cover
    """A view's length and two words: for a short string its bytes (length and first 4
    bytes, then bytes 4-11, unused bytes zeroed); for a long one its length and first 4
    bytes, then where its bytes are (buffer, offset)."""
    first, second = views[row, 0], views[row, 1]
    length = np.int64(first & np.uint64(0xFFFFFFFF))
    if length <= _SHORT:
        return length, _low_bytes(first, 4 + length), _low_bytes(second, length - 4)
    return length, first, second


@compiled
def _same_bytes(data, start, other, other_start, length):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Whether ``length`` (> 8) bytes agree, 8 at a time (the last word may overlap)."""
    for j in range(0, length - 8, 8):
        if _word(data, start + j) != _word(other, other_start + j):
            return False
    return _word(data, start + length - 8) == _word(other, other_start + length - 8)


@compiled
def _hash(length, first, second, data, start):  # type: ignore[no-untyped-def]  # pragma: no cover
    """A string's hash: of its key words (``_key``) when short, of its bytes when long."""
    if length <= _SHORT:
        return _mix(first ^ (second * _SPREAD))
    return _hash_bytes(data, start, length)


@compiled
def _hash_bytes(data, start, length):  # type: ignore[no-untyped-def]  # pragma: no cover
    value = np.uint64(length)
    for j in range(0, length - 8, 8):
        value = np.uint64(_mix(value ^ _word(data, start + j)))
    return _mix(value ^ _word(data, start + length - 8))


@compiled
def _same(seen, seen_offsets, seen_data, code, length, first, second, data, start):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Whether value ``code`` of a table holds the string with these key words (``_key``)
    and bytes, its hash having matched: short strings compare their words, long ones
    their bytes."""
    if seen[code, 1] != np.int64(first):  # length and first 4 bytes
        return False
    if length <= _SHORT:
        return seen[code, 2] == np.int64(second)
    return _same_bytes(data, start, seen_data, seen_offsets[code], length)


@compiled
def _long_start(second, bases):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Where a long string's bytes start in the joined data buffers."""
    return bases[np.int64(second & np.uint64(0xFFFFFFFF))] + np.int64(second >> np.uint64(32))


@compiled
def _number_rows(  # type: ignore[no-untyped-def]  # pragma: no cover
    views,
    view_bytes,
    data,
    bases,
    valid,
    codes,
    counts,
    table,
    found,
    seen,
    seen_offsets,
    seen_data,
    row,
):
    """``_distinct``'s rows from ``row`` on, adding new values while the table stays at
    most half full and the byte store has room. Returns ``(stop, found)``: ``stop`` is
    the row count, or the row whose new value needs a larger table or byte store first.
    No array is replaced in here: a loop that reassigns its arrays was 2x slower."""
    mask = table.shape[0] - 1
    for r in range(row, views.shape[0]):
        if not valid[r]:
            codes[r] = -1
            continue
        length, first, second = _key(views, r)
        start = _long_start(second, bases) if length > _SHORT else 0
        hash_value = _hash(length, first, second, data, start)
        slot = (hash_value ^ (hash_value >> 32)) & mask
        while True:
            code = np.int64(table[slot]) - 1
            if code < 0:  # an empty slot: a new value
                end = seen_offsets[found]
                if 2 * (found + 1) > table.shape[0] or end + length > seen_data.shape[0]:
                    return r, found
                code = found
                seen[code, 0] = hash_value
                seen[code, 1] = np.int64(first)
                seen[code, 2] = np.int64(second)
                source, at = (view_bytes, r * 16 + 4) if length <= _SHORT else (data, start)
                for j in range(length):
                    seen_data[end + j] = source[at + j]
                seen_offsets[code + 1] = end + length
                table[slot] = code + 1
                counts[code] = 0
                found += 1
                break
            if seen[code, 0] == hash_value and _same(
                seen, seen_offsets, seen_data, code, length, first, second, data, start
            ):
                break
            slot = (slot + 1) & mask
        codes[r] = code
        counts[code] += 1
    return views.shape[0], found


@compiled
def _grown(table, seen, found):  # type: ignore[no-untyped-def]  # pragma: no cover
    """A table twice the size holding the ``found`` codes so far (their hashes are
    ``seen[:, 0]``)."""
    bigger = np.zeros(2 * table.shape[0], dtype=np.int32)
    mask = bigger.shape[0] - 1
    for known in range(found):
        probe = (seen[known, 0] ^ (seen[known, 0] >> 32)) & mask
        while bigger[probe] != 0:
            probe = (probe + 1) & mask
        bigger[probe] = known + 1
    return bigger


@compiled
def _distinct(  # type: ignore[no-untyped-def]  # pragma: no cover
    views,
    view_bytes,
    data,
    bases,
    valid,
    codes,
    counts,
    table,
    found,
    seen,
    seen_offsets,
    seen_data,
):
    """Number one chunk's distinct strings after the ``found`` seen in earlier chunks, in
    order of first appearance: each row's number into ``codes`` (-1 for a null), each
    value's count into ``counts``, its hash and key words into ``seen`` and its bytes into
    ``seen_offsets``/``seen_data`` (an Arrow large_string layout). Returns ``found`` and
    the table and byte store, either of which may have been replaced by a larger one."""
    row = 0
    while True:
        row, found = _number_rows(
            views,
            view_bytes,
            data,
            bases,
            valid,
            codes,
            counts,
            table,
            found,
            seen,
            seen_offsets,
            seen_data,
            row,
        )
        if row >= views.shape[0]:
            return found, table, seen_data
        if 2 * (found + 1) > table.shape[0]:
            table = _grown(table, seen, found)
        length = np.int64(views[row, 0] & np.uint64(0xFFFFFFFF))
        end = seen_offsets[found]
        if end + length > seen_data.shape[0]:  # e.g. many slices of one long string
            bigger = np.empty(2 * (end + length), dtype=np.uint8)
            bigger[:end] = seen_data[:end]
            seen_data = bigger


@compiled
def _positions(  # type: ignore[no-untyped-def]  # pragma: no cover
    views, data, bases, valid, table, seen, seen_offsets, seen_data, out
):
    """Each valid string's number among a table's values, or -1 (absent, or null)."""
    mask = table.shape[0] - 1
    for row in range(views.shape[0]):
        out[row] = -1
        if not valid[row]:
            continue
        length, first, second = _key(views, row)
        start = _long_start(second, bases) if length > _SHORT else 0
        hash_value = _hash(length, first, second, data, start)
        slot = (hash_value ^ (hash_value >> 32)) & mask
        while table[slot] != 0:
            code = np.int64(table[slot]) - 1
            if seen[code, 0] == hash_value and _same(
                seen, seen_offsets, seen_data, code, length, first, second, data, start
            ):
                out[row] = code
                break
            slot = (slot + 1) & mask


class _Chunk:
    """One chunk of a polars string column as the loops read it, without copying: its
    16-byte views (as uint64 pairs and as bytes), its long strings' bytes (the data
    buffers joined, copied only when there are several) and its validity."""

    def __init__(self, series: pl.Series) -> None:
        array = series.to_arrow(compat_level=pl.CompatLevel.newest())
        if isinstance(array, pa.ChunkedArray):  # pragma: no cover - one chunk in, one out
            array = array.combine_chunks()
        if not pa.types.is_string_view(array.type):  # pragma: no cover - older polars
            array = array.cast(pa.string_view())
        n, buffers = len(array), array.buffers()
        start = array.offset * 16
        self.view_bytes = np.frombuffer(buffers[1], dtype=np.uint8)[start : start + 16 * n]
        self.views = self.view_bytes.view(np.uint64).reshape(n, 2)
        empty = np.zeros(0, dtype=np.uint8)
        parts = [empty if b is None else np.frombuffer(b, dtype=np.uint8) for b in buffers[2:]]
        sizes = [len(p) for p in parts]
        self.bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        if len(parts) == 1:
            self.data = parts[0]
        else:  # several buffers joined (a copy), or none (8 bytes the loops never read)
            self.data = np.concatenate(parts) if parts else np.zeros(8, dtype=np.uint8)
        self.long_bytes = int(sum(sizes))
        if array.null_count == 0:
            self.valid = np.ones(n, dtype=np.bool_)
        else:
            valid = array.is_valid().to_numpy(zero_copy_only=False)
            self.valid = np.array(valid, dtype=np.bool_)
        # Read-only, always: numba compiles a loop once per array type, and writable and
        # read-only arrays are two types; a server warmed up on one would compile the other
        # inside its first request that had long strings or nulls.
        for array_of_chunk in (self.data, self.valid, self.bases):
            array_of_chunk.flags.writeable = False


def _chunks(values: pl.Series) -> list[_Chunk]:
    if values.dtype != pl.String:
        values = values.cast(pl.String)
    return [_Chunk(part) for part in values.get_chunks()]


class _Values:
    """Distinct strings numbered in order of first appearance, with a table to find them."""

    def __init__(self, capacity_rows: int, capacity_bytes: int) -> None:
        # A slot holds a value's number + 1 (0: empty); the hash it is checked against
        # and the key words sit in ``seen``. 4-byte slots keep the table 4x smaller than
        # (hash, number) pairs: the benchmark's 26 columns took 0.345 against 0.376 s
        # (medians of 7, alternating), and a 10M-value column's table is 134 MB, not 537.
        self.table = np.zeros(_FIRST_CAPACITY, dtype=np.int32)
        self.found = 0
        # pages past what is found are never touched, so these cost what they hold
        self.seen = np.empty((capacity_rows, 3), dtype=np.int64)
        self.seen_offsets = np.zeros(capacity_rows + 1, dtype=np.int64)
        self.seen_data = np.empty(max(8, capacity_bytes), dtype=np.uint8)

    def strings(self) -> pa.Array:
        """The values, as an Arrow large_string array."""
        size = int(self.seen_offsets[self.found])
        buffers = [
            None,
            pa.py_buffer(self.seen_offsets[: self.found + 1].copy()),
            pa.py_buffer(self.seen_data[:size].copy()),
        ]
        return pa.Array.from_buffers(pa.large_string(), self.found, buffers)


def _capacity(chunks: list[_Chunk]) -> tuple[int, int]:
    rows = sum(len(c.valid) for c in chunks)
    return rows, sum(_SHORT * len(c.valid) + c.long_bytes for c in chunks)


def _numbered(values: pl.Series) -> tuple[_Values, NDArray[np.int32], NDArray[np.int64]]:
    """Every chunk of ``values`` through ``_distinct``: the values found, each row's
    number and each value's count."""
    chunks = _chunks(values)
    rows, size = _capacity(chunks)
    found = _Values(rows, size)
    codes = np.empty(rows, dtype=np.int32)
    counts = np.empty(rows, dtype=np.int64)
    at = 0
    for c in chunks:
        found.found, found.table, found.seen_data = _distinct(
            c.views,
            c.view_bytes,
            c.data,
            c.bases,
            c.valid,
            codes[at : at + len(c.valid)],
            counts,
            found.table,
            found.found,
            found.seen,
            found.seen_offsets,
            found.seen_data,
        )
        at += len(c.valid)
    return found, codes, counts[: found.found]


def distinct(values: pl.Series) -> tuple[NDArray[np.int32], pa.Array, NDArray[np.int64]]:
    """A string column's distinct values in order of first appearance, each row's number
    in them (-1 for null) and each value's count: what ``pyarrow.compute.dictionary_encode``
    and a count of its indices give, in one pass."""
    found, codes, counts = _numbered(values)
    return codes, found.strings(), counts.copy()


class StringIndex:
    """Positions of strings (a vocabulary), looked up by value: built once, then queried by
    each ``transform`` of a table and each served request. A string listed twice is found
    at its first position (as Arrow's ``index_in`` finds it); nulls are never found."""

    def __init__(self, strings: pa.Array | pl.Series) -> None:
        series = strings if isinstance(strings, pl.Series) else pl.Series(values=strings)
        self._values, codes, _ = _numbered(series)
        self._first_position: NDArray[np.int64] | None = None
        if self._values.found != len(series):  # repeats or nulls: value number -> position
            present = np.flatnonzero(codes >= 0)[::-1]  # last first: the first row wins
            self._first_position = np.empty(self._values.found, dtype=np.int64)
            self._first_position[codes[present]] = present

    def positions(self, values: pa.Array | pl.Series) -> NDArray[np.int64]:
        """Each string's position in the index, -1 where absent or null."""
        series = values if isinstance(values, pl.Series) else pl.Series(values=values)
        out = np.empty(len(series), dtype=np.int64)
        found, at = self._values, 0
        for c in _chunks(series):
            _positions(
                c.views,
                c.data,
                c.bases,
                c.valid,
                found.table,
                found.seen,
                found.seen_offsets,
                found.seen_data,
                out[at : at + len(c.valid)],
            )
            at += len(c.valid)
        if self._first_position is not None:
            hit = out >= 0
            out[hit] = self._first_position[out[hit]]
        return out


def as_large_strings(values: pl.Series | pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous Arrow large_string array of ``values`` (strings or a dictionary)."""
    column = values.to_arrow() if isinstance(values, pl.Series) else values
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.large_string())
    if not pa.types.is_large_string(column.type):
        column = column.cast(pa.large_string())  # string, or an Arrow dictionary (categorical)
    return column
