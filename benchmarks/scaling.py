"""The scaling sweep: training throughput and peak memory against rows and vocabulary size.

    .venv/bin/python benchmarks/scaling.py [--rows 1000000,4000000,10000000]
        [--buckets 10000,100000,1000000,10000000] [--bucket-rows 1000000]

Each point is one ``run_widedeep.py`` process (1 epoch, MLP [256,128], batch 1024, Adam) on
the synthetic Criteo-shaped data of ``make_ctr``. Rows sweep: the 26 C fields as vocabularies.
Vocabulary sweep: the C fields hashed into N ids in all (N / 26 buckets per field; N x 16
floats of embeddings plus Adam's two moments). Writes benchmarks/SCALING.md.

Reported beside each point: seconds per million rows (constant if cost is linear in rows),
the encoded training data's size, and the model's size (weights + optimizer state), so that
peak RSS can be read against what it has to hold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from widedeep.data.ctr import make_ctr

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "bench-scratch"
ENCODED_BYTES_PER_ROW = 26 * 4 + 13 * 4 + 4  # int32 ids, float32 numbers, float32 label


def data(rows: int, test_rows: int) -> tuple[Path, Path]:
    """The Criteo-shaped files for ``rows`` training rows (made once, then reused)."""
    folder = SCRATCH / "data" / f"ctr-{rows}-{test_rows}-0"
    if not (folder / "test.parquet").exists():
        make_ctr(folder, rows=rows, test_rows=test_rows, seed=0)
    return folder / "train.parquet", folder / "test.parquet"


def point(
    files: tuple[Path, Path], threads: int, buckets: int = 0, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One training run in its own process (``extra``: more run_widedeep.py options); its
    report."""
    out = SCRATCH / "scaling-point.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "run_widedeep.py"),
        "--train", str(files[0]), "--test", str(files[1]), "--epochs", "1",
        "--threads", str(threads), "--output", str(out), "--hashed-buckets", str(buckets),
        *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def row(label: str, rows: int, report: dict[str, Any]) -> str:
    """One Markdown table row."""
    train_rate = report["train_samples_per_s"][0]
    params = report["settings"]["model_parameters"]
    model_mb = params * 4 * 3 / 1e6  # weights + Adam's two moments, float32
    encoded_mb = rows * ENCODED_BYTES_PER_ROW / 1e6
    return (
        f"| {label} | {rows:,} | {train_rate:,.0f} | {1e6 / train_rate:.1f} | "
        f"{report['preprocess_rows_per_s']:,.0f} | {params:,} | {model_mb:,.0f} | "
        f"{encoded_mb:,.0f} | {report['peak_rss_mb']:,.0f} | {report['test_auc']:.4f} |"
    )


HEADER = (
    "| sweep | train rows | train samples/s | s per 1M rows | preprocess rows/s | parameters "
    "| model+Adam MB | encoded data MB | peak RSS MB | test AUC |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,4000000,10000000")
    parser.add_argument("--buckets", default="10000,100000,1000000,10000000")
    parser.add_argument("--bucket-rows", type=int, default=1_000_000)
    parser.add_argument("--test-rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "SCALING.md")
    args = parser.parse_args()
    lines = [HEADER]
    for rows in [int(r) for r in args.rows.split(",") if r]:
        lines.append(row("rows", rows, point(data(rows, args.test_rows), args.threads)))
        print(lines[-1], flush=True)
    files = data(args.bucket_rows, args.test_rows)
    for total in [int(b) for b in args.buckets.split(",") if b]:
        report = point(files, args.threads, max(1, total // 26))
        lines.append(row(f"hashed, {total:,} ids", args.bucket_rows, report))
        print(lines[-1], flush=True)
    command = ("python benchmarks/scaling.py " + " ".join(sys.argv[1:])).strip()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    args.output.write_text(
        "# Scaling sweep\n\n"
        f"Command: `{command}`  \nMachine: {machine}  \nDate: {date}  \n"
        f"Load average at the end: {load}  \n"
        "Each point: one process, 1 epoch, embedding dim 16, MLP [256,128], batch 1024, Adam "
        f"1e-3, {args.threads} threads, the default precision (bf16 autocast on a CPU with "
        "AMX or AVX-512 BF16, else fp32); the data is held in memory (not streamed).\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
