"""The TensorFlow/Keras notebook's Wide & Deep, this project's starting point: preprocess,
train, predict, timed.

Runs inside the venv made by setup_envs.py:

    bench-scratch/venv-keras/bin/python benchmarks/peers/run_keras.py \\
        --train train.parquet --test test.parquet --epochs 2 --batch-size 1024 \\
        --embedding-dim 16 --hidden 256,128 --lr 1e-3 --threads 2 --output result.json

The model is the notebook's: one embedding per categorical column (``random_uniform``
initializer, l2 1e-6), a ``Linear`` layer that is one weight vector over every column's ids
offset into one index space (l2 1e-6), Dense+ReLU layers with one Dropout after the last,
``Dense(1)`` on them, and ``sigmoid(0.5 * wide + 0.5 * deep)``, trained by ``model.fit`` with
Adam on the binary cross-entropy. One change: the notebook bucketized Criteo's numbers into
categories, while here, as for every other library, the numeric columns (log1p) join the
embeddings at the DNN's input. Categories are numbered by their order in the training table;
an unseen category gets one extra id per column.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported

import keras
import numpy as np
import pandas as pd
import peer_harness as harness
import tensorflow as tf
from keras import layers, ops, regularizers

LIBRARY = "tensorflow-cpu"
EMBED_REG = W_REG = 1e-6  # the notebook's defaults


@dataclass(frozen=True)
class Encoded:
    """Model inputs (ids and numbers) for train and test, and each column's number of ids."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    vocabulary_sizes: list[int]
    fit_seconds: float
    transform_seconds: float


def preprocess(train: pd.DataFrame, test: pd.DataFrame, features: harness.Columns) -> Encoded:
    """Number each column's categories on train, then encode train and test; each phase timed."""
    started = time.perf_counter()
    vocabularies = [pd.Index(pd.unique(train[name].to_numpy())) for name in features.categorical]
    fitted = time.perf_counter()
    inputs = []
    for table in (train, test):
        ids = np.empty((len(table), len(vocabularies)), dtype=np.int32)
        for column, (name, vocabulary) in enumerate(
            zip(features.categorical, vocabularies, strict=True)
        ):
            found = vocabulary.get_indexer(table[name].to_numpy())
            ids[:, column] = np.where(found < 0, len(vocabulary), found)
        dense = table[features.numeric].to_numpy(dtype=np.float32)
        inputs.append({"ids": ids, "numbers": dense})
    done = time.perf_counter()
    sizes = [len(vocabulary) + 1 for vocabulary in vocabularies]
    return Encoded(*inputs, sizes, fit_seconds=fitted - started, transform_seconds=done - fitted)


class Linear(layers.Layer):
    """The notebook's wide part: one weight per id of every column, the ids offset into one
    index space, summed over the columns."""

    def __init__(self, vocabulary_sizes: list[int], w_reg: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.offsets = np.cumsum([0, *vocabulary_sizes[:-1]]).astype(np.int32)
        self.size = int(sum(vocabulary_sizes))
        self.w_reg = w_reg

    def build(self, input_shape: tuple[int, ...]) -> None:
        """The weight vector over the whole index space."""
        self.w = self.add_weight(
            shape=(self.size, 1),
            initializer="random_normal",
            regularizer=regularizers.l2(self.w_reg),
            name="w",
        )

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        """``(batch, columns)`` ids -> ``(batch, 1)`` wide logits."""
        return ops.sum(ops.take(self.w, ids + self.offsets, axis=0), axis=1)


def build_model(
    encoded: Encoded, settings: harness.Settings, dnn_dropout: float = 0.0
) -> keras.Model:
    """The notebook's WideDeep, with the numeric columns at the DNN's input."""
    ids = keras.Input(shape=(len(encoded.vocabulary_sizes),), dtype="int32", name="ids")
    width = encoded.train["numbers"].shape[1]
    numbers = keras.Input(shape=(width,), dtype="float32", name="numbers")
    embedded = [
        layers.Embedding(
            size,
            settings.embedding_dim,
            embeddings_initializer="random_uniform",
            embeddings_regularizer=regularizers.l2(EMBED_REG),
        )(ids[:, column])
        for column, size in enumerate(encoded.vocabulary_sizes)
    ]
    x = layers.Concatenate()([*embedded, numbers])
    for units in settings.hidden:
        x = layers.Dense(units, activation="relu")(x)
    x = layers.Dropout(dnn_dropout)(x)
    deep = layers.Dense(1)(x)
    wide = Linear(encoded.vocabulary_sizes, W_REG)(ids)
    probability = layers.Activation("sigmoid")(0.5 * wide + 0.5 * deep)
    return keras.Model(inputs={"ids": ids, "numbers": numbers}, outputs=probability)


def predict_probs(model: keras.Model, inputs: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Click probabilities through ``model.predict``."""
    return model.predict(inputs, batch_size=batch_size, verbose=0).ravel()


class EpochClock(keras.callbacks.Callback):
    """Feeds the harness's epoch log from Keras's callback hooks."""

    def __init__(self, log: harness.EpochLog, encoded: Encoded, batch_size: int) -> None:
        super().__init__()
        self.log = log
        self.encoded = encoded
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self.log.begin()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Stop the clock and score the test set."""
        self.log.end(epoch, lambda: predict_probs(self.model, self.encoded.test, self.batch_size))


def configure_tensorflow(settings: harness.Settings) -> None:
    """The run's threads and seed, before any model is built."""
    tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
    tf.config.threading.set_inter_op_parallelism_threads(settings.threads)
    keras.utils.set_random_seed(settings.seed)


def run(settings: harness.Settings) -> harness.Result:
    """Preprocess, train with per-epoch evaluation, time inference; the result record."""
    if settings.device != "cpu":
        raise SystemExit(
            f"{LIBRARY}: this runner uses the CPU build; got --device {settings.device}"
        )
    configure_tensorflow(settings)
    harness.configure_run(settings)
    train, test, prepare_seconds, features = harness.load(settings)
    encoded = preprocess(train, test, features)
    model = build_model(encoded, settings)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=settings.lr), loss="binary_crossentropy"
    )
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
        lambda: predict_probs(model, encoded.test, settings.infer_batch_size),
        notes={
            "keras": keras.__version__,
            "shuffle": True,
            "wide_columns": "the categorical columns (the notebook's Linear over offset ids)",
            "regularization": {"embeddings_l2": EMBED_REG, "linear_l2": W_REG},
        },
    )


def main() -> None:
    """Parse arguments, run, write the result file."""
    settings = harness.settings_from(harness.build_parser(__doc__.splitlines()[0]).parse_args())
    harness.write_result(settings.output, run(settings))


if __name__ == "__main__":
    main()
