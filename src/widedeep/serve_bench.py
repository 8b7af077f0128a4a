"""Serving latency in-process, as the paper's Table 2: one request's candidates scored as
``threads`` x ``micro_batch`` (1 x 200, 2 x 100, 4 x 50), p50 and p99 per request.

Each request goes through the app that ``widedeep serve`` runs (``build_app``), driven
in-process by httpx's ASGI transport: JSON parsing, validation, ``Bundle.encode``, the
micro-batches on the app's scoring threads and the JSON answer are all timed; the network
and uvicorn are not (``benchmarks/serve_load.py`` measures those over loopback). One request
is in flight at a time, so requests/s is the rate of one client waiting for each answer.

    table = request_table(bundle)                      # the rows requests are made of
    rows = bench_serve(bundle, table, parse_layouts("1x200,2x100,4x50"), [200, 50])
    print(format_table(rows))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from widedeep.bundle import Bundle
from widedeep.data.sources import load_splits
from widedeep.errors import ConfigError
from widedeep.serve import ServeSettings, build_app
from widedeep.tables import TableSource, describe_source

try:
    import httpx
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"bench-serve needs httpx ({error}): pip install httpx") from None

ROUTE = "/v1/score"
PATH = (
    "in-process through the app (httpx.ASGITransport -> FastAPI POST /v1/score: JSON parsing, "
    "validation, encoding, micro-batches on the app's scoring threads, JSON answer); "
    "no sockets, no uvicorn"
)
HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class Layout:
    """How a request's candidates are scored: ``threads`` threads, ``micro_batch`` rows each."""

    threads: int
    micro_batch: int


@dataclass(frozen=True)
class LatencyRow:
    """One line of the table: the latency of requests of ``candidates`` rows in one layout."""

    candidates: int
    threads: int
    micro_batch: int
    torch_threads: int
    requests: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float


@dataclass(frozen=True)
class RequestTable:
    """The input columns that requests are cut from, and where they came from."""

    frame: pl.DataFrame
    source: str


def _positive(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) > 0 else None


def parse_layouts(text: str, option: str = "--threads-batches") -> list[Layout]:
    """``'1x200,2x100'`` as layouts; anything else is a ConfigError naming ``option``."""
    layouts = []
    for part in text.split(","):
        threads, x, micro_batch = part.strip().lower().partition("x")
        t, b = _positive(threads), _positive(micro_batch)
        if not x or t is None or b is None:
            raise ConfigError(
                f"{option}: expected THREADSxMICRO_BATCH with positive integers, comma "
                f"separated (like 1x200,2x100,4x50), got {part.strip()!r} in {text!r}"
            )
        layouts.append(Layout(t, b))
    return layouts


def parse_counts(text: str, option: str = "--candidates") -> list[int]:
    """``'200,50'`` as positive integers; anything else is a ConfigError naming ``option``."""
    counts = [_positive(part.strip()) for part in text.split(",")]
    if any(c is None for c in counts):
        raise ConfigError(
            f"{option}: expected positive integers, comma separated (like 200,50), got {text!r}"
        )
    return [c for c in counts if c is not None]


def scaled_layouts(layouts: list[Layout], candidates: list[int]) -> list[tuple[int, Layout]]:
    """Each layout at each candidate count, largest count first.

    The layouts are stated for the largest count; at a smaller one each keeps its threads and
    its number of micro-batches per request, so 1x200, 2x100, 4x50 become 1x50, 2x25, 4x13 at
    50 candidates. A layout that repeats at a count is run once.
    """
    largest, out = max(candidates), []
    for count in sorted(set(candidates), reverse=True):
        for layout in layouts:
            batches = math.ceil(largest / layout.micro_batch)
            scaled = Layout(layout.threads, math.ceil(count / batches))
            if (count, scaled) not in out:
                out.append((count, scaled))
    return out


# ------------------------------------------------------------------------ request rows


def _metadata(bundle: Bundle) -> dict[str, Any]:
    """The app's /v1/metadata: the input columns a request must give, with their types."""

    async def get() -> dict[str, Any]:
        transport = _transport(build_app(bundle, ServeSettings(threads=1)))
        async with _quiet_client(transport) as client:
            response = await client.get("/v1/metadata")
            response.raise_for_status()
            return dict(response.json())

    return asyncio.run(get())


def _synthesize(bundle: Bundle, columns: list[dict[str, Any]], n: int, seed: int) -> pl.DataFrame:
    """``n`` rows: numbers in [0, 10), ids from the fitted vocabularies (else made up)."""
    rng, state = np.random.default_rng(seed), bundle.preprocessor.state_ or {}
    data: dict[str, pl.Series] = {}
    for column in columns:
        name, kind = column["name"], column["type"]
        if kind == "number":
            data[name] = pl.Series(name, rng.uniform(0.0, 10.0, n).round(2))
        elif kind == "integer":
            data[name] = pl.Series(name, rng.integers(0, 10, n))
        else:
            known = [state.get(f, {}).get("vocabulary") for f in column["features"]]
            tokens = next((v for v in known if v), None) or [f"{name}{k}" for k in range(10)]
            picked = [str(tokens[k]) for k in rng.integers(0, len(tokens), n)]
            if kind == "strings":
                data[name] = pl.Series(name, [[t] for t in picked], dtype=pl.List(pl.String))
            else:
                data[name] = pl.Series(name, picked, dtype=pl.String)
    return pl.DataFrame(list(data.values()))


def request_table(
    bundle: Bundle, data: TableSource | None = None, *, synthetic_rows: int = 1000, seed: int = 0
) -> RequestTable:
    """The input columns of ``data``; without it, the bundle's test file if its config names
    one that exists, the test split of its builtin table, else rows made from the schema."""
    columns = _metadata(bundle)["columns"]
    names = [c["name"] for c in columns]
    config = bundle.config.data
    label = bundle.preprocessor.schema.label
    frame: pl.DataFrame | None = None
    if data is not None:
        frame, source = bundle.preprocessor.read(data), describe_source(data)
        if frame.height == 0:
            raise ConfigError(f"{source}: has no rows to make requests of")
    elif config.test is not None and Path(config.test).exists():
        frame, source = bundle.preprocessor.read(config.test), f"{config.test} (the test file)"
    elif config.builtin is not None and not config.is_recommendation and label is not None:
        frame = load_splits(config, label, bundle.preprocessor.schema.id_columns).test
        source = (
            f"the test split of the builtin '{config.builtin}' table "
            f"(split_seed {config.split_seed}, test_fraction {config.test_fraction})"
        )
    if frame is None or frame.height == 0:
        frame = _synthesize(bundle, columns, synthetic_rows, seed)
        source = f"{synthetic_rows} rows made from the schema (seed {seed})"
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ConfigError(
            f"{source}: has no column(s) {missing}; a request needs every input column {names}"
        )
    return RequestTable(frame.select(names), source)


def request_bodies(table: RequestTable, candidates: int, count: int) -> list[bytes]:
    """``count`` columnar /v1/score bodies of ``candidates`` consecutive rows (wrapping)."""
    frame = table.frame.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None))
    bodies = []
    for i in range(count):
        rows = (i * candidates + np.arange(candidates)) % frame.height
        part = frame.select(pl.all().gather(rows))
        columns = {name: part.get_column(name).to_list() for name in part.columns}
        bodies.append(json.dumps({"columns": columns}).encode())
    return bodies


# --------------------------------------------------------------------------- timing


def _transport(app: Any) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=app)


def _client(transport: httpx.ASGITransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url="http://bench")


@contextlib.asynccontextmanager
async def _quiet_client(transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose per-request INFO log lines (httpx logs each one) are not written: they
    would be timed with the requests."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        async with _client(transport) as client:
            yield client
    finally:
        logger.setLevel(level)


async def _time_requests(
    app: Any, bodies: list[bytes], warmup: int, requests: int
) -> tuple[list[float], float]:
    """Seconds per timed request, one in flight at a time, after ``warmup`` untimed ones;
    and the seconds all the timed requests took."""
    latencies, began = [], 0.0
    async with _quiet_client(_transport(app)) as client:
        for i in range(warmup + requests):
            if i == warmup:
                began = time.perf_counter()
            start = time.perf_counter()
            response = await client.post(ROUTE, content=bodies[i % len(bodies)], headers=HEADERS)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise ConfigError(
                    f"POST {ROUTE} answered {response.status_code}: {response.text:.300}"
                )
            if i >= warmup:
                latencies.append(elapsed)
        return latencies, time.perf_counter() - began


def bench_serve(
    bundle: Bundle,
    table: RequestTable,
    layouts: list[Layout],
    candidates: list[int],
    *,
    requests: int = 200,
    warmup: int = 20,
) -> list[LatencyRow]:
    """Latency of /v1/score requests of each candidate count in each layout (see
    ``scaled_layouts``), timed through the app in-process; warm-up requests are not timed.

    Torch's intra-op threads are ``cores // threads``, as ``widedeep serve`` sets them; the
    count in place before is restored.
    """
    if requests < 1 or warmup < 0:
        raise ConfigError(
            f"bench-serve: requests must be at least 1 and warmup at least 0, "
            f"got {requests} and {warmup}"
        )
    if not layouts or not candidates:
        raise ConfigError("bench-serve: give at least one layout and one candidate count")
    cores, before = os.cpu_count() or 1, torch.get_num_threads()
    rows = []
    try:
        for count, layout in scaled_layouts(layouts, candidates):
            bodies = request_bodies(table, count, min(warmup + requests, 64))
            settings = ServeSettings(
                threads=layout.threads,
                micro_batch=layout.micro_batch,
                max_rows=max(ServeSettings.max_rows, count),
                max_body_bytes=max(ServeSettings.max_body_bytes, *map(len, bodies)),
            )
            torch_threads = max(1, cores // layout.threads)
            torch.set_num_threads(torch_threads)
            app = build_app(bundle, settings)
            latencies, wall = asyncio.run(_time_requests(app, bodies, warmup, requests))
            ms = np.array(latencies) * 1e3
            rows.append(
                LatencyRow(
                    candidates=count,
                    threads=layout.threads,
                    micro_batch=layout.micro_batch,
                    torch_threads=torch_threads,
                    requests=requests,
                    p50_ms=float(np.percentile(ms, 50)),
                    p99_ms=float(np.percentile(ms, 99)),
                    requests_per_s=requests / wall,
                )
            )
    finally:
        torch.set_num_threads(before)
    return rows


# -------------------------------------------------------------------------- reporting


def cpu_name() -> str:
    """The processor's model name, where the system says it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ('n/a' where the system has none)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine() -> str:
    """Cores, processor, versions and the load average, in one line."""
    return (
        f"{os.cpu_count()} cores ({cpu_name()}, {platform.system()} {platform.machine()}), "
        f"Python {platform.python_version()}, torch {torch.__version__}; "
        f"load average (1, 5, 15 min) {load_average()}"
    )


def format_table(rows: list[LatencyRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| candidates | threads x micro-batch | torch threads | requests | p50 ms | p99 ms "
        "| requests/s |",
        "|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.candidates} | {r.threads} x {r.micro_batch} | {r.torch_threads} "
            f"| {r.requests} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.requests_per_s:,.0f} |"
        )
    return "\n".join(lines)
