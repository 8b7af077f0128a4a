"""Stable hashing: the vectorized hash equals the plain definition, in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from widedeep.features.hashing import (
    combine,
    fnv1a_reference,
    hash_ints,
    hash_string_list,
    hash_strings,
    mix64,
)
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FIRST_ID, MAX_BUCKETS, FeatureSchema

STRINGS = [
    "",
    "a",
    "ab",
    "hello",
    "café",
    "日本語",
    "🙂 emoji + ascii",
    "x" * 1000,
    "Ünïcödé " * 40,
    "\x00nul inside",
    "a",
]

# Written once from fnv1a_reference; a change of the hash definition must fail here.
GOLDEN = {
    "": 17665956581633026203,
    "a": 198367012849983736,
    "hello": 1656767905311477007,
    "widedeep": 6747732949986485107,
    "日本": 13255442384202379014,
    "café": 16195296087438488975,
    "🙂": 5429275081309090997,
}


def _as_ints(hashes: np.ndarray) -> list[int]:
    assert hashes.dtype == np.uint64
    return [int(h) for h in hashes]


def test_hash_strings_equals_the_reference() -> None:
    hashes = hash_strings(pa.array(STRINGS))

    assert _as_ints(hashes) == [fnv1a_reference(s) for s in STRINGS]
    assert hashes[1] == hashes[-1]
    assert len(set(_as_ints(hashes))) == len(STRINGS) - 1


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_hash_values(text: str) -> None:
    assert fnv1a_reference(text) == GOLDEN[text]
    assert _as_ints(hash_string_list([text])) == [GOLDEN[text]]


def test_definition_is_fnv1a_64_then_the_splitmix64_finalizer() -> None:
    # Published FNV-1a 64-bit values: '' is the offset basis, 'a' = 0xaf63dc4c8601ec8c.
    fnv = np.array([0xCBF29CE484222325, 0xAF63DC4C8601EC8C], dtype=np.uint64)

    assert _as_ints(mix64(fnv)) == [fnv1a_reference(""), fnv1a_reference("a")]


def test_golden_int_and_pair_hashes() -> None:
    assert _as_ints(hash_ints(np.array([0, 1, 7]))) == [
        16294208416658607535,
        10451216379200822465,
        7191089600892374487,
    ]
    pair = combine(hash_string_list(["a"]), hash_string_list(["b"]))
    assert _as_ints(pair) == [4345900067856659539]


@pytest.mark.parametrize(
    "array",
    [
        pa.array(STRINGS, type=pa.string()),
        pa.array(STRINGS, type=pa.large_string()),
        pa.array(STRINGS, type=pa.string_view()),
        pa.chunked_array([STRINGS[:4], STRINGS[4:]]),
        pl.Series(STRINGS).to_arrow(),
    ],
    ids=["string", "large_string", "string_view", "chunked", "polars"],
)
def test_every_arrow_string_layout_hashes_the_same(array: pa.Array) -> None:
    assert _as_ints(hash_strings(array)) == [fnv1a_reference(s) for s in STRINGS]


def test_sliced_arrays_hash_their_own_values() -> None:
    sliced = pa.array(STRINGS)[3:7]

    assert _as_ints(hash_strings(sliced)) == [fnv1a_reference(s) for s in STRINGS[3:7]]


def test_nulls_hash_like_the_empty_string_and_empty_input_is_empty() -> None:
    hashes = hash_strings(pa.array(["a", None, ""]))

    assert _as_ints(hashes) == [GOLDEN["a"], GOLDEN[""], GOLDEN[""]]
    assert hash_strings(pa.array([], type=pa.string())).shape == (0,)
    assert hash_strings(pa.chunked_array([], type=pa.string())).shape == (0,)


def test_golden_feature_ids() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [
                {"name": "u", "kind": "hashed", "num_buckets": 1000},
                {"name": "c", "kind": "categorical"},
                {"name": "x", "kind": "cross", "features": ["u", "c"], "num_buckets": 1000},
            ]
        }
    )
    frame = pl.DataFrame({"u": ["hello", "widedeep", "日本"], "c": ["a", "b", "a"]})

    ids = Preprocessor(schema).fit_transform(frame).ids

    # hashed: 2 + hash % 1000, e.g. 'hello': 2 + 1656767905311477007 % 1000 = 9.
    assert ids[:, 0].tolist() == [9, 109, 16]
    assert ids[:, 2].tolist() == [97, 333, 632]


def test_ids_of_the_largest_hash_space_fit_the_int32_id_matrix() -> None:
    """The id matrix is int32: ids of a hashed field with the most buckets the schema
    allows (about 2**31) keep their value, none wraps negative."""
    schema = FeatureSchema.from_dict(
        {"features": [{"name": "u", "kind": "hashed", "num_buckets": MAX_BUCKETS}]}
    )
    values = [f"user-{i}" for i in range(2_000)]

    ids = Preprocessor(schema).fit_transform(pl.DataFrame({"u": values})).ids

    hashes = hash_strings(pa.array(values))
    assert ids.dtype == np.int32
    assert ids[:, 0].tolist() == (FIRST_ID + hashes % np.uint64(MAX_BUCKETS)).tolist()
    assert ids.max() > 2**30  # about half of them, were the hashes uniform


# The child skips the package __init__ (which imports torch) so it starts in about a second;
# the feature code it runs is the same.
_CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys, types
    package = types.ModuleType("widedeep")
    package.__path__ = list(importlib.util.find_spec("widedeep").submodule_search_locations)
    sys.modules["widedeep"] = package
    import polars as pl
    from widedeep.features.preprocessor import Preprocessor
    from widedeep.features.schema import FIRST_ID, MAX_BUCKETS, FeatureSchema

    schema = FeatureSchema.from_dict(json.loads({schema!r}))
    frame = pl.DataFrame(json.loads({frame!r}))
    ids = Preprocessor(schema).fit_transform(frame).ids.tolist()
    print(json.dumps({{"ids": ids, "salted": hash("widedeep")}}))
    """
)


def test_feature_ids_are_identical_under_another_pythonhashseed() -> None:
    schema = {
        "features": [
            {"name": "user", "kind": "hashed", "num_buckets": 97},
            {"name": "city", "kind": "hashed", "num_buckets": 1 << 30},
            {"name": "uc", "kind": "cross", "features": ["user", "city"], "num_buckets": 1 << 30},
        ]
    }
    frame = {"user": ["alice", "bob", "日本", ""], "city": ["paris", "köln", "x" * 300, "a"]}
    here = (
        Preprocessor(FeatureSchema.from_dict(schema))
        .fit_transform(pl.DataFrame(frame))
        .ids.tolist()
    )
    code = _CHILD.format(schema=json.dumps(schema), frame=json.dumps(frame))
    seed = "4242" if os.environ.get("PYTHONHASHSEED") != "4242" else "17"

    child = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["salted"] != hash("widedeep")  # the child's str hash really differs
    assert result["ids"] == here
