"""Streaming larger-than-memory Parquet: peak RSS must not grow with the rows.

    .venv/bin/python benchmarks/streaming.py [--rows 10000000,40000000] [--buckets 1000000]

Each point is one ``run_widedeep.py --stream-buffer N`` process: 1 epoch over the synthetic
Criteo-shaped data of ``make_ctr`` (one Parquet file, row groups of 500,000 rows), read row
group by row group, fitted in one streaming pass, shuffled through an N-row buffer. The 26 C
fields are hashed into ``--buckets`` ids in all, so the model is the same size at every row
count and what is left to grow is the data path. Writes benchmarks/STREAMING.md with each
point's peak RSS as a ratio to the first (the target: the last at most 1.1x the first).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from scaling import ENCODED_BYTES_PER_ROW, ROOT, data, point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000000,40000000")
    parser.add_argument("--buckets", type=int, default=1_000_000, help="hashed ids in all")
    parser.add_argument("--shuffle-buffer", type=int, default=262_144)
    parser.add_argument("--test-rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "STREAMING.md")
    args = parser.parse_args()
    lines = [
        "| train rows | encoded data MB | train samples/s | one-pass fit rows/s "
        "| peak RSS MB | RSS vs first | test AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    first_rss = None
    for rows in [int(r) for r in args.rows.split(",") if r]:
        report = point(
            data(rows, args.test_rows),
            args.threads,
            max(1, args.buckets // 26),
            ("--stream-buffer", str(args.shuffle_buffer)),
        )
        rss = report["peak_rss_mb"]
        first_rss = first_rss or rss
        lines.append(
            f"| {rows:,} | {rows * ENCODED_BYTES_PER_ROW / 1e6:,.0f} | "
            f"{report['train_samples_per_s'][0]:,.0f} | {report['preprocess_rows_per_s']:,.0f} | "
            f"{rss:,.0f} | {rss / first_rss:.2f}x | {report['test_auc']:.4f} |"
        )
        print(lines[-1], flush=True)
    command = ("python benchmarks/streaming.py " + " ".join(sys.argv[1:])).strip()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    args.output.write_text(
        "# Streaming: peak memory against rows\n\n"
        f"Command: `{command}`  \nMachine: {machine}  \nDate: {date}  \n"
        f"Each point: one process, 1 epoch streamed from Parquet (shuffle buffer "
        f"{args.shuffle_buffer:,} rows), the C fields hashed into {args.buckets:,} ids, "
        f"embedding dim 16, MLP [256,128], batch 1024, Adam 1e-3, {args.threads} threads. "
        "Encoded data MB: what the table would take in memory, for scale.\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
