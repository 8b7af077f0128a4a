"""Scoring a table in batches: where the projected first layer is used, and that it is
always current (``widedeep.inference``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from widedeep import inference
from widedeep.data.tensors import TensorTable
from widedeep.features.layout import FeatureLayout, SparseField
from widedeep.inference import predict
from widedeep.model.projection import ProjectedFirstLayer
from widedeep.model.widedeep import WideDeep
from widedeep.optim.lazy import LazyAdam
from widedeep.precision import mixed_precision

LAYOUT = FeatureLayout(
    single=(SparseField("user", 50, 8), SparseField("item", 20, 8), SparseField("city", 6, 8)),
    dense=("price",),
)
# Embeddings of different sizes (a table per field) and a multi-valued field.
MIXED = FeatureLayout(
    single=(SparseField("user", 50, 8), SparseField("item", 20, 6), SparseField("city", 6, 4)),
    multi=(SparseField("tags", 9, 4, multi_valued=True),),
    dense=("price",),
)


def model_and_table(
    rows: int = 5000, layout: FeatureLayout = LAYOUT
) -> tuple[WideDeep, TensorTable]:
    torch.manual_seed(0)
    model = WideDeep.from_layout(layout, hidden_units=[16, 8], sparse_gradients=True)
    assert model.deep is not None
    with torch.no_grad():  # embeddings of the scale training gives
        for table in model.deep.embeddings:
            table.weight.normal_()  # type: ignore[operator]
    generator = torch.Generator().manual_seed(1)
    ids = torch.stack(
        [torch.randint(0, f.cardinality, (rows,), generator=generator) for f in layout.single], 1
    )
    multi = tuple(
        torch.randint(0, f.cardinality, (rows, 3), generator=generator) for f in layout.multi
    )
    dense = torch.randn(rows, 1, generator=generator)
    labels = (torch.rand(rows, generator=generator) < 0.3).float()
    return model, TensorTable(ids, multi, dense, labels)


def rows(table: TensorTable, start: int, stop: int) -> TensorTable:
    labels = None if table.labels is None else table.labels[start:stop]
    return TensorTable(table.ids[start:stop], (), table.dense[start:stop], labels)


def unprojected(
    monkeypatch: pytest.MonkeyPatch, model: WideDeep, table: TensorTable, batch_size: int
) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(inference, "PROJECTED_MIN_BATCH", 10**9)
        return predict(model, table, batch_size)


def projected_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each batch the projected first layer computes, as they come."""
    used: list[int] = []
    call = ProjectedFirstLayer.__call__

    def recorded(self: ProjectedFirstLayer, ids: torch.Tensor, inputs: Any) -> torch.Tensor:
        used.append(len(ids))
        return call(self, ids, inputs)

    monkeypatch.setattr(ProjectedFirstLayer, "__call__", recorded)
    return used


def test_large_batches_score_through_the_projected_first_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, table = model_and_table()
    made: list[object] = []
    original = WideDeep.projected_first_layer
    monkeypatch.setattr(
        WideDeep, "projected_first_layer", lambda self: made.append(original(self)) or made[-1]
    )
    used = projected_batches(monkeypatch)
    scores = predict(model, table, batch_size=2048)
    assert len(made) == 1 and made[0] is not None  # looked up once for the call's 3 batches
    assert used == [2048, 2048]  # the last batch, 904 rows, took the plain product
    expected = unprojected(monkeypatch, model, table, 2048)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    predict(model, table, batch_size=512)  # small batches: never looked up
    predict(model, table, batch_size=2048, precision="bf16")  # bf16: not used
    assert len(made) == 1 and used == [2048, 2048]


def test_the_same_batches_give_the_same_bits_however_the_rows_are_split() -> None:
    """A server scores a request in micro-batches, one call each; a batch of fewer rows
    than ``PROJECTED_MIN_BATCH`` (the 904 at the end) takes the same path both ways."""
    model, table = model_and_table()
    whole = predict(model, table, batch_size=2048)
    calls = [predict(model, rows(table, a, min(a + 2048, 5000)), 2048) for a in (0, 2048, 4096)]
    assert np.array_equal(whole, np.concatenate(calls))


@pytest.mark.parametrize("layout", [LAYOUT, MIXED], ids=["one table", "a table per field"])
def test_scores_follow_each_training_step(
    monkeypatch: pytest.MonkeyPatch, layout: FeatureLayout
) -> None:
    """LazyAdam writes the embedding rows through numpy (torch's version counters do not
    move); scores after each step are the new weights' scores all the same."""
    model, table = model_and_table(layout=layout)
    assert model.deep is not None and model.deep.fused == (layout is LAYOUT)
    used = projected_batches(monkeypatch)
    optimizer = LazyAdam(model.parameters(), lr=0.05)
    before = predict(model, table, batch_size=2048)
    for step in range(3):
        batch = table.slice(step * 100, step * 100 + 100)
        model.train()
        assert batch.labels is not None
        loss = torch.nn.functional.binary_cross_entropy(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after = predict(model, table, batch_size=2048)
        assert used[-2:] == [2048, 2048]
        assert np.abs(after - before).max() > 1e-3  # the step moved the scores
        expected = unprojected(monkeypatch, model, table, 2048)
        np.testing.assert_allclose(after, expected, rtol=0, atol=1e-6)
        before = after


def test_a_table_without_rows_scores_to_empty_arrays() -> None:
    model, table = model_and_table()
    wide, deep = inference.predict_parts(model, rows(table, 0, 0))
    assert wide.shape == deep.shape == (0,) and wide.dtype == deep.dtype == np.float32
    assert predict(model, rows(table, 0, 0)).shape == (0,)


@pytest.mark.parametrize(
    ("combine", "precision"), [("sum", "fp32"), ("mean", "fp32"), ("sum", "bf16")]
)
def test_parts_are_each_rows_own_in_table_order(combine: str, precision: str) -> None:
    """Batches of 2048 with a short last one: every row's wide and deep parts land in their
    own place, as the whole table scored in one batch gives them."""
    _, table = model_and_table()
    torch.manual_seed(0)
    model = WideDeep.from_layout(
        LAYOUT, hidden_units=[16, 8], sparse_gradients=True, combine=combine
    )
    with torch.no_grad():  # every weight non-zero, the wide part's too
        for weight in model.parameters():
            weight.normal_()
    wide, deep = inference.predict_parts(model, table, batch_size=2048, precision=precision)
    model.eval()
    with torch.no_grad(), mixed_precision(torch.device("cpu"), precision):
        expected_wide, expected_deep = model.parts(table.slice(0, len(table)))
    assert wide.shape == deep.shape == (5000,) and wide.dtype == deep.dtype == np.float32
    assert len(np.unique(wide)) > 3000 and len(np.unique(deep)) > 4500  # rows tell apart
    # fp32: rounding alone (the batches' first layer is projected, the whole table's not)
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(wide, expected_wide.float().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(deep, expected_deep.float().numpy(), rtol=tolerance, atol=1e-3)
