"""Scoring throughput of top-K recommendation: users x catalog pairs per second.

The issue's target: 1,000 users x 10,000 items (10M pairs) on 2 CPU cores in <= 30 s.
Three ways are timed in the same run, on the same bundle and users:

* ``top_k``       the library path: each side encoded once, pairs assembled by indexing;
* ``full forward`` the model's plain forward on pairs already encoded (no encoding cost,
                  but every field computed per pair);
* ``joined``      the naive path: a cross-joined (user, item) table through Bundle.predict,
                  timed on a slice of users and reported per pair.

Run:  .venv/bin/python benchmarks/recommend_throughput.py [--users 1000 --items 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from widedeep.bundle import load_bundle
from widedeep.data.appstore import make_appstore
from widedeep.data.interactions import RecTables
from widedeep.data.tensors import TensorTable
from widedeep.demo import appstore_config
from widedeep.recommend import load_catalog, top_k
from widedeep.training.loop import train


def build_bundle(folder: Path, users: int, items: int) -> tuple[Path, Path, Path]:
    """A real bundle trained for one epoch on a small app store with ``items`` apps."""
    files = make_appstore(folder / "data", users=users, apps=items, impressions=50_000, seed=0)
    config = appstore_config(files)
    training = config.train.model_copy(update={"epochs": 1, "progress": False})
    config = config.model_copy(update={"train": training})
    result = train(config, folder / "run")
    return result.bundle_dir, files.users, files.apps


def timed(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--joined-users", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pairs = args.users * args.items
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir, users_path, items_path = build_bundle(Path(tmp), args.users, args.items)
        bundle = load_bundle(bundle_dir)
        users = pl.read_parquet(users_path).head(args.users)

        library = timed(lambda: top_k(bundle, users, k=args.k), args.repeats)

        catalog = load_catalog(bundle)
        user_side = bundle.preprocessor.encode_side(users, list(users.columns))
        block = min(args.users, 26)
        encoded = bundle.preprocessor.encode_pairs(
            [
                (user_side, np.repeat(np.arange(block), len(catalog))),
                (catalog.side, np.tile(np.arange(len(catalog)), block)),
            ]
        )
        table = TensorTable.from_encoded(encoded)

        @torch.no_grad()
        def model_only() -> None:
            for start in range(0, len(table), 65_536):
                bundle.model.logits(table.slice(start, min(start + 65_536, len(table))))

        floor = timed(model_only, args.repeats) * pairs / len(table)

        items = pl.read_parquet(items_path)
        few = users.head(args.joined_users)
        tables = RecTables(few, items, "user_id", "app_id")

        def joined() -> None:
            cross = few.select("user_id").join(items.select("app_id"), how="cross")
            bundle.predict(tables.join(cross))

        naive = timed(joined, args.repeats) * args.users / args.joined_users

    print(
        f"scoring {args.users:,} users x {args.items:,} items = {pairs:,} pairs, k={args.k}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'path':<14}{'seconds':>10}{'pairs/s':>14}{'vs top_k':>10}")
    for name, seconds in (("top_k", library), ("full forward", floor), ("joined", naive)):
        print(f"{name:<14}{seconds:>10.1f}{pairs / seconds:>14,.0f}{seconds / library:>10.2f}x")


if __name__ == "__main__":
    main()
