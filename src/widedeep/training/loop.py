"""The training run: data -> preprocessing -> one readable loop -> evaluation -> bundle.

``train`` is the one entry point the CLI and the Python API share. The loop is plain:
forward, loss, backward, one step per part's optimizer; validation metrics each epoch; early
stopping with the best weights restored; everything written to a run directory.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from widedeep.bundle import build_model, evaluate_predictions, save_bundle
from widedeep.config import RunConfig
from widedeep.data.sources import Splits, load_splits
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError
from widedeep.features.preprocessor import Preprocessor
from widedeep.inference import predict
from widedeep.metrics import calibration
from widedeep.model.widedeep import WideDeep
from widedeep.plots import plot_history, plot_reliability
from widedeep.retrieval import ItemCooccurrence, MostPopular
from widedeep.training.optimizers import build_optimizers, use_sparse_gradients

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"logloss", "rmse", "mae"}


@dataclass
class TrainResult:
    """What a run produced: where it is, how it went, how the best model scores."""

    run_dir: Path
    bundle_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    validation_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    plots: list[Path] = field(default_factory=list)
    model: WideDeep | None = None
    preprocessor: Preprocessor | None = None


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return the generator that orders training batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}', but no CUDA device is available")
    return torch.device(name)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
    """Log loss on logits (binary) or mean squared error (regression)."""
    if objective == "binary":
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.mse_loss(logits, labels)


class EarlyStopping:
    """Tracks the best validation metric and its weights; says when patience has run out."""

    def __init__(self, metric: str, patience: int, min_delta: float) -> None:
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def update(self, epoch: int, value: float, model: torch.nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        improved = self.best is None or sign * (value - self.best) > self.min_delta
        if improved and not np.isnan(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def train(config: RunConfig, output_dir: str | Path) -> TrainResult:
    """Train a model as ``config`` says; write the run directory under ``output_dir``."""
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = config.train
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    generator = seed_everything(settings.seed)
    # Our sparse gradients come from nn.Embedding and are valid by construction; opting out
    # explicitly also silences torch's per-step warning about the unchecked default.
    torch.sparse.check_sparse_tensor_invariants.disable()
    device = resolve_device(settings.device)
    label = config.feature_schema.label
    assert label is not None
    objective = label.objective

    splits = load_splits(config.data, label)
    preprocessor = Preprocessor(config.feature_schema)
    train_table = TensorTable.from_encoded(preprocessor.fit_transform(splits.train))
    validation_encoded = preprocessor.transform(splits.validation, with_labels=True)
    validation_table = TensorTable.from_encoded(validation_encoded)
    if validation_encoded.report.notable():
        log.info("validation data: %s", validation_encoded.report)

    sparse = use_sparse_gradients(config.model)
    model = build_model(config, preprocessor, sparse_gradients=sparse).to(device)
    optimizers = build_optimizers(model, settings, sparse_tables=sparse)
    stop_metric = config.early_stopping_metric
    stopper = None
    if settings.early_stopping is not None and stop_metric is not None:
        stopper = EarlyStopping(
            stop_metric, settings.early_stopping.patience, settings.early_stopping.min_delta
        )
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    history: list[dict[str, Any]] = []
    placed_table = train_table.place(device)
    for epoch in range(1, settings.epochs + 1):
        train_loss, seconds = _train_epoch(
            model, placed_table, optimizers, settings.batch_size, generator, device, epoch, settings
        )
        _, report = _evaluate(model, validation_table, settings.eval_batch_size, device)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "seconds": round(seconds, 3),
            "samples_per_s": round(len(train_table) / seconds, 1),
            **{f"validation_{k}": v for k, v in report.items()},
        }
        history.append(row)
        _write_history(run_dir, history)
        if settings.progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in report.items() if k in _SHOWN)
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, {shown}")
        if stopper is not None and stopper.update(epoch, report[stopper.metric], model):
            break

    best_epoch = len(history)
    if stopper is not None and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
        best_epoch = stopper.best_epoch
    model.eval()
    validation_predictions, validation_metrics = _evaluate(
        model, validation_table, settings.eval_batch_size, device
    )
    test_metrics = None
    test_predictions = None
    test_table = None
    if splits.test is not None:
        test_table = TensorTable.from_encoded(preprocessor.transform(splits.test, with_labels=True))
        test_predictions, test_metrics = _evaluate(
            model, test_table, settings.eval_batch_size, device
        )

    model.cpu()
    metrics = {
        "best_epoch": best_epoch,
        "validation": validation_metrics,
        "test": test_metrics,
        "rows": {
            "train": len(train_table),
            "validation": len(validation_table),
            "test": 0 if test_table is None else len(test_table),
        },
    }
    tables = None
    if splits.rec is not None:
        assert train_table.labels is not None
        tables = recommendation_tables(splits, train_table.labels.numpy(), config)
        _write_interactions(run_dir, splits)
    bundle_dir = save_bundle(
        run_dir / "bundle", model, preprocessor, config, metrics, tables=tables
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plots = _plots(
        run_dir,
        history,
        objective,
        validation_table,
        validation_predictions,
        test_table,
        test_predictions,
    )
    return TrainResult(
        run_dir=run_dir,
        bundle_dir=bundle_dir,
        history=history,
        best_epoch=best_epoch,
        validation_metrics=validation_metrics,
        test_metrics=test_metrics,
        plots=plots,
        model=model,
        preprocessor=preprocessor,
    )


_SHOWN = ("auc", "logloss", "accuracy", "rmse", "mae")

ABLATION_PARTS = ("wide", "deep", "wide_deep")


def train_ablation(config: RunConfig, output_dir: str | Path) -> dict[str, TrainResult]:
    """Wide-only, deep-only and Wide & Deep from one config, as in the paper's Table 1.

    Each variant gets its own run directory ``output_dir/<parts>``.
    """
    results = {}
    for parts in ABLATION_PARTS:
        model = config.model.model_copy(update={"parts": parts})
        variant = config.model_copy(update={"model": model})
        results[parts] = train(variant, Path(output_dir) / parts)
    return results


def _evaluate(
    model: WideDeep, table: TensorTable, batch_size: int, device: torch.device
) -> tuple[np.ndarray, dict[str, float]]:
    """Predictions on a labelled table and the objective's metrics for them."""
    if table.labels is None:
        raise ConfigError("evaluation needs labels")
    predictions = predict(model, table, batch_size, device)
    return predictions, evaluate_predictions(table.labels.numpy(), predictions, model.objective)


def _train_epoch(
    model: WideDeep,
    table: TensorTable,
    optimizers: list[torch.optim.Optimizer],
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
    settings: Any,
) -> tuple[float, float]:
    """One pass over the shuffled training table; returns (mean loss, seconds)."""
    model.train()
    regularized = model.embed_reg > 0 or model.w_reg > 0
    n_batches = (len(table) + batch_size - 1) // batch_size
    # Summed on the device: reading the loss back each step would stall a GPU.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(
        table.batches(batch_size, shuffle=True, generator=generator),
        total=n_batches,
        desc=f"epoch {epoch}",
        unit="batch",
        disable=not settings.progress,
        leave=False,
    )
    for step, batch in enumerate(bar, start=1):
        batch = batch.to(device, non_blocking=True)
        assert batch.labels is not None
        logits = model.logits(batch)
        loss = loss_fn(logits, batch.labels, model.objective)
        total = loss + model.regularization() if regularized else loss
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        total.backward()
        for optimizer in optimizers:
            optimizer.step()
        total_loss += loss.detach().double() * len(batch)
        seen += len(batch)
        if settings.progress and (step % 20 == 0 or step == n_batches):
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{(total_loss / seen).item():.4f}", samples_s=f"{seen / elapsed:,.0f}"
            )
    bar.close()
    mean_loss = float(total_loss / max(seen, 1))  # waits for the device's last step
    seconds = time.perf_counter() - start
    return mean_loss, seconds


def recommendation_tables(
    splits: Splits, train_labels: np.ndarray, config: RunConfig
) -> dict[str, pl.DataFrame]:
    """What a bundle keeps for ranking: the item catalog, popularity and co-occurrence."""
    assert splits.rec is not None
    data = config.data
    positives = splits.train.filter(pl.Series(train_labels > 0.5))
    items = splits.rec.tables.items
    if items is None:
        items = splits.train.select(data.item_key).unique(maintain_order=True)
    catalog = items.get_column(data.item_key).cast(pl.String)
    popular = MostPopular.fit(positives, data.item_key, catalog)
    cooccurrence = ItemCooccurrence.fit(positives, data.user_key, data.item_key, catalog)
    return {
        "items": items,
        "popularity": popular.to_frame(catalog),
        "cooccurrence": cooccurrence.to_frame(catalog),
    }


def _write_interactions(run_dir: Path, splits: Splits) -> None:
    """The labelled interactions of each split, so ranking can be evaluated on the same ones."""
    assert splits.rec is not None
    folder = run_dir / "interactions"
    folder.mkdir(exist_ok=True)
    for name in ("train", "validation", "test"):
        part = getattr(splits.rec, name)
        if part is not None:
            part.write_parquet(folder / f"{name}.parquet")


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch metrics as JSON lines and CSV (rewritten each epoch, so a crash keeps them)."""
    with (run_dir / "metrics.jsonl").open("w") as handle:
        for row in history:
            handle.write(json.dumps(row) + "\n")
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _plots(
    run_dir: Path,
    history: list[dict[str, Any]],
    objective: str,
    validation: TensorTable,
    validation_predictions: np.ndarray,
    test: TensorTable | None,
    test_predictions: np.ndarray | None,
) -> list[Path]:
    paths = [plot_history(history, run_dir / "history.png")]
    if objective == "binary":
        table, predictions, name = (
            (test, test_predictions, "test")
            if test is not None and test_predictions is not None
            else (validation, validation_predictions, "validation")
        )
        assert table.labels is not None
        curve = calibration(table.labels.numpy(), predictions)
        paths.append(plot_reliability(curve, run_dir / "reliability.png", f"Reliability ({name})"))
    return [p for p in paths if p is not None]
