"""The projected first layer: which fields it projects, and that it computes the first layer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from widedeep.features.layout import SparseField
from widedeep.model import deep as deep_module
from widedeep.model import projection
from widedeep.model.deep import Deep
from widedeep.model.projection import ProjectedFirstLayer, project_first_layer, projected_fields

# cardinalities 40, 3000, 5 and 300: with room for the three smallest only (below)
FIELDS = (
    SparseField("user", 40, 4),
    SparseField("item", 3000, 4),
    SparseField("city", 5, 4),
    SparseField("shop", 300, 4),
)


def test_fields_are_projected_smallest_first_within_the_budget() -> None:
    # H = 10 and D = 4 floats of 4 bytes a row (table and copy): 40, 20 and 3000 rows
    # take 2240, 1120 and 168000 bytes
    dims = [4, 4, 4]
    assert projected_fields([40, 3000, 20], dims, 10, budget=3360) == [0, 2]
    assert projected_fields([40, 3000, 20], dims, 10, budget=3359) == [2]
    assert projected_fields([40, 3000, 20], dims, 10, budget=10**9) == [0, 1, 2]
    assert projected_fields([40, 3000, 20], dims, 10, budget=1119) == []


def test_narrow_embeddings_are_not_projected() -> None:
    """A row of H floats is about the work of a 2 x H product: no gain to pay memory for."""
    assert projected_fields([5, 5], [2, 2], 8) == []
    assert projected_fields([5, 5], [4, 4], 8) == [0, 1]
    assert projected_fields([5, 5], [3, 16], 8) == [1]


def deep_part(monkeypatch: pytest.MonkeyPatch, dense: int, hidden: list[int]) -> Deep:
    """A fused deep part whose budget projects user, city and shop but not item."""
    width = (hidden or [1])[0]
    monkeypatch.setattr(projection, "PROJECTED_BYTES", 345 * 4 * (width + 4))
    torch.manual_seed(0)
    names = [f"x{i}" for i in range(dense)]
    model = Deep(FIELDS, [3, 0, 1, 2], dense_names=names, hidden_units=hidden).eval()
    with torch.no_grad():  # weights of the scale training gives, not init's +-0.05
        model.fused_table.weight.normal_()
    return model


def inputs(rows: int, dense: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ids in the columns the fields read (column 3 is user, 0 item, 1 city, 2 shop)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.stack(
        [torch.randint(0, c, (rows,), generator=generator) for c in (3000, 5, 300, 40)], dim=1
    )
    values = torch.randn(rows, dense, generator=generator) if dense else None
    return ids, values


@pytest.mark.parametrize(
    ("dense", "hidden"),
    [(2, [8, 4]), (0, [8, 4]), (3, [])],  # with and without dense columns; no hidden layer
)
def test_the_projected_first_layer_equals_the_product(
    monkeypatch: pytest.MonkeyPatch, dense: int, hidden: list[int]
) -> None:
    model = deep_part(monkeypatch, dense, hidden)
    made = model.projected_first_layer()
    assert made is not None
    assert made.fields == (0, 2, 3)  # user, city, shop; item (3000 ids) is not
    assert made.columns.tolist() == [3, 1, 2]
    ids, values = inputs(257, dense)
    with torch.no_grad():
        expected = model._first_layer_apart(ids, values)
        got = model._first_layer_projected(made, ids, (), values)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        logits = model(ids, (), values, made)
        torch.testing.assert_close(logits, model(ids, (), values), rtol=1e-5, atol=1e-5)


def test_every_field_projected_leaves_no_product_of_embeddings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = deep_part(monkeypatch, 2, [8])
    layer = model.first_layer
    every = list(range(len(FIELDS)))
    rest = model._rest_blocks(every)
    assert rest == [[slice(16, 17), slice(17, 18)]]  # the dense columns alone
    made = project_first_layer(model._field_rows(), every, layer.weight, layer.bias, rest)
    ids, values = inputs(64, 2)
    with torch.no_grad():
        expected = model._first_layer_apart(ids, values)
        got = model._first_layer_projected(made, ids, (), values)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_it_is_made_once_and_again_after_any_write_to_the_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writes that torch's version counters miss (numpy views, as the optimizers' kernels
    write; ``.data``) still make it stale: the weights are compared by value."""
    model = deep_part(monkeypatch, 2, [8])
    ids, values = inputs(100, 2)
    first = model.projected_first_layer()
    assert model.projected_first_layer() is first
    table, layer = model.fused_table.weight, model.first_layer
    writes = [
        lambda: table.detach().numpy().__setitem__((2, 0), 7.0),  # user's row 2
        lambda: table.data[3042].add_(1.0),  # city's row 2
        lambda: layer.weight.detach().numpy().__setitem__((0, 0), 3.0),
        lambda: layer.bias.detach().numpy().__setitem__(1, -2.0),
    ]
    before = first
    for write in writes:
        write()
        made = model.projected_first_layer()
        assert made is not before
        with torch.no_grad():
            torch.testing.assert_close(
                model._first_layer_projected(made, ids, (), values),
                model._first_layer_apart(ids, values),
                rtol=1e-5,
                atol=1e-5,
            )
        before = made
    item_row = 40 + 17  # item is not projected: its rows are read as they are
    table.detach().numpy()[item_row, 0] = 5.0
    assert model.projected_first_layer() is before


def test_nothing_is_projected_off_the_cpu_out_of_float32_or_below_4_dimensions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = deep_part(monkeypatch, 2, [8])
    model.to(torch.float64)
    assert model.projected_first_layer() is None
    model.to("meta")
    assert model.projected_first_layer() is None
    narrow = (SparseField("a", 5, 2), SparseField("b", 5, 3))
    assert Deep(narrow, [0, 1], hidden_units=[8]).projected_first_layer() is None


def test_fields_with_tables_of_their_own_and_pooled_ones_are_scored_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Embeddings of different sizes (a table per field) and a multi-valued field: the small
    single-valued fields are projected, the rest go through the product."""
    monkeypatch.setattr(projection, "PROJECTED_BYTES", 40 * 4 * (8 + 6) + 5 * 4 * (8 + 4))
    torch.manual_seed(0)
    single = (
        SparseField("user", 40, 6),
        SparseField("item", 3000, 8),
        SparseField("city", 5, 4),
        SparseField("tiny", 3, 2),  # too narrow to project
    )
    tags = SparseField("tags", 7, 4, multi_valued=True, pooling="mean")
    model = Deep(single, [2, 0, 1, 3], (tags,), [0], dense_names=["x0"], hidden_units=[8, 4]).eval()
    assert not model.fused
    with torch.no_grad():
        for table in model.embeddings:
            table.weight.normal_()  # type: ignore[operator]
    made = model.projected_first_layer()
    assert made is not None and made.fields == (0, 2)  # user and city; item is too large
    generator = torch.Generator().manual_seed(3)
    rows = 300
    ids = torch.stack(
        [torch.randint(0, c, (rows,), generator=generator) for c in (3000, 5, 40, 3)], dim=1
    )
    multi = (torch.randint(0, 7, (rows, 3), generator=generator),)
    dense = torch.randn(rows, 1, generator=generator)
    calls: list[int] = []
    through = Deep._first_layer_projected
    monkeypatch.setattr(
        Deep, "_first_layer_projected", lambda *args: calls.append(1) or through(*args)
    )
    with torch.no_grad():
        plain = model(ids, multi, dense)
        got = model(ids, multi, dense, made)
    assert calls == [1]
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    # a write to a projected field's own table, and a table replaced: made again
    user, city = model.embeddings[0], model.embeddings[2]
    user.weight.detach().numpy()[7] += 1.0  # type: ignore[operator]
    again = model.projected_first_layer()
    assert again is not None and again is not made
    city.weight = torch.nn.Parameter(torch.randn(5, 4))  # type: ignore[union-attr]
    third = model.projected_first_layer()
    assert third is not None and third is not again
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, multi, dense, third), model(ids, multi, dense), rtol=1e-5, atol=1e-5
        )


def test_a_smaller_budget_makes_it_again_with_fewer_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    model = deep_part(monkeypatch, 2, [8])
    made = model.projected_first_layer()
    assert made is not None and made.fields == (0, 2, 3)
    monkeypatch.setattr(projection, "PROJECTED_BYTES", 45 * 4 * (8 + 4))  # city and user only
    again = model.projected_first_layer()
    assert again is not None and again.fields == (0, 2)


def test_threads_that_find_it_missing_make_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's scoring threads may all ask for it at once: one builds, the rest wait."""
    model = deep_part(monkeypatch, 2, [8])
    builds: list[int] = []
    build = deep_module.project_first_layer

    def slow_build(*args: Any) -> ProjectedFirstLayer:
        builds.append(1)
        time.sleep(0.05)  # long enough for every thread to find nothing made yet
        return build(*args)

    monkeypatch.setattr(deep_module, "project_first_layer", slow_build)
    start = threading.Barrier(4)

    def ask() -> ProjectedFirstLayer | None:
        start.wait()
        return model.projected_first_layer()

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: ask(), range(4)))
    assert builds == [1]
    assert all(m is made[0] for m in made)
