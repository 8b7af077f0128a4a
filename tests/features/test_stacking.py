"""The id matrix: plain and coded columns side by side, with and without numba, on threads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from widedeep.features import stacking
from widedeep.features.stacking import CodedIds, narrowest_codes, stack_ids


def _columns(n: int, seed: int = 0) -> list[np.ndarray | CodedIds]:
    rng = np.random.default_rng(seed)
    coded = CodedIds(rng.integers(-1, 5, n).astype(np.int32), np.array([7, 8, 9, 10, 11, 1]))
    plain = rng.integers(0, 1000, n)
    # codes of every width a column may be held in (``narrowest_codes``)
    narrow = [
        CodedIds(rng.integers(-1, 5, n).astype(width), np.array([7, 8, 9, 10, 11, 1]))
        for width in (np.int8, np.int16)
    ]
    return [
        plain,
        coded,
        plain[::-1].copy(),
        CodedIds(np.zeros(n, np.int32), np.array([3, 1])),
        *narrow,
    ]


def _reference(columns: list[np.ndarray | CodedIds]) -> np.ndarray:
    expanded = [c.id_of[c.codes] if isinstance(c, CodedIds) else c for c in columns]
    return np.stack(expanded, axis=1)


def test_coded_columns_take_their_ids_and_a_null_code_takes_the_last_id() -> None:
    coded = CodedIds(np.array([2, -1, 0], np.int32), np.array([5, 6, 7, 1]))
    out = stack_ids([np.array([9, 9, 9]), coded], 3)
    assert out.tolist() == [[9, 7], [9, 1], [9, 5]]
    assert coded.expand().tolist() == [7, 1, 5]
    assert coded.take(np.array([1, 1])).expand().tolist() == [1, 1]


@pytest.mark.parametrize("compiled", [True, False])
def test_stacking_matches_numpy_with_and_without_numba(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compiled and not stacking.AVAILABLE:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(stacking, "AVAILABLE", compiled)
    columns = _columns(2_345)
    np.testing.assert_array_equal(stack_ids(columns, 2_345), _reference(columns))


def test_rows_split_over_threads_give_the_same_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stacking, "_ROWS_PER_THREAD", 100)
    monkeypatch.setattr(stacking.os, "cpu_count", lambda: 3)
    columns = _columns(1_001, seed=1)
    np.testing.assert_array_equal(stack_ids(columns, 1_001), _reference(columns))


def test_no_columns_give_an_empty_matrix() -> None:
    assert stack_ids([], 4).shape == (4, 0)


@pytest.mark.parametrize(
    ("count", "width"),
    [(0, np.int8), (127, np.int8), (128, np.int16), (32_767, np.int16), (32_768, np.int32)],
)
def test_codes_take_the_narrowest_type_that_holds_them(count: int, width: type) -> None:
    codes = np.array([-1, 0, max(count - 1, 0), -1], dtype=np.int32)
    narrow = narrowest_codes(codes, count)
    assert narrow.dtype == width
    assert narrow.tolist() == codes.tolist()


def test_warm_up_loads_the_id_copy_for_every_code_type() -> None:
    """A table (or a served request) with a wider column than any before must not compile
    its loop then: the warm-up has loaded all three (in a fresh process, where no other
    test has)."""
    if not stacking.AVAILABLE:
        pytest.skip("numba is not installed")
    script = (
        "from widedeep.features import stacking\n"
        "stacking.warm_up()\n"
        "print(sorted({str(s[0].dtype) for s in stacking._copy_coded.signatures}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['int16', 'int32', 'int8']"
