"""The run configuration: data, schema, model and training, read from YAML with overrides.

Unknown keys and wrong types are errors, and every problem of a file is reported at once.
``--set a.b=value`` overrides (value parsed as YAML) are applied before validation, so an
override is checked exactly like the file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from widedeep.config_base import Record, read_yaml, validate_model
from widedeep.errors import ConfigError
from widedeep.features.schema import FeatureSchema
from widedeep.inference import SCORE_BATCH_SIZE
from widedeep.model.deep import ACTIVATIONS

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
BINARY_METRICS = ("auc", "logloss", "accuracy")


class NegativesConfig(Record):
    """Implicit feedback: every interaction is a positive; sample ``ratio`` negatives each."""

    ratio: Annotated[int, Field(ge=1)] = 4
    strategy: Literal["uniform", "popularity"] = "uniform"
    seed: int = 0


class StreamConfig(Record):
    """Train from Parquet read row group by row group, for data larger than memory.

    ``shuffle_buffer``: rows held for shuffling (batches are drawn at random from it as
    chunks of ``chunk_rows`` rows stream in); the row groups are read in a seeded order.
    ``keep_encoded``: read the table twice (once to fit, once to encode chunk by chunk) and
    train from the encoded table in memory, as without ``stream``: for data whose encoding
    fits in memory but whose raw table, held whole beside it, would not.
    """

    shuffle_buffer: Annotated[int, Field(ge=1)] = 262_144
    chunk_rows: Annotated[int, Field(ge=1)] = 65_536
    keep_encoded: bool = False


class DataConfig(Record):
    """Where the tables come from, and how they are split.

    A flat table (``train``), or interactions (``train``) with ``users`` and ``items``
    tables joined by ``user_key`` / ``item_key``; or a built-in data set. With ``stream``,
    ``train`` is a Parquet file, folder or glob streamed from disk, never loaded whole;
    validation (and test) data then come from ``validation`` (and ``test``).
    """

    builtin: Literal["adult", "appstore"] | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    users: str | None = None
    items: str | None = None
    user_key: str = "user_id"
    item_key: str = "item_id"
    split: Literal["random", "time", "user_temporal", "leave_last_one_out"] = "random"
    time_column: str | None = None
    last_n: Annotated[int, Field(ge=1)] | None = None
    validation_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    split_seed: int = 42
    negatives: NegativesConfig | None = None
    stream: StreamConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.builtin is None) == (self.train is None):
            raise ValueError("give exactly one of data.builtin or data.train")
        if self.stream is not None:
            if self.train is None or self.is_recommendation:
                raise ValueError(
                    "data.stream streams one flat Parquet table: give data.train (a file, "
                    "folder or glob), not a built-in data set or users/items tables"
                )
            if self.validation is None:
                raise ValueError(
                    "data.stream needs data.validation: a streamed table is read once per "
                    "epoch and never split, so validation rows come from their own table"
                )
        if self.validation is None and self.validation_fraction == 0:
            raise ValueError(
                "no validation data: give data.validation or a validation_fraction above 0 "
                "(validation metrics drive early stopping and the run's report)"
            )
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("validation_fraction + test_fraction must be below 1")
        if self.split != "random" and self.time_column is None and self.builtin is None:
            raise ValueError(f"the '{self.split}' split needs data.time_column")
        return self

    @property
    def is_recommendation(self) -> bool:
        """Interactions with separate user/item tables (scored per pair, ranked per user)."""
        return self.builtin == "appstore" or self.users is not None or self.items is not None


class ModelConfig(Record):
    """The model: which parts, how they combine, the MLP. Defaults follow the paper."""

    parts: Literal["wide_deep", "wide", "deep"] = "wide_deep"
    combine: Literal["sum", "mean"] = "sum"
    wide_bias: bool = True
    hidden_units: tuple[Annotated[int, Field(ge=1)], ...] = (256, 128)
    activation: str = "relu"
    dropout: Fraction = 0.0
    dropout_placement: Literal["each", "last"] = "each"
    batch_norm: bool = False
    embed_reg: Annotated[float, Field(ge=0.0)] = 0.0
    w_reg: Annotated[float, Field(ge=0.0)] = 0.0

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        if value not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{value}', expected one of {sorted(ACTIVATIONS)}")
        return value


class OptimizerConfig(Record):
    """One part's optimizer. ``l1``, ``l2`` and ``beta`` are FTRL-Proximal's."""

    name: Literal["ftrl", "adagrad", "adam", "sgd"]
    lr: Annotated[float, Field(gt=0.0)]
    l1: Annotated[float, Field(ge=0.0)] = 0.0
    l2: Annotated[float, Field(ge=0.0)] = 0.0
    beta: Annotated[float, Field(ge=0.0)] = 1.0

    @model_validator(mode="after")
    def _ftrl_only_keys(self) -> OptimizerConfig:
        if self.name != "ftrl" and (self.l1 or self.l2 or self.beta != 1.0):
            raise ValueError(f"l1, l2 and beta are FTRL settings; optimizer '{self.name}' has none")
        return self


class EarlyStoppingConfig(Record):
    """Stop when the validation ``metric`` has not improved for ``patience`` epochs.

    The default metric is AUC for the binary objective and RMSE for regression.
    """

    metric: Literal["auc", "logloss", "accuracy", "rmse", "mae"] | None = None  # auc / rmse
    patience: Annotated[int, Field(ge=1)] = 2
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0


class TrainConfig(Record):
    """The training loop's settings; the paper's optimizer pairing by default."""

    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 1024
    eval_batch_size: Annotated[int, Field(ge=1)] = SCORE_BATCH_SIZE
    seed: int = 0
    device: str = "auto"
    threads: Annotated[int, Field(ge=1)] | None = None
    # "bf16": the deep part's hidden layers train under bfloat16 autocast (the weights, the
    # optimizer state and the output layer stay float32; so does scoring, unless asked).
    # Fast where the hardware multiplies bf16 natively, slow elsewhere. "auto": bf16 on a
    # CPU with AMX or AVX-512 BF16 (measured with AMX: the same test AUC, 1.2x the
    # samples/s; with AVX-512 BF16: 1.48x the steps/s), fp32 on other CPUs and on CUDA.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile (inductor) of the deep part's MLP, for training and for scoring the
    # trained model. Off by default: on the 2-core CPU the compiled MLP's training step was
    # no faster than eager (see README, Measured) and compiling takes seconds per process.
    compile: bool = False
    wide_optimizer: OptimizerConfig = OptimizerConfig(name="ftrl", lr=0.1, l1=1e-4, l2=1e-4)
    deep_optimizer: OptimizerConfig = OptimizerConfig(name="adagrad", lr=0.05)
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    progress: bool = True
    # A checkpoint (RUN_DIR/checkpoint/) is written at the end of every epoch, and also
    # every this many optimizer steps when set. Off by default: a checkpoint holds the model
    # and its optimizer state (about 3x the weights), written and fsynced each time.
    checkpoint_every: Annotated[int, Field(ge=1)] | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{value}'")
        return value

    @field_validator("deep_optimizer")
    @classmethod
    def _deep_not_ftrl(cls, value: OptimizerConfig) -> OptimizerConfig:
        if value.name == "ftrl":
            raise ValueError(
                "FTRL re-derives every weight from its accumulators, which erases the deep "
                "part's random initialization; use adagrad, adam or sgd for the deep part"
            )
        return value


class RunConfig(Record):
    """Everything one training run needs."""

    data: DataConfig
    feature_schema: FeatureSchema = Field(alias="schema")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _has_label(self) -> RunConfig:
        label = self.feature_schema.label
        if label is None:
            raise ValueError("schema.label is required for training")
        stopping = self.train.early_stopping
        if stopping is not None and stopping.metric is not None:
            binary = stopping.metric in BINARY_METRICS
            if binary != (label.objective == "binary"):
                raise ValueError(
                    f"train.early_stopping.metric '{stopping.metric}' does not apply to the "
                    f"{label.objective} objective"
                )
        return self

    @property
    def early_stopping_metric(self) -> str | None:
        """The metric early stopping watches (None when it is off)."""
        stopping = self.train.early_stopping
        if stopping is None:
            return None
        assert self.feature_schema.label is not None
        default = "auc" if self.feature_schema.label.objective == "binary" else "rmse"
        return stopping.metric or default

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``RunConfig.from_dict`` reads back into an equal config."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> RunConfig:
        """Validate plain data (every problem listed at once)."""
        return validate_model(cls, data, where)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML; list items by index)."""
    result = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{override}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: value '{raw}' is not valid YAML: {error}") from None
        node: Any = result
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"--set {key}: '{part}' is not an index of a {len(node)}-item list"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping")
    return result


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (``safe_load`` only) and apply ``overrides``."""
    data = read_yaml(path, "config")
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    return RunConfig.from_dict(apply_overrides(data, overrides or []), where=str(path))
