"""A synthetic app store: users, apps and install-labelled impressions from a planted model.

The planted model has both kinds of structure that Wide & Deep is built for:

* memorizable: specific (installed app X, shown app Y) "companion" pairs add a large bonus to
  the install logit — a cross feature installed_apps x app_id can learn each pair;
* generalizable: users and apps have latent vectors driven by their features (country,
  device, age; category, developer), so the deep part can share what it learns across users
  and apps it has seen rarely.

Impressions are generated in chunks and streamed to Parquet, so memory stays bounded from
ten thousand to a hundred million impressions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from widedeep.errors import ConfigError

LATENT_DIM = 8
COUNTRIES = 20
DEVICES = ("android_phone", "android_tablet", "ios_phone", "ios_tablet", "other")
AGE_BUCKETS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
CATEGORIES = 24
PRICE_BUCKETS = ("free", "low", "mid", "high")
PRICE_EFFECT = np.array([0.4, 0.0, -0.4, -0.9])
COMPANION_BONUS = 3.0
AFFINITY_WEIGHT = 1.6
START_TIMESTAMP = 1_700_000_000
DAYS = 30


@dataclass(frozen=True)
class AppStoreFiles:
    """Where a generated app store was written, and how it was made."""

    folder: Path
    users: Path
    apps: Path
    impressions: Path
    positive_rate: float
    settings: dict[str, int]


@dataclass(frozen=True)
class _World:
    """The hidden state of the planted model (never written out)."""

    user_vectors: NDArray[np.float64]  # (U, d)
    app_vectors: NDArray[np.float64]  # (A, d)
    category_of_app: NDArray[np.int64]  # (A,)
    category_preference: NDArray[np.float64]  # (U, C) cumulative, for sampling
    popularity: NDArray[np.float64]  # (A,) cumulative, for sampling
    apps_by_category: list[NDArray[np.int64]]
    app_bias: NDArray[np.float64]  # (A,)
    installed_offsets: NDArray[np.int64]  # (U + 1,) CSR over installed_apps
    installed_apps: NDArray[np.int64]
    installed_keys: NDArray[np.int64]  # sorted user * A + app, for membership tests
    companion_of: NDArray[np.int64]  # (A,) shown app Y -> its source X, or -1
    target_of: NDArray[np.int64]  # (A,) installed app X -> its companion Y, or -1


def _check(users: int, apps: int, impressions: int, chunk_rows: int) -> None:
    problems = []
    if users < 2:
        problems.append(f"users must be >= 2, got {users}")
    if apps < CATEGORIES:
        problems.append(f"apps must be >= {CATEGORIES} (one per category), got {apps}")
    if impressions < 1:
        problems.append(f"impressions must be >= 1, got {impressions}")
    if chunk_rows < 1:
        problems.append(f"chunk_rows must be >= 1, got {chunk_rows}")
    if problems:
        raise ConfigError("appstore: " + "; ".join(problems))


def _cumulative(weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise cumulative distribution of non-negative weights."""
    totals = weights.sum(axis=-1, keepdims=True)
    return np.cumsum(weights / totals, axis=-1)


def _sample_rows(
    cumulative: NDArray[np.float64], rows: NDArray[np.int64], rng: np.random.Generator
) -> NDArray[np.int64]:
    """One draw per entry of ``rows`` from the row's cumulative distribution."""
    draws = rng.random(len(rows))[:, None]
    picked = (cumulative[rows] < draws).sum(axis=1)
    return np.minimum(picked, cumulative.shape[1] - 1).astype(np.int64)


def _sample_in_category(
    world_popularity: NDArray[np.float64],
    apps_by_category: list[NDArray[np.int64]],
    categories: NDArray[np.int64],
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """An app of each given category, drawn by popularity within the category."""
    out = np.empty(len(categories), dtype=np.int64)
    for category in np.unique(categories):
        where = np.flatnonzero(categories == category)
        members = apps_by_category[category]
        weights = world_popularity[members]
        out[where] = rng.choice(members, size=len(where), p=weights / weights.sum())
    return out


def _build_world(
    users: int, apps: int, rng: np.random.Generator
) -> tuple[_World, pl.DataFrame, pl.DataFrame]:
    d = LATENT_DIM
    # Users: latent vector = sum of their features' vectors + individual taste.
    country = np.minimum(rng.zipf(1.6, users) - 1, COUNTRIES - 1)
    device = rng.choice(len(DEVICES), users, p=[0.45, 0.1, 0.3, 0.1, 0.05])
    age = rng.choice(len(AGE_BUCKETS), users, p=[0.08, 0.25, 0.3, 0.19, 0.11, 0.07])
    country_vec = rng.normal(0, 0.6, (COUNTRIES, d))
    device_vec = rng.normal(0, 0.5, (len(DEVICES), d))
    age_vec = rng.normal(0, 0.7, (len(AGE_BUCKETS), d))
    user_vectors = (
        country_vec[country] + device_vec[device] + age_vec[age] + rng.normal(0, 0.5, (users, d))
    )
    # Apps: latent vector = category + developer + own; every category has at least one app.
    category = np.concatenate(
        [np.arange(CATEGORIES), rng.integers(0, CATEGORIES, apps - CATEGORIES)]
    )
    rng.shuffle(category)
    developers = max(1, apps // 8)
    developer = rng.integers(0, developers, apps)
    category_vec = rng.normal(0, 1.0, (CATEGORIES, d))
    developer_vec = rng.normal(0, 0.4, (developers, d))
    app_vectors = category_vec[category] + developer_vec[developer] + rng.normal(0, 0.3, (apps, d))
    price = rng.choice(len(PRICE_BUCKETS), apps, p=[0.7, 0.15, 0.1, 0.05])
    rating = np.clip(np.round(rng.normal(3.9, 0.6, apps), 1), 1.0, 5.0)
    app_bias = PRICE_EFFECT[price] + 0.3 * (rating - 3.9)
    popularity = (1.0 / (1.0 + rng.permutation(apps)) ** 0.8).astype(np.float64)
    apps_by_category = [np.flatnonzero(category == c) for c in range(CATEGORIES)]

    preference = np.exp(user_vectors @ category_vec.T / np.sqrt(d))  # (U, C)
    category_preference = _cumulative(preference)

    # Installed apps: a Poisson count per user, drawn by category taste then popularity.
    counts = np.minimum(rng.poisson(6, users), 40)
    owner = np.repeat(np.arange(users), counts)
    chosen = _sample_in_category(
        popularity, apps_by_category, _sample_rows(category_preference, owner, rng), rng
    )
    keys = np.unique(owner * apps + chosen)
    owner, chosen = keys // apps, keys % apps
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=users))])

    # Companion pairs X -> Y: installing X makes installing Y much more likely.
    pairs = max(1, int(0.5 * apps))
    sources = rng.choice(apps, pairs, replace=False)
    targets = rng.permutation(np.setdiff1d(np.arange(apps), sources))[:pairs]
    pairs = min(len(sources), len(targets))
    companion_of = np.full(apps, -1, dtype=np.int64)
    target_of = np.full(apps, -1, dtype=np.int64)
    companion_of[targets[:pairs]] = sources[:pairs]
    target_of[sources[:pairs]] = targets[:pairs]

    world = _World(
        user_vectors=user_vectors,
        app_vectors=app_vectors,
        category_of_app=category,
        category_preference=category_preference,
        popularity=popularity,
        apps_by_category=apps_by_category,
        app_bias=app_bias,
        installed_offsets=offsets.astype(np.int64),
        installed_apps=chosen.astype(np.int64),
        installed_keys=keys.astype(np.int64),
        companion_of=companion_of,
        target_of=target_of,
    )
    app_ids = _ids("a", np.arange(apps), 6)
    installed = pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), pa.array(app_ids[chosen], pa.large_string())
    )
    users_frame = pl.DataFrame(
        {
            "user_id": _ids("u", np.arange(users), 8),
            "country": _ids("c", country, 2),
            "device": np.array(DEVICES)[device],
            "age_bucket": np.array(AGE_BUCKETS)[age],
            "installed_apps": pl.Series(installed),
        }
    )
    apps_frame = pl.DataFrame(
        {
            "app_id": app_ids,
            "category": _ids("cat", category, 2),
            "developer": _ids("dev", developer, 5),
            "price_bucket": np.array(PRICE_BUCKETS)[price],
            "rating": rating,
        }
    )
    return world, users_frame, apps_frame


def _ids(prefix: str, numbers: NDArray[np.integer], width: int) -> NDArray[np.str_]:
    """Zero-padded string ids, e.g. ("a", 7, 6) -> "a000007"."""
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), width))


def _has_installed(
    world: _World, users: NDArray[np.int64], apps: NDArray[np.int64], n_apps: int
) -> NDArray[np.bool_]:
    if not len(world.installed_keys):
        return np.zeros(len(users), dtype=bool)
    keys = users * n_apps + apps
    positions = np.searchsorted(world.installed_keys, keys)
    positions = np.minimum(positions, len(world.installed_keys) - 1)
    return (apps >= 0) & (world.installed_keys[positions] == keys)


def _impression_chunk(
    world: _World, start: int, rows: int, total: int, rng: np.random.Generator
) -> tuple[pa.Table, int]:
    n_users = world.user_vectors.shape[0]
    n_apps = world.app_vectors.shape[0]
    user = rng.integers(0, n_users, rows)
    mechanism = rng.random(rows)
    app = np.empty(rows, dtype=np.int64)
    # 10%: what the store pushes (popularity); 30%: anything (browsing, search);
    # 30%: the user's taste; 30%: companions of an app the user has.
    popular = mechanism < 0.1
    app[popular] = rng.choice(
        n_apps, int(popular.sum()), p=world.popularity / world.popularity.sum()
    )
    browse = (mechanism >= 0.1) & (mechanism < 0.4)
    app[browse] = rng.integers(0, n_apps, int(browse.sum()))
    taste = (mechanism >= 0.4) & (mechanism < 0.7)
    app[taste] = _sample_in_category(
        world.popularity,
        world.apps_by_category,
        _sample_rows(world.category_preference, user[taste], rng),
        rng,
    )
    companion = mechanism >= 0.7
    counts = np.diff(world.installed_offsets)[user[companion]]
    pick = world.installed_offsets[user[companion]] + (
        rng.random(int(companion.sum())) * np.maximum(counts, 1)
    ).astype(np.int64)
    if len(world.installed_apps):
        last = len(world.installed_apps) - 1
        source = np.where(counts > 0, world.installed_apps[np.minimum(pick, last)], -1)
    else:  # nobody has an app yet: no companion to show
        source = np.full(len(counts), -1, dtype=np.int64)
    target = np.where(source >= 0, world.target_of[np.maximum(source, 0)], -1)
    fallback = rng.integers(0, n_apps, len(target))
    app[companion] = np.where(target >= 0, target, fallback)

    affinity = np.einsum("ij,ij->i", world.user_vectors[user], world.app_vectors[app])
    affinity /= np.sqrt(LATENT_DIM)
    companion_hit = _has_installed(world, user, world.companion_of[app], n_apps)
    already = _has_installed(world, user, app, n_apps)
    logit = (
        -3.2
        + AFFINITY_WEIGHT * np.tanh(affinity / 2.0) * 2.0
        + COMPANION_BONUS * companion_hit
        + world.app_bias[app]
        - 4.0 * already
    )
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    span = DAYS * 86_400
    timestamp = START_TIMESTAMP + ((start + np.arange(rows)) * span) // max(total, 1)
    table = pa.table(
        {
            "user_id": pa.array(_ids("u", user, 8)),
            "app_id": pa.array(_ids("a", app, 6)),
            "timestamp": pa.array(timestamp.astype(np.int64)),
            "hour": pa.array(((timestamp // 3600) % 24).astype(np.int64)),
            "installed": pa.array(label),
        }
    )
    return table, int(label.sum())


def make_appstore(
    output: str | Path,
    *,
    users: int = 10_000,
    apps: int = 1_000,
    impressions: int = 300_000,
    seed: int = 0,
    chunk_rows: int = 500_000,
) -> AppStoreFiles:
    """Write users.parquet, apps.parquet and impressions.parquet (+ settings.json) to ``output``.

    Same arguments, same files: every draw comes from one seeded generator.
    """
    _check(users, apps, impressions, chunk_rows)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    world, users_frame, apps_frame = _build_world(users, apps, rng)
    users_path, apps_path = folder / "users.parquet", folder / "apps.parquet"
    impressions_path = folder / "impressions.parquet"
    users_frame.write_parquet(users_path)
    apps_frame.write_parquet(apps_path)
    positives = 0
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, impressions, chunk_rows):
            rows = min(chunk_rows, impressions - start)
            table, chunk_positives = _impression_chunk(world, start, rows, impressions, rng)
            positives += chunk_positives
            if writer is None:
                writer = pq.ParquetWriter(impressions_path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    settings = {"users": users, "apps": apps, "impressions": impressions, "seed": seed}
    rate = positives / impressions
    (folder / "settings.json").write_text(json.dumps({**settings, "positive_rate": rate}, indent=1))
    return AppStoreFiles(
        folder=folder,
        users=users_path,
        apps=apps_path,
        impressions=impressions_path,
        positive_rate=rate,
        settings=settings,
    )
