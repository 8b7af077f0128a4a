"""What the peer runners share: arguments, the data tables, clocks, metrics and the result file.

Each runner runs inside its own peer venv and imports this module from its own folder, so this
module imports neither widedeep nor a peer library: only numpy, polars, pandas and scikit-learn,
which every peer venv has, and torch where the venv has it (the Keras peer's has not). The JSON
it writes has one layout for all peers.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import polars as pl
from columns import LABEL, Columns
from sklearn.metrics import log_loss, roc_auc_score

try:
    import torch
except ImportError:  # the TensorFlow/Keras peer's venv
    torch = None

MISSING_CATEGORY = "-1"  # what DeepCTR-Torch's Criteo example fills missing categories with
INFER_REPEATS = 3


@dataclass(frozen=True)
class Settings:
    """The run's settings, identical for every peer."""

    train: Path
    test: Path
    epochs: int
    batch_size: int
    embedding_dim: int
    hidden: tuple[int, ...]
    lr: float
    threads: int
    output: Path
    infer_batch_size: int
    seed: int
    device: str = "cpu"

    def as_json(self) -> dict[str, object]:
        """The settings as JSON-ready values."""
        values = asdict(self)
        values.update(train=str(self.train), test=str(self.test), output=str(self.output))
        values["hidden"] = list(self.hidden)
        return values


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"256,128"`` -> ``(256, 128)``."""
    try:
        units = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected units like 256,128, got {text!r}") from None
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError(f"expected positive units like 256,128, got {text!r}")
    return units


def build_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every runner takes; a runner may add its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--train", type=Path, required=True, help="Parquet file with a label")
    parser.add_argument("--test", type=Path, required=True, help="Parquet file, same columns")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--hidden", type=parse_hidden, default=(256, 128))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--output", type=Path, required=True, help="result JSON file")
    parser.add_argument("--infer-batch-size", type=int, default=4096)
    parser.add_argument("--device", default="cpu", help="cpu or cuda, where the peer allows")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The shared settings out of parsed arguments."""
    return Settings(
        train=args.train,
        test=args.test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        embedding_dim=args.embedding_dim,
        hidden=args.hidden,
        lr=args.lr,
        threads=args.threads,
        output=args.output,
        infer_batch_size=args.infer_batch_size,
        seed=args.seed,
        device=args.device,
    )


def configure_run(settings: Settings) -> None:
    """Threads and seeds, set before any model is built (torch's where it is installed)."""
    if torch is not None:
        torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)


def read_table(path: Path, columns: Columns | None = None) -> pl.DataFrame:
    """A Parquet file with a 0/1 ``label`` column and, if ``columns`` is given, those columns."""
    table = pl.read_parquet(path)
    wanted = [LABEL] + ([*columns.numeric, *columns.categorical] if columns else [])
    missing = [name for name in wanted if name not in table.columns]
    if missing:
        raise SystemExit(f"{path}: expected columns {wanted}; missing {missing}")
    return table


def prepare(table: pl.DataFrame, columns: Columns) -> pd.DataFrame:
    """The cleaning every peer gets, before its own preprocessing.

    Numerics: null -> 0, clipped at 0, log1p (clipping keeps log1p finite on real Criteo, where
    I2 goes down to -3). Categories: null -> '-1'. Label: float32.
    """
    cleaned = table.select(
        pl.col(LABEL).cast(pl.Float32),
        *[
            pl.col(name).cast(pl.Float64).fill_null(0.0).clip(0.0).log1p()
            for name in columns.numeric
        ],
        *[pl.col(name).cast(pl.String).fill_null(MISSING_CATEGORY) for name in columns.categorical],
    )
    return cleaned.to_pandas()


def load(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, float, Columns]:
    """Train and test tables, prepared; the seconds preparing took (reading not counted);
    and the features, read off the training table."""
    train = read_table(settings.train)
    columns = Columns.of(train.schema)
    test = read_table(settings.test, columns)
    started = time.perf_counter()
    prepared = prepare(train, columns), prepare(test, columns)
    return *prepared, time.perf_counter() - started, columns


def score(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(AUC, log loss) of predicted click probabilities, by scikit-learn."""
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(roc_auc_score(labels, clipped)), float(log_loss(labels, clipped, labels=[0, 1]))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: test metrics after it and its training time (evaluation not included)."""

    epoch: int
    auc: float
    logloss: float
    seconds: float
    eval_seconds: float


@dataclass
class EpochLog:
    """Times each training epoch and scores the test set after it; fed by a peer's callback."""

    train_rows: int
    test_labels: np.ndarray
    records: list[EpochRecord] = field(default_factory=list)
    _started: float = 0.0

    def begin(self) -> None:
        """Start the epoch's clock."""
        self._started = time.perf_counter()

    def end(self, epoch: int, predict_test: Callable[[], np.ndarray]) -> None:
        """Stop the clock, then score ``predict_test()`` (outside the epoch's time)."""
        seconds = time.perf_counter() - self._started
        eval_started = time.perf_counter()
        auc, logloss = score(self.test_labels, predict_test())
        eval_seconds = time.perf_counter() - eval_started
        self.records.append(EpochRecord(epoch + 1, auc, logloss, seconds, eval_seconds))
        print(
            f"epoch {epoch + 1}: {self.train_rows / seconds:,.0f} samples/s, "
            f"test auc {auc:.4f} logloss {logloss:.4f}",
            flush=True,
        )

    def samples_per_s(self) -> list[float]:
        """Training throughput of each epoch."""
        return [self.train_rows / record.seconds for record in self.records]


def infer_samples_per_s(rows: int, predict: Callable[[], np.ndarray]) -> float:
    """Median throughput of ``INFER_REPEATS`` full passes of ``predict`` over ``rows`` rows."""
    seconds = []
    for _ in range(INFER_REPEATS):
        started = time.perf_counter()
        predict()
        seconds.append(time.perf_counter() - started)
    return rows / statistics.median(seconds)


def peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest finished child) peak resident memory in MiB (Linux KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 1024, children / 1024


@dataclass(frozen=True)
class Result:
    """The result file's content; the same keys for every peer.

    Beyond the headline numbers: ``preprocess_seconds`` splits preprocessing into the shared
    cleaning, the peer's fit and its transform of train and test; ``fit_call_seconds`` is the
    whole training call (epochs, the per-epoch test scoring and the peer's own set-up);
    ``peak_rss_children_mb`` is the largest finished child process (DataLoader workers).
    """

    library: str
    version: str
    torch: str
    preprocess_rows_per_s: float
    train_samples_per_s: list[float]
    infer_samples_per_s: float
    peak_rss_mb: float
    epochs: list[EpochRecord]
    settings: dict[str, object]
    preprocess_seconds: dict[str, float]
    fit_call_seconds: float
    peak_rss_children_mb: float


class Encoding(Protocol):
    """What a runner's preprocessing reports: how long fitting and transforming took."""

    fit_seconds: float
    transform_seconds: float


def build_result(
    library: str,
    settings: Settings,
    rows: tuple[int, int],
    prepare_seconds: float,
    encoding: Encoding,
    log: EpochLog,
    fit_call_seconds: float,
    predict_test: Callable[[], np.ndarray],
    notes: dict[str, object],
) -> Result:
    """The result of one peer's run: the preprocessing rate over the (train, test) ``rows``,
    the epochs, the inference rate of ``predict_test`` (timed here), the peak memory, the
    versions, and the settings with the runner's own ``notes``."""
    infer = infer_samples_per_s(rows[1], predict_test)
    own_rss, child_rss = peak_rss_mb()
    preprocess_seconds = {
        "prepare": prepare_seconds,
        "fit": encoding.fit_seconds,
        "transform": encoding.transform_seconds,
    }
    return Result(
        library=library,
        version=version(library),
        torch=torch.__version__ if torch is not None else "not installed",
        preprocess_rows_per_s=sum(rows) / sum(preprocess_seconds.values()),
        train_samples_per_s=log.samples_per_s(),
        infer_samples_per_s=infer,
        peak_rss_mb=own_rss,
        epochs=log.records,
        settings={**settings.as_json(), **notes},
        preprocess_seconds=preprocess_seconds,
        fit_call_seconds=fit_call_seconds,
        peak_rss_children_mb=child_rss,
    )


def write_result(path: Path, result: Result) -> None:
    """Write the result as JSON and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    steady = result.train_samples_per_s[1:] or result.train_samples_per_s
    print(
        f"{result.library} {result.version}: "
        f"preprocess {result.preprocess_rows_per_s:,.0f} rows/s, "
        f"train {statistics.mean(steady):,.0f} samples/s (after epoch 1), "
        f"infer {result.infer_samples_per_s:,.0f} samples/s, "
        f"peak RSS {result.peak_rss_mb:,.0f} MiB -> {path}"
    )
