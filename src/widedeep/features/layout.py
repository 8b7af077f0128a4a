"""The shape of encoded data: which id columns exist, their sizes, and which part they feed.

A fitted preprocessor describes its output with a ``FeatureLayout``; the model is built from
the same layout, so the two can never disagree about column order or table sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Pooling = Literal["sum", "mean"]


def default_embedding_dim(cardinality: int) -> int:
    """A common rule of thumb: about 6 * cardinality^(1/4), kept within [4, 64]."""
    return int(min(64, max(4, round(6 * cardinality**0.25))))


@dataclass(frozen=True)
class SparseField:
    """One id column: ``cardinality`` ids, an embedding of ``embedding_dim`` when deep."""

    name: str
    cardinality: int
    embedding_dim: int
    wide: bool = True
    deep: bool = True
    multi_valued: bool = False
    pooling: Pooling = "sum"

    def __post_init__(self) -> None:
        if self.cardinality < 1:
            raise ValueError(f"field '{self.name}': cardinality must be >= 1")
        if self.embedding_dim < 1:
            raise ValueError(f"field '{self.name}': embedding_dim must be >= 1")
        if not (self.wide or self.deep):
            raise ValueError(f"field '{self.name}' feeds neither the wide nor the deep part")


@dataclass(frozen=True)
class FeatureLayout:
    """Single-valued id columns (stacked as one (N, F) matrix), multi-valued ones, dense ones.

    Multi-valued columns are (N, L) matrices padded with id 0; dense columns go to the deep
    part only.
    """

    single: tuple[SparseField, ...]
    multi: tuple[SparseField, ...] = ()
    dense: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[SparseField, ...]:
        """All sparse fields, single-valued first."""
        return self.single + self.multi

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "single": [vars(f) for f in self.single],
            "multi": [vars(f) for f in self.multi],
            "dense": list(self.dense),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureLayout:
        """Inverse of ``to_dict``."""
        return cls(
            single=tuple(SparseField(**f) for f in data["single"]),
            multi=tuple(SparseField(**f) for f in data["multi"]),
            dense=tuple(data["dense"]),
        )
