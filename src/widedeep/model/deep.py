"""The deep part: embeddings of sparse fields plus dense numerics, through an MLP, to a logit."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from widedeep.errors import ConfigError
from widedeep.features.layout import SparseField
from widedeep.model.gather import gather_fields, traced
from widedeep.model.projection import (
    FieldRows,
    ProjectedFirstLayer,
    project_first_layer,
    projected_fields,
)

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

# Held while a deep part makes its projected first layer (a module-level lock: a module's
# own attribute would have to survive ``copy.deepcopy``).
_PROJECTING = threading.Lock()


# Activations that may overwrite their input, where it is a layer's fresh output: their
# gradients need only their result. In place, the MLP allocates and writes one tensor less
# per layer: the forward pass of [256, 128] over 49 batches of 4096 rows took 275 against
# 299 ms in one run and 273 against 465 ms in another (medians of 9, alternating).
_IN_PLACE = frozenset({"relu", "leaky_relu"})


def activation_layer(name: str, inplace: bool = False) -> nn.Module:
    """A fresh activation module by name (a fixed table; no getattr on user strings);
    ``inplace``: overwriting its input, where the activation allows it."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{name}'; expected one of {sorted(ACTIVATIONS)}")
    if inplace and name in _IN_PLACE:
        return ACTIVATIONS[name](inplace=True)
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
            layers.append(activation_layer(activation, inplace=True))  # on a fresh output
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
        dense_names: Sequence[str] = (),
        hidden_units: Sequence[int] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        dropout_placement: DropoutPlacement = "each",
        sparse: bool = False,
    ) -> None:
        super().__init__()
        self.single_columns = list(single_columns)
        # Fields of one embedding size share one table, their ids offset into one index space:
        # one gather, one sparse gradient and one optimizer update per step instead of F.
        self.fused = len(single) > 1 and len({f.embedding_dim for f in single}) == 1
        if self.fused:
            offsets = [0]
            for field in single[:-1]:
                offsets.append(offsets[-1] + field.cardinality)
            total = offsets[-1] + single[-1].cardinality
            single_tables = [nn.Embedding(total, single[0].embedding_dim, sparse=sparse)]
        else:
            single_tables = [
                nn.Embedding(f.cardinality, f.embedding_dim, sparse=sparse) for f in single
            ]
            offsets = [0] * len(single)
        self.fused_columns: Tensor
        self.fused_offsets: Tensor
        self.register_buffer("fused_columns", torch.tensor(self.single_columns, dtype=torch.long))
        self.register_buffer("fused_offsets", torch.tensor(offsets, dtype=torch.long))
        self.cardinalities = [f.cardinality for f in single]
        self.single_dims = [f.embedding_dim for f in single]
        self._projected: ProjectedFirstLayer | None = None  # see ``projected_first_layer``
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
        self.dense_dim = len(dense_names)
        # Where each field's block sits in the MLP input: the first layer is linear in it, so
        # a block's share of the first pre-activation can be computed on its own (``partial``).
        self.blocks: dict[str, slice] = {}
        start = 0
        for field in (*single, *multi):
            self.blocks[field.name] = slice(start, start + field.embedding_dim)
            start += field.embedding_dim
        for name in dense_names:
            self.blocks[name] = slice(start, start + 1)
            start += 1
        self.single_names = [f.name for f in single]
        self.multi_names = [f.name for f in multi]
        self.dense_names = list(dense_names)
        input_dim = start
        if input_dim == 0:
            raise ConfigError("the deep part has no input: give it sparse or dense features")
        self.mlp = MLP(input_dim, hidden_units, activation, dropout, batch_norm, dropout_placement)
        self.head = nn.Linear(self.mlp.output_dim, 1)

    def _blocks(
        self,
        ids: Tensor,
        multi_ids: Sequence[Tensor],
        dense: Tensor | None,
        names: Collection[str] | None = None,
    ) -> list[tuple[str, Tensor]]:
        """Each field's input block (B, D_f), in MLP-input order; only ``names`` if given."""
        chosen = [i for i, name in enumerate(self.single_names) if names is None or name in names]
        if self.fused and chosen:
            table = self.fused_table
            columns, offsets = self.fused_columns[chosen], self.fused_offsets[chosen]
            flat = gather_fields(table, ids, columns, offsets)  # (B, F_chosen * D)
            vectors = flat.view(ids.shape[0], len(chosen), table.embedding_dim)
            blocks = [(self.single_names[i], vectors[:, j]) for j, i in enumerate(chosen)]
        else:
            blocks = [
                (self.single_names[i], self.embeddings[i](ids[:, self.single_columns[i]]))
                for i in chosen
            ]
        for name, multi_table, position, mean in zip(
            self.multi_names,
            self.multi_embeddings,
            self.multi_positions,
            self.multi_mean,
            strict=True,
        ):
            if names is not None and name not in names:
                continue
            values = multi_ids[position]  # (B, L)
            pooled = multi_table(values).sum(dim=1)  # padding rows are zero vectors
            if mean:
                count = (values != 0).sum(dim=1, keepdim=True).clamp(min=1)
                pooled = pooled / count
            blocks.append((name, pooled))
        if self.dense_dim and (names is None or any(n in names for n in self.dense_names)):
            if dense is None:
                raise ConfigError(f"the deep part expects {self.dense_dim} dense columns, got none")
            blocks += [
                (name, dense[:, i : i + 1])
                for i, name in enumerate(self.dense_names)
                if names is None or name in names
            ]
        return blocks

    def forward(
        self,
        ids: Tensor,
        multi_ids: Sequence[Tensor] = (),
        dense: Tensor | None = None,
        projected: ProjectedFirstLayer | None = None,
    ) -> Tensor:
        """Encoded inputs -> (B,) deep logits. ``projected``: this module's
        ``projected_first_layer()``, for fp32 scoring on CPU to compute the first layer with."""
        if self.fused and not self.multi_names:
            # The common case: every sparse field in one table. One fused lookup writes the
            # MLP's whole input, embeddings and dense columns, with no concatenation (for
            # training and bf16 scoring; fp32 scoring computes the first layer apart).
            if self.dense_dim and dense is None:
                raise ConfigError(f"the deep part expects {self.dense_dim} dense columns, got none")
            table = self.fused_table
            dense = dense if self.dense_dim else None  # columns it has no weights for
            if self._scores_apart(ids, dense):
                first = (
                    self._first_layer_apart(ids, dense)
                    if projected is None
                    else self._first_layer_projected(projected, ids, (), dense)
                )
                return self._after_first_layer(first)
            x = gather_fields(table, ids, self.fused_columns, self.fused_offsets, dense)
            return self._output(self.mlp(x))
        if projected is not None and self._scores_in_fp32(ids, dense):
            first = self._first_layer_projected(projected, ids, multi_ids, dense)
            return self._after_first_layer(first)
        parts = [block for _, block in self._blocks(ids, multi_ids, dense)]
        return self._output(self.mlp(torch.cat(parts, dim=1)))

    def _scores_apart(self, ids: Tensor, dense: Tensor | None) -> bool:
        """Whether this forward pass takes ``_first_layer_apart``: scoring in float32 on CPU
        (no gradient, no autocast), outside an export or compiler trace."""
        table = self.fused_table
        return (
            self._scores_in_fp32(ids, dense)
            and table.max_norm is None
            and table.weight.dtype == torch.float32
        )

    @staticmethod
    def _scores_in_fp32(ids: Tensor, dense: Tensor | None) -> bool:
        """Scoring in float32 on CPU: no gradient, no autocast, no export or compiler trace."""
        return (
            not torch.is_grad_enabled()
            and ids.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and not traced()
            and (dense is None or dense.dtype == torch.float32)
        )

    def _first_layer_apart(self, ids: Tensor, dense: Tensor | None) -> Tensor:
        """The first layer's output, bias included (B, H), computed without the MLP's input.

        torch's ``index_select`` gathers the embeddings on torch's own threads, and the first
        layer multiplies them and the dense columns apart: its weight's two column blocks,
        two products added, where the fused lookup would copy both into one input first.
        The sum equals the one product over the concatenation up to rounding (6e-8 in the
        probabilities). On the 2-core CPU, ``predict`` over the benchmark's 200k test rows
        ran 1.015-1.25x faster this way than through the fused one-thread lookup (five
        processes, 11 alternating rounds each, paired medians; median 1.08x).
        """
        embedded = self._fused_embeddings(ids)
        layer = self.first_layer
        width = embedded.shape[1]
        if dense is None:
            return torch.nn.functional.linear(embedded, layer.weight, layer.bias)
        dense_weight = layer.weight[:, width:].t()
        if layer.bias is None:
            out = dense.mm(dense_weight)
        else:
            out = torch.addmm(layer.bias, dense, dense_weight)
        return out.addmm_(embedded, layer.weight[:, :width].t())

    def projected_first_layer(self) -> ProjectedFirstLayer | None:
        """The first layer with its small single-valued fields projected
        (``widedeep.model.projection``), for scoring in float32 on CPU; made on first use
        and made again once the weights differ from those it was made from. None where no
        field is projected."""
        layer = self.first_layer
        tables = [t for t in self.embeddings if isinstance(t, nn.Embedding)]
        if not tables or any(
            t.weight.device.type != "cpu"
            or t.weight.dtype != torch.float32
            or t.max_norm is not None
            for t in tables
        ):
            return None
        if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
            return None
        chosen = projected_fields(self.cardinalities, self.single_dims, layer.out_features)
        if not chosen:
            return None
        fields = self._field_rows()

        def current(made: ProjectedFirstLayer | None) -> bool:
            return (
                made is not None
                and made.fields == tuple(chosen)
                and made.matches(fields, layer.weight, layer.bias)
            )

        if current(self._projected):
            return self._projected
        with _PROJECTING:  # one build at a time: a server's threads may all find it stale
            if not current(self._projected):
                self._projected = None  # the stale tables go before the new ones are made
                self._projected = project_first_layer(
                    fields, chosen, layer.weight, layer.bias, self._rest_blocks(chosen)
                )
            return self._projected

    def _field_rows(self) -> list[FieldRows]:
        """Where each single-valued field's embeddings are now."""
        if self.fused:
            weight = self.fused_table.weight
            starts = self.fused_offsets.tolist()
            spans = list(zip(starts, [*starts[1:], weight.shape[0]], strict=True))
            tables = [(weight, start, stop) for start, stop in spans]
        else:
            weights = [t.weight for t in self.embeddings if isinstance(t, nn.Embedding)]
            tables = [(weight, 0, weight.shape[0]) for weight in weights]
        return [
            FieldRows(table, start, stop, column, self.blocks[name])
            for (table, start, stop), column, name in zip(
                tables, self.single_columns, self.single_names, strict=True
            )
        ]

    def _rest_blocks(self, chosen: Collection[int]) -> list[list[slice]]:
        """The first layer's input blocks of each input ``_first_layer_projected`` passes
        besides the projected fields, in its order."""
        singles = [self.blocks[self.single_names[i]] for i in self._unprojected(chosen)]
        dense = [self.blocks[n] for n in self.dense_names]
        if self.fused and not self.multi_names:  # the other fields' rows, then the dense
            return [blocks for blocks in (singles, dense) if blocks]
        everything = [*singles, *(self.blocks[n] for n in self.multi_names), *dense]
        return [everything] if everything else []

    def _first_layer_projected(
        self,
        projected: ProjectedFirstLayer,
        ids: Tensor,
        multi_ids: Sequence[Tensor],
        dense: Tensor | None,
    ) -> Tensor:
        """The first layer's output (B, H), bias included, through ``projected``."""
        rest = self._unprojected(projected.fields)
        if self.fused and not self.multi_names:
            inputs = [self._fused_embeddings(ids, rest)] if rest else []
            if dense is not None:
                inputs.append(dense)
            return projected(ids, inputs)
        names = {self.single_names[i] for i in rest} | set(self.multi_names) | set(self.dense_names)
        blocks = [block for _, block in self._blocks(ids, multi_ids, dense, names)]
        return projected(ids, [torch.cat(blocks, dim=1)] if blocks else [])

    def _unprojected(self, chosen: Collection[int]) -> list[int]:
        """The single-valued fields not among ``chosen``, in order."""
        return [i for i in range(len(self.single_names)) if i not in chosen]

    def _fused_embeddings(self, ids: Tensor, fields: list[int] | None = None) -> Tensor:
        """(B, len(fields) * D): the fused table's rows of ``fields`` (default: every
        field) side by side, gathered by torch's ``index_select``."""
        if fields is None:
            rows = ids if self._all_columns(ids) else ids.index_select(1, self.fused_columns)
            rows = rows + self.fused_offsets
        else:
            rows = ids.index_select(1, self.fused_columns[fields]) + self.fused_offsets[fields]
        return self.fused_table.weight.index_select(0, rows.view(-1)).view(ids.shape[0], -1)

    def _all_columns(self, ids: Tensor) -> bool:
        """Whether the fused table's fields are all of ``ids``' columns, in order."""
        return self.single_columns == list(range(ids.shape[1]))

    def _output(self, hidden: Tensor) -> Tensor:
        """(B, H) last hidden layer -> (B,) logit, in float32 even under bf16 autocast: a
        bf16 logit is only good to about 1%, coarse for ranking and for the loss."""
        if torch.is_autocast_enabled(hidden.device.type):
            with torch.autocast(hidden.device.type, enabled=False):
                return self.head(hidden.float()).squeeze(-1)
        return self.head(hidden).squeeze(-1)

    @property
    def fused_table(self) -> nn.Embedding:
        """The one table that holds every single-valued field (when ``fused``)."""
        table = self.embeddings[0]
        assert isinstance(table, nn.Embedding)
        return table

    @property
    def first_layer(self) -> nn.Linear:
        """The linear layer that reads the concatenated input."""
        return self.mlp.layers[0] if len(self.mlp.layers) else self.head  # type: ignore[return-value]

    def partial(
        self,
        ids: Tensor,
        multi_ids: Sequence[Tensor],
        dense: Tensor | None,
        names: Collection[str],
    ) -> Tensor:
        """The share of ``names``' blocks in the first pre-activation (B, H), without bias.

        Shares of disjoint field sets add up; ``finish`` turns their sum into the logit.
        """
        weight = self.first_layer.weight  # (H, input_dim)
        out = ids.new_zeros((ids.shape[0], weight.shape[0]), dtype=weight.dtype)
        for name, block in self._blocks(ids, multi_ids, dense, names):
            out = out + block @ weight[:, self.blocks[name]].T
        return out

    def finish(self, pre: Tensor) -> Tensor:
        """(B, H) summed shares of every field -> (B,) deep logit."""
        first = self.first_layer
        # a new tensor either way: the activation after the first layer may work in place
        x = pre + first.bias if first.bias is not None else pre.clone()
        return self._after_first_layer(x)

    def _after_first_layer(self, x: Tensor) -> Tensor:
        """(B, H) first-layer outputs, bias included -> (B,) deep logit (``x`` is
        overwritten where the activation works in place)."""
        if self.first_layer is self.head:
            return x.squeeze(-1)
        return self._output(self.mlp.layers[1:](x))
