"""The compiled string tables: the same values, codes and counts as Arrow's kernels, and
positions found by comparing bytes, not trusting hashes."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from widedeep.features import strings

pytestmark = pytest.mark.skipif(not strings.ENABLED, reason="numba is not installed")

# lengths around the 4-byte prefix, the 8-byte word and the 12 bytes kept inside a view;
# long strings sharing their first 4 bytes (the view's prefix) or all but one byte
WORDS = [
    "", "a", "ab", "abc", "abcd", "abcde", "abcdefg", "abcdefgh", "abcdefghi", "abcdefghijk",
    "abcdefghijkl", "abcdefghijklm", "abcdefghijklmn", "abcdefghijklmnop", "abcdefghijklmnopq",
    "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyZ", "abcdXfghijklmnopqrstuvwxyz",
    "é", "éé", "日本語のテキストは十二バイトより長い", "a\x00", "a\x00\x00",
]  # fmt: skip


def _arrow_reference(values: pl.Series) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    encoded = pc.dictionary_encode(values.to_arrow())
    codes = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False))
    counts = np.bincount(codes[codes >= 0], minlength=len(encoded.dictionary))
    return codes, encoded.dictionary.cast(pa.large_string()), counts


def _assert_like_arrow(values: pl.Series) -> None:
    codes, dictionary, counts = strings.distinct(values)
    want_codes, want_dictionary, want_counts = _arrow_reference(values)
    assert dictionary.to_pylist() == want_dictionary.to_pylist()
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(counts, want_counts)


def test_distinct_values_codes_and_counts_match_arrow_for_every_length_and_nulls() -> None:
    rng = random.Random(0)
    values = pl.Series([rng.choice([*WORDS, None]) for _ in range(5000)])
    _assert_like_arrow(values)


def test_distinct_carries_its_table_across_chunks_and_grows_it() -> None:
    first = pl.Series([f"value {i} with a tail longer than a view" for i in range(3000)])
    second = pl.Series([f"v{i % 4000}" for i in range(6000)] + [None, "value 7 with a tail"])
    values = pl.concat([first, second, first.slice(0, 10)], rechunk=False)
    assert values.n_chunks() == 3
    _assert_like_arrow(values)


def test_distinct_reads_long_strings_from_several_data_buffers() -> None:
    # polars starts a new data buffer every few MB of long strings
    values = pl.Series(
        [f"{i:08d} and forty more bytes of text to fill it up" for i in range(300_000)]
    )
    (part,) = values.get_chunks()
    assert len(strings._Chunk(part).bases) > 1
    _assert_like_arrow(pl.concat([values, values.slice(5, 1000)]))


def test_distinct_of_an_all_null_or_empty_column() -> None:
    codes, dictionary, counts = strings.distinct(pl.Series([None, None], dtype=pl.String))
    assert codes.tolist() == [-1, -1] and len(dictionary) == 0 and len(counts) == 0
    codes, dictionary, counts = strings.distinct(pl.Series([], dtype=pl.String))
    assert len(codes) == 0 and len(dictionary) == 0


def test_string_index_finds_each_value_and_nothing_else() -> None:
    vocabulary = pa.array(WORDS[::-1], pa.large_string())
    index = strings.StringIndex(vocabulary)
    queries = pl.Series([*WORDS, None, "abcdefghijklmnopqrstuvwxyz!", "abcdefghijkm", "x"])
    found = index.positions(queries)
    assert found.tolist() == [len(WORDS) - 1 - i for i in range(len(WORDS))] + [-1] * 4


def test_a_string_listed_twice_is_found_at_its_first_position_and_nulls_never() -> None:
    index = strings.StringIndex(
        pa.array(["a", None, "b", "a", "long string listed twice", "long string listed twice"])
    )
    found = index.positions(pl.Series(["a", "b", None, "long string listed twice", "c"]))
    assert found.tolist() == [0, 2, -1, 4, -1]


def _overlapping_slices(text: bytes, n: int, length: int) -> pl.Series:
    """Strings i = text[i : i + length], as Arrow string views that all point into one
    buffer (as slices of one string can), taken by polars without a copy."""
    views = np.zeros((n, 4), dtype=np.int32)
    views[:, 0] = length
    views[:, 1] = [int.from_bytes(text[i : i + 4], "little", signed=True) for i in range(n)]
    views[:, 3] = np.arange(n)  # buffer 0, offset i
    buffers = [None, pa.py_buffer(views.tobytes()), pa.py_buffer(text)]
    series = pl.from_arrow(pa.Array.from_buffers(pa.string_view(), n, buffers))
    assert isinstance(series, pl.Series)
    return series


def test_distinct_values_may_hold_more_bytes_than_the_column_buffers() -> None:
    rng = random.Random(2)
    text = bytes(rng.choice(b"abcdefghij") for _ in range(6000))
    values = _overlapping_slices(text, 5000, 100)
    (part,) = values.get_chunks()
    assert strings._Chunk(part).long_bytes == len(text)  # 6 kB of bytes, 500 kB of values
    assert values.n_unique() == 5000
    _assert_like_arrow(values)


def test_distinct_of_a_slice_of_a_column() -> None:
    rng = random.Random(1)
    values = pl.Series([rng.choice([*WORDS, None]) for _ in range(3000)])
    _assert_like_arrow(values.slice(17, 1000))
    _assert_like_arrow(values.tail(5))


@pytest.mark.parametrize("word", ["abc", "abcdefghijklmnopq"])
def test_a_value_with_the_same_hash_but_other_bytes_is_not_found(word: str) -> None:
    """A table whose only entry carries the query's hash (and lies in the query's first
    slot) but holds other bytes: the query must still be absent."""
    query = word[:-1] + "!"
    probe = strings.StringIndex(pa.array([query]))
    (slot,) = np.flatnonzero(probe._values.table)
    index = strings.StringIndex(pa.array([word]))
    found = index._values
    found.table[:] = 0
    found.table[slot] = 1  # `word` (number 0) in the query's first slot
    found.seen[0, 0] = probe._values.seen[0, 0]  # under the query's hash
    assert index.positions(pl.Series([query])).tolist() == [-1]
