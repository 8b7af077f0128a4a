"""A synthetic Criteo-shaped click log: a label, 13 count fields and 26 categorical fields.

The columns look like the Criteo display-ads data set: ``I1``..``I13`` are log-normal counts
(a different scale per field, 5-20% missing), ``C1``..``C26`` are hashed-looking string ids
drawn from Zipf distributions over vocabularies spread from about 10 to ``max_vocabulary``.

The label comes from a planted logit with the structure Wide & Deep is built for:

* memorizable: for a few field pairs (``CROSSES``), a sparse random set of specific pairs of
  frequent ids adds a large bonus — a cross feature of the two fields can learn each pair;
* generalizable: the ids of a handful of fields (``LATENT_FIELDS``) have latent vectors, and the
  logit sums ``tanh`` of their pairwise dot products; a smooth nonlinear function of a few
  log-transformed count fields adds more; every id also has a small bias of its own.

The bias is calibrated on a sample so that about ``TARGET_RATE`` of the rows are clicks.
Rows are generated in chunks and streamed to Parquet, so memory stays bounded (only tables of
size O(vocabulary) per field are kept). Each kind of draw has its own child generator, drawn
row-major, so the rows do not depend on ``chunk_rows``; the test rows continue the same streams
after the training rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from widedeep.errors import ConfigError

NUMERIC_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL_FIELDS = tuple(f"C{i}" for i in range(1, 27))
MIN_VOCABULARY = 10
MAX_VOCABULARY = 100_000_000
ZIPF_EXPONENTS = (1.1, 1.3)
MISSING_RATES = (0.05, 0.20)
LOG_MEANS = (0.5, 6.0)  # of the count fields: medians from about 1 to about 400
LOG_SCALES = (0.7, 1.5)
ID_BIAS_SCALES = (0.05, 0.3)
CROSSES = (("C1", "C2"), ("C3", "C5"), ("C7", "C9"))
CROSS_TOP = 16  # planted pairs are among the CROSS_TOP most frequent ids of each field
CROSS_DENSITY = 0.1
CROSS_BONUS = 2.5
LATENT_FIELDS = ("C4", "C6", "C8", "C10", "C11", "C13")
LATENT_DIM = 6
LATENT_WEIGHT = 0.3
NONLINEAR_FIELDS = ("I1", "I3", "I5", "I6")
TARGET_RATE = 0.25
CALIBRATION_ROWS = 50_000

SCHEMA = pa.schema(
    [("label", pa.int8())]
    + [(name, pa.float64()) for name in NUMERIC_FIELDS]
    + [(name, pa.string()) for name in CATEGORICAL_FIELDS]
)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


@dataclass(frozen=True)
class CtrFiles:
    """Where a generated click log was written, and how it was made."""

    folder: Path
    train: Path
    test: Path
    positive_rate: float  # of the training rows
    settings: dict[str, int]


@dataclass(frozen=True)
class _World:
    """The hidden state of the planted model (never written out); index j is field C{j+1}."""

    vocabulary_sizes: NDArray[np.int64]  # (26,)
    cumulative: list[NDArray[np.float64]]  # (V_j,) Zipf distribution over ranks, cumulative
    tokens: list[pa.StringArray]  # (V_j,) rank -> string id
    id_bias: list[NDArray[np.float32]]  # (V_j,)
    latent: list[NDArray[np.float32]]  # per LATENT_FIELDS: (V_j, LATENT_DIM)
    crosses: list[NDArray[np.bool_]]  # per CROSSES: (K_a + 1, K_b + 1) planted rank pairs
    log_means: NDArray[np.float64]  # (13,)
    log_scales: NDArray[np.float64]  # (13,)
    missing_rates: NDArray[np.float64]  # (13,)


@dataclass(frozen=True)
class _Streams:
    """One child generator per kind of draw, so the rows do not depend on the chunking."""

    numeric: np.random.Generator
    missing: np.random.Generator
    categorical: np.random.Generator
    label: np.random.Generator

    @classmethod
    def spawn(cls, rng: np.random.Generator) -> _Streams:
        numeric, missing, categorical, label = rng.spawn(4)
        return cls(numeric, missing, categorical, label)


@dataclass(frozen=True)
class _Rows:
    counts: NDArray[np.float64]  # (N, 13) before masking
    missing: NDArray[np.bool_]  # (N, 13)
    ranks: list[NDArray[np.int64]]  # 26 x (N,)
    score: NDArray[np.float64]  # (N,) the planted logit without the calibrated bias


def _check(
    rows: object, test_rows: object, seed: object, chunk_rows: object, max_vocabulary: object
) -> None:
    problems = []
    for name, value, low in (
        ("rows", rows, 1),
        ("test_rows", test_rows, 0),
        ("seed", seed, 0),
        ("chunk_rows", chunk_rows, 1),
        ("max_vocabulary", max_vocabulary, MIN_VOCABULARY),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            problems.append(f"{name} must be an integer, got {value!r}")
        elif value < low:
            problems.append(f"{name} must be >= {low}, got {value}")
    if isinstance(max_vocabulary, int | np.integer) and max_vocabulary > MAX_VOCABULARY:
        problems.append(f"max_vocabulary must be <= {MAX_VOCABULARY:_}, got {max_vocabulary}")
    if problems:
        raise ConfigError("ctr: " + "; ".join(problems))


def _zipf_cumulative(size: int, exponent: float) -> NDArray[np.float64]:
    """Cumulative Zipf distribution over ranks 0..size-1, ending in exactly 1.0."""
    cumulative = np.cumsum(np.arange(1, size + 1, dtype=np.float64) ** -exponent)
    cumulative /= cumulative[-1]
    cumulative[-1] = 1.0
    return cumulative


def _mix32(values: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """A bijective 32-bit integer hash (lowbias32), so distinct ids stay distinct."""
    x = values.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _tokens(field: str, ids: NDArray[np.int64], salt: int) -> pa.StringArray:
    """Hashed-looking string ids, e.g. "C7_5f1a2b3c", built as Arrow buffers without a loop."""
    hashed = _mix32(ids.astype(np.uint32) ^ np.uint32(salt))
    prefix = np.frombuffer(f"{field}_".encode(), dtype=np.uint8)
    width = len(prefix) + 8
    chars = np.empty((len(ids), width), dtype=np.uint8)
    chars[:, : len(prefix)] = prefix
    chars[:, len(prefix) :] = _HEX[(hashed[:, None] >> _NIBBLE_SHIFTS) & np.uint32(0xF)]
    offsets = np.arange(len(ids) + 1, dtype=np.int32) * width
    return pa.StringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(chars))


def _build_world(max_vocabulary: int, rng: np.random.Generator) -> _World:
    fields = len(CATEGORICAL_FIELDS)
    # Sizes log-uniformly spread from MIN_VOCABULARY to max_vocabulary, in a seeded order.
    sizes = np.round(np.geomspace(MIN_VOCABULARY, max_vocabulary, fields)).astype(np.int64)
    sizes = rng.permutation(sizes)
    exponents = rng.uniform(*ZIPF_EXPONENTS, fields)
    salts = rng.integers(0, 2**32, fields)
    bias_scales = rng.uniform(*ID_BIAS_SCALES, fields)
    cumulative, tokens, id_bias = [], [], []
    for j, (field, size) in enumerate(zip(CATEGORICAL_FIELDS, sizes, strict=True)):
        cumulative.append(_zipf_cumulative(int(size), float(exponents[j])))
        # Rank -> id through a seeded permutation, so the frequent ids are not 0, 1, 2, ...
        tokens.append(_tokens(field, rng.permutation(int(size)), int(salts[j])))
        id_bias.append(rng.normal(0.0, bias_scales[j], int(size)).astype(np.float32))
    latent = [
        rng.standard_normal((int(sizes[CATEGORICAL_FIELDS.index(f)]), LATENT_DIM)).astype(
            np.float32
        )
        for f in LATENT_FIELDS
    ]
    crosses = []
    for a, b in CROSSES:
        top_a = min(CROSS_TOP, int(sizes[CATEGORICAL_FIELDS.index(a)]))
        top_b = min(CROSS_TOP, int(sizes[CATEGORICAL_FIELDS.index(b)]))
        planted = np.zeros((top_a + 1, top_b + 1), dtype=bool)  # last row/column: any other id
        planted[:top_a, :top_b] = rng.random((top_a, top_b)) < CROSS_DENSITY
        if not planted.any():
            planted[rng.integers(top_a), rng.integers(top_b)] = True
        crosses.append(planted)
    return _World(
        vocabulary_sizes=sizes,
        cumulative=cumulative,
        tokens=tokens,
        id_bias=id_bias,
        latent=latent,
        crosses=crosses,
        log_means=rng.uniform(*LOG_MEANS, len(NUMERIC_FIELDS)),
        log_scales=rng.uniform(*LOG_SCALES, len(NUMERIC_FIELDS)),
        missing_rates=rng.uniform(*MISSING_RATES, len(NUMERIC_FIELDS)),
    )


def _draw(world: _World, rows: int, streams: _Streams) -> _Rows:
    """The next ``rows`` rows of every stream, with their planted logit (bias excluded)."""
    normal = streams.numeric.standard_normal((rows, len(NUMERIC_FIELDS)))
    counts = np.floor(np.exp(world.log_means + world.log_scales * normal))
    missing = streams.missing.random((rows, len(NUMERIC_FIELDS))) < world.missing_rates
    # Zipf ids by inverse-CDF sampling: exact for a finite vocabulary and one binary search per
    # draw. rng.zipf is unbounded: clipping it piles the tail onto the last id, and rejecting
    # draws past the vocabulary wastes many of them at exponents near 1.
    uniform = streams.categorical.random((rows, len(CATEGORICAL_FIELDS)))
    ranks = [
        np.searchsorted(cumulative, uniform[:, j], side="right").astype(np.int64)
        for j, cumulative in enumerate(world.cumulative)
    ]
    del uniform
    score = np.zeros(rows, dtype=np.float64)
    for bias, rank in zip(world.id_bias, ranks, strict=True):
        score += bias[rank]
    for (a, b), planted in zip(CROSSES, world.crosses, strict=True):
        rank_a = np.minimum(ranks[CATEGORICAL_FIELDS.index(a)], planted.shape[0] - 1)
        rank_b = np.minimum(ranks[CATEGORICAL_FIELDS.index(b)], planted.shape[1] - 1)
        score += CROSS_BONUS * planted[rank_a, rank_b]
    vectors = [
        table[ranks[CATEGORICAL_FIELDS.index(f)]]
        for f, table in zip(LATENT_FIELDS, world.latent, strict=True)
    ]
    for i in range(len(vectors)):
        for k in range(i + 1, len(vectors)):
            dot = np.einsum("nd,nd->n", vectors[i], vectors[k]) / np.sqrt(LATENT_DIM)
            score += LATENT_WEIGHT * np.tanh(dot)
    a, b, c, d = (
        (np.log1p(counts[:, k]) - world.log_means[k]) / world.log_scales[k]
        for k in (NUMERIC_FIELDS.index(f) for f in NONLINEAR_FIELDS)
    )
    score += 0.8 * np.sin(1.5 * a) + 0.6 * np.tanh(b) * np.tanh(c) - 0.25 * d**2
    return _Rows(counts=counts, missing=missing, ranks=ranks, score=score)


def _calibrate(scores: NDArray[np.float64]) -> float:
    """The bias b with mean(sigmoid(b + scores)) == TARGET_RATE, by bisection."""
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(middle + scores)))) < TARGET_RATE:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _table(world: _World, drawn: _Rows, labels: NDArray[np.int8]) -> pa.Table:
    columns: list[pa.Array] = [pa.array(labels, pa.int8())]
    for k in range(len(NUMERIC_FIELDS)):
        columns.append(
            pa.array(
                np.ascontiguousarray(drawn.counts[:, k]),
                pa.float64(),
                mask=np.ascontiguousarray(drawn.missing[:, k]),
            )
        )
    for tokens, rank in zip(world.tokens, drawn.ranks, strict=True):
        columns.append(tokens.take(pa.array(rank)))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _write(
    path: Path, world: _World, streams: _Streams, bias: float, rows: int, chunk_rows: int
) -> int:
    """Stream ``rows`` rows to ``path`` chunk by chunk; returns the number of clicks."""
    positives = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for start in range(0, rows, chunk_rows):
            size = min(chunk_rows, rows - start)
            drawn = _draw(world, size, streams)
            probs = 1.0 / (1.0 + np.exp(-(bias + drawn.score)))
            labels = (streams.label.random(size) < probs).astype(np.int8)
            writer.write_table(_table(world, drawn, labels))
            positives += int(labels.sum())
    return positives


def make_ctr(
    output: str | Path,
    *,
    rows: int = 1_000_000,
    test_rows: int = 200_000,
    seed: int = 0,
    chunk_rows: int = 500_000,
    max_vocabulary: int = 1_000_000,
) -> CtrFiles:
    """Write train.parquet, test.parquet (+ settings.json) of a synthetic click log to ``output``.

    Same arguments, same files: every draw comes from one seeded generator, and ``chunk_rows``
    only bounds memory (the rows do not depend on it). The test rows come from the same
    distribution, drawn after the training rows.
    """
    _check(rows, test_rows, seed, chunk_rows, max_vocabulary)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    world = _build_world(max_vocabulary, rng)
    bias = _calibrate(_draw(world, CALIBRATION_ROWS, _Streams.spawn(rng)).score)
    streams = _Streams.spawn(rng)
    train_path, test_path = folder / "train.parquet", folder / "test.parquet"
    positives = _write(train_path, world, streams, bias, rows, chunk_rows)
    test_positives = _write(test_path, world, streams, bias, test_rows, chunk_rows)
    settings = {
        "rows": rows,
        "test_rows": test_rows,
        "seed": seed,
        "max_vocabulary": max_vocabulary,
    }
    rate = positives / rows
    summary = {
        **settings,
        "positive_rate": rate,
        "test_positive_rate": test_positives / test_rows if test_rows else None,
        "vocabulary_sizes": dict(
            zip(CATEGORICAL_FIELDS, world.vocabulary_sizes.tolist(), strict=True)
        ),
    }
    (folder / "settings.json").write_text(json.dumps(summary, indent=1))
    return CtrFiles(
        folder=folder, train=train_path, test=test_path, positive_rate=rate, settings=settings
    )
