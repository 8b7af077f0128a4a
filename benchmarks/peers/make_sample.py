"""A small Criteo-shaped train/test pair of Parquet files with a planted signal.

Columns as in Criteo's display-ads data: ``label`` (0/1), ``I1..I13`` (Float64, log-normal,
10% nulls) and ``C1..C26`` (Zipf-distributed 8-hex-digit strings, a few nulls). The label is
drawn from a logistic model over six categorical fields and two numerics, so a model that
learns reaches an AUC well above 0.5. Needs only numpy and polars (any of our venvs).

Run:  .venv/bin/python benchmarks/peers/make_sample.py --out-dir bench-scratch/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
SIGNAL_CATEGORICAL = CATEGORICAL[:6]
SIGNAL_NUMERIC = NUMERIC[:2]
NUMERIC_NULL_RATE = 0.10
CATEGORICAL_NULL_RATE = 0.03
BASE_LOGIT = -2.2  # a click rate near 30%; Criteo has about 25%


def cardinalities(rng: np.random.Generator) -> list[int]:
    """Vocabulary size per categorical field: a few tiny, most in the hundreds to 50k."""
    return [int(c) for c in np.exp(rng.uniform(np.log(4), np.log(50_000), len(CATEGORICAL)))]


def zipf_ids(rng: np.random.Generator, rows: int, cardinality: int) -> np.ndarray:
    """Ids in [0, cardinality) with a Zipf head and a long tail."""
    return (rng.zipf(1.3, rows) - 1) % cardinality


def as_hex(ids: np.ndarray, field: int) -> np.ndarray:
    """Criteo-looking 8-hex-digit strings, distinct per field."""
    hashed = (ids.astype(np.uint64) * np.uint64(2_654_435_761) + np.uint64(field)) % np.uint64(
        2**32
    )
    return np.char.mod("%08x", hashed)


def with_nulls(values: np.ndarray, rate: float, rng: np.random.Generator) -> list[object]:
    """``values`` as a list with about ``rate`` of its entries replaced by None."""
    mask = rng.random(len(values)) < rate
    out: list[object] = values.tolist()
    for row in np.flatnonzero(mask):
        out[row] = None
    return out


def make_table(rows: int, seed: int) -> pl.DataFrame:
    """One Criteo-shaped table of ``rows`` rows; the label carries a learnable signal."""
    rng = np.random.default_rng(seed)
    logits = np.full(rows, BASE_LOGIT)
    columns: dict[str, object] = {}
    for name in NUMERIC:
        values = rng.lognormal(mean=1.0, sigma=1.5, size=rows)
        if name in SIGNAL_NUMERIC:
            logits += 0.4 * (np.log1p(values) - 1.5)
        columns[name] = pl.Series(name, with_nulls(values, NUMERIC_NULL_RATE, rng), pl.Float64)
    for field, (name, cardinality) in enumerate(zip(CATEGORICAL, cardinalities(rng), strict=True)):
        ids = zipf_ids(rng, rows, cardinality)
        if name in SIGNAL_CATEGORICAL:
            logits += rng.normal(0.0, 0.8, cardinality)[ids]
        strings = as_hex(ids, field)
        columns[name] = pl.Series(name, with_nulls(strings, CATEGORICAL_NULL_RATE, rng), pl.String)
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    return pl.DataFrame({"label": labels, **columns})


def main() -> None:
    """Write ``train.parquet`` and ``test.parquet`` under ``--out-dir``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--train-rows", type=int, default=50_000)
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = make_table(args.train_rows + args.test_rows, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table.head(args.train_rows).write_parquet(args.out_dir / "train.parquet")
    table.tail(args.test_rows).write_parquet(args.out_dir / "test.parquet")
    print(
        f"wrote {args.train_rows} + {args.test_rows} rows to {args.out_dir} "
        f"(click rate {table['label'].mean():.3f})"
    )


if __name__ == "__main__":
    main()
