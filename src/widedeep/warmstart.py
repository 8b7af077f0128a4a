"""Warm start: a model built on new data begins from a trained bundle's weights (continuous
training, as in the paper, where each new model starts from the previous one's).

The new model's vocabularies were fitted on the new data, so an id may now stand for another
value. Rows are therefore matched by what they mean:

    categorical, multi_categorical   by value: old id of value v -> new id of value v
                                     (ids 0 padding and 1 unknown map to themselves)
    hashed, cross                    by position, when num_buckets (and a cross's components)
                                     are unchanged: the id is the value's bucket
    bucketized                       by position, when the boundaries are unchanged

A value seen only in the new data keeps its fresh initialization; a value only the old data
had is dropped. Every matched row is copied in both parts, wherever the field feeds that part
in both models: the wide weight vector (fields offset into one index space) and the deep
embedding tables (one fused table with per-field offsets, or one table per field).

Dense layers (the MLP, its batch norms, the head, the wide bias) are carried over when their
shapes match. The first MLP layer reads the concatenated field blocks, so it is carried only
when the deep input layout (each block's name and width, in order) is identical; otherwise it,
and a batch norm right after it, stay fresh. Numeric features' statistics are refitted on the
new data by the preprocessor; the report notes them.

Not carried: optimizer state (a bundle holds none). The per-coordinate learning rates start
afresh; ``seed_ftrl_state`` makes FTRL continue from the copied wide weights instead of
re-deriving them from zero accumulators at the first update.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from widedeep.bundle import Bundle
from widedeep.errors import ConfigError
from widedeep.features.layout import SparseField
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import (
    FIRST_ID,
    PADDING_ID,
    UNKNOWN_ID,
    BucketizedFeature,
    CrossFeature,
    Feature,
    HashedFeature,
)
from widedeep.model.deep import Deep
from widedeep.model.wide import Wide
from widedeep.model.widedeep import WideDeep
from widedeep.optim import FTRL

log = logging.getLogger(__name__)

Match = Literal["value", "position", "none"]
IdArray = NDArray[np.int64]


@dataclass(frozen=True)
class FieldReport:
    """What warm start did to one sparse field.

    ``copied``, ``new`` and ``dropped`` count value ids (``FIRST_ID`` and up): ids of values
    in both models, only in the new one, only in the old one. The padding and unknown rows are
    copied along with any matched field and are not counted. ``parts`` are the parts whose
    rows were copied ("wide", "deep").
    """

    name: str
    match: Match
    copied: int
    new: int
    dropped: int
    parts: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class WarmStartReport:
    """Per field rows copied / new / dropped; dense layers carried over or left fresh."""

    source: str
    fields: tuple[FieldReport, ...]
    layers_carried: tuple[str, ...]
    layers_fresh: dict[str, str] = field(default_factory=dict)  # layer -> why it is fresh
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (warm_start.json, metrics.json)."""
        return {
            "source": self.source,
            "fields": {
                f.name: {k: v for k, v in asdict(f).items() if k != "name"} for f in self.fields
            },
            "layers_carried": list(self.layers_carried),
            "layers_fresh": dict(self.layers_fresh),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line: totals, then what was left fresh."""
        copied = sum(f.copied for f in self.fields)
        new = sum(f.new for f in self.fields)
        dropped = sum(f.dropped for f in self.fields)
        matched = sum(f.match != "none" for f in self.fields)
        line = (
            f"warm start from {self.source}: {matched}/{len(self.fields)} fields matched, "
            f"value ids copied {copied}, new {new}, dropped {dropped}; "
            f"{len(self.layers_carried)} dense layers carried, {len(self.layers_fresh)} fresh"
        )
        if self.layers_fresh:
            line += " (" + "; ".join(f"{k}: {v}" for k, v in self.layers_fresh.items()) + ")"
        return line


def warm_start(model: WideDeep, preprocessor: Preprocessor, old: Bundle) -> WarmStartReport:
    """Copy ``old``'s weights into ``model`` (built over the fitted ``preprocessor``) in place.

    Raises ConfigError, naming every offending field at once, when a field of both models
    changed kind or (in both deep parts) embedding size, or when the objective differs.
    """
    source = str(old.folder) if old.folder is not None else "a bundle"
    _check_compatible(model, preprocessor, old, source)
    new_layout, old_layout = preprocessor.layout, old.preprocessor.layout
    new_fields = {f.name: f for f in new_layout.fields}
    old_fields = {f.name: f for f in old_layout.fields}
    new_tables = _tables(model)
    old_tables = _tables(old.model)
    reports = []
    with torch.no_grad():
        for name, new_field in new_fields.items():
            if name not in old_fields:
                reports.append(
                    FieldReport(name, "none", 0, _values(new_field), 0, note="not in the old model")
                )
                continue
            reports.append(
                _copy_field(
                    name,
                    _matching_ids(new_field, preprocessor, old.preprocessor),
                    new_field,
                    old_fields[name],
                    new_tables,
                    old_tables,
                )
            )
        reports += [
            FieldReport(name, "none", 0, 0, _values(f), note="not in the new model")
            for name, f in old_fields.items()
            if name not in new_fields
        ]
        carried, fresh = _carry_dense(model, old.model)
    notes = []
    if new_layout.dense:
        notes.append(
            f"numeric features {list(new_layout.dense)} use statistics refitted on the new data"
        )
    if model.combine != old.model.combine:
        notes.append(
            f"combine changed from '{old.model.combine}' to '{model.combine}': "
            "the carried parts' logits are scaled differently"
        )
    report = WarmStartReport(
        source=source,
        fields=tuple(reports),
        layers_carried=tuple(carried),
        layers_fresh=fresh,
        notes=tuple(notes),
    )
    log.info(report.summary())
    return report


def seed_ftrl_state(optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Start each FTRL optimizer's accumulators so that they reproduce the current weights.

    FTRL derives every weight from its ``z`` and ``n`` at each update; from zeros, a copied
    weight would be forgotten at its first update. With ``n = 0`` and
    ``z = -(w * (beta / lr + l2) + sign(w) * l1)`` the derived weight is ``w`` itself, so
    training continues from it (with fresh per-coordinate rates). A zero weight gets the
    usual zero state. Parameters that already have state are left alone.
    """
    for optimizer in optimizers:
        if not isinstance(optimizer, FTRL):
            continue
        for group in optimizer.param_groups:
            lr, beta, l1, l2 = group["lr"], group["beta"], group["l1"], group["l2"]
            for param in group["params"]:
                state = optimizer.state[param]
                if state:
                    continue
                w = param.detach()
                state["z"] = -(w * (beta / lr + l2) + torch.sign(w) * l1)
                state["n"] = torch.zeros_like(w)


# ------------------------------------------------------------------------------ checks


def _check_compatible(
    model: WideDeep, preprocessor: Preprocessor, old: Bundle, source: str
) -> None:
    """Every reason the old bundle cannot seed this model, collected and raised at once."""
    problems = []
    if model.objective != old.model.objective:
        problems.append(
            f"the objective is '{model.objective}' here and '{old.model.objective}' in the old "
            "bundle"
        )
    old_fields = {f.name: f for f in old.preprocessor.layout.fields}
    for new_field in preprocessor.layout.fields:
        old_field = old_fields.get(new_field.name)
        if old_field is None:
            continue
        new_kind = preprocessor.schema.feature(new_field.name).kind
        old_kind = old.preprocessor.schema.feature(new_field.name).kind
        if new_kind != old_kind:
            problems.append(
                f"feature '{new_field.name}' is {new_kind} here and {old_kind} in the old bundle"
            )
        elif (
            new_field.deep and old_field.deep and new_field.embedding_dim != old_field.embedding_dim
        ):
            problems.append(
                f"feature '{new_field.name}' has embedding_dim {new_field.embedding_dim} here and "
                f"{old_field.embedding_dim} in the old bundle (set embedding_dim: "
                f"{old_field.embedding_dim} in the schema; the default size follows the "
                "vocabulary's size)"
            )
    if problems:
        raise ConfigError(f"cannot warm start from {source}: " + "; ".join(problems))


# ------------------------------------------------------------------------------ rows


@dataclass(frozen=True)
class _Ids:
    """Matched ids of one field: ``new[i]`` takes the rows of ``old[i]``."""

    match: Match
    new: IdArray
    old: IdArray
    note: str = ""


def _matching_ids(sparse: SparseField, new: Preprocessor, old: Preprocessor) -> _Ids:
    """Which new ids take which old ids' rows, by value or by position."""
    name = sparse.name
    new_feature, old_feature = new.schema.feature(name), old.schema.feature(name)
    assert new.state_ is not None and old.state_ is not None  # both fitted: they have layouts
    new_state, old_state = new.state_[name], old.state_[name]
    if "vocabulary" in new_state:  # categorical, multi_categorical
        return _by_value(new_state["vocabulary"], old_state["vocabulary"])
    reason = _position_mismatch(new_feature, old_feature, new_state, old_state)
    if reason:
        empty = np.zeros(0, dtype=np.int64)
        return _Ids("none", empty, empty, note=f"{reason}: left fresh")
    every = np.arange(sparse.cardinality, dtype=np.int64)
    return _Ids("position", every, every)


def _by_value(new_vocabulary: list[str], old_vocabulary: list[str]) -> _Ids:
    """Pairs (new id, old id) of the values in both vocabularies, padding and unknown first."""
    new_frame = pl.DataFrame(
        {"value": new_vocabulary, "new": np.arange(len(new_vocabulary)) + FIRST_ID},
        schema={"value": pl.String, "new": pl.Int64},
    )
    old_frame = pl.DataFrame(
        {"value": old_vocabulary, "old": np.arange(len(old_vocabulary)) + FIRST_ID},
        schema={"value": pl.String, "old": pl.Int64},
    )
    pairs = new_frame.join(old_frame, on="value", how="inner").sort("new")
    reserved = np.array([PADDING_ID, UNKNOWN_ID], dtype=np.int64)
    return _Ids(
        "value",
        np.concatenate([reserved, pairs.get_column("new").to_numpy()]).astype(np.int64),
        np.concatenate([reserved, pairs.get_column("old").to_numpy()]).astype(np.int64),
    )


def _position_mismatch(
    new: Feature, old: Feature, new_state: dict[str, Any], old_state: dict[str, Any]
) -> str:
    """Why ids by position would not mean the same thing ('' when they do); same kinds."""
    if isinstance(new, CrossFeature) and isinstance(old, CrossFeature):
        if new.features != old.features:
            return f"the crossed features changed from {list(old.features)} to {list(new.features)}"
        if new.num_buckets != old.num_buckets:
            return f"num_buckets changed from {old.num_buckets} to {new.num_buckets}"
    if (
        isinstance(new, HashedFeature)
        and isinstance(old, HashedFeature)
        and new.num_buckets != old.num_buckets
    ):
        return f"num_buckets changed from {old.num_buckets} to {new.num_buckets}"
    if isinstance(new, BucketizedFeature) and new_state["boundaries"] != old_state["boundaries"]:
        return "the bucket boundaries changed (refitted, or edited in the schema)"
    return ""


def _values(sparse: SparseField) -> int:
    """How many value ids (not padding or unknown) a field has."""
    return max(sparse.cardinality - FIRST_ID, 0)


Tables = dict[str, dict[str, tuple[Tensor, int]]]


def _tables(model: WideDeep) -> Tables:
    """For each part, each field's table and the row of its id 0 in that table."""
    tables: Tables = {"wide": {}, "deep": {}}
    if model.wide is not None:
        tables["wide"] = _wide_rows(model.wide)
    if model.deep is not None:
        tables["deep"] = _deep_rows(model.deep)
    return tables


def _wide_rows(wide: Wide) -> dict[str, tuple[Tensor, int]]:
    """Every wide field shares one weight vector, each at its offset."""
    weight = wide.weight.weight
    rows = {
        name: (weight, int(offset))
        for name, offset in zip(wide.single_names, wide.single_offsets.tolist(), strict=True)
    }
    rows.update(
        (name, (weight, offset))
        for name, offset in zip(wide.multi_names, wide.multi_offsets, strict=True)
    )
    return rows


def _deep_rows(deep: Deep) -> dict[str, tuple[Tensor, int]]:
    """The fused table with each field's offset, or one table per field at offset 0."""
    rows: dict[str, tuple[Tensor, int]] = {}
    offsets = deep.fused_offsets.tolist()
    for j, name in enumerate(deep.single_names):
        table = deep.embeddings[0] if deep.fused else deep.embeddings[j]
        assert isinstance(table, nn.Embedding)
        rows[name] = (table.weight, int(offsets[j]))
    for name, table in zip(deep.multi_names, deep.multi_embeddings, strict=True):
        assert isinstance(table, nn.Embedding)
        rows[name] = (table.weight, 0)
    return rows


def _copy_field(
    name: str,
    ids: _Ids,
    new_field: SparseField,
    old_field: SparseField,
    new_tables: Tables,
    old_tables: Tables,
) -> FieldReport:
    """Copy the matched rows in every part both models feed this field to."""
    value_ids = int((ids.new >= FIRST_ID).sum())
    new, dropped = _values(new_field) - value_ids, _values(old_field) - value_ids
    if ids.match == "none":
        return FieldReport(name, "none", 0, _values(new_field), _values(old_field), note=ids.note)
    parts = []
    missing = []
    for part in ("wide", "deep"):
        if name not in new_tables[part]:
            continue
        if name not in old_tables[part]:
            missing.append(f"not in the old model's {part} part ({part} rows left fresh)")
            continue
        new_table, new_offset = new_tables[part][name]
        old_table, old_offset = old_tables[part][name]
        new_rows = torch.from_numpy(ids.new + new_offset).to(new_table.device)
        old_rows = torch.from_numpy(ids.old + old_offset)
        new_table.index_copy_(
            0, new_rows, old_table.index_select(0, old_rows).to(new_table.device, new_table.dtype)
        )
        parts.append(part)
    if not parts:
        return FieldReport(
            name, "none", 0, _values(new_field), _values(old_field), note="; ".join(missing)
        )
    return FieldReport(name, ids.match, value_ids, new, dropped, tuple(parts), "; ".join(missing))


# --------------------------------------------------------------------------- dense layers


def _dense_layers(model: WideDeep) -> dict[str, nn.Module | Tensor]:
    """The dense layers by state_dict prefix, in forward order."""
    layers: dict[str, nn.Module | Tensor] = {}
    if model.wide is not None and model.wide.bias is not None:
        layers["wide.bias"] = model.wide.bias
    if model.deep is not None:
        for i, layer in enumerate(model.deep.mlp.layers):
            if len(layer.state_dict()):
                layers[f"deep.mlp.layers.{i}"] = layer
        layers["deep.head"] = model.deep.head
    return layers


def _first_layers(deep: Deep) -> list[str]:
    """The layer that reads the concatenated input, and a batch norm right after it."""
    if not len(deep.mlp.layers):
        return ["deep.head"]
    names = ["deep.mlp.layers.0"]
    if len(deep.mlp.layers) > 1 and isinstance(deep.mlp.layers[1], nn.BatchNorm1d):
        names.append("deep.mlp.layers.1")
    return names


def _carry_dense(model: WideDeep, old: WideDeep) -> tuple[list[str], dict[str, str]]:
    """Copy each dense layer whose type and shapes match; return (carried, fresh: why)."""
    new_layers, old_layers = _dense_layers(model), _dense_layers(old)
    fresh: dict[str, str] = {}
    if model.deep is not None and old.deep is not None:
        new_blocks = [(n, s.stop - s.start) for n, s in model.deep.blocks.items()]
        old_blocks = [(n, s.stop - s.start) for n, s in old.deep.blocks.items()]
        if new_blocks != old_blocks:
            first, *after = _first_layers(model.deep)
            fresh[first] = (
                f"the deep input layout differs ({_layout_change(old_blocks, new_blocks)})"
            )
            for name in after:
                fresh[name] = "follows the fresh first layer"
    carried = []
    for name, layer in new_layers.items():
        if name in fresh:
            continue
        previous = old_layers.get(name)
        if previous is None:
            fresh[name] = "not in the old model"
            continue
        reason = _shape_mismatch(layer, previous)
        if reason:
            fresh[name] = reason
            continue
        if isinstance(layer, nn.Module):
            assert isinstance(previous, nn.Module)
            layer.load_state_dict(previous.state_dict())
        else:
            assert isinstance(previous, Tensor)
            layer.copy_(previous)
        carried.append(name)
    return carried, fresh


def _shape_mismatch(new: nn.Module | Tensor, old: nn.Module | Tensor) -> str:
    if isinstance(new, Tensor) or isinstance(old, Tensor):
        if isinstance(new, Tensor) and isinstance(old, Tensor) and new.shape == old.shape:
            return ""
        return "shape differs"
    if type(new) is not type(old):
        return f"was {type(old).__name__}, is {type(new).__name__}"
    new_state, old_state = new.state_dict(), old.state_dict()
    for key, tensor in new_state.items():
        if key not in old_state or old_state[key].shape != tensor.shape:
            old_shape = tuple(old_state[key].shape) if key in old_state else None
            return f"{key} shape {old_shape} -> {tuple(tensor.shape)}"
    return ""


def _layout_change(old: list[tuple[str, int]], new: list[tuple[str, int]]) -> str:
    old_names, new_names = [n for n, _ in old], [n for n, _ in new]
    added = [n for n in new_names if n not in old_names]
    removed = [n for n in old_names if n not in new_names]
    parts = []
    if added:
        parts.append(f"added {added}")
    if removed:
        parts.append(f"removed {removed}")
    if not parts:
        parts.append("blocks reordered or resized")
    return ", ".join(parts)
