"""What the hardware allows for a W&D step: the bare-MLP rate and a matmul roofline.

* bare MLP: the same MLP, batch size and optimizer on random dense inputs of the deep
  part's width: no embeddings, no wide part, no data loading. Whatever a library adds on
  top (lookups, sparse updates, batching) shows as the gap to this rate.
* roofline: a matmul's GFLOP/s on this machine divided by the MLP's training FLOPs per
  sample (forward 2*in*out per layer, backward twice that).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from widedeep.optim.eager import Adam


def mlp(input_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """Linear+ReLU layers and a 1-unit head, as in the W&D deep part (whose ReLU works in
    place, as here: the limit must do no more work than the MLP it bounds)."""
    layers: list[nn.Module] = []
    width = input_dim
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True)]
        width = units
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def training_flops_per_sample(input_dim: int, hidden: Sequence[int]) -> float:
    """Multiply-adds of forward (x2 FLOPs) and backward (twice the forward) per sample."""
    widths = [input_dim, *hidden, 1]
    forward = sum(2 * a * b for a, b in itertools.pairwise(widths))
    return 3.0 * forward


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so clocks measure finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(
    step: object,
    samples: int,
    seconds: float = 3.0,
    warmup: int = 5,
    device: torch.device = torch.device("cpu"),
) -> float:
    """Median samples/s over 5 timed slices of a callable run repeatedly."""
    for _ in range(warmup):
        step()  # type: ignore[operator]
    _sync(device)
    rates = []
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            for _ in range(10 if device.type == "cuda" else 1):
                step()  # type: ignore[operator]
                count += 1
            _sync(device)
        rates.append(count * samples / (time.perf_counter() - start))
    return statistics.median(rates)


def bare_forward(
    model: nn.Module, inputs: torch.Tensor, passes: int, device: torch.device, bf16: bool = False
) -> None:
    """``passes`` gradient-free forward passes of ``model`` on ``inputs``, under bfloat16
    autocast with ``bf16`` (as widedeep's bf16 scoring runs), finished on the device."""
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(passes):
            model(inputs)
    _sync(device)


def alternating_seconds(
    work: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup_rounds: int = 0,
    device: torch.device = torch.device("cpu"),
) -> dict[str, float]:
    """Median seconds of each callable over ``rounds`` rounds that run them one after
    another (after ``warmup_rounds`` untimed ones): on a machine whose speed drifts by 2x
    within minutes, rates are only comparable when measured under the same conditions."""
    seconds: dict[str, list[float]] = {name: [] for name in work}
    for round_ in range(warmup_rounds + rounds):
        for name, run in work.items():
            start = time.perf_counter()
            run()
            _sync(device)
            if round_ >= warmup_rounds:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def bare_mlp_train_step(
    input_dim: int,
    hidden: Sequence[int],
    batch_size: int,
    lr: float = 1e-3,
    device: str = "cpu",
    bf16: bool = False,
) -> tuple[nn.Module, Callable[[], None]]:
    """The bare MLP on one random batch and a callable taking one Adam step on it; with
    ``bf16``, its forward runs under bfloat16 autocast as widedeep's does."""
    torch.manual_seed(0)
    where = torch.device(device)
    model = mlp(input_dim, hidden).to(where)
    # The optimizer widedeep's MLP trains with: torch's fused Adam (one kernel), less the
    # compiler wrappers that widedeep's classes skip (``widedeep.optim.eager``).
    optimizer = Adam(model.parameters(), lr=lr, fused=True)
    x = torch.randn(batch_size, input_dim, device=where)
    y = torch.randint(0, 2, (batch_size,), device=where).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(where.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).squeeze(-1)
        loss_fn(logits.float(), y).backward()
        optimizer.step()

    return model, train_step


def bare_mlp_rates(
    input_dim: int,
    hidden: Sequence[int],
    batch_size: int,
    lr: float = 1e-3,
    device: str = "cpu",
    bf16: bool = False,
) -> dict[str, float]:
    """Training (Adam) and forward-only samples/s of the bare MLP on random inputs (the
    training step as ``bare_mlp_train_step``)."""
    where = torch.device(device)
    model, train_step = bare_mlp_train_step(input_dim, hidden, batch_size, lr, device, bf16)
    x = torch.randn(batch_size, input_dim, device=where)

    @torch.no_grad()
    def forward_step() -> None:
        model(x)

    return {
        "train_samples_per_s": _rate(train_step, batch_size, device=where),
        "infer_samples_per_s": _rate(forward_step, batch_size, device=where),
    }


def matmul_gflops(m: int = 1024, k: int = 512, n: int = 256, device: str = "cpu") -> float:
    """GFLOP/s of an (m x k) @ (k x n) float32 matmul, a W&D layer's shape."""
    where = torch.device(device)
    a, b = torch.randn(m, k, device=where), torch.randn(k, n, device=where)
    rate = _rate(lambda: a @ b, 1, device=where)
    return rate * 2 * m * k * n / 1e9
