"""Where a widedeep training step spends its time, on the benchmark's Criteo-shaped data.

    .venv/bin/python benchmarks/profile_step.py \
        --train bench-scratch/data/ctr-1000000-200000-0/train.parquet

Builds the benchmark's model and optimizers through the library (the same fast path as
``widedeep train``), then (1) times the phases of a step (batch gather, forward, backward,
optimizer) with device syncs between them, and (2) prints torch.profiler's top operators.
This is the profile the performance notes quote.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import polars as pl
import torch
from run_widedeep import add_model_arguments, criteo_config
from torch.profiler import ProfilerActivity, profile

from widedeep import kernels
from widedeep.bundle import build_model
from widedeep.data.batch import Batch
from widedeep.data.tensors import TensorTable
from widedeep.features.preprocessor import Preprocessor
from widedeep.precision import mixed_precision
from widedeep.training.loop import loss_fn, train_step
from widedeep.training.optimizers import build_optimizers, use_sparse_gradients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--shapes", action="store_true", help="group operators by input shape")
    parser.add_argument(
        "--compare-torch-ops",
        action="store_true",
        help="also time whole steps with the fused CPU loops and with torch's ops, alternating",
    )
    add_model_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = criteo_config(args, args.train, args.train)
    frame = pl.read_parquet(args.train, n_rows=args.rows)
    preprocessor = Preprocessor(config.feature_schema)
    table = TensorTable.from_encoded(preprocessor.fit_transform(frame)).place(device)
    sparse = use_sparse_gradients(config.model)
    model = build_model(config, preprocessor, sparse_gradients=sparse).to(device)
    optimizers = build_optimizers(model, config.train, sparse_tables=sparse)
    generator = torch.Generator().manual_seed(0)
    autocast = mixed_precision(device, config.train.precision)

    model.check_inputs(table.slice(0, len(table)))  # once, as the training loop does

    def forward(batch: Batch) -> torch.Tensor:
        with autocast:
            return model.logits(batch, checked=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    phases: dict[str, list[float]] = {"gather": [], "forward": [], "backward": [], "optimizer": []}

    def timed(name: str, work: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = work()
        sync()
        phases[name].append(time.perf_counter() - start)
        return result

    def run_steps(count: int, record: bool) -> None:
        batches = table.batches(args.batch_size, shuffle=True, generator=generator)
        for _, batch in zip(range(count), batches, strict=False):
            if record:
                batch = timed("gather", lambda b=batch: b.to(device))  # type: ignore[misc]
                logits = timed("forward", lambda b=batch: forward(b))  # type: ignore[misc]
                loss = loss_fn(logits, batch.labels, model.objective)  # type: ignore[arg-type]
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                timed("backward", loss.backward)
                timed("optimizer", lambda: [o.step() for o in optimizers])
            else:
                train_step(model, batch, optimizers, autocast, checked=True)

    model.train()
    run_steps(20, record=False)
    sync()
    run_steps(args.steps, record=True)
    total = sum(statistics.median(v) for v in phases.values())
    print(f"step phases, median of {args.steps} steps (batch {args.batch_size}, {device}):")
    for name, values in phases.items():
        median = statistics.median(values)
        print(f"  {name:<10} {median * 1e3:7.3f} ms  {median / total:5.1%}")
    print(f"  {'total':<10} {total * 1e3:7.3f} ms  -> {args.batch_size / total:,.0f} samples/s")

    if args.compare_torch_ops:
        compare_torch_ops(run_steps, args.batch_size)

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=args.shapes) as prof:
        run_steps(50, record=False)
        sync()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    print(averages.table(sort_by=sort, row_limit=40 if args.shapes else 18))


def compare_torch_ops(run_steps: Callable[[int, bool], None], batch_size: int) -> None:
    """Median step time with widedeep's fused CPU loops and with the torch ops they replace
    (``kernels.ENABLED`` off), in 8 alternating rounds of 60 steps in this process."""
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for round_ in range(9):  # the first round warms both paths up
            for fused in (True, False):
                kernels.ENABLED = fused
                start = time.perf_counter()
                run_steps(60, False)
                if round_:
                    times[fused].append((time.perf_counter() - start) / 60)
    finally:
        kernels.ENABLED = True
    fused_step, torch_step = (statistics.median(times[f]) for f in (True, False))
    print(f"fused loops {fused_step * 1e3:.3f} ms/step ({batch_size / fused_step:,.0f} samples/s), "
          f"torch ops {torch_step * 1e3:.3f} ms/step: {torch_step / fused_step:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
