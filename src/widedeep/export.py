"""Export a trained bundle as a standalone program (torch.export .pt2 or ONNX); score with it.

An export written at OUTPUT (say ``model.onnx``) is three files side by side::

    model.onnx                     the graph: encoded tensors in, scores out
    model.onnx.preprocessor.json   a copy of the bundle's preprocessor.json (schema + fitted state)
    model.onnx.manifest.json       format, inputs and outputs, objective, SHA-256 and size per file

(an ONNX graph over 2 GB also gets ``model.onnx.data``, its weights, listed in the manifest).
Those files are all a scorer needs: the bundle folder is not read again.

What runs where. The graph holds the model only: the wide part's weight sums, the deep part's
embedding lookups (the fused table of equal-sized fields is one gather, a multi-valued field's
vectors are pooled by sum or mean over its non-padding ids), the MLP, the combination of the two
logits and the sigmoid. Everything that turns raw columns into ids stays outside, in
``ExportedScorer``, which runs widedeep's own ``Preprocessor`` from the JSON copy (no pickle):
vocabulary lookups (unseen and missing values -> id 1), FNV-1a + SplitMix64 hashing, bucketizing,
hashed crosses, numeric fill/standardize/log1p/quantile, splitting and padding lists. A
torch.export graph takes tensors only, ONNX's string support is partial and has no FNV hash or
wrapping uint64 arithmetic, and one implementation of the encoding guarantees the ids that
training saw. The scorer
needs polars, numpy and pyarrow (for the preprocessor) and onnxruntime (ONNX) or torch (pt2).

The graph's inputs, in this order (names as in the ONNX file and the program's signature)::

    ids       int64   (batch, F)    single-valued ids, one column per field of the layout
    dense     float32 (batch, D)    normalized numeric columns (D may be 0)
    multi_0   int64   (batch, L_0)  ids of the first multi-valued field, padded with 0
    multi_1   ...                   one input per multi-valued field (or multi-valued cross)

``batch`` is dynamic (>= 1) and so is each ``L_i`` (padding with more zeros changes nothing;
the scorer always pads to the length the preprocessor was fitted with). The outputs, each
float32 (batch,)::

    probabilities   sigmoid of the joint logit (named ``predictions`` for a regression model)
    wide_logit      the wide part's share of the joint logit
    deep_logit      the deep part's share; wide_logit + deep_logit is the joint logit

as ``Bundle.predict`` and ``Bundle.explain`` give them. A pt2 program is called as
``torch.export.load(path).module()(ids, dense, multi_0, ...)``. The graph does not check that
ids lie in ``[0, cardinality)`` (that check reads the data, which export cannot trace); the
scorer's ids always do, and the manifest lists each field's cardinality for other callers.
Note that ``torch.export.load`` unpickles parts of a ``.pt2`` file: load only exports you trust
(the manifest's SHA-256 catches accidental changes, not a deliberate swap of every file).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from widedeep.bundle import PREPROCESSOR, WEIGHTS, load_bundle, package_version
from widedeep.errors import BundleError, ConfigError, SchemaError
from widedeep.features.layout import FeatureLayout
from widedeep.features.preprocessor import EncodedTable, Preprocessor
from widedeep.inference import SCORE_BATCH_SIZE
from widedeep.manifest import check_files, file_entries, read_manifest
from widedeep.model.widedeep import WideDeep
from widedeep.tables import TableSource

ExportFormat = Literal["pt2", "onnx"]
FORMATS: tuple[ExportFormat, ...] = ("pt2", "onnx")
EXPORT_FORMAT = "widedeep-export"
EXPORT_FORMAT_VERSION = 1
PREPROCESSOR_SUFFIX = ".preprocessor.json"
MANIFEST_SUFFIX = ".manifest.json"
ONNX_DATA_SUFFIX = ".data"
PART_OUTPUTS = ("wide_logit", "deep_logit")
CHECK_TOLERANCE = 1e-4

FloatArray = NDArray[np.float32]


# ---------------------------------------------------------------------------------- export


class EncodedModel(nn.Module):
    """A ``WideDeep`` over plain tensors, for export: (ids, dense, *multi) -> 3 x (B,).

    It uses ``WideDeep.unchecked_parts``: the input range check reads the ids' values, which
    a traced graph cannot.
    """

    def __init__(self, model: WideDeep) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, dense: Tensor, *multi: Tensor) -> tuple[Tensor, ...]:
        """(B, F) ids, (B, D) dense, (B, L_i) multi-valued ids -> score, wide and deep logits.

        The varargs' name gives the program's input names: multi_0, multi_1, ...
        """
        wide, deep = self.model.unchecked_parts(ids, multi, dense)
        logits = wide + deep
        scores = torch.sigmoid(logits) if self.model.objective == "binary" else logits
        return scores, wide, deep


def export_bundle(bundle_dir: str | Path, format: ExportFormat, output: str | Path) -> Path:
    """Export the bundle at ``bundle_dir`` as a ``'pt2'`` or ``'onnx'`` program at ``output``.

    Writes the program plus ``<output>.preprocessor.json`` and ``<output>.manifest.json`` (see
    the module docstring). ``output`` is a file name ending in ``.pt2`` / ``.onnx``, or a folder
    (an existing one, or a name without a suffix; created), which gets ``model.<format>``.
    The written program is loaded back and checked against the bundle's model before this
    returns the program's path. Raises ConfigError for an unknown format or a file name of
    another format, BundleError for a missing or damaged bundle.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {list(FORMATS)}, got {format!r}")
    target = Path(output)
    if target.is_dir() or not target.suffix:
        target = target / f"model.{format}"
    elif target.suffix != f".{format}":
        raise ConfigError(
            f"export output {str(output)!r}: a {format} file name must end in '.{format}' "
            f"(or name a folder, which gets model.{format})"
        )
    if format == "onnx":
        _require_onnx()
    bundle = load_bundle(bundle_dir)
    target.parent.mkdir(parents=True, exist_ok=True)

    layout = bundle.preprocessor.layout
    wrapper = EncodedModel(bundle.model).eval()
    example = _example_inputs(layout)
    dynamic_shapes = _dynamic_shapes(layout)
    data_file = target.with_name(target.name + ONNX_DATA_SUFFIX)
    data_file.unlink(missing_ok=True)
    with _quiet(), torch.no_grad():
        if format == "pt2":
            program = torch.export.export(wrapper, example, dynamic_shapes=dynamic_shapes)
            torch.export.save(program, target)
        else:
            onnx_program = torch.onnx.export(
                wrapper,
                example,
                None,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=_input_names(layout),
                output_names=_output_names(bundle.model.objective),
                verbose=False,
            )
            assert onnx_program is not None
            onnx_program.save(target, external_data=False)  # external past 2 GB by itself

    preprocessor_file = target.with_name(target.name + PREPROCESSOR_SUFFIX)
    shutil.copyfile(Path(bundle_dir) / PREPROCESSOR, preprocessor_file)
    files = [target, preprocessor_file, *([data_file] if data_file.exists() else [])]
    manifest = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "program": format,
        "model_file": target.name,
        "preprocessor_file": preprocessor_file.name,
        "objective": bundle.model.objective,
        "inputs": _input_specs(layout),
        "outputs": list(_output_names(bundle.model.objective)),
        "widedeep_version": package_version(),
        "torch_version": torch.__version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": {
            "created_utc": bundle.manifest.get("created_utc"),
            "weights_sha256": bundle.manifest["files"][WEIGHTS]["sha256"],
        },
        "files": file_entries(target.parent, [f.name for f in files]),
    }
    manifest_file = target.with_name(target.name + MANIFEST_SUFFIX)
    manifest_file.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _check_export(ExportedScorer.load(target), wrapper, layout)
    return target


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"ONNX export needs the 'onnx' and 'onnxscript' packages ({error}); "
            "install them with: pip install 'widedeep[export]'"
        ) from None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter (deprecation notes, skipped torchvision ops, axis names)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            yield
    finally:
        logger.setLevel(level)


def _example_sizes(layout: FeatureLayout) -> tuple[int, list[int]]:
    """A batch size and multi-valued lengths >= 2 (0 and 1 would be specialized) that differ
    from each other and from every static width, so export cannot tie them together."""
    taken = {len(layout.single), len(layout.dense)}
    sizes: list[int] = []
    candidate = 2
    while len(sizes) < 1 + len(layout.multi):
        if candidate not in taken:
            sizes.append(candidate)
        candidate += 1
    return sizes[0], sizes[1:]


def _example_inputs(layout: FeatureLayout) -> tuple[Tensor, ...]:
    """All-zero inputs: id 0 exists in every field, so any shape is a valid example."""
    batch, lengths = _example_sizes(layout)
    ids = torch.zeros(batch, len(layout.single), dtype=torch.int64)
    dense = torch.zeros(batch, len(layout.dense), dtype=torch.float32)
    multi = [torch.zeros(batch, length, dtype=torch.int64) for length in lengths]
    return (ids, dense, *multi)


def _dynamic_shapes(layout: FeatureLayout) -> tuple[Any, ...]:
    batch = torch.export.Dim("batch", min=1)
    multi = tuple(
        {0: batch, 1: torch.export.Dim(f"length_{i}", min=1)} for i in range(len(layout.multi))
    )
    if not multi:  # no varargs: export wants no entry for them
        return ({0: batch}, {0: batch})
    return ({0: batch}, {0: batch}, multi)


def _input_names(layout: FeatureLayout) -> list[str]:
    return ["ids", "dense", *(f"multi_{i}" for i in range(len(layout.multi)))]


def _output_names(objective: str) -> tuple[str, str, str]:
    score = "probabilities" if objective == "binary" else "predictions"
    return score, PART_OUTPUTS[0], PART_OUTPUTS[1]


def _input_specs(layout: FeatureLayout) -> list[dict[str, Any]]:
    """The manifest's description of each input (what a caller without widedeep must feed)."""
    specs: list[dict[str, Any]] = [
        {
            "name": "ids",
            "dtype": "int64",
            "shape": ["batch", len(layout.single)],
            "fields": [{"name": f.name, "cardinality": f.cardinality} for f in layout.single],
        },
        {
            "name": "dense",
            "dtype": "float32",
            "shape": ["batch", len(layout.dense)],
            "columns": list(layout.dense),
        },
    ]
    for i, field in enumerate(layout.multi):
        specs.append(
            {
                "name": f"multi_{i}",
                "dtype": "int64",
                "shape": ["batch", f"length_{i}"],
                "field": {"name": field.name, "cardinality": field.cardinality},
                "padding_id": 0,
            }
        )
    return specs


def _check_export(scorer: ExportedScorer, wrapper: EncodedModel, layout: FeatureLayout) -> None:
    """Run the written program on random valid ids (batches of 1 and 3, a longer list
    padding) and compare with the eager model: a broken export fails here, not in serving."""
    generator = torch.Generator().manual_seed(0)
    for rows, extra in ((1, 0), (3, 2)):
        ids = (
            torch.stack(
                [
                    torch.randint(0, f.cardinality, (rows,), generator=generator)
                    for f in layout.single
                ],
                dim=1,
            )
            if layout.single
            else torch.zeros(rows, 0, dtype=torch.int64)
        )
        dense = torch.randn(rows, len(layout.dense), generator=generator)
        multi = []
        for field, length in zip(layout.multi, _example_sizes(layout)[1], strict=True):
            values = torch.randint(0, field.cardinality, (rows, length), generator=generator)
            multi.append(torch.cat([values, values.new_zeros(rows, extra)], dim=1))
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(ids, dense, *multi)]
        got = scorer.run(ids.numpy(), dense.numpy(), [m.numpy() for m in multi])
        for name, want in zip(scorer.output_names, expected, strict=True):
            gap = float(np.max(np.abs(got[name] - want) / np.maximum(1.0, np.abs(want))))
            if not gap <= CHECK_TOLERANCE:
                raise RuntimeError(
                    f"the exported {scorer.format} program differs from the model: output "
                    f"'{name}' is off by {gap:.3g} (relative to max(1, |value|); tolerance "
                    f"{CHECK_TOLERANCE}) on {rows} rows"
                )


# ---------------------------------------------------------------------------------- scoring


class _Runner(Protocol):
    def __call__(self, inputs: list[NDArray[Any]]) -> list[FloatArray]: ...


class _ProgramRunner:
    """A torch.export program, called on numpy arrays."""

    def __init__(self, path: Path) -> None:
        with _quiet():
            self.module = torch.export.load(str(path)).module()

    def __call__(self, inputs: list[NDArray[Any]]) -> list[FloatArray]:
        with torch.no_grad():
            outputs = self.module(*(torch.from_numpy(a) for a in inputs))
        return [o.numpy() for o in outputs]


class _OnnxRunner:
    """An ONNX Runtime session on the CPU."""

    def __init__(
        self,
        path: Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        threads: int | None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ConfigError(
                f"scoring an ONNX export needs onnxruntime ({error}); "
                "install it with: pip install 'widedeep[export]'"
            ) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def __call__(self, inputs: list[NDArray[Any]]) -> list[FloatArray]:
        feed = dict(zip(self.input_names, inputs, strict=True))
        return list(self.session.run(self.output_names, feed))


class ExportedScorer:
    """Scores raw tables with an exported program and the preprocessor shipped beside it.

    ``ExportedScorer.load('model.onnx').predict(frame)`` gives what ``Bundle.predict`` gives,
    without the bundle folder.
    """

    def __init__(self, preprocessor: Preprocessor, manifest: dict[str, Any], runner: _Runner):
        self.preprocessor = preprocessor
        self.manifest = manifest
        self._runner = runner

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> ExportedScorer:
        """Load the export whose program is at ``path`` (its manifest and preprocessor beside
        it), after checking every file's size and SHA-256. ``threads``: ONNX Runtime's intra-op
        threads (None: its default); a pt2 program runs on torch's (``torch.set_num_threads``)."""
        model_file = Path(path)
        manifest = _read_export_manifest(model_file)
        folder = model_file.parent
        try:
            preprocessor = Preprocessor.load(folder / manifest["preprocessor_file"])
        except (json.JSONDecodeError, SchemaError, KeyError) as error:
            raise BundleError(f"{model_file}: its preprocessor cannot be read: {error}") from None
        layout = preprocessor.layout
        fields = [f["name"] for f in manifest["inputs"][0]["fields"]]
        inputs = len(manifest["inputs"])
        if fields != [f.name for f in layout.single] or inputs != 2 + len(layout.multi):
            raise BundleError(f"{model_file}: the manifest's inputs do not match its preprocessor")
        runner: _Runner
        if manifest["program"] == "pt2":
            runner = _ProgramRunner(model_file)
        else:
            names = [spec["name"] for spec in manifest["inputs"]]
            runner = _OnnxRunner(model_file, names, manifest["outputs"], threads)
        return cls(preprocessor, manifest, runner)

    @property
    def format(self) -> ExportFormat:
        """'pt2' or 'onnx'."""
        fmt: ExportFormat = self.manifest["program"]
        return fmt

    @property
    def objective(self) -> str:
        """'binary' (scores are probabilities) or 'regression'."""
        return str(self.manifest["objective"])

    @property
    def output_names(self) -> list[str]:
        """The program's outputs: the score, 'wide_logit', 'deep_logit'."""
        return list(self.manifest["outputs"])

    def encode(self, source: TableSource | Mapping[str, Any]) -> EncodedTable:
        """Encode a table (a path, polars/pandas/Arrow table or a dict of columns) to ids."""
        if isinstance(source, Mapping):
            source = pl.DataFrame(dict(source))
        return self.preprocessor.transform(source, with_labels=False)

    def run(
        self,
        ids: NDArray[np.int32] | NDArray[np.int64],
        dense: NDArray[np.float32],
        multi_ids: Sequence[NDArray[np.int32] | NDArray[np.int64]] = (),
        batch_size: int = SCORE_BATCH_SIZE,
    ) -> dict[str, FloatArray]:
        """Run the program on encoded arrays, ``batch_size`` rows per call: output -> (N,).
        The program takes int64 ids; the preprocessor's int32 ones are widened a batch at a time.

        The default is the library's scoring batch: on the 2-core CPU, ONNX Runtime scored the
        benchmark's 200k test rows 1.10-1.31x faster in batches of 4096 than of 16384 (three
        processes, 7 alternating rounds each); a pt2 program measured 0.95x and 1.57x.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        named = [("ids", ids), *((f"multi_{i}", m) for i, m in enumerate(multi_ids))]
        for name, array in named:  # widened below, where a cast would truncate floats unseen
            if not np.issubdtype(array.dtype, np.integer):
                raise ConfigError(f"{name}: the program takes integer ids, got {array.dtype}")
        n = int(ids.shape[0])
        arrays: list[NDArray[Any]] = [ids, dense, *multi_ids]
        dtypes = [np.int64, np.float32, *(np.int64 for _ in multi_ids)]
        chunks: list[list[FloatArray]] = []
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            inputs = [
                np.ascontiguousarray(a[start:stop], dtype=d)
                for a, d in zip(arrays, dtypes, strict=True)
            ]
            chunks.append(self._runner(inputs))
        return {
            name: (
                np.concatenate([chunk[i] for chunk in chunks]).astype(np.float32, copy=False)
                if chunks
                else np.zeros(0, dtype=np.float32)
            )
            for i, name in enumerate(self.output_names)
        }

    def _score(
        self, source: TableSource | Mapping[str, Any], batch_size: int
    ) -> dict[str, FloatArray]:
        encoded = self.encode(source)
        return self.run(encoded.ids, encoded.dense, encoded.multi_ids, batch_size)

    def predict(
        self, source: TableSource | Mapping[str, Any], batch_size: int = SCORE_BATCH_SIZE
    ) -> FloatArray:
        """Probabilities (binary) or predictions (regression), one per row of ``source``."""
        outputs = self._score(source, batch_size)
        return outputs[self.output_names[0]]

    def explain(
        self, source: TableSource | Mapping[str, Any], batch_size: int = SCORE_BATCH_SIZE
    ) -> dict[str, FloatArray]:
        """Each row's wide and deep logit contributions (they sum to the joint logit)."""
        outputs = self._score(source, batch_size)
        return {name: outputs[name] for name in PART_OUTPUTS}


def _read_export_manifest(model_file: Path) -> dict[str, Any]:
    """The export's manifest, after checking every file it lists."""
    manifest_file = model_file.with_name(model_file.name + MANIFEST_SUFFIX)
    if not model_file.is_file():
        raise BundleError(f"{model_file}: no exported model there")
    if not manifest_file.is_file():
        raise BundleError(
            f"{model_file}: not a widedeep export ({manifest_file.name} is missing beside it)"
        )
    manifest = read_manifest(
        manifest_file, "export", EXPORT_FORMAT, EXPORT_FORMAT_VERSION, BundleError
    )
    if manifest.get("program") not in FORMATS:
        raise BundleError(f"{manifest_file}: unknown program {manifest.get('program')!r}")
    if manifest.get("model_file") != model_file.name:
        raise BundleError(
            f"{manifest_file}: describes '{manifest.get('model_file')}', not '{model_file.name}' "
            "(renamed exports are not supported: keep the names export_bundle wrote)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("preprocessor_file") not in files:
        raise BundleError(f"{manifest_file}: 'files' does not list the model and preprocessor")
    check_files(model_file.parent, manifest_file, files, list(files), BundleError)
    return manifest
