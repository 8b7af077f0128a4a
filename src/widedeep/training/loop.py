"""The training run: data -> preprocessing -> one readable loop -> evaluation -> bundle.

``train`` is the one entry point the CLI and the Python API share. The loop is plain:
forward, loss, backward, one step per part's optimizer; validation metrics each epoch; early
stopping with the best weights restored; everything written to a run directory.
A checkpoint (``RUN_DIR/checkpoint/``, see ``widedeep.training.checkpoint``) is written at
the end of every epoch and every ``train.checkpoint_every`` steps; ``train(..., resume=True)``
continues from it exactly.
Under torchrun the same call trains data-parallel (``widedeep.training.distributed``): each
rank trains its slice of every global batch, and only rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from widedeep.bundle import build_model, evaluate_predictions, load_bundle, save_bundle
from widedeep.config import RunConfig
from widedeep.data.batch import Batch
from widedeep.data.sources import (
    Splits,
    flat_source,
    held_out_in_own_files,
    load_splits,
)
from widedeep.data.stream import ParquetStream, StreamedTable, encode_stream, fit_stream
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError
from widedeep.features import preprocessor as preprocessing
from widedeep.features.preprocessor import Preprocessor
from widedeep.inference import predict
from widedeep.metrics import calibration
from widedeep.model.widedeep import WideDeep
from widedeep.plots import plot_history, plot_reliability
from widedeep.precision import mixed_precision, resolve_precision
from widedeep.retrieval import ItemCooccurrence, MostPopular
from widedeep.tables import TableSource, read_columns, read_header
from widedeep.training import distributed
from widedeep.training.checkpoint import (
    Position,
    RunState,
    check_config,
    check_data,
    gather_random_states,
    load_checkpoint,
    restore,
    save_checkpoint,
    table_fingerprint,
)
from widedeep.training.memory import check_memory, plan_memory, release_freed_memory
from widedeep.training.optimizers import build_optimizers, use_sparse_gradients
from widedeep.warmstart import seed_ftrl_state, warm_start

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

    def state(self) -> dict[str, Any]:
        """The scalars a checkpoint keeps (the best weights are ``best_state``)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
        """Continue from what ``state`` and ``best_state`` recorded."""
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = best_state


def train(
    config: RunConfig,
    output_dir: str | Path,
    warm_start_from: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a model as ``config`` says; write the run directory under ``output_dir``.

    ``warm_start_from``: a bundle whose weights the new model starts from (rows matched by
    value, see ``widedeep.warmstart``); what was copied is written to ``warm_start.json``
    and under "warm_start" in ``metrics.json``.

    ``resume``: continue the run in ``output_dir`` from its checkpoint where it stopped
    (weights, optimizer states, the epoch's batch order and position, random states, early
    stopping, history), so it ends with the weights of a run never interrupted. The config
    must match the checkpoint's in everything that changes training (a ConfigError names
    each key; ``train.epochs`` may grow). A run that had finished trains no further: its
    bundle, metrics and plots are written again from the checkpoint. A warm-started run
    resumes from its checkpoint; ``warm_start_from`` may be left out, or be the same bundle.

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; see
    ``widedeep.training.distributed``. ``resume`` works there too, with as many processes as
    the checkpoint was written by (each rank restores its own random states).
    """
    if not distributed.launched():
        return _train(config, Path(output_dir), warm_start_from, resume)
    with distributed.process_group(resolve_device(config.train.device)):
        return _train(config, Path(output_dir), warm_start_from, resume)


def _train(
    config: RunConfig, run_dir: Path, warm_start_from: str | Path | None, resume: bool
) -> TrainResult:
    """``train``'s body, inside the process group when there is one."""
    main = distributed.is_main()  # the one process that writes the run directory
    resumed = load_checkpoint(run_dir) if resume else None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    settings = config.train
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    generator = seed_everything(settings.seed)
    # Our sparse gradients come from nn.Embedding and are valid by construction; opting out
    # explicitly also silences torch's per-step warning about the unchecked default.
    torch.sparse.check_sparse_tensor_invariants.disable()
    device = distributed.local_device(resolve_device(settings.device))
    if resumed is not None:
        check_config(resumed, config, str(device))
        _check_warm_start(resumed.run, warm_start_from)
    label = config.feature_schema.label
    assert label is not None
    objective = label.objective

    # preprocess_seconds: fitting and encoding the training table, and reading it where it
    # is read as it is encoded (streamed, or a Parquet table read a column at a time, see
    # ParquetColumns); fingerprint_seconds: hashing the encoded table for the checkpoints
    # (0.2 s per million rows of the benchmark's table)
    preprocessor = Preprocessor(config.feature_schema)
    preprocessing.warm_up()  # not timed: a once-per-process cost, not the table's
    train_table: TensorTable | StreamedTable
    splits: Splits | None = None  # the tables read whole: split off the training table
    if not config.data.is_recommendation:  # (their features come from joins)
        _check_held_out_files(config)  # a wrong file fails now, not after the encoding
    if config.data.stream is not None:
        preprocess_start = time.perf_counter()
        stream = _fitted_stream(config, preprocessor)
        if config.data.stream.keep_encoded:  # read once more, held encoded as in memory
            train_table = encode_stream(preprocessor, stream)
        else:
            train_table = StreamedTable(stream, preprocessor, config.data.stream)
    elif held_out_in_own_files(config.data):
        # The validation and test files are read once the training table is encoded and its
        # raw rows let go (below): the raw tables are never in memory together. A Parquet
        # table is read a column at a time as it is encoded (ParquetColumns), so its raw
        # rows are never whole in memory; others are read whole.
        raw_train = read_columns(flat_source(config.data), config.feature_schema.id_columns)
        preprocess_start = time.perf_counter()
        train_table = TensorTable.from_encoded(preprocessor.fit_transform(raw_train))
        del raw_train
    else:
        splits = load_splits(config.data, label, config.feature_schema.id_columns)
        preprocess_start = time.perf_counter()
        train_table = TensorTable.from_encoded(preprocessor.fit_transform(splits.train))
    fingerprint_start = time.perf_counter()
    preprocess_seconds = fingerprint_start - preprocess_start
    if isinstance(train_table, StreamedTable):
        train_fingerprint = train_table.stream.fingerprint()  # of the files: never held
    else:
        train_fingerprint = table_fingerprint(train_table)
    fingerprint_seconds = time.perf_counter() - fingerprint_start
    # The held-out tables: frames split off the training table, or their own files (paths,
    # each read only when it is encoded).
    raw_validation: TableSource
    raw_test: TableSource | None
    if splits is not None:
        raw_validation, raw_test = splits.validation, splits.test
    else:
        release_freed_memory()
        assert config.data.validation is not None
        raw_validation, raw_test = config.data.validation, config.data.test
    validation_encoded = preprocessor.transform(raw_validation, with_labels=True)
    del raw_validation
    validation_table = TensorTable.from_encoded(validation_encoded)
    if validation_encoded.report.notable():
        log.info("validation data: %s", validation_encoded.report)
    # Encoded now, not after training: a bad value in it fails before the epochs, and the
    # run holds its encoding rather than its raw rows (the benchmark's 200k test rows:
    # 32 MB, where read whole they take about four times as much).
    test_table = None
    if raw_test is not None:
        test_table = TensorTable.from_encoded(preprocessor.transform(raw_test, with_labels=True))
        del raw_test
        if not main:  # encoded on every rank, so a bad value stops them all; scored on one
            test_table = None
    # Encoded, the raw tables are dead weight through training (the training table's was
    # about 2x its encoding): let them go, and hand the freed memory back to the system.
    # Recommendation runs read the training rows again at the end.
    if splits is not None:
        splits = replace(
            splits,
            train=splits.train if splits.rec is not None else splits.train.clear(),
            validation=splits.validation.clear(),
            test=None,  # encoded: test_table
        )
    release_freed_memory()
    data = {"train": train_fingerprint, "validation": table_fingerprint(validation_table)}
    if resumed is not None:
        check_data(resumed, data)

    sparse = use_sparse_gradients(config.model)
    plan = plan_memory(config, preprocessor.layout, sparse)
    precision = resolve_precision(device, settings.precision)
    log.info("%s; training precision %s on %s", plan.describe(), precision, device)
    if settings.progress and main:
        tqdm.write(plan.describe())
    check_memory(plan, device)  # before the tables exist: a clear refusal, not an OOM kill
    model = build_model(config, preprocessor, sparse_gradients=sparse).to(device)
    if settings.compile and model.deep is not None:
        # In place (nn.Module.compile): the state dict, checkpoints and bundle keep their
        # names; the numba lookups stay outside the compiled graph.
        model.deep.mlp.compile()
    warm_report = None
    if warm_start_from is not None and resumed is None:
        warm_report = warm_start(model, preprocessor, load_bundle(warm_start_from))
        if main:
            report_text = json.dumps(warm_report.to_dict(), indent=1)
            (run_dir / "warm_start.json").write_text(report_text)
    optimizers = build_optimizers(model, settings, sparse_tables=sparse)
    if warm_report is not None:
        seed_ftrl_state(optimizers)  # FTRL would otherwise re-derive the copied wide weights
    exchange = _gradient_exchange(model, preprocessor, data, sparse, settings.seed)
    stop_metric = config.early_stopping_metric
    stopper = None
    if settings.early_stopping is not None and stop_metric is not None:
        stopper = EarlyStopping(
            stop_metric, settings.early_stopping.patience, settings.early_stopping.min_delta
        )
    if main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    if resumed is None:
        run = RunState(
            config=config.to_dict(),
            device=str(device),
            data=data,
            position=Position.epoch_start(1, generator, device),
            warm_start=None if warm_report is None else warm_report.to_dict(),
        )
    else:
        # After building the model: its initialization drew from the RNGs this restores.
        restore(resumed, model, optimizers)
        run = resumed.run
        run.config = config.to_dict()  # the same, up to settings that change no result
        run.position.loss_sum = run.position.loss_sum.to(device)
        if stopper is not None and run.early_stopping is not None:
            stopper.load_state(run.early_stopping, run.best_state)
        if run.history and main:
            _write_history(run_dir, run.history)
        if run.finished(settings.epochs):
            log.info(
                "%s: the run had finished (%d epochs trained); nothing left to train, writing "
                "its bundle, metrics and plots again",
                run_dir,
                len(run.history),
            )
    history = run.history

    def checkpoint() -> None:
        if stopper is not None:
            run.early_stopping, run.best_state = stopper.state(), stopper.best_state
        random_states = gather_random_states(str(device))  # every rank's, on rank 0
        if main:
            save_checkpoint(run_dir, run, model, optimizers, random_states)

    placed_table = (
        train_table.place(device) if isinstance(train_table, TensorTable) else train_table
    )
    if isinstance(placed_table, TensorTable):  # once here, not in every step
        model.check_inputs(placed_table.slice(0, len(placed_table)))
    last_validation = None  # this process's last epoch's (predictions, metrics)
    while not run.finished(settings.epochs):
        position = run.position
        epoch = position.epoch
        train_loss = _train_epoch(
            model,
            placed_table,
            optimizers,
            generator,
            device,
            position,
            settings,
            checkpoint,
            exchange,
        )
        last_validation = _evaluate(model, validation_table, settings.eval_batch_size, device)
        report = last_validation[1]
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "seconds": round(position.seconds, 3),
            "samples_per_s": round(len(train_table) / position.seconds, 1),
            **{f"validation_{k}": v for k, v in report.items()},
        }
        history.append(row)
        if main:
            _write_history(run_dir, history)
        if settings.progress and main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in report.items() if k in _SHOWN)
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, {shown}")
        if stopper is not None:
            # every rank validates the same weights; rank 0's decision binds them all
            run.stopped = distributed.agree(stopper.update(epoch, report[stopper.metric], model))
        run.position = Position.epoch_start(epoch + 1, generator, device)
        checkpoint()

    # Trained: the training table is not read again (a recommendation run keeps its labels),
    # so it is let go before the final scoring, which holds its own buffers.
    train_rows = len(train_table)
    train_labels = None
    if splits is not None and splits.rec is not None:
        assert isinstance(train_table, TensorTable) and train_table.labels is not None
        train_labels = train_table.labels.numpy()
    del train_table, placed_table
    release_freed_memory()

    best_epoch = len(history)
    best_state = None if stopper is None else stopper.best_state
    if stopper is not None and best_state is not None:
        model.load_state_dict(best_state)
        best_epoch = stopper.best_epoch
    model.eval()
    # Every rank waits here, after its last collective, before the others may exit. A gloo
    # worker thread frees a finished collective's tensors after the call has returned, and
    # needs the GIL to free a tensor Python has seen; a rank that went straight on to exit
    # could be finalizing by then, and the worker's wait for the GIL aborts the process
    # ("terminate called without an active exception"; 1 run in 10 to 43 here). The barrier's
    # wait releases the GIL, so the worker all but certainly finishes first. Rank 0 has only
    # just written its checkpoint: no rank waits long here.
    distributed.barrier()
    if not main:  # rank 0 evaluates and writes the run; the other ranks are done
        return TrainResult(run_dir, run_dir / "bundle", history, best_epoch, {}, None)
    if last_validation is not None and best_state is None:
        # the weights the last epoch validated: its scores, not a second pass over the table
        validation_predictions, validation_metrics = last_validation
    else:
        validation_predictions, validation_metrics = _evaluate(
            model, validation_table, settings.eval_batch_size, device
        )
    test_metrics = None
    test_predictions = None
    if test_table is not None:
        test_predictions, test_metrics = _evaluate(
            model, test_table, settings.eval_batch_size, device
        )

    model.cpu()
    metrics = {
        "best_epoch": best_epoch,
        "preprocess_seconds": round(preprocess_seconds, 3),
        "fingerprint_seconds": round(fingerprint_seconds, 3),
        "precision": precision,  # train.precision as resolved on this machine
        "validation": validation_metrics,
        "test": test_metrics,
        "rows": {
            "train": train_rows,
            "validation": len(validation_table),
            "test": 0 if test_table is None else len(test_table),
        },
    }
    if run.warm_start is not None:
        metrics["warm_start"] = run.warm_start
    tables = None
    if splits is not None and splits.rec is not None:
        assert train_labels is not None
        tables = recommendation_tables(splits, train_labels, config)
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


def _fitted_stream(config: RunConfig, preprocessor: Preprocessor) -> ParquetStream:
    """The training table of ``data.stream``, with ``preprocessor`` fitted in one pass over
    it (under torchrun by rank 0 alone, its fitted state then sent to the other ranks)."""
    data, schema = config.data, config.feature_schema
    assert data.stream is not None and data.train is not None and schema.label is not None
    columns = [*schema.input_columns, schema.label.column]
    stream = ParquetStream(data.train, columns, data.stream.chunk_rows)
    log.info("%s: reading %d rows in %d row groups", data.train, stream.rows, len(stream.pieces))
    if distributed.is_main():
        fit_stream(preprocessor, stream)
    if distributed.is_distributed():  # one rank reads the table to fit; the others take its fit
        fitted = json.dumps(preprocessor.to_dict()) if distributed.is_main() else None
        preprocessor.state_ = json.loads(distributed.broadcast_text(fitted))["state"]
    return stream


def _check_held_out_files(config: RunConfig) -> None:
    """A validation or test file that cannot be read, or lacks a column the schema reads or
    the label, fails before the training table is read, and names the file."""
    for path in (config.data.validation, config.data.test):
        if path is not None:
            columns = read_header(path)
            preprocessing.check_columns(columns, config.feature_schema, str(path), need_label=True)


def _check_warm_start(run: RunState, warm_start_from: str | Path | None) -> None:
    """On resume, a warm-start bundle may be repeated but not added or changed."""
    if warm_start_from is None:
        return
    source = None if run.warm_start is None else run.warm_start.get("source")
    if source is None or Path(source).resolve() != Path(warm_start_from).resolve():
        started = "from " + str(source) if source is not None else "without a warm start"
        raise ConfigError(
            f"warm_start_from: the checkpointed run started {started}, resuming it asks "
            f"for {warm_start_from}"
        )


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
    table: TensorTable | StreamedTable,
    optimizers: list[torch.optim.Optimizer],
    generator: torch.Generator,
    device: torch.device,
    position: Position,
    settings: Any,
    checkpoint: Callable[[], None],
    exchange: distributed.GradientExchange | None = None,
) -> float:
    """The rest of one pass over the shuffled training table; returns the epoch's mean loss.

    ``position`` says where in the epoch to start (its first batch on a fresh epoch) and is
    advanced batch by batch: the epoch's order is redrawn from the generator state it holds
    and the batches already trained are skipped. ``checkpoint`` is called every
    ``settings.checkpoint_every`` steps, counted from the run's start, except after the
    epoch's last step (the caller checkpoints after validating the epoch).

    With ``exchange`` (under torchrun) this rank trains its slice of each global batch and
    the gradients are summed over the ranks before each step (``_backward_shard``);
    ``position`` then counts the global batches' rows and loss, the same on every rank.
    """
    model.train()
    regularized = model.embed_reg > 0 or model.w_reg > 0
    batch_size, every = settings.batch_size, settings.checkpoint_every
    world = distributed.world_size() if exchange is not None else 1
    generator.set_state(position.generator_state)
    position.loss_sum = position.loss_sum.to(device)  # a resumed sum is read onto the CPU
    batches: Iterator[Batch]
    if isinstance(table, StreamedTable):
        n_batches = table.steps(batch_size, world)
        batches = table.batches(batch_size, generator, distributed.rank(), world)
    else:
        n_batches = (len(table) + batch_size - 1) // batch_size
        batches = (
            table.batches(batch_size, shuffle=True, generator=generator)
            if exchange is None
            else distributed.shard_batches(table, batch_size, generator)
        )
    first_step = (position.epoch - 1) * n_batches  # steps of the run before this epoch
    checked = isinstance(table, TensorTable)  # its ids were range-checked before the epochs
    autocast = mixed_precision(device, settings.precision)
    progress = settings.progress and distributed.is_main()
    # Summed on the device (``position.loss_sum``): reading the loss back each step would
    # stall a GPU.
    start, seconds_before, samples_before = time.perf_counter(), position.seconds, position.samples
    bar = tqdm(
        islice(batches, position.step, None),
        total=n_batches,
        initial=position.step,
        desc=f"epoch {position.epoch}",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    for step, batch in enumerate(bar, start=position.step + 1):
        batch = batch.to(device, non_blocking=True)
        assert batch.labels is not None
        if exchange is None:
            loss = train_step(model, batch, optimizers, autocast, regularized, checked)
            loss_sum, rows = loss.double() * len(batch), len(batch)
        else:
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            rows = (  # the global batch's
                table.global_rows(step, batch_size, world)
                if isinstance(table, StreamedTable)
                else min(batch_size, len(table) - (step - 1) * batch_size)
            )
            loss_sum = _backward_shard(model, batch, rows, regularized, exchange, autocast)
            for optimizer in optimizers:
                optimizer.step()
        position.loss_sum += loss_sum
        position.samples += rows
        position.step = step
        if every is not None and (first_step + step) % every == 0 and step < n_batches:
            position.seconds = seconds_before + time.perf_counter() - start
            checkpoint()
        if progress and (step % 20 == 0 or step == n_batches):
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{(position.loss_sum / position.samples).item():.4f}",
                samples_s=f"{(position.samples - samples_before) / elapsed:,.0f}",
            )
    bar.close()
    mean_loss = float(position.loss_sum / max(position.samples, 1))  # waits for the device
    position.seconds = seconds_before + time.perf_counter() - start
    return mean_loss


def train_step(
    model: WideDeep,
    batch: Batch,
    optimizers: list[torch.optim.Optimizer],
    autocast: contextlib.AbstractContextManager[Any],
    regularized: bool = False,
    checked: bool = False,
) -> torch.Tensor:
    """One optimizer step on ``batch``, as the loop takes it in one process; returns the
    batch's mean loss (detached). ``checked=True`` only for rows that passed
    ``model.check_inputs`` (e.g. their whole table, once): an id outside its field's range
    is otherwise not caught, and may read and train another field's row."""
    assert batch.labels is not None
    with autocast:
        logits = model.logits(batch, checked=checked)
    loss = loss_fn(logits, batch.labels, model.objective)
    total = loss + model.regularization() if regularized else loss
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    total.backward()
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


def _gradient_exchange(
    model: WideDeep,
    preprocessor: Preprocessor,
    data: dict[str, str],
    sparse: bool,
    seed: int,
) -> distributed.GradientExchange | None:
    """Under torchrun: check that the ranks fitted and encoded the same, give them rank 0's
    weights, and return the exchange that sums their gradients; None in one process."""
    if not distributed.is_distributed():
        return None
    fitted = json.dumps(preprocessor.to_dict(), sort_keys=True)
    distributed.check_same("The fitted preprocessor", fitted)
    distributed.check_same("The encoded training or validation data", json.dumps(data))
    distributed.broadcast_model(model)
    # Dropout masks differ between ranks (rank 0 keeps the 1-process random stream); a
    # resumed run then puts back each rank's own checkpointed state (``restore``).
    if distributed.rank() > 0:
        torch.manual_seed(seed + distributed.rank())
    groups = model.parameter_groups()
    tables = [*groups["wide_tables"], *groups["deep_tables"]] if sparse else []
    return distributed.GradientExchange(model, tables)


def _backward_shard(
    model: WideDeep,
    batch: Batch,
    rows: int,
    regularized: bool,
    exchange: distributed.GradientExchange,
    autocast: contextlib.AbstractContextManager[Any],
) -> torch.Tensor:
    """Gradients of this rank's slice ``batch`` of a global batch of ``rows`` rows, summed
    over the ranks; returns the global batch's summed loss (float64).

    The slice's mean loss is weighted by ``len(batch) / rows`` (and the penalty, if any, by
    ``1 / world_size``), so the ranks' gradients add up to the gradient of one process's
    mean loss over the global batch. An empty slice (``rows`` < ranks) contributes zeros.
    """
    parts = []
    loss_sum = torch.zeros((), device=batch.ids.device)
    if len(batch) > 0:
        assert batch.labels is not None
        with autocast:
            logits = model.logits(batch)
        loss = loss_fn(logits, batch.labels, model.objective)
        parts.append(loss * (len(batch) / rows))
        loss_sum = loss.detach() * len(batch)
    if regularized:
        parts.append(model.regularization() / distributed.world_size())
    if parts:
        torch.stack(parts).sum().backward()
    return exchange(loss_sum)


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
