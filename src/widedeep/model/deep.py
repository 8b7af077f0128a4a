"""The deep part: embeddings of sparse fields plus dense numerics, through an MLP, to a logit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from widedeep.errors import ConfigError
from widedeep.features.layout import SparseField

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "selu": nn.SELU,
    "elu": nn.ELU,
}

DropoutPlacement = Literal["each", "last"]


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name (a fixed table; no getattr on user strings)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{name}'; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation layers, with dropout after each or the last one."""

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        dropout_placement: DropoutPlacement = "each",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for i, units in enumerate(hidden_units):
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(activation_layer(activation))
            is_last = i == len(hidden_units) - 1
            if dropout > 0 and (dropout_placement == "each" or is_last):
                layers.append(nn.Dropout(dropout))
            width = units
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: Tensor) -> Tensor:
        """(B, input_dim) -> (B, output_dim)."""
        return self.layers(x)


class Deep(nn.Module):
    """Concatenated field embeddings (B, sum D_f) and dense columns (B, D) -> MLP -> (B,) logit.

    A multi-valued field's embeddings are pooled (sum or mean over its non-padding values).
    """

    def __init__(
        self,
        single: Sequence[SparseField],
        single_columns: Sequence[int],
        multi: Sequence[SparseField] = (),
        multi_positions: Sequence[int] = (),
        dense_dim: int = 0,
        hidden_units: Sequence[int] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        dropout_placement: DropoutPlacement = "each",
        sparse: bool = False,
    ) -> None:
        super().__init__()
        self.single_columns = list(single_columns)
        single_tables = [
            nn.Embedding(f.cardinality, f.embedding_dim, sparse=sparse) for f in single
        ]
        multi_tables = [
            nn.Embedding(f.cardinality, f.embedding_dim, padding_idx=0, sparse=sparse)
            for f in multi
        ]
        with torch.no_grad():
            for table in [*single_tables, *multi_tables]:
                nn.init.uniform_(table.weight, -0.05, 0.05)
            for table in multi_tables:
                table.weight[0].zero_()  # padding contributes nothing to a pooled sum
        self.embeddings = nn.ModuleList(single_tables)
        self.multi_embeddings = nn.ModuleList(multi_tables)
        self.multi_positions = list(multi_positions)
        self.multi_mean = [f.pooling == "mean" for f in multi]
        self.dense_dim = dense_dim
        input_dim = sum(f.embedding_dim for f in (*single, *multi)) + dense_dim
        if input_dim == 0:
            raise ConfigError("the deep part has no input: give it sparse or dense features")
        self.mlp = MLP(input_dim, hidden_units, activation, dropout, batch_norm, dropout_placement)
        self.head = nn.Linear(self.mlp.output_dim, 1)

    def forward(
        self, ids: Tensor, multi_ids: Sequence[Tensor] = (), dense: Tensor | None = None
    ) -> Tensor:
        """Encoded inputs -> (B,) deep logits."""
        parts = [
            table(ids[:, column])
            for table, column in zip(self.embeddings, self.single_columns, strict=True)
        ]
        for table, position, mean in zip(
            self.multi_embeddings, self.multi_positions, self.multi_mean, strict=True
        ):
            values = multi_ids[position]  # (B, L)
            pooled = table(values).sum(dim=1)  # padding rows are zero vectors
            if mean:
                count = (values != 0).sum(dim=1, keepdim=True).clamp(min=1)
                pooled = pooled / count
            parts.append(pooled)
        if self.dense_dim:
            if dense is None:
                raise ConfigError(f"the deep part expects {self.dense_dim} dense columns, got none")
            parts.append(dense)
        x = torch.cat(parts, dim=1)  # (B, sum D_f + D)
        return self.head(self.mlp(x)).squeeze(-1)
