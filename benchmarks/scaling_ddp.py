"""Data-parallel weak scaling: training samples/s for 1, 2, ... torchrun processes.

    .venv/bin/python benchmarks/scaling_ddp.py [--rows 200000] [--processes 1,2]
        [--batch-size 1024] [--threads 1] [--device cpu]

Each point is one ``torchrun --nproc-per-node N -m widedeep train`` run, 1 epoch, on the
Criteo-shaped data of ``make_ctr`` with ``run_widedeep.py``'s model (26 C fields in both
parts, MLP [256,128], embedding dim 16, Adam 1e-3). Weak scaling: the per-rank batch is
fixed (``--batch-size``), so N processes train global batches of N x that many rows.
The rate is the run's own ``samples_per_s`` (training time only, read from the run's
``metrics.jsonl``); efficiency = rate_N / (N x rate_1). On a CPU machine the processes
share its cores: give each ``--threads`` threads so that N x threads fits the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from widedeep.data.ctr import make_ctr

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "bench-scratch"
sys.path.insert(0, str(ROOT / "benchmarks"))
from run_widedeep import criteo_config  # noqa: E402


def data(rows: int, test_rows: int) -> tuple[Path, Path]:
    """The Criteo-shaped files for ``rows`` training rows (made once, then reused)."""
    folder = SCRATCH / "data" / f"ctr-{rows}-{test_rows}-0"
    if not (folder / "test.parquet").exists():
        make_ctr(folder, rows=rows, test_rows=test_rows, seed=0)
    return folder / "train.parquet", folder / "test.parquet"


def rate(args: argparse.Namespace, files: tuple[Path, Path], processes: int) -> float:
    """Training samples/s of one run with ``processes`` ranks."""
    settings = argparse.Namespace(**{**vars(args), "batch_size": args.batch_size * processes})
    config = criteo_config(settings, str(files[0]), str(files[1])).to_dict()
    folder = SCRATCH / f"ddp-{processes}"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(args.port),
        "-m", "widedeep", "train", str(config_path), "--output", str(folder / "run"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    history = (folder / "run" / "metrics.jsonl").read_text().splitlines()
    return float(json.loads(history[-1])["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--test-rows", type=int, default=20_000)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per rank per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    model = {"epochs": 1, "embedding_dim": 16, "hidden": "256,128", "lr": 1e-3}
    settings = argparse.Namespace(**model, optimizer="adam", hashed_buckets=0, **vars(args))
    files = data(args.rows, args.test_rows)
    print(f"{args.rows:,} rows, {args.batch_size} rows per rank per step, {args.device}")
    print("| processes | global batch | train samples/s | weak-scaling efficiency |")
    print("|---|---|---|---|")
    base = None
    for processes in [int(p) for p in args.processes.split(",") if p]:
        value = rate(settings, files, processes)
        base = value if base is None and processes == 1 else base
        efficiency = f"{value / (processes * base):.2f}" if base else "-"
        print(f"| {processes} | {processes * args.batch_size} | {value:,.0f} | {efficiency} |")


if __name__ == "__main__":
    main()
