"""Train and score widedeep on a Criteo-shaped (or any labelled) table; write the benchmark JSON.

Same command line and JSON as the peer runners in ``benchmarks/peers/``, so ``bench.py``
runs every library the same way, each in its own process (peak RSS is per process):

    .venv/bin/python benchmarks/run_widedeep.py --train train.parquet --test test.parquet \\
        --epochs 2 --batch-size 1024 --embedding-dim 16 --hidden 256,128 --lr 1e-3 \\
        --threads 2 --output widedeep.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from limits import alternating_seconds, bare_forward, bare_mlp_train_step, mlp
from peers.columns import LABEL, Columns

import widedeep
from widedeep.config import RunConfig
from widedeep.data.batch import Batch
from widedeep.data.tensors import TensorTable
from widedeep.inference import predict
from widedeep.metrics import auc, log_loss
from widedeep.model.widedeep import WideDeep
from widedeep.precision import mixed_precision, resolve_precision
from widedeep.training.loop import train_step
from widedeep.training.optimizers import build_optimizers, use_sparse_gradients


def criteo_config(args: argparse.Namespace, train: str, test: str) -> RunConfig:
    """The benchmark's model: every categorical column (Criteo: C1..C26) in both parts, the
    numeric ones (I1..I13) log1p-transformed in the deep part. The columns are read off the
    training file (``peers/columns.py``, the rule the peers' runners use too)."""
    columns = Columns.of_file(train)
    features: list[dict[str, Any]] = [
        {"name": name, "kind": "numeric", "transform": "log1p", "fill": "zero"}
        for name in columns.numeric
    ]
    categorical: dict[str, Any] = (
        {"kind": "hashed", "num_buckets": args.hashed_buckets}
        if args.hashed_buckets
        else {"kind": "categorical"}
    )
    features += [
        {"name": name, **categorical, "embedding_dim": args.embedding_dim or None}
        for name in columns.categorical
    ]
    optimizer = {"name": args.optimizer, "lr": args.lr}
    data: dict[str, Any] = {"train": train, "validation": test, "test": test}
    if getattr(args, "stream_buffer", 0):
        data["stream"] = {"shuffle_buffer": args.stream_buffer}
    elif getattr(args, "keep_encoded", False):
        data["stream"] = {"keep_encoded": True}
    return RunConfig.from_dict(
        {
            "data": data,
            "schema": {
                "label": {"column": LABEL},
                "features": features,
                "wide": columns.categorical,
                "deep": columns.numeric + columns.categorical,
            },
            "model": {"hidden_units": [int(h) for h in args.hidden.split(",")]},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "device": args.device,
                "precision": args.precision,
                "wide_optimizer": optimizer,
                "deep_optimizer": optimizer,
                "early_stopping": None,
                "progress": False,
            },
        }
    )


TRAIN_ROUNDS, TRAIN_STEPS = 7, 40


def training_beside_bare(
    config: RunConfig, model: WideDeep, table: TensorTable, precision: str
) -> dict[str, float]:
    """Median samples/s of the training loop's own step (``train_step``) on ``model``, and
    of the bare MLP's step in this precision and in fp32, in alternating rounds of
    ``TRAIN_STEPS`` steps: on a machine whose speed drifts by 2x within minutes, a ratio
    is only fair between rates measured under the same conditions."""
    device = torch.device(config.train.device)
    settings = config.train
    sparse = use_sparse_gradients(config.model)
    optimizers = build_optimizers(model, settings, sparse_tables=sparse)
    autocast = mixed_precision(device, precision)
    model.train()
    model.check_inputs(table.slice(0, len(table)))
    generator = torch.Generator().manual_seed(0)

    def batches() -> Iterator[Batch]:
        while True:
            for batch in table.batches(settings.batch_size, shuffle=True, generator=generator):
                if len(batch) == settings.batch_size:
                    yield batch.to(device)

    source = batches()
    hidden, width = list(config.model.hidden_units), model.deep.mlp.layers[0].in_features  # type: ignore[union-attr]

    def ours() -> None:
        train_step(model, next(source), optimizers, autocast, checked=True)

    def bare_step(bf16: bool) -> Callable[[], None]:
        lr, where = settings.deep_optimizer.lr, str(device)
        return bare_mlp_train_step(width, hidden, settings.batch_size, lr, where, bf16)[1]

    def steps(step: Callable[[], None]) -> Callable[[], None]:
        def round_of_steps() -> None:
            for _ in range(TRAIN_STEPS):
                step()

        return round_of_steps

    seconds = alternating_seconds(
        {
            "train_beside_samples_per_s": steps(ours),
            "bare_train_samples_per_s": steps(bare_step(precision == "bf16")),
            "bare_train_fp32_samples_per_s": steps(bare_step(False)),
        },
        TRAIN_ROUNDS,
        warmup_rounds=1,  # warms up the optimizers' state
        device=device,
    )
    return {name: TRAIN_STEPS * settings.batch_size / s for name, s in seconds.items()}


INFER_BATCH = 4096
INFER_ROUNDS = 5


def inference_beside_bare(
    model: WideDeep, table: TensorTable, args: argparse.Namespace
) -> dict[str, float]:
    """Median samples/s of scoring ``table`` (in fp32, the default, and in the opt-in bf16)
    and of the bare MLP's forward pass (fp32, and under bf16 autocast) over as many random
    batches of the same size, in alternating rounds: on a machine whose speed drifts, the
    rates are then measured under the same conditions."""
    hidden = [int(h) for h in args.hidden.split(",")]
    width = model.deep.mlp.layers[0].in_features  # type: ignore[union-attr]
    device = torch.device(args.device)
    bare = mlp(width, hidden).to(device).eval()
    inputs = torch.randn(INFER_BATCH, width, device=device)
    batches = -(-len(table) // INFER_BATCH)

    work = {
        "infer_samples_per_s": lambda: predict(model, table, INFER_BATCH, device),
        "infer_bf16_samples_per_s": lambda: predict(model, table, INFER_BATCH, device, "bf16"),
        "bare_infer_samples_per_s": lambda: bare_forward(bare, inputs, batches, device),
        "bare_infer_bf16_samples_per_s": lambda: bare_forward(bare, inputs, batches, device, True),
    }
    seconds = alternating_seconds(work, INFER_ROUNDS, device=device)
    rows = {
        name: len(table) if name.startswith("infer") else batches * INFER_BATCH for name in work
    }
    return {name: rows[name] / s for name, s in seconds.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``criteo_config`` reads (shared with ``profile_step.py``)."""
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--embedding-dim",
        type=int,
        default=16,
        help="every C field's embedding size (0: the default rule's, by cardinality)",
    )
    parser.add_argument("--hidden", default="256,128")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument(
        "--hashed-buckets", type=int, default=0, help="hash the C fields into N buckets each"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    add_model_arguments(parser)
    parser.add_argument(
        "--stream-buffer",
        type=int,
        default=0,
        help="stream the training Parquet from disk with a shuffle buffer of N rows (0: load it)",
    )
    parser.add_argument(
        "--keep-encoded",
        action="store_true",
        help="read the training Parquet in chunks and hold it encoded (data.stream.keep_encoded)",
    )
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = criteo_config(args, args.train, args.test)

    precision = resolve_precision(torch.device(args.device), args.precision)
    # One read and one encoding of the training data, inside train() as for a user; it
    # records how long fitting and encoding the training table took.
    with tempfile.TemporaryDirectory() as folder:
        result = widedeep.train(config, Path(folder) / "run")
        metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert result.model is not None and result.preprocessor is not None
    train_rows = metrics["rows"]["train"]
    preprocess_seconds = metrics["preprocess_seconds"]
    model = result.model.to(args.device)
    # From the path, as a user scores a file (and as training encodes its held-out files): a
    # Parquet file is read a column at a time as it is encoded, never whole.
    test_table = TensorTable.from_encoded(result.preprocessor.transform(args.test))
    assert test_table.labels is not None
    labels = test_table.labels.numpy()
    probs = predict(model, test_table, batch_size=INFER_BATCH, device=args.device)
    # the opt-in bf16 scoring of the same model: what it costs in ranking quality
    probs_bf16 = predict(model, test_table, INFER_BATCH, args.device, "bf16")
    inference = inference_beside_bare(model, test_table, args)
    rss = peak_rss_mb()  # before the bare MLPs' training (their bf16 kernels hold memory)
    # Last, as it trains the model further: our step beside the bare MLP's, alternating.
    beside = training_beside_bare(config, model, test_table, precision)

    epochs = [
        {
            "epoch": row["epoch"],
            "auc": row["validation_auc"],
            "logloss": row["validation_logloss"],
            "seconds": row["seconds"],
        }
        for row in result.history
    ]
    report = {
        "library": "widedeep",
        "precision": precision,
        "version": widedeep.__version__,
        "torch": torch.__version__,
        "preprocess_rows_per_s": train_rows / preprocess_seconds,
        "train_samples_per_s": [row["samples_per_s"] for row in result.history],
        **inference,
        **beside,
        "peak_rss_mb": rss,
        "epochs": epochs,
        "test_auc": auc(labels, probs),
        "test_auc_bf16_scoring": auc(labels, probs_bf16),
        "test_logloss": log_loss(labels, probs),
        "settings": {**vars(args), "model_parameters": sum(p.numel() for p in model.parameters())},
    }
    Path(args.output).write_text(json.dumps(report, indent=1))
    json.dump({k: v for k, v in report.items() if k != "epochs"}, sys.stdout, default=str)
    print()


if __name__ == "__main__":
    main()
