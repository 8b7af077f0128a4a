"""The training benchmark: widedeep and its peers on the same data, in the same run.

    .venv/bin/python benchmarks/bench.py [--rows 1000000 --test-rows 200000 --epochs 2]

1. makes (or reuses) a synthetic Criteo-shaped data set in bench-scratch/data (or, with
   ``--data adult``, writes the bundled UCI Adult census table there, split 80/20);
2. trains and scores widedeep, and each peer whose virtual environment exists (create them
   with ``benchmarks/peers/setup_envs.py``), each in its own process, ``--repeats`` times,
   in rounds (``run_order``);
3. measures the limits of this machine in the same run: the bare-MLP rate and a matmul
   roofline (``limits.py``);
4. prints one table and writes it, with the command, machine and date, to
   benchmarks/RESULTS.md.

Throughputs are medians over repeats of the steady-state epochs (every epoch after the
first); quality is the last epoch's test AUC and logloss, and a second table gives them after
every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import torch
from limits import bare_mlp_rates, matmul_gflops, training_flops_per_sample
from peers.columns import LABEL, Columns

from widedeep.data.ctr import make_ctr
from widedeep.data.datasets import load_adult
from widedeep.data.splits import random_split
from widedeep.precision import resolve_precision

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "bench-scratch"
PEERS = {
    "pytorch-widedeep": ("venv-pwd", "run_pytorch_widedeep.py"),
    "DeepCTR-Torch": ("venv-deepctr", "run_deepctr.py"),
    "TensorFlow-Keras": ("venv-keras", "run_keras.py"),
}
ADULT_TEST_FRACTION = 0.2


def ctr_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """The train and test files of the synthetic Criteo-shaped set (made once, then reused)."""
    folder = SCRATCH / "data" / f"ctr-{args.rows}-{args.test_rows}-{args.seed}"
    if not (folder / "test.parquet").exists():
        make_ctr(folder, rows=args.rows, test_rows=args.test_rows, seed=args.seed)
    return folder / "train.parquet", folder / "test.parquet"


def adult_table() -> pl.DataFrame:
    """The bundled Adult census table as every runner reads a benchmark table: a 0/1
    ``label`` (income >50K), and column names without hyphens, which some peers reject."""
    adult = load_adult()
    return adult.select(
        (pl.col("income") == ">50K").cast(pl.Int8).alias(LABEL),
        *[pl.col(name).alias(name.replace("-", "_")) for name in adult.columns if name != "income"],
    )


def adult_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """The train and test files of the bundled Adult table, a seeded 80/20 split."""
    folder = SCRATCH / "data" / f"adult-{args.seed}"
    if not (folder / "test.parquet").exists():
        train, _, test = random_split(adult_table(), 0.0, ADULT_TEST_FRACTION, seed=args.seed)
        folder.mkdir(parents=True, exist_ok=True)
        train.write_parquet(folder / "train.parquet")
        test.write_parquet(folder / "test.parquet")
    return folder / "train.parquet", folder / "test.parquet"


def describe_data(args: argparse.Namespace, data: tuple[Path, Path]) -> str:
    """The data set, for the results' header."""
    if args.data == "adult":
        rows = [pl.scan_parquet(path).select(pl.len()).collect().item() for path in data]
        return (
            f"the bundled UCI Adult census table, {rows[0]:,} train + {rows[1]:,} test rows "
            f"(a random split with seed {args.seed})"
        )
    return f"synthetic Criteo-shaped, {args.rows:,} train + {args.test_rows:,} test rows"


def run_library(
    python: Path,
    script: Path,
    args: argparse.Namespace,
    data: tuple[Path, Path],
    out: Path,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """One library's training run in its own process; its JSON report."""
    command = [
        str(python), str(script),
        "--train", str(data[0]), "--test", str(data[1]),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--embedding-dim", str(args.embedding_dim), "--hidden", args.hidden,
        "--lr", str(args.lr), "--threads", str(args.threads), "--output", str(out),
        "--device", args.device, *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def steady(report: dict[str, Any]) -> float:
    """Training samples/s after the first epoch's warm-up (the only epoch if just one)."""
    rates = report["train_samples_per_s"]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def _median_ratio(reports: list[dict[str, Any]], numerator: str, denominator: str) -> float:
    """The median over runs of each run's ``numerator / denominator`` (runs without both
    figures left out; 0 if none has them): figures measured side by side in one process are
    compared within it, since the VM's speed drifts between processes."""
    ratios = [
        r[numerator] / r[denominator] for r in reports if r.get(numerator) and r.get(denominator)
    ]
    return statistics.median(ratios) if ratios else 0.0


def summarize(name: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs of one library (``name``: the run's key)."""
    last = reports[-1]
    return {
        "name": name,
        "library": last["library"],
        "version": last["version"],
        "precision": last.get("precision", "fp32"),
        "preprocess": statistics.median(r["preprocess_rows_per_s"] for r in reports),
        "train": statistics.median(steady(r) for r in reports),
        "infer": statistics.median(r["infer_samples_per_s"] for r in reports),
        # measured beside the scoring in the same process (widedeep's runner only)
        "bare_infer": statistics.median(r.get("bare_infer_samples_per_s", 0.0) for r in reports),
        # the opt-in bf16 scoring and the bare MLP's forward under bf16 autocast beside it
        "infer_bf16": statistics.median(r.get("infer_bf16_samples_per_s", 0.0) for r in reports),
        "bare_infer_bf16": statistics.median(
            r.get("bare_infer_bf16_samples_per_s", 0.0) for r in reports
        ),
        "auc_bf16_scoring": last.get("test_auc_bf16_scoring", 0.0),
        # scoring over the bare forward beside it, and bf16 scoring over fp32, per process
        "infer_of_bare": _median_ratio(reports, "infer_samples_per_s", "bare_infer_samples_per_s"),
        "infer_bf16_of_bare": _median_ratio(
            reports, "infer_bf16_samples_per_s", "bare_infer_bf16_samples_per_s"
        ),
        "infer_bf16_speedup": _median_ratio(
            reports, "infer_bf16_samples_per_s", "infer_samples_per_s"
        ),
        # the training loop's step over the bare MLP's, alternating in one process (our runner)
        "of_bare": _median_ratio(reports, "train_beside_samples_per_s", "bare_train_samples_per_s"),
        "of_bare_fp32": _median_ratio(
            reports, "train_beside_samples_per_s", "bare_train_fp32_samples_per_s"
        ),
        "rss": statistics.median(r["peak_rss_mb"] for r in reports),
        "auc": last["epochs"][-1]["auc"],
        "logloss": last["epochs"][-1]["logloss"],
        "epochs": [(epoch["auc"], epoch["logloss"]) for epoch in last["epochs"]],
    }


def epochs_table(rows: list[dict[str, Any]]) -> str:
    """Test AUC / logloss after every epoch, one row per library (its last run: the runs
    are seeded, so every run of a library gives the same figures up to float rounding)."""
    epochs = max(len(row["epochs"]) for row in rows)
    lines = [
        "| library | " + " | ".join(f"epoch {e + 1}: AUC / logloss" for e in range(epochs)) + " |",
        "|---|" + "---|" * epochs,
    ]
    for row in rows:
        cells = [f"{auc:.4f} / {logloss:.4f}" for auc, logloss in row["epochs"]]
        cells += [""] * (epochs - len(cells))
        lines.append(
            f"| {row['library']} {row['version']} ({row['precision']}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], limits: dict[str, float]) -> str:
    """The results as a Markdown table, plus the ratios the targets are stated in."""
    lines = [
        "| library | preprocess rows/s | train samples/s | infer samples/s | peak RSS MB "
        "| test AUC | logloss |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['library']} {row['version']} ({row['precision']}) | "
            f"{row['preprocess']:,.0f} | "
            f"{row['train']:,.0f} | {row['infer']:,.0f} | {row['rss']:,.0f} | "
            f"{row['auc']:.4f} | {row['logloss']:.4f} |"
        )
    lines.append(
        f"| bare MLP fp32 (limit) | | {limits['mlp_train']:,.0f} | {limits['mlp_infer']:,.0f} "
        "| | | |"
    )
    if limits["mlp_train_bf16"]:
        lines.append(
            f"| bare MLP bf16 autocast (limit) | | {limits['mlp_train_bf16']:,.0f} | | | | |"
        )
    lines.append(f"| matmul roofline (limit) | | {limits['roofline']:,.0f} | | | | |")
    ours = next(r for r in rows if r["name"] == "widedeep")
    peers = [r for r in rows if r["library"] != "widedeep"]
    lines.append("")
    lines.append("- widedeep's preprocess rows/s counts reading the training Parquet file too: "
                 "it is read a column at a time as it is fitted and encoded, never whole; the "
                 "peers' figures count fitting and transforming tables already read")  # fmt: skip
    for run in (r for r in rows if r["library"] == "widedeep"):
        lines.append(f"- widedeep training ({run['precision']}"
                     f"{', the default here' if run is ours else ''}) = "
                     f"{run['of_bare']:.0%} of the bare-MLP rate in {run['precision']}"
                     + (f", {run['of_bare_fp32']:.0%} of the fp32 bare-MLP rate"
                        if run["precision"] != "fp32" else "")
                     + " (the loop's step and the bare MLP's in alternating rounds in one "
                     "process, median over runs); "
                     f"{run['train'] / limits['roofline']:.0%} of the fp32 matmul roofline "
                     f"({limits['gflops']:.0f} GFLOP/s)")  # fmt: skip
    lines.append(f"- widedeep inference = {ours['infer_of_bare']:.0%} of the "
                 f"bare-MLP forward rate measured beside it in the same process, alternating "
                 f"rounds, batch 4096 (median over runs; the bare forward's median "
                 f"{ours['bare_infer']:,.0f} samples/s; "
                 f"{ours['infer'] / limits['mlp_infer']:.0%} of the limit row's, batch "
                 f"{limits['batch_size']})")  # fmt: skip
    best_infer = max(peers, key=lambda r: r["infer"]) if peers else None
    if ours["infer_bf16"]:
        versus = (
            f"; {ours['infer_bf16'] / best_infer['infer']:.1f}x the fastest peer's inference"
            if best_infer
            else ""
        )
        lines.append(f"- opt-in bf16 scoring (`precision='bf16'`, `--precision bf16`): "
                     f"{ours['infer_bf16']:,.0f} samples/s, "
                     f"{ours['infer_bf16_speedup']:.2f}x the default fp32 scoring and "
                     f"{ours['infer_bf16_of_bare']:.0%} of the bare-MLP "
                     f"forward under bf16 autocast beside it (per run, median over runs; the "
                     f"bare forward's median {ours['bare_infer_bf16']:,.0f} samples/s)"
                     f"{versus}; test AUC "
                     f"{ours['auc_bf16_scoring']:.4f} (fp32: {ours['auc']:.4f})")  # fmt: skip
    if best_infer is not None:
        best_train = max(peers, key=lambda r: r["train"])
        best_auc = max(p["auc"] for p in peers)
        train_ratio = ours["train"] / best_train["train"]
        infer_ratio = ours["infer"] / best_infer["infer"]
        lines.append(
            f"- training {train_ratio:.1f}x the fastest peer ({best_train['library']}); "
            f"inference {infer_ratio:.1f}x ({best_infer['library']}); "
            f"test AUC {ours['auc'] - best_auc:+.4f} vs the best peer"
        )
    return "\n".join(lines)


def run_order(repeats: dict[str, int]) -> list[tuple[str, int]]:
    """``(library, run index)`` in the order to run them: in rounds, each library once a
    round (in ``repeats``' order), a library with fewer runs in the middle rounds. The VM's
    speed drifts by up to 2x within minutes, so a peer's one run sits between widedeep's
    runs rather than after all of them, and ratios to it compare like with like."""
    rounds = max(repeats.values(), default=0)
    order = []
    for round_ in range(rounds):
        for name, count in repeats.items():
            first = (rounds - count) // 2  # this library's first round
            if first <= round_ < first + count:
                order.append((name, round_ - first))
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        choices=["ctr", "adult"],
        default="ctr",
        help="synthetic Criteo-shaped rows (--rows, --test-rows) or the bundled Adult table",
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--test-rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--hidden", default="256,128")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--peer-repeats", type=int, default=None, help="runs per peer (default: --repeats)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peers that support it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="run peer NAME with this interpreter instead of its venv (e.g. on a GPU machine)",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = adult_data(args) if args.data == "adult" else ctr_data(args)
    ours = ROOT / "benchmarks" / "run_widedeep.py"
    runs: dict[str, tuple[Path, Path, list[str]]] = {"widedeep": (Path(sys.executable), ours, [])}
    bf16 = resolve_precision(torch.device(args.device), "auto") == "bf16"
    if bf16:  # the default trains in bf16 here: also run fp32, to compare with the fp32 limits
        runs["widedeep fp32"] = (Path(sys.executable), ours, ["--precision", "fp32"])
    chosen = dict(item.split("=", 1) for item in args.peer)
    unknown = set(chosen) - set(PEERS)
    if unknown:
        parser.error(f"unknown peer(s) {sorted(unknown)}; known: {sorted(PEERS)}")
    for name, (venv, script) in PEERS.items():
        python = Path(chosen[name]) if name in chosen else SCRATCH / venv / "bin" / "python"
        if not args.no_peers and (name in chosen or python.exists()):
            runs[name] = (python, ROOT / "benchmarks" / "peers" / script, [])
    rows_repeats = {
        name: args.repeats
        if name.startswith("widedeep") or args.peer_repeats is None
        else args.peer_repeats
        for name in runs
    }
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for name, i in run_order(rows_repeats):
        python, script, extra = runs[name]
        output = SCRATCH / f"{name}-{i}.json"
        reports[name].append(run_library(python, script, args, data, output, extra))
        print(f"{name} run {i + 1} of {rows_repeats[name]} done", flush=True)
    rows = []
    for name in runs:
        rows.append(summarize(name, reports[name]))
        print(f"{name}: {rows[-1]}", flush=True)

    hidden = [int(h) for h in args.hidden.split(",")]
    columns = Columns.of_file(data[0])
    width = len(columns.categorical) * args.embedding_dim + len(columns.numeric)
    bare = bare_mlp_rates(width, hidden, args.batch_size, args.lr, args.device)
    bare_bf16 = (
        bare_mlp_rates(width, hidden, args.batch_size, args.lr, args.device, bf16=True)
        if bf16
        else {"train_samples_per_s": 0.0}
    )
    gflops = matmul_gflops(args.batch_size, width, hidden[0], args.device)
    limits = {
        "mlp_train_bf16": bare_bf16["train_samples_per_s"],
        "mlp_train": bare["train_samples_per_s"],
        "mlp_infer": bare["infer_samples_per_s"],
        "gflops": gflops,
        "batch_size": args.batch_size,
        "roofline": gflops * 1e9 / training_flops_per_sample(width, hidden),
    }
    result = (
        table(rows, limits) + "\n\nTest AUC and logloss after each epoch:\n\n" + epochs_table(rows)
    )
    print(result)
    command = ("python benchmarks/bench.py " + " ".join(sys.argv[1:])).strip()
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, "
        f"torch {torch.__version__}"
    )
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name(torch.device(args.device))}"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    args.results.write_text(
        "# Benchmark results\n\n"
        f"Command: `{command}`  \nMachine: {machine}  \nDate: {date}  \n"
        f"Data: {describe_data(args, data)}; "
        f"embedding dim {args.embedding_dim}, MLP [{args.hidden}], Adam lr {args.lr}, "
        f"batch {args.batch_size}, {args.threads} threads, {args.epochs} epochs, "
        f"device {args.device}; "
        "throughputs are medians over runs ("
        + ", ".join(f"{name}: {count}" for name, count in rows_repeats.items())
        + "), training after the first epoch.\n\n"
        + result
        + "\n"
    )


if __name__ == "__main__":
    main()
