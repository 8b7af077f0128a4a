"""The deep part's scoring path: the first layer computed apart from the MLP's input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from widedeep.features.layout import SparseField
from widedeep.model import deep as deep_module
from widedeep.model.deep import Deep

FIELDS = (SparseField("user", 30, 4), SparseField("item", 20, 4), SparseField("city", 9, 4))


def deep_part(columns: list[int], dense: int, hidden: list[int]) -> Deep:
    """A deep part whose single-valued fields share one table (the fused case)."""
    torch.manual_seed(0)
    fields = FIELDS[: len(columns)]
    names = [f"x{i}" for i in range(dense)]
    return Deep(fields, columns, dense_names=names, hidden_units=hidden).eval()


def inputs(rows: int, width: int, dense: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 9, (rows, width), generator=generator)  # within every field
    values = torch.randn(rows, dense, generator=generator) if dense else None
    return ids, values


def counted_lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each call of the fused lookup that builds the MLP's input."""
    calls: list[int] = []
    original = deep_module.gather_fields

    def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(deep_module, "gather_fields", recorded)
    return calls


@pytest.mark.parametrize(
    ("columns", "width", "dense", "hidden"),
    [
        ([0, 1, 2], 3, 2, [8, 4]),  # every id column, with dense columns
        ([0, 1, 2], 3, 0, [8, 4]),  # no dense columns
        ([2, 0], 3, 2, [8]),  # some of the id columns, out of order
        ([0, 1], 2, 1, []),  # no hidden layer: the first layer is the output layer
    ],
)
def test_scoring_apart_gives_the_fused_lookups_logits(
    monkeypatch: pytest.MonkeyPatch, columns: list[int], width: int, dense: int, hidden: list[int]
) -> None:
    """Without gradients, in float32 on CPU, the first layer multiplies the embeddings and
    the dense columns apart (no MLP input is built); the logits are those of the fused
    lookup's path up to rounding."""
    model = deep_part(columns, dense, hidden)
    ids, values = inputs(64, width, dense)
    calls = counted_lookups(monkeypatch)
    with torch.no_grad():
        apart = model(ids, (), values)
    assert calls == []  # the MLP's input was never built
    with torch.enable_grad():
        fused = model(ids, (), values).detach()
    assert calls == [1]
    torch.testing.assert_close(apart, fused, rtol=0, atol=1e-6)


def test_training_and_bf16_scoring_keep_the_fused_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path apart is for float32 scoring only: a training step needs the MLP's input
    for its gradient, and under bf16 autocast the fused lookup writes bfloat16 itself."""
    model = deep_part([0, 1, 2], 2, [8, 4])
    ids, values = inputs(16, 3, 2)
    calls = counted_lookups(monkeypatch)
    model(ids, (), values).sum().backward()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, (), values)
    assert calls == [1, 1]
