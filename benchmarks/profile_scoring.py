"""Where widedeep's scoring spends its time, on the benchmark's Criteo-shaped test rows.

    .venv/bin/python benchmarks/profile_scoring.py \
        --train bench-scratch/data/ctr-1000000-200000-0/train.parquet \
        --test bench-scratch/data/ctr-1000000-200000-0/test.parquet

Fits the benchmark's preprocessor on the training rows and builds its model through the
library (untrained: the work per row does not depend on the weights' values), then times,
in alternating rounds in this process, over the test rows in the benchmark's batches:
``predict`` in fp32 and in bf16, the bare MLP's forward pass on random inputs of the same
width (fp32 and bf16), and the pieces of an fp32 scoring batch on their own: the deep
part's first layer computed apart (the small fields' projected rows summed by an embedding
bag, the other fields' embeddings gathered by ``index_select``, then the products; see
``widedeep.model.projection``), the rest of the deep part on one batch's first-layer
output over and over (as the bare forward reads its one random input), and the wide part.
Also, outside that sum, the fused lookup that builds the whole MLP input (bf16 scoring's
and training's path), the MLP with its output layer on one such input, and the first layer
without the projected tables (every field's embedding through the product). Then
torch.profiler's top operators of ``predict``. This is the profile the performance notes
quote for scoring. With ``--embedding-dim 0`` the C fields take the default rule's sizes,
a table per field; the pieces that need one shared table are then left out, and the first
layer without projected tables goes through the concatenated input.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import polars as pl
import torch
from limits import alternating_seconds, bare_forward, mlp
from run_widedeep import INFER_BATCH, add_model_arguments, criteo_config
from torch.profiler import ProfilerActivity, profile

from widedeep.bundle import build_model
from widedeep.data.batch import Batch
from widedeep.data.tensors import TensorTable
from widedeep.features.preprocessor import Preprocessor
from widedeep.inference import predict
from widedeep.model.deep import Deep
from widedeep.model.gather import gather_fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    add_model_arguments(parser)
    args = parser.parse_args()
    args.epochs = 1
    if args.device != "cpu":
        parser.error("this profile times CPU scoring; use --device cpu")
    torch.set_num_threads(args.threads)
    config = criteo_config(args, args.train, args.test)
    preprocessor = Preprocessor(config.feature_schema)
    preprocessor.fit(pl.read_parquet(args.train))
    table = TensorTable.from_encoded(preprocessor.transform(pl.read_parquet(args.test)))
    model = build_model(config, preprocessor, sparse_gradients=False).eval()
    deep, wide = model.deep, model.wide
    assert deep is not None and wide is not None
    one_table = deep.fused and not deep.multi_names  # else a table per field
    cpu = torch.device("cpu")
    width = deep.first_layer.in_features
    bare = mlp(width, [int(h) for h in args.hidden.split(",")]).eval()
    inputs = torch.randn(INFER_BATCH, width)
    batches = list(table.batches(INFER_BATCH))
    dense_of = (lambda batch: batch.dense) if deep.dense_dim else (lambda batch: None)

    def unprojected(batch: Batch) -> torch.Tensor:
        """The first layer's output without projected tables: apart from the MLP's input
        for one table, through the concatenated input for a table per field."""
        if one_table:
            return deep._first_layer_apart(batch.ids, dense_of(batch))
        blocks = deep._blocks(batch.ids, batch.multi_ids, dense_of(batch))
        return deep.first_layer(torch.cat([block for _, block in blocks], dim=1))

    def first_layer(batch: Batch) -> torch.Tensor:
        if projected is None:
            return unprojected(batch)
        multi = () if one_table else batch.multi_ids
        return deep._first_layer_projected(projected, batch.ids, multi, dense_of(batch))

    with torch.no_grad():
        projected = model.projected_first_layer()
        first_output = unprojected(batches[0])

    def each_batch(work: Callable[[Batch], object]) -> None:
        for batch in batches:
            work(batch)  # each result dropped at once, as in ``predict``: memory is reused

    work: dict[str, Callable[[], object]] = {
        "predict fp32": lambda: predict(model, table, INFER_BATCH),
        "predict bf16": lambda: predict(model, table, INFER_BATCH, precision="bf16"),
        "bare forward fp32": lambda: bare_forward(bare, inputs, len(batches), cpu),
        "bare forward bf16": lambda: bare_forward(bare, inputs, len(batches), cpu, True),
        "  first layer apart": lambda: each_batch(first_layer),
        # one batch's real values over and over, as the bare forward reads its random input
        # (the activations work in place: a second pass leaves the same values)
        "  rest of deep part": lambda: each_batch(lambda _: deep._after_first_layer(first_output)),
        "  wide part": lambda: each_batch(lambda batch: wide(batch.ids, batch.multi_ids)),
        "unprojected layer": lambda: each_batch(unprojected),
    }
    if one_table:
        first_input = lookup(deep, batches[0])
        work["fused lookup"] = lambda: each_batch(lambda batch: lookup(deep, batch))
        work["MLP + output fp32"] = lambda: each_batch(
            lambda _: deep._output(deep.mlp(first_input))
        )
    with torch.no_grad():  # the first round warms every path up
        median = alternating_seconds(work, args.rounds, warmup_rounds=1)
    rows = len(table)
    if projected is not None:
        print(f"projected: {len(projected.fields)} of {len(deep.cardinalities)} fields, "
              f"{projected.table.numel() * 4 / 2**20:.0f} MB")  # fmt: skip
    print(f"scoring {rows:,} rows in batches of {INFER_BATCH}, medians of {args.rounds} rounds:")
    for name, seconds in median.items():
        print(f"  {name:<20} {seconds * 1e3:7.1f} ms  {seconds / rows * 1e6:6.3f} us/row  "
              f"{rows / seconds:>11,.0f} rows/s")  # fmt: skip
    pieces = sum(v for name, v in median.items() if name.startswith("  "))
    print(f"predict fp32 = {median['bare forward fp32'] / median['predict fp32']:.0%} of the "
          f"bare forward's rate, and {median['predict fp32'] / pieces:.2f}x the time of its "
          f"pieces run apart ({pieces * 1e3:.1f} ms)")  # fmt: skip

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predict(model, table, INFER_BATCH)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def lookup(deep: Deep, batch: Batch) -> torch.Tensor:
    """The deep part's input for one batch: every field's embedding and the dense columns."""
    return gather_fields(
        deep.fused_table, batch.ids, deep.fused_columns, deep.fused_offsets, batch.dense
    )


if __name__ == "__main__":
    main()
