"""The id matrix of an encoded table: every field's ids side by side, one row per record.

A categorical column arrives as each row's value number and each number's id
(``CodedIds``); expanding it to a column of ids, then copying that column into the matrix,
wrote every id twice and allocated a column-sized array per field. Here ids go straight
into the matrix, a block of rows at a time so that the rows being written stay in cache
(written one column at a time over all rows, the same copy was 4x slower).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from widedeep.jit import AVAILABLE, compiled

if AVAILABLE:
    from numba import types
    from numba.typed import List

    # read-only: the columns may be views of Arrow memory, and the loop only reads them
    _READ_ONLY_INT64 = types.Array(types.int64, 1, "C", readonly=True)

IdArray = NDArray[np.int64]
_BLOCK = 512  # rows per block: 512 x 26 fields x 8 bytes = 104 kB, inside L2
_ROWS_PER_THREAD = 100_000  # fewer rows than this per thread: threads cost more than they save


@dataclass(frozen=True)
class CodedIds:
    """A column's ids, held as each row's value number (``codes``, -1 for null) and each
    number's id (``id_of``, whose last entry is the id of a null row)."""

    codes: NDArray[np.int32]
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
def _stack(plain, codes, id_of, kinds, which, out, first, last):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Rows ``first`` .. ``last - 1`` of ``out``, whose column j is ``plain[which[j]]``
    where ``kinds[j]`` is 0, else ``id_of[which[j]][codes[which[j]]]`` (a code of -1 takes
    the table's last id)."""
    width = out.shape[1]
    for start in range(first, last, _BLOCK):
        stop = min(start + _BLOCK, last)
        for j in range(width):
            k = which[j]
            if kinds[j] == 0:
                source = plain[k]
                for i in range(start, stop):
                    out[i, j] = source[i]
            else:
                row_codes, table = codes[k], id_of[k]
                null_id = table[table.shape[0] - 1]
                for i in range(start, stop):
                    code = row_codes[i]
                    out[i, j] = table[code] if code >= 0 else null_id


def stack_ids(columns: Sequence[Column], n: int) -> IdArray:
    """The (n, len(columns)) row-major int64 matrix of ``columns``."""
    out = np.empty((n, len(columns)), dtype=np.int64)
    if not columns:
        return out
    if not AVAILABLE:
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            for j, column in enumerate(columns):
                if isinstance(column, CodedIds):
                    out[start:stop, j] = column.id_of[column.codes[start:stop]]  # -1: the last
                else:
                    out[start:stop, j] = column[start:stop]
        return out
    plain = List.empty_list(_READ_ONLY_INT64)
    codes = List.empty_list(types.Array(types.int32, 1, "C", readonly=True))
    id_of = List.empty_list(_READ_ONLY_INT64)
    kinds = np.zeros(len(columns), dtype=np.int8)
    which = np.zeros(len(columns), dtype=np.int64)
    for j, column in enumerate(columns):
        if isinstance(column, CodedIds):
            kinds[j], which[j] = 1, len(codes)
            codes.append(np.ascontiguousarray(column.codes, dtype=np.int32))
            id_of.append(np.ascontiguousarray(column.id_of, dtype=np.int64))
        else:
            which[j] = len(plain)
            plain.append(np.ascontiguousarray(column, dtype=np.int64))
    # the rows split over threads (the loop releases the GIL): most of its time is the
    # first touch of the output's pages and misses in the id tables, which overlap
    threads = min(os.cpu_count() or 1, max(1, n // _ROWS_PER_THREAD))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    if threads == 1:
        _stack(plain, codes, id_of, kinds, which, out, 0, n)
        return out
    with ThreadPoolExecutor(max_workers=threads) as pool:
        work = [
            pool.submit(_stack, plain, codes, id_of, kinds, which, out, int(a), int(b))
            for a, b in itertools.pairwise(bounds)
        ]
        for done in work:
            done.result()
    return out
