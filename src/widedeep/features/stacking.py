"""The id matrix of an encoded table: every field's ids side by side, one row per record.

A categorical column arrives as each row's value number and each number's id
(``CodedIds``); expanding it to a column of ids, then copying that column into the matrix,
wrote every id twice and allocated a column-sized array per field. Here ids go straight
into the matrix, a block of rows at a time so that the rows being written stay in cache
(written one column at a time over all rows, the same copy was 4x slower). Without numba
the same blocks are filled with numpy.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from widedeep.jit import AVAILABLE, compiled

IdArray = NDArray[np.int64]
IdMatrix = NDArray[np.int32]  # the id matrix: every id is below its field's cardinality, < 2**31
CodeArray = NDArray[np.int8] | NDArray[np.int16] | NDArray[np.int32]
# Rows per block: 4096 x 26 fields x 4 bytes = 426 kB, inside L2. Each block calls one
# compiled loop per column (a loop over all columns would take them as a numba typed list,
# whose methods compile anew in every process: seconds, on the first table encoded).
_BLOCK = 4096
_ROWS_PER_THREAD = 100_000  # fewer rows than this per thread: threads cost more than they save


def narrowest_codes(codes: NDArray[np.int32], count: int) -> CodeArray:
    """``codes`` (-1 for null, else below ``count``, the column's distinct values) in int8
    for up to 127 values, int16 for up to 32,767, else int32 (each bound one short of what
    the type could hold). A column's codes are held until the id matrix is filled; at 10M
    rows, the benchmark's 26 columns (10 to 313,924 distinct values) take 620 MB against
    1,040 MB in int32."""
    for width in (np.int8, np.int16):
        if count <= np.iinfo(width).max:
            narrow: CodeArray = codes.astype(width)
            return narrow
    return codes


@dataclass(frozen=True)
class CodedIds:
    """A column's ids, held as each row's value number (``codes``, -1 for null; int8,
    int16 or int32) and each number's id (``id_of``, whose last entry is the id of a null
    row)."""

    codes: CodeArray
    id_of: IdArray

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: NDArray[np.int64]) -> CodedIds:
        """The same column for the given rows."""
        return CodedIds(self.codes[rows], self.id_of)

    def expand(self) -> IdArray:
        """One id per row."""
        return self.id_of[self.codes]


Column = IdArray | CodedIds


@compiled
def _copy_plain(source, out, column, start, stop):  # type: ignore[no-untyped-def]  # pragma: no cover
    for i in range(start, stop):
        out[i, column] = source[i]


@compiled
def _copy_coded(codes, id_of, out, column, start, stop):  # type: ignore[no-untyped-def]  # pragma: no cover
    null_id = id_of[id_of.shape[0] - 1]
    for i in range(start, stop):
        code = codes[i]
        out[i, column] = id_of[code] if code >= 0 else null_id


def _fill(columns: Sequence[Column], out: IdMatrix, first: int, last: int) -> None:
    """Rows ``first`` .. ``last - 1`` of ``out``, a block of rows at a time."""
    for start in range(first, last, _BLOCK):
        stop = min(start + _BLOCK, last)
        for j, column in enumerate(columns):
            if isinstance(column, CodedIds):
                if AVAILABLE:
                    _copy_coded(column.codes, column.id_of, out, j, start, stop)
                else:  # a code of -1 takes id_of's last entry
                    out[start:stop, j] = column.id_of[column.codes[start:stop]]
            elif AVAILABLE:
                _copy_plain(column, out, j, start, stop)
            else:
                out[start:stop, j] = column[start:stop]


def stack_ids(columns: Sequence[Column], n: int) -> IdMatrix:
    """The (n, len(columns)) row-major int32 matrix of ``columns`` (half the memory of
    int64, which no field's ids need: the schema caps every cardinality below 2**31)."""
    out = np.empty((n, len(columns)), dtype=np.int32)
    columns = [
        c if isinstance(c, CodedIds) else np.ascontiguousarray(c, dtype=np.int64) for c in columns
    ]
    if columns:
        over_row_ranges(lambda first, last: _fill(columns, out, first, last), n)
    return out


def warm_up() -> None:
    """Load the id copy for each type a column's codes may take (compiling it where no cache
    holds it), so that no table, or served request, pays it for a column wider than the
    last one seen."""
    for width in (np.int8, np.int16, np.int32):
        stack_ids([np.zeros(1, np.int64), CodedIds(np.zeros(1, width), np.ones(1, np.int64))], 1)


def over_row_ranges(fill: Callable[[int, int], None], n: int) -> None:
    """``fill(first, last)`` over rows 0 .. n - 1, split into one range per thread for large
    tables (the loops that fill a matrix release the GIL): most of their time is the first
    touch of the output's pages and misses in lookup tables, which overlap."""
    threads = min(os.cpu_count() or 1, max(1, n // _ROWS_PER_THREAD))
    if threads == 1:
        fill(0, n)
        return
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        work = [pool.submit(fill, int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        for done in work:
            done.result()
