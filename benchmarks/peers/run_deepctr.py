"""DeepCTR-Torch's WDL on a Criteo-shaped (or any labelled) table: preprocess, train,
predict, timed.

Runs inside the venv made by setup_envs.py:

    bench-scratch/venv-deepctr/bin/python benchmarks/peers/run_deepctr.py \\
        --train train.parquet --test test.parquet --epochs 2 --batch-size 1024 \\
        --embedding-dim 16 --hidden 256,128 --lr 1e-3 --threads 2 --output result.json

Preprocessing follows DeepCTR-Torch's Criteo example: a ``LabelEncoder`` per categorical column,
``MinMaxScaler`` on the numerics, ``SparseFeat``/``DenseFeat`` columns for both the linear and the
DNN part of ``WDL``. Trained by ``model.compile`` + ``model.fit``.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import peer_harness as harness
import torch
from deepctr_torch.callbacks import Callback
from deepctr_torch.inputs import DenseFeat, SparseFeat
from deepctr_torch.models import WDL
from sklearn.preprocessing import LabelEncoder, MinMaxScaler

LIBRARY = "deepctr-torch"
WDL_DEFAULTS_KEPT = (
    "l2_reg_linear",
    "l2_reg_embedding",
    "l2_reg_dnn",
    "init_std",
    "dnn_activation",
)


@dataclass(frozen=True)
class Encoded:
    """Model inputs by feature name, and the vocabulary size of each categorical column."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    vocabulary_sizes: dict[str, int]
    numeric: list[str]
    fit_seconds: float
    transform_seconds: float


def encode_unseen_last(encoder: LabelEncoder, values: np.ndarray) -> np.ndarray:
    """``encoder.transform``; values unseen in training get the extra id ``len(classes_)``."""
    seen = pd.Index(encoder.classes_).get_indexer(values) >= 0  # np.isin is slow on strings
    ids = np.full(len(values), len(encoder.classes_), dtype=np.int64)
    ids[seen] = encoder.transform(values[seen])
    return ids


def preprocess(train: pd.DataFrame, test: pd.DataFrame, features: harness.Columns) -> Encoded:
    """Fit the encoders and the scaler on train, transform train and test; each phase timed."""
    started = time.perf_counter()
    encoders = {name: LabelEncoder().fit(train[name].to_numpy()) for name in features.categorical}
    scaler = MinMaxScaler(feature_range=(0, 1)).fit(train[features.numeric].to_numpy())
    fitted = time.perf_counter()
    inputs = []
    for table in (train, test):
        dense = scaler.transform(table[features.numeric].to_numpy())
        columns = {name: dense[:, i] for i, name in enumerate(features.numeric)}
        for name, encoder in encoders.items():
            columns[name] = encode_unseen_last(encoder, table[name].to_numpy())
        inputs.append(columns)
    done = time.perf_counter()
    sizes = {name: len(encoder.classes_) + 1 for name, encoder in encoders.items()}
    return Encoded(
        *inputs,
        sizes,
        features.numeric,
        fit_seconds=fitted - started,
        transform_seconds=done - fitted,
    )


def build_model(encoded: Encoded, settings: harness.Settings) -> WDL:
    """WDL over every column in both parts, as in the Criteo example; no dropout, no batch norm."""
    columns = [
        SparseFeat(name, size, embedding_dim=settings.embedding_dim)
        for name, size in encoded.vocabulary_sizes.items()
    ] + [DenseFeat(name, 1) for name in encoded.numeric]
    return WDL(
        linear_feature_columns=columns,
        dnn_feature_columns=columns,
        dnn_hidden_units=settings.hidden,
        dnn_dropout=0.0,
        dnn_use_bn=False,
        task="binary",
        seed=settings.seed,
        device=settings.device,
    )


def wdl_defaults() -> dict[str, object]:
    """The WDL defaults this run keeps (regularization, initialization), for the record."""
    parameters = inspect.signature(WDL).parameters
    return {name: parameters[name].default for name in WDL_DEFAULTS_KEPT}


def predict_probs(model: WDL, encoded: Encoded, batch_size: int) -> np.ndarray:
    """Click probabilities for the test set through ``model.predict``."""
    return model.predict(encoded.test, batch_size=batch_size).ravel()


class EpochClock(Callback):
    """Feeds the harness's epoch log from DeepCTR-Torch's callback hooks."""

    def __init__(self, log: harness.EpochLog, encoded: Encoded, batch_size: int) -> None:
        super().__init__()
        self.log = log
        self.encoded = encoded
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self.log.begin()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Stop the clock and score the test set; ``fit`` sets train mode only once, so reset it."""
        self.log.end(epoch, lambda: predict_probs(self.model, self.encoded, self.batch_size))
        self.model.train()


def run(settings: harness.Settings) -> harness.Result:
    """Preprocess, train with per-epoch evaluation, time inference; the result record."""
    harness.configure_run(settings)
    train, test, prepare_seconds, features = harness.load(settings)
    encoded = preprocess(train, test, features)
    model = build_model(encoded, settings)
    model.compile(torch.optim.Adam(model.parameters(), lr=settings.lr), "binary_crossentropy")
    log = harness.EpochLog(train_rows=len(train), test_labels=test[harness.LABEL].to_numpy())
    started = time.perf_counter()
    model.fit(
        encoded.train,
        train[harness.LABEL].to_numpy(),
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        verbose=0,
        shuffle=True,
        callbacks=[EpochClock(log, encoded, settings.infer_batch_size)],
    )
    fit_call_seconds = time.perf_counter() - started
    return harness.build_result(
        LIBRARY,
        settings,
        (len(train), len(test)),
        prepare_seconds,
        encoded,
        log,
        fit_call_seconds,
        lambda: predict_probs(model, encoded, settings.infer_batch_size),
        notes={
            "shuffle": True,
            "wide_columns": "every feature (linear part of WDL, as in the Criteo example)",
            "continuous_scaling": "MinMaxScaler (Criteo example)",
            "wdl_defaults": wdl_defaults(),
        },
    )


def main() -> None:
    """Parse arguments, run, write the result file."""
    settings = harness.settings_from(harness.build_parser(__doc__.splitlines()[0]).parse_args())
    harness.write_result(settings.output, run(settings))


if __name__ == "__main__":
    main()
