"""A trained model saved as a folder: weights, preprocessing state, config and a manifest.

    bundle/
      manifest.json          format version, package/torch versions, SHA-256 and size per file
      config.json            the run config (model, schema, training settings)
      preprocessor.json      the fitted vocabularies, statistics and boundaries
      weights.safetensors    the model's tensors

Loading checks every file's size and SHA-256 against the manifest before reading it, and
never unpickles anything: JSON and safetensors only. Serving sees exactly what training saw.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from widedeep.config import RunConfig
from widedeep.data.tensors import TensorTable
from widedeep.errors import BundleError, ConfigError, SchemaError
from widedeep.features.preprocessor import Preprocessor, TransformReport
from widedeep.inference import SCORE_BATCH_SIZE, predict, predict_parts
from widedeep.manifest import check_files, file_entries, read_manifest
from widedeep.metrics import binary_report, regression_report
from widedeep.model.widedeep import WideDeep
from widedeep.precision import Precision
from widedeep.tables import TableSource, describe_source

FORMAT = "widedeep-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.json"
PREPROCESSOR = "preprocessor.json"
WEIGHTS = "weights.safetensors"
CONTENT_FILES = (CONFIG, PREPROCESSOR, WEIGHTS)


def package_version() -> str:
    """The installed widedeep version."""
    try:
        return metadata.version("widedeep")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_model(config: RunConfig, preprocessor: Preprocessor, sparse_gradients: bool) -> WideDeep:
    """The model that ``config`` describes, over the layout of a fitted ``preprocessor``."""
    model_config = config.model
    label = config.feature_schema.label
    assert label is not None
    return WideDeep.from_layout(
        preprocessor.layout,
        hidden_units=model_config.hidden_units,
        activation=model_config.activation,
        dropout=model_config.dropout,
        batch_norm=model_config.batch_norm,
        embed_reg=model_config.embed_reg,
        w_reg=model_config.w_reg,
        parts=model_config.parts,
        combine=model_config.combine,
        wide_bias=model_config.wide_bias,
        dropout_placement=model_config.dropout_placement,
        objective=label.objective,
        sparse_gradients=sparse_gradients,
    )


def evaluate_predictions(
    labels: NDArray[np.float32], predictions: NDArray[np.float32], objective: str
) -> dict[str, float]:
    """The metric report for the objective: AUC, logloss, ... or RMSE, MAE."""
    if objective == "binary":
        return binary_report(labels, predictions)
    return regression_report(labels, predictions)


@dataclass
class Bundle:
    """A loaded model with its preprocessor: predicts and evaluates raw tables."""

    model: WideDeep
    preprocessor: Preprocessor
    config: RunConfig
    manifest: dict[str, Any]
    folder: Path | None = None

    def table(self, name: str) -> pl.DataFrame | None:
        """A table saved with the model (e.g. 'items', 'popularity'), or None."""
        file = f"{name}.parquet"
        if self.folder is None or file not in self.manifest.get("files", {}):
            return None
        return pl.read_parquet(self.folder / file)

    def encode(
        self, source: TableSource, with_labels: bool | None = None
    ) -> tuple[TensorTable, TransformReport]:
        """Encode a raw table exactly as in training."""
        encoded = self.preprocessor.transform(source, with_labels=with_labels)
        return TensorTable.from_encoded(encoded), encoded.report

    def predict(
        self, source: TableSource, batch_size: int = SCORE_BATCH_SIZE, precision: Precision = "fp32"
    ) -> NDArray[np.float32]:
        """Probabilities (binary) or predictions (regression), one per row of ``source``.

        ``precision``: ``fp32``, or ``bf16`` (or ``auto``) for bfloat16 autocast (see
        ``widedeep.inference.predict_parts``).
        """
        table, _ = self.encode(source, with_labels=False)
        return predict(self.model, table, batch_size, precision=precision)

    def explain(
        self, source: TableSource, batch_size: int = SCORE_BATCH_SIZE, precision: Precision = "fp32"
    ) -> dict[str, NDArray[np.float32]]:
        """Each row's wide and deep logit contributions (they sum to the joint logit)."""
        table, _ = self.encode(source, with_labels=False)
        wide, deep = predict_parts(self.model, table, batch_size, precision=precision)
        return {"wide_logit": wide, "deep_logit": deep}

    def evaluate(
        self, source: TableSource, batch_size: int = SCORE_BATCH_SIZE, precision: Precision = "fp32"
    ) -> dict[str, float]:
        """The objective's metrics on a labelled table."""
        table, _ = self.encode(source, with_labels=True)
        assert table.labels is not None
        predictions = predict(self.model, table, batch_size, precision=precision)
        return evaluate_predictions(table.labels.numpy(), predictions, self.model.objective)

    def predict_frame(
        self,
        source: TableSource,
        column: str = "score",
        batch_size: int = SCORE_BATCH_SIZE,
        precision: Precision = "fp32",
    ) -> pl.DataFrame:
        """The input table with a ``column`` of scores added (other columns kept as they are)."""
        frame = self.preprocessor.read(source)
        if column in frame.columns:
            raise SchemaError(
                f"{describe_source(source)} already has a column '{column}'; choose another name"
            )
        scores = self.predict(frame, batch_size, precision)
        return frame.with_columns(pl.Series(column, scores))


def save_bundle(
    path: str | Path,
    model: WideDeep,
    preprocessor: Preprocessor,
    config: RunConfig,
    metrics: dict[str, Any] | None = None,
    tables: dict[str, pl.DataFrame] | None = None,
) -> Path:
    """Write a bundle folder at ``path`` (created; existing bundle files are replaced).

    ``tables`` are saved beside the model as Parquet (an item catalog, popularity counts).
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True))
    preprocessor.save(folder / PREPROCESSOR)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT})
    extra = []
    for name, frame in (tables or {}).items():
        frame.write_parquet(folder / f"{name}.parquet")
        extra.append(f"{name}.parquet")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "widedeep_version": package_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": file_entries(folder, (*CONTENT_FILES, *extra)),
        "metrics": metrics or {},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return folder


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise BundleError."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no bundle folder there")
    manifest = read_manifest(folder / MANIFEST, "bundle", FORMAT, FORMAT_VERSION, BundleError)
    files = manifest.get("files", {})
    names = (*CONTENT_FILES, *(f for f in files if f not in CONTENT_FILES))
    check_files(folder, folder / MANIFEST, files, names, BundleError)
    return manifest


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle written by ``save_bundle``, after verifying every file."""
    folder = Path(path)
    manifest = verify_bundle(folder)
    try:
        config = RunConfig.from_dict(
            json.loads((folder / CONFIG).read_text()), where=str(folder / CONFIG)
        )
        preprocessor = Preprocessor.from_dict(json.loads((folder / PREPROCESSOR).read_text()))
        tensors = load_file(str(folder / WEIGHTS))
    except (json.JSONDecodeError, SafetensorError, SchemaError, ConfigError) as error:
        raise BundleError(f"{folder}: cannot be read: {error}") from None
    model = build_model(config, preprocessor, sparse_gradients=False)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise BundleError(f"{folder / WEIGHTS}: does not fit the model: {error}") from None
    model.eval()
    return Bundle(
        model=model, preprocessor=preprocessor, config=config, manifest=manifest, folder=folder
    )
