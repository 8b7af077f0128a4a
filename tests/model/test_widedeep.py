"""WideDeep as a pure module: the notebook's constructor, shapes, parts, pooling and errors."""

from __future__ import annotations

import pytest
import torch

from widedeep.data.batch import Batch
from widedeep.errors import ConfigError
from widedeep.features.layout import FeatureLayout, SparseField
from widedeep.model.widedeep import WideDeep

NOTEBOOK_COLUMNS = [
    {"feat": "user_id", "feat_num": 100, "embed_dim": 8},
    {"feat": "item_id", "feat_num": 100, "embed_dim": 8},
]


def notebook_model(**kwargs: object) -> WideDeep:
    """The notebook's call, word for word (extra keyword arguments for variants)."""
    return WideDeep(NOTEBOOK_COLUMNS, hidden_units=[8, 4, 2], dnn_dropout=0.5, **kwargs)  # type: ignore[arg-type]


def random_ids(batch: int, cardinality: int = 100, fields: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, cardinality, (batch, fields), generator=generator)


def randomize_wide(model: WideDeep, seed: int = 0) -> None:
    """The wide table starts at zero; give it values so its share is not trivially 0."""
    assert model.wide is not None
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.wide.weight.weight
        weight.copy_(torch.randn(weight.shape, generator=generator))


def tags_layout(pooling: str = "mean") -> FeatureLayout:
    """One single-valued field, one multi-valued field (id 0 = padding), two dense columns."""
    return FeatureLayout(
        single=(SparseField("user", 10, 4),),
        multi=(SparseField("tags", 7, 3, multi_valued=True, pooling=pooling),),  # type: ignore[arg-type]
        dense=("price", "age"),
    )


def tags_batch(tags: list[list[int]]) -> Batch:
    rows = len(tags)
    return Batch(
        ids=torch.full((rows, 1), 3, dtype=torch.long),
        multi_ids=(torch.tensor(tags, dtype=torch.long),),
        dense=torch.full((rows, 2), 0.5),
    )


# --------------------------------------------------------------------------- the notebook


def test_notebook_model_has_1985_trainable_parameters() -> None:
    model = notebook_model()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1985


def test_notebook_model_returns_one_probability_per_row() -> None:
    model = notebook_model().eval()
    randomize_wide(model)
    probs = model(random_ids(33))
    assert probs.shape == (33,)
    assert probs.dtype == torch.float32
    assert bool(((probs > 0) & (probs < 1)).all())


def test_notebook_model_trains_in_train_mode_with_dropout() -> None:
    model = notebook_model().train()
    ids = random_ids(16)
    loss = torch.nn.functional.binary_cross_entropy(model(ids), torch.ones(16))
    loss.backward()
    assert model.deep is not None
    assert model.deep.embeddings[0].weight.grad is not None


def test_regularization_is_the_notebooks_l2_on_whole_tables() -> None:
    model = notebook_model()
    randomize_wide(model)
    assert model.deep is not None and model.wide is not None
    tables = sum(table.weight.pow(2).sum() for table in model.deep.embeddings)
    by_hand = 1e-6 * tables + 1e-6 * model.wide.weight.weight.pow(2).sum()
    torch.testing.assert_close(model.regularization(), by_hand)
    assert model.regularization().item() > 0


def test_regularization_is_zero_without_penalties() -> None:
    model = WideDeep(NOTEBOOK_COLUMNS, hidden_units=[4], embed_reg=0.0, w_reg=0.0)
    assert model.regularization().item() == 0.0


@pytest.mark.parametrize(
    ("columns", "index"),
    [
        ([NOTEBOOK_COLUMNS[0], {"feat": "item_id", "feat_num": 100}], 1),  # missing key
        ([{"feat": "user_id", "feat_nums": 100, "embed_dim": 8}], 0),  # typo
        ([NOTEBOOK_COLUMNS[0], NOTEBOOK_COLUMNS[1], {**NOTEBOOK_COLUMNS[0], "extra": 1}], 2),
        ([NOTEBOOK_COLUMNS[0], "item_id"], 1),  # not a dict
    ],
)
def test_bad_feature_columns_name_the_index(columns: list[object], index: int) -> None:
    with pytest.raises(ConfigError, match=rf"feature_columns\[{index}\]"):
        WideDeep(columns, hidden_units=[4])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"feat": "item_id", "feat_num": 0, "embed_dim": 8},
        {"feat": "item_id", "feat_num": 100, "embed_dim": 0},
        {"feat": "item_id", "feat_num": "many", "embed_dim": 8},
    ],
)
def test_bad_feature_column_values_are_config_errors_naming_the_index(
    bad: dict[str, object],
) -> None:
    with pytest.raises(ConfigError, match=r"feature_columns\[1\]"):
        WideDeep([NOTEBOOK_COLUMNS[0], bad], hidden_units=[4])


@pytest.mark.parametrize(
    ("ids", "field"),
    [
        ([[0, 100]], "item_id"),
        ([[-1, 5]], "user_id"),
        ([[3, 4], [250, 4]], "user_id"),
    ],
)
def test_ids_out_of_range_are_a_config_error_naming_the_field(
    ids: list[list[int]], field: str
) -> None:
    model = notebook_model()
    with pytest.raises(ConfigError, match=f"'{field}'"):
        model(torch.tensor(ids))


def test_ids_of_the_wrong_shape_or_type_are_config_errors() -> None:
    model = notebook_model()
    with pytest.raises(ConfigError, match=r"shape \(batch, 2\)"):
        model(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="integer"):
        model(torch.zeros(4, 2))


def test_bad_arguments_are_reported_together() -> None:
    with pytest.raises(ConfigError) as error:
        WideDeep(NOTEBOOK_COLUMNS, dnn_dropout=1.5, combine="max", parts="both")  # type: ignore[arg-type]
    message = str(error.value)
    assert "dropout" in message and "combine" in message and "parts" in message


# ---------------------------------------------------------------------------- the parts


def test_parts_sum_to_the_logits_and_the_logits_give_the_probabilities() -> None:
    model = notebook_model().eval()
    randomize_wide(model)
    ids = random_ids(20)
    wide, deep = model.parts(ids)
    assert wide.shape == deep.shape == (20,)
    assert torch.equal(wide + deep, model.logits(ids))
    assert torch.equal(torch.sigmoid(model.logits(ids)), model(ids))


def test_shares_of_every_field_finish_as_the_logits_and_are_left_as_they_were() -> None:
    # the deep part's ReLU works in place: finish must not overwrite the shares it is given
    model = notebook_model().eval()
    randomize_wide(model)
    ids = random_ids(20)
    wide, deep = model.partial(Batch(ids=ids), [f.name for f in model.layout.single])
    assert deep is not None
    kept = deep.clone()
    torch.testing.assert_close(model.finish(wide, deep), model.logits(ids))
    assert torch.equal(deep, kept)


def test_combine_mean_halves_each_part() -> None:
    summed = notebook_model(combine="sum").eval()
    randomize_wide(summed)
    averaged = notebook_model(combine="mean").eval()
    averaged.load_state_dict(summed.state_dict())
    ids = random_ids(12)
    wide_sum, deep_sum = summed.parts(ids)
    wide_mean, deep_mean = averaged.parts(ids)
    torch.testing.assert_close(wide_mean, 0.5 * wide_sum, rtol=0, atol=0)
    torch.testing.assert_close(deep_mean, 0.5 * deep_sum, rtol=0, atol=0)
    assert not torch.equal(wide_sum, torch.zeros_like(wide_sum))


def test_wide_only_model_has_no_deep_module() -> None:
    model = WideDeep.from_layout(tags_layout(), parts="wide")
    assert model.deep is None and model.wide is not None
    assert not any(name.startswith("deep.") for name, _ in model.named_parameters())
    randomize_wide(model)
    wide, deep = model.parts(tags_batch([[1, 2, 0]]))
    assert torch.equal(deep, torch.zeros(1))
    assert wide.abs().item() > 0


def test_deep_only_model_has_no_wide_module() -> None:
    model = WideDeep.from_layout(tags_layout(), parts="deep", hidden_units=[4])
    assert model.wide is None and model.deep is not None
    assert not any(name.startswith("wide.") for name, _ in model.named_parameters())
    wide, deep = model.eval().parts(tags_batch([[1, 2, 0]]))
    assert torch.equal(wide, torch.zeros(1))
    assert deep.abs().item() > 0


def test_parameter_groups_cover_every_parameter_once() -> None:
    model = WideDeep.from_layout(tags_layout(), hidden_units=[4])
    groups = model.parameter_groups()
    grouped = [id(p) for params in groups.values() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert len(groups["wide_tables"]) == 1 and len(groups["wide_dense"]) == 1  # table + bias
    assert len(groups["deep_tables"]) == 2  # user + tags


def test_missing_dense_inputs_are_a_config_error() -> None:
    model = WideDeep.from_layout(tags_layout(), hidden_units=[4])
    batch = tags_batch([[1, 0, 0]])
    with pytest.raises(ConfigError, match="dense"):
        model(Batch(ids=batch.ids, multi_ids=batch.multi_ids))


# ------------------------------------------------------------------- multi-valued fields


def test_mean_pooling_ignores_padding() -> None:
    model = WideDeep.from_layout(tags_layout("mean"), hidden_units=[4]).eval()
    randomize_wide(model)
    a = 4
    padded_right = model.parts(tags_batch([[a, 0, 0]]))
    unpadded = model.parts(tags_batch([[a]]))
    padded_wider = model.parts(tags_batch([[0, 0, a, 0, 0]]))
    repeated = model.parts(tags_batch([[a, a, 0]]))  # the mean of (a, a) is a
    for other in (unpadded, padded_wider, repeated):
        torch.testing.assert_close(padded_right[1], other[1])  # deep share
    for other in (unpadded, padded_wider):
        torch.testing.assert_close(padded_right[0], other[0])  # wide share


def test_sum_pooling_counts_each_value_and_ignores_padding() -> None:
    # The field's share of the first layer is linear in its pooled embedding (no ReLU yet),
    # so the pooling itself is visible: padding adds nothing, a repeated value counts twice.
    model = WideDeep.from_layout(tags_layout("sum"), hidden_units=[4]).eval()
    randomize_wide(model)

    def share(rows: list[list[int]]) -> torch.Tensor:
        wide, deep = model.partial(tags_batch(rows), {"tags"})
        assert deep is not None
        return torch.cat([wide[:, None], deep], dim=1)

    once = share([[4, 0, 0]])
    torch.testing.assert_close(once, share([[0, 4]]))
    torch.testing.assert_close(share([[4, 4, 0]]), 2 * once)


def test_multi_valued_ids_out_of_range_are_a_config_error_naming_the_field() -> None:
    model = WideDeep.from_layout(tags_layout(), hidden_units=[4])
    with pytest.raises(ConfigError, match="'tags'"):
        model(tags_batch([[1, 7]]))


# ---------------------------------------------------------------------- sparse gradients


@pytest.mark.parametrize("sparse", [True, False])
def test_sparse_gradients_reach_the_embedding_tables_only(sparse: bool) -> None:
    model = WideDeep.from_layout(tags_layout(), hidden_units=[4], sparse_gradients=sparse)
    model.logits(tags_batch([[1, 2, 0], [3, 0, 0]])).sum().backward()
    groups = model.parameter_groups()
    for table in [*groups["wide_tables"], *groups["deep_tables"]]:
        assert table.grad is not None and table.grad.is_sparse == sparse
    for param in [*groups["wide_dense"], *groups["deep_dense"]]:
        assert param.grad is not None and not param.grad.is_sparse


def test_scoring_a_table_checks_every_row_once_before_the_batches() -> None:
    """``predict`` range-checks the whole table up front, so an id out of range in its last
    batch is refused by field name before any batch is scored, and batches skip the check."""
    from widedeep.data.tensors import TensorTable
    from widedeep.inference import predict

    model = notebook_model()
    ids = random_ids(50)
    ids[47, 1] = 100  # item_id has 100 ids: 0..99
    table = TensorTable(ids=ids, multi_ids=(), dense=torch.zeros(50, 0), labels=None)
    with pytest.raises(ConfigError, match="item_id"):
        predict(model, table, batch_size=8)
    ids[47, 1] = 99
    checks = []
    check = model.check_inputs
    model.check_inputs = lambda batch: checks.append(len(batch)) or check(batch)  # type: ignore[method-assign]
    scored = predict(model, table, batch_size=8)
    assert checks == [50]  # one check of all 50 rows, none for the 7 batches
    assert scored.shape == (50,)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(scored), model.eval()(ids), atol=1e-6)


def test_dense_columns_given_to_a_model_without_dense_features_are_ignored() -> None:
    model = notebook_model().eval()
    ids = random_ids(5)
    with torch.no_grad():
        assert torch.equal(model(Batch(ids=ids, dense=torch.randn(5, 2))), model(ids))
