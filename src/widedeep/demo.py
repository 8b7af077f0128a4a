"""The two demos: census income (CTR-style) and app-store recommendation, end to end offline."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from widedeep.bundle import load_bundle
from widedeep.config import RunConfig, load_config
from widedeep.data.appstore import AppStoreFiles, make_appstore
from widedeep.ranking import RankingResult, evaluate_ranking
from widedeep.recommend import top_k
from widedeep.training.loop import TrainResult, train, train_ablation


def packaged_config(name: str) -> RunConfig:
    """A config shipped inside the package (``configs/<name>.yaml``)."""
    source = resources.files("widedeep") / "configs" / f"{name}.yaml"
    with resources.as_file(source) as path:
        return load_config(path)


def census_demo(output: str | Path, compare: bool = False) -> dict[str, TrainResult]:
    """Wide & Deep on the bundled Adult data; with ``compare``, wide-only and deep-only too."""
    config = packaged_config("adult")
    if compare:
        return train_ablation(config, output)
    return {"wide_deep": train(config, output)}


def appstore_config(files: AppStoreFiles) -> RunConfig:
    """The packaged app-store config, reading the generated ``files`` instead of the builtin."""
    config = packaged_config("appstore")
    data = config.data.model_copy(
        update={
            "builtin": None,
            "train": str(files.impressions),
            "users": str(files.users),
            "items": str(files.apps),
        }
    )
    return config.model_copy(update={"data": data})


@dataclass(frozen=True)
class AppStoreDemo:
    """The ablation runs, the ranking evaluation and a few users' recommendations."""

    runs: dict[str, TrainResult]
    ranking: RankingResult
    recommendations: pl.DataFrame


def appstore_demo(output: str | Path, users_to_show: int = 2, k: int = 5) -> AppStoreDemo:
    """Generate the default app store, train wide / deep / W&D, rank, and recommend."""
    output = Path(output)
    files = make_appstore(output / "data")
    config = appstore_config(files)
    data = config.data
    runs = train_ablation(config, output)
    best = runs["wide_deep"]
    bundle = load_bundle(best.bundle_dir)
    interactions = best.run_dir / "interactions"
    ranking = evaluate_ranking(
        bundle,
        interactions / "test.parquet",
        files.users,
        train=interactions / "train.parquet",
        protocol="full",
        k=10,
    )
    test_users = (
        pl.read_parquet(interactions / "test.parquet")
        .get_column(data.user_key)
        .unique(maintain_order=True)
        .head(users_to_show)
    )
    users = pl.read_parquet(files.users).filter(pl.col(data.user_key).is_in(test_users.to_list()))
    recommendations = top_k(bundle, users, k=k, exclude_seen=interactions / "train.parquet")
    return AppStoreDemo(runs=runs, ranking=ranking, recommendations=recommendations)
