"""Wide & Deep: a wide linear model and a deep MLP trained jointly on one logit.

``WideDeep`` is a pure module (no device moves, no optimizer, no I/O). It keeps the original
notebook's constructor, so this builds the notebook's model with 1,985 parameters::

    WideDeep([{'feat': 'user_id', 'feat_num': 100, 'embed_dim': 8},
              {'feat': 'item_id', 'feat_num': 100, 'embed_dim': 8}],
             hidden_units=[8, 4, 2], dnn_dropout=0.5)

and ``WideDeep.from_layout`` builds the schema-driven model that training uses.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from widedeep import kernels
from widedeep.data.batch import Batch
from widedeep.errors import ConfigError
from widedeep.features.layout import FeatureLayout, SparseField
from widedeep.model.deep import Deep, DropoutPlacement
from widedeep.model.projection import ProjectedFirstLayer
from widedeep.model.wide import Wide

Parts = Literal["wide_deep", "wide", "deep"]
Combine = Literal["sum", "mean"]
Objective = Literal["binary", "regression"]

NOTEBOOK_COLUMN_KEYS = {"feat", "feat_num", "embed_dim"}


def layout_from_columns(feature_columns: Sequence[Mapping[str, Any]]) -> FeatureLayout:
    """The notebook's feature columns ({'feat', 'feat_num', 'embed_dim'}) as a layout."""
    fields = []
    for i, column in enumerate(feature_columns):
        if not isinstance(column, Mapping) or set(column) != NOTEBOOK_COLUMN_KEYS:
            got = sorted(column) if isinstance(column, Mapping) else type(column).__name__
            raise ConfigError(
                f"feature_columns[{i}]: expected a dict with keys "
                f"{sorted(NOTEBOOK_COLUMN_KEYS)}, got {got}"
            )
        try:
            fields.append(
                SparseField(
                    name=str(column["feat"]),
                    cardinality=int(column["feat_num"]),
                    embedding_dim=int(column["embed_dim"]),
                )
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"feature_columns[{i}]: {error}") from None
    return FeatureLayout(single=tuple(fields))


class WideDeep(nn.Module):
    """Joint logit = wide + deep (``combine='sum'``, the paper) or their mean (the notebook).

    Calling the model gives probabilities (binary) or predictions (regression);
    ``logits`` gives the joint logit used for training, ``parts`` the wide and deep shares.
    Inputs are a ``Batch`` or, as in the notebook, a (B, F) tensor of ids.
    """

    def __init__(
        self,
        feature_columns: FeatureLayout | Sequence[Mapping[str, Any]],
        hidden_units: Sequence[int] = (256, 128),
        activation: str = "relu",
        dnn_dropout: float = 0.0,
        embed_reg: float = 1e-6,
        w_reg: float = 1e-6,
        *,
        parts: Parts = "wide_deep",
        combine: Combine = "mean",
        wide_bias: bool = False,
        batch_norm: bool = False,
        dropout_placement: DropoutPlacement = "last",
        objective: Objective = "binary",
        sparse_gradients: bool = False,
    ) -> None:
        super().__init__()
        layout = (
            feature_columns
            if isinstance(feature_columns, FeatureLayout)
            else layout_from_columns(feature_columns)
        )
        _check_arguments(parts, combine, objective, dnn_dropout, embed_reg, w_reg)
        self.layout = layout
        self.parts_used: Parts = parts
        self.combine: Combine = combine
        self.objective: Objective = objective
        self.embed_reg = embed_reg
        self.w_reg = w_reg
        single, multi = layout.single, layout.multi
        self.wide: Wide | None = None
        self.deep: Deep | None = None
        if parts in ("wide_deep", "wide"):
            wide_single = [i for i, f in enumerate(single) if f.wide]
            wide_multi = [i for i, f in enumerate(multi) if f.wide]
            if not wide_single and not wide_multi:
                raise ConfigError("the wide part has no feature: list some under schema 'wide'")
            self.wide = Wide(
                [single[i] for i in wide_single],
                wide_single,
                [multi[i] for i in wide_multi],
                wide_multi,
                bias=wide_bias,
                sparse=sparse_gradients,
            )
        if parts in ("wide_deep", "deep"):
            deep_single = [i for i, f in enumerate(single) if f.deep]
            deep_multi = [i for i, f in enumerate(multi) if f.deep]
            self.deep = Deep(
                [single[i] for i in deep_single],
                deep_single,
                [multi[i] for i in deep_multi],
                deep_multi,
                dense_names=layout.dense,
                hidden_units=hidden_units,
                activation=activation,
                dropout=dnn_dropout,
                batch_norm=batch_norm,
                dropout_placement=dropout_placement,
                sparse=sparse_gradients,
            )

    def parts(
        self,
        inputs: Batch | Tensor,
        *,
        checked: bool = False,
        projected: ProjectedFirstLayer | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The wide and deep contributions to the joint logit, each (B,); they sum to it.

        ``checked=True`` skips ``check_inputs``, for rows it has already passed (a whole
        table checked once rather than each of its batches). ``projected``: from
        ``projected_first_layer``, for scoring (see ``widedeep.model.projection``).
        """
        batch = inputs if isinstance(inputs, Batch) else Batch(ids=inputs)
        if not checked:
            self.check_inputs(batch)
        return self.unchecked_parts(batch.ids, batch.multi_ids, batch.dense, projected)

    def unchecked_parts(
        self,
        ids: Tensor,
        multi_ids: Sequence[Tensor],
        dense: Tensor | None,
        projected: ProjectedFirstLayer | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``parts`` without the input checks, for callers whose ids are valid by construction
        (an exported graph cannot read tensor values to range-check them)."""
        zeros = ids.new_zeros(ids.shape[0], dtype=torch.float32)
        multi = tuple(multi_ids)
        wide = self.wide(ids, multi) if self.wide is not None else zeros
        deep = self.deep(ids, multi, dense, projected) if self.deep is not None else zeros
        if self.combine == "mean" and self.wide is not None and self.deep is not None:
            return 0.5 * wide, 0.5 * deep
        return wide, deep

    def projected_first_layer(self) -> ProjectedFirstLayer | None:
        """The deep part's first layer with its small fields projected, for fp32 scoring on
        CPU (``Deep.projected_first_layer``); None where there is none."""
        return self.deep.projected_first_layer() if self.deep is not None else None

    def partial(self, batch: Batch, names: Collection[str]) -> tuple[Tensor, Tensor | None]:
        """The wide sum (B,) and deep first-layer share (B, H) of the fields ``names`` only.

        The model is additive in its fields up to the deep part's first activation, so shares
        of disjoint field sets (a user's, an item's, a pair's) can be computed apart, reused
        across pairs, added, and turned into the joint logit by ``finish``.
        """
        wide = (
            self.wide.partial(batch.ids, batch.multi_ids, names)
            if self.wide is not None
            else batch.ids.new_zeros(len(batch), dtype=torch.float32)
        )
        deep = (
            self.deep.partial(batch.ids, batch.multi_ids, batch.dense, names)
            if self.deep is not None
            else None
        )
        return wide, deep

    def finish(self, wide: Tensor, deep: Tensor | None) -> Tensor:
        """Summed shares of every field (see ``partial``) -> the joint logit (B,)."""
        if self.wide is not None and self.wide.bias is not None:
            wide = wide + self.wide.bias
        if self.deep is None or deep is None:
            return wide
        deep_logit = self.deep.finish(deep)
        if self.wide is None:
            return deep_logit
        if self.combine == "mean":
            return 0.5 * wide + 0.5 * deep_logit
        return wide + deep_logit

    def logits(self, inputs: Batch | Tensor, *, checked: bool = False) -> Tensor:
        """The joint logit (B,) (or the regression output); ``checked`` as for ``parts``."""
        wide, deep = self.parts(inputs, checked=checked)
        return wide + deep

    def forward(self, inputs: Batch | Tensor) -> Tensor:
        """Probabilities (B,) in (0, 1) for the binary objective; predictions for regression."""
        logits = self.logits(inputs)
        return torch.sigmoid(logits) if self.objective == "binary" else logits

    def regularization(self) -> Tensor:
        """The notebook's l2 penalties on whole tables: embed_reg*sum(E^2) + w_reg*sum(w^2)."""
        device = next(self.parameters()).device
        penalty = torch.zeros((), device=device)
        if self.deep is not None and self.embed_reg:
            for table in [*self.deep.embeddings, *self.deep.multi_embeddings]:
                penalty = penalty + self.embed_reg * table.weight.pow(2).sum()
        if self.wide is not None and self.w_reg:
            penalty = penalty + self.w_reg * self.wide.weight.weight.pow(2).sum()
        return penalty

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part and by gradient kind, for one optimizer per part.

        Keys: wide_tables, wide_dense, deep_tables, deep_dense (empty lists where absent).
        """
        groups: dict[str, list[nn.Parameter]] = {
            "wide_tables": [],
            "wide_dense": [],
            "deep_tables": [],
            "deep_dense": [],
        }
        if self.wide is not None:
            groups["wide_tables"].append(self.wide.weight.weight)  # type: ignore[arg-type]
            if self.wide.bias is not None:
                groups["wide_dense"].append(self.wide.bias)
        if self.deep is not None:
            tables = [*self.deep.embeddings, *self.deep.multi_embeddings]
            groups["deep_tables"] = [t.weight for t in tables]
            groups["deep_dense"] = [*self.deep.mlp.parameters(), *self.deep.head.parameters()]
        return groups

    def check_inputs(self, batch: Batch) -> None:
        """Shapes and id ranges, so a user's mistake is not an index error deep inside torch."""
        layout = self.layout
        ids = batch.ids
        if ids.dim() != 2 or ids.shape[1] != len(layout.single):
            raise ConfigError(
                f"expected ids of shape (batch, {len(layout.single)}) for fields "
                f"{[f.name for f in layout.single]}, got {tuple(ids.shape)}"
            )
        if ids.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"ids must be an integer tensor, got {ids.dtype}")
        if len(batch.multi_ids) != len(layout.multi):
            raise ConfigError(
                f"expected {len(layout.multi)} multi-valued id tensors, got {len(batch.multi_ids)}"
            )
        rows = ids.shape[0]
        for values, field in zip(batch.multi_ids, layout.multi, strict=True):
            if values.dim() != 2 or values.shape[0] != rows:
                raise ConfigError(
                    f"field '{field.name}': expected multi-valued ids of shape ({rows}, L), "
                    f"got {tuple(values.shape)}"
                )
        dense_width = len(layout.dense)
        if dense_width and (batch.dense is None or tuple(batch.dense.shape) != (rows, dense_width)):
            got = None if batch.dense is None else tuple(batch.dense.shape)
            raise ConfigError(
                f"expected dense inputs of shape ({rows}, {dense_width}) for {list(layout.dense)}, "
                f"got {got}"
            )
        if ids.is_cuda:
            return  # a range check would force a device sync on every step
        ranges = []  # (field, low, high); single ids from one column-wise reduction
        if ids.numel():
            lows, highs = kernels.column_ranges(ids)
            ranges += list(zip(layout.single, lows, highs, strict=True))
        for field, values in zip(layout.multi, batch.multi_ids, strict=True):
            if values.numel():
                ranges.append((field, int(values.min()), int(values.max())))
        for field, low, high in ranges:
            if low < 0 or high >= field.cardinality:
                raise ConfigError(
                    f"field '{field.name}': ids must lie in [0, {field.cardinality - 1}], "
                    f"got values in [{low}, {high}]"
                )

    @classmethod
    def from_layout(
        cls,
        layout: FeatureLayout,
        *,
        hidden_units: Sequence[int] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        embed_reg: float = 0.0,
        w_reg: float = 0.0,
        parts: Parts = "wide_deep",
        combine: Combine = "sum",
        wide_bias: bool = True,
        dropout_placement: DropoutPlacement = "each",
        objective: Objective = "binary",
        sparse_gradients: bool = False,
    ) -> WideDeep:
        """The schema-driven model, with the paper's defaults (sum of logits, a wide bias)."""
        return cls(
            layout,
            hidden_units,
            activation,
            dropout,
            embed_reg,
            w_reg,
            parts=parts,
            combine=combine,
            wide_bias=wide_bias,
            batch_norm=batch_norm,
            dropout_placement=dropout_placement,
            objective=objective,
            sparse_gradients=sparse_gradients,
        )


def _check_arguments(
    parts: str, combine: str, objective: str, dropout: float, embed_reg: float, w_reg: float
) -> None:
    problems = []
    if parts not in ("wide_deep", "wide", "deep"):
        problems.append(f"parts must be 'wide_deep', 'wide' or 'deep', got {parts!r}")
    if combine not in ("sum", "mean"):
        problems.append(f"combine must be 'sum' or 'mean', got {combine!r}")
    if objective not in ("binary", "regression"):
        problems.append(f"objective must be 'binary' or 'regression', got {objective!r}")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"dropout must lie in [0, 1), got {dropout}")
    if embed_reg < 0 or w_reg < 0:
        problems.append(f"embed_reg and w_reg must be >= 0, got {embed_reg} and {w_reg}")
    if problems:
        raise ConfigError("WideDeep: " + "; ".join(problems))
