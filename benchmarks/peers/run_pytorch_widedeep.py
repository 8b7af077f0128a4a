"""pytorch-widedeep's Wide & Deep on a Criteo-shaped (or any labelled) table: preprocess, train,
predict, timed.

Runs inside the venv made by setup_envs.py:

    bench-scratch/venv-pwd/bin/python benchmarks/peers/run_pytorch_widedeep.py \\
        --train train.parquet --test test.parquet --epochs 2 --batch-size 1024 \\
        --embedding-dim 16 --hidden 256,128 --lr 1e-3 --threads 2 --output result.json

Wide: ``WidePreprocessor`` on the categorical columns (Criteo: C1..C26) into ``Wide``. Deep:
``TabPreprocessor`` (the categorical columns embedded at --embedding-dim, the numeric ones,
I1..I13, continuous) into ``TabMlp``. Trained by ``Trainer.fit``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import peer_harness as harness
import torch
from torchvision_compat import allow_torchvision_without_ops

TORCHVISION_STAND_IN = allow_torchvision_without_ops()  # before pytorch_widedeep imports it

from pytorch_widedeep import Trainer  # noqa: E402
from pytorch_widedeep.callbacks import Callback  # noqa: E402
from pytorch_widedeep.models import TabMlp, Wide, WideDeep  # noqa: E402
from pytorch_widedeep.preprocessing import TabPreprocessor, WidePreprocessor  # noqa: E402

LIBRARY = "pytorch-widedeep"


@dataclass(frozen=True)
class Encoded:
    """The peer's preprocessors, fitted, and the arrays they made."""

    tab: TabPreprocessor
    wide: WidePreprocessor
    numeric: list[str]
    train_tab: np.ndarray
    train_wide: np.ndarray
    test_tab: np.ndarray
    test_wide: np.ndarray
    fit_seconds: float
    transform_seconds: float


def preprocess(
    train: pd.DataFrame, test: pd.DataFrame, features: harness.Columns, embedding_dim: int
) -> Encoded:
    """Fit both preprocessors on train, transform train and test; each phase timed."""
    tab = TabPreprocessor(
        cat_embed_cols=[(name, embedding_dim) for name in features.categorical],
        continuous_cols=features.numeric,
        verbose=0,
    )
    wide = WidePreprocessor(wide_cols=features.categorical)
    started = time.perf_counter()
    tab.fit(train)
    wide.fit(train)
    fitted = time.perf_counter()
    arrays = tab.transform(train), wide.transform(train), tab.transform(test), wide.transform(test)
    done = time.perf_counter()
    return Encoded(
        tab,
        wide,
        features.numeric,
        *arrays,
        fit_seconds=fitted - started,
        transform_seconds=done - fitted,
    )


def build_model(encoded: Encoded, hidden: tuple[int, ...]) -> WideDeep:
    """Wide + TabMlp with the given hidden units, no dropout, no batch norm."""
    wide = Wide(input_dim=encoded.wide.wide_dim, pred_dim=1)
    deep = TabMlp(
        column_idx=encoded.tab.column_idx,
        cat_embed_input=encoded.tab.cat_embed_input,
        continuous_cols=encoded.numeric,
        mlp_hidden_dims=list(hidden),
        mlp_dropout=0.0,
        mlp_batchnorm=False,
    )
    return WideDeep(wide=wide, deeptabular=deep)


class EpochClock(Callback):
    """Feeds the harness's epoch log from pytorch-widedeep's callback hooks."""

    def __init__(self, log: harness.EpochLog, predict: Callable[[Trainer], np.ndarray]) -> None:
        super().__init__()
        self.log = log
        self.predict = predict

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self.log.begin()

    def on_epoch_end(
        self, epoch: int, logs: dict | None = None, metric: float | None = None
    ) -> None:
        """Stop the clock and score the test set."""
        self.log.end(epoch, lambda: self.predict(self.trainer))


def predict_probs(trainer: Trainer, encoded: Encoded, batch_size: int) -> np.ndarray:
    """Click probabilities for the test set through ``Trainer.predict_proba``.

    ``predict_proba`` ignores its ``batch_size`` once ``fit`` has set one, so it is swapped in.
    """
    fit_batch_size, trainer.batch_size = trainer.batch_size, batch_size
    try:
        probs = trainer.predict_proba(X_wide=encoded.test_wide, X_tab=encoded.test_tab)
    finally:
        trainer.batch_size = fit_batch_size
    return probs[:, 1]


def run(settings: harness.Settings, num_workers: int | None) -> harness.Result:
    """Preprocess, train with per-epoch evaluation, time inference; the result record."""
    harness.configure_run(settings)
    train, test, prepare_seconds, features = harness.load(settings)
    encoded = preprocess(train, test, features, settings.embedding_dim)
    model = build_model(encoded, settings.hidden)
    worker_args = {} if num_workers is None else {"num_workers": num_workers}
    log = harness.EpochLog(train_rows=len(train), test_labels=test[harness.LABEL].to_numpy())
    clock = EpochClock(
        log, lambda trainer: predict_probs(trainer, encoded, settings.infer_batch_size)
    )
    trainer = Trainer(
        model,
        objective="binary",
        optimizers=torch.optim.Adam(model.parameters(), lr=settings.lr),
        callbacks=[clock],
        verbose=0,
        seed=settings.seed,
        **worker_args,
    )
    started = time.perf_counter()
    trainer.fit(
        X_wide=encoded.train_wide,
        X_tab=encoded.train_tab,
        target=train[harness.LABEL].to_numpy(),
        n_epochs=settings.epochs,
        batch_size=settings.batch_size,
        shuffle=True,
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
        lambda: predict_probs(trainer, encoded, settings.infer_batch_size),
        notes={
            "num_workers": trainer.num_workers,
            "shuffle": True,
            "wide_columns": "the categorical columns",
            "continuous_scaling": "none (TabPreprocessor default scale=False)",
            "torchvision_ops_stand_in": TORCHVISION_STAND_IN,
        },
    )


def main() -> None:
    """Parse arguments, run, write the result file."""
    parser = harness.build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers; default: the Trainer's own default (os.cpu_count())",
    )
    args = parser.parse_args()
    settings = harness.settings_from(args)
    harness.write_result(settings.output, run(settings, args.num_workers))


if __name__ == "__main__":
    main()
