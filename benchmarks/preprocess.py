"""Preprocessing speed: ``Preprocessor.fit_transform`` with the compiled string tables and
id stacking (the default) against the same code on Arrow's kernels, in one process,
alternating, on the benchmark's Criteo-shaped table:

    .venv/bin/python benchmarks/preprocess.py \\
        --train bench-scratch/data/ctr-1000000-200000-0/train.parquet --repeats 7

The table is read once, before timing (as in ``bench.py``, reading is not counted). Both
paths must give the same encoded table; the run stops if they do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import polars as pl
from run_widedeep import criteo_config

from widedeep.features import preprocessor, stacking, strings
from widedeep.features.preprocessor import EncodedTable, Preprocessor


@contextmanager
def arrow_kernels() -> Iterator[None]:
    """The preprocessor as it runs without numba: Arrow's hash kernels, numpy stacking."""
    saved = strings.ENABLED, stacking.AVAILABLE
    strings.ENABLED, stacking.AVAILABLE = False, False
    preprocessor._VOCABULARY_INDEXES.clear()
    try:
        yield
    finally:
        strings.ENABLED, stacking.AVAILABLE = saved
        preprocessor._VOCABULARY_INDEXES.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--hashed-buckets", type=int, default=0)
    args = parser.parse_args()
    config = criteo_config(
        argparse.Namespace(
            hashed_buckets=args.hashed_buckets,
            embedding_dim=16,
            optimizer="adam",
            lr=1e-3,
            hidden="256,128",
            epochs=1,
            batch_size=1024,
            threads=2,
            device="cpu",
            precision="fp32",
        ),
        args.train,
        args.train,
    )
    frame = pl.read_parquet(args.train)

    def timed() -> tuple[float, EncodedTable]:
        start = time.perf_counter()
        encoded = Preprocessor(config.feature_schema).fit_transform(frame)
        return time.perf_counter() - start, encoded

    timed()  # compiles (or loads) the loops
    seconds: dict[str, list[float]] = {"compiled": [], "arrow": []}
    for _ in range(args.repeats):
        took, ours = timed()
        seconds["compiled"].append(took)
        with arrow_kernels():
            took, theirs = timed()
        seconds["arrow"].append(took)
        if not (np.array_equal(ours.ids, theirs.ids) and np.array_equal(ours.dense, theirs.dense)):
            raise SystemExit("the compiled and the Arrow paths encoded the table differently")
        del ours, theirs
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    report = {
        "rows": frame.height,
        "repeats": args.repeats,
        "median_seconds": medians,
        "rows_per_s": {name: frame.height / s for name, s in medians.items()},
        "speedup_over_arrow": medians["arrow"] / medians["compiled"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
