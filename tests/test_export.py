"""Exported programs (torch.export .pt2, ONNX) score raw tables exactly like their bundle.

One small bundle uses every feature kind: categorical, hashed, numeric, bucketized, a cross, a
multi-valued field and a multi-valued cross, with a fused deep embedding table. It is trained
and exported once per format for the module; the scored table has 10,000 rows with unseen
categories, missing values, empty and over-long lists.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import config_dict, make_table, one_thread, run_config, write_tables
from widedeep.bundle import Bundle, load_bundle
from widedeep.errors import BundleError, ConfigError
from widedeep.export import ExportedScorer, ExportFormat, export_bundle
from widedeep.training.loop import train

ROWS = 10_000
TOLERANCE = {"pt2": 1e-6, "onnx": 1e-5}
# Logits and regression outputs reach 1e5 on the far-out prices (1e6): there one float32 step
# is 0.06, so those are compared with a relative tolerance as well.
RELATIVE = 1e-6
FORMATS: tuple[ExportFormat, ...] = ("pt2", "onnx")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def export_config(train_path: Path, overrides: list[str] | None = None) -> Any:
    """The fixtures' config with a fused deep table (equal embedding sizes, a bucketized field
    among them) and a multi-valued cross (tags x item), trained for one epoch."""
    base = copy.deepcopy(config_dict(train_path))
    schema = base["schema"]
    for feature in schema["features"]:
        if feature["name"] in ("city", "price_bucket"):
            feature["embedding_dim"] = 4
    schema["features"].append(
        {"name": "tags_x_item", "kind": "cross", "features": ["tags", "item"], "num_buckets": 64}
    )
    schema["wide"].append("tags_x_item")
    schema["deep"].append("price_bucket")
    base["train"]["epochs"] = 1
    return run_config(base, overrides)


def train_bundle(folder: Path, overrides: list[str] | None = None) -> Path:
    train_path, _ = write_tables(folder / "data")
    with one_thread():
        result = train(export_config(train_path, overrides), folder / "run")
    return result.bundle_dir


def assert_exports_match(bundle_dir: Path, rows: pl.DataFrame, out: Path) -> None:
    """Both formats, exported into ``out`` (a folder), score ``rows`` as the bundle does."""
    bundle = load_bundle(bundle_dir)
    want = bundle.predict(rows)
    out.mkdir()
    for fmt in FORMATS:
        path = export_bundle(bundle_dir, fmt, out)
        assert path == out / f"model.{fmt}"
        scorer = ExportedScorer.load(path, threads=1)
        got = scorer.predict(rows, batch_size=7)
        np.testing.assert_allclose(got, want, rtol=RELATIVE, atol=TOLERANCE[fmt])
        score_name = "predictions" if bundle.model.objective == "regression" else "probabilities"
        assert scorer.output_names == [score_name, "wide_logit", "deep_logit"]


def unseen_table(n: int, seed: int) -> pl.DataFrame:
    """``n`` rows where a share of every column is unseen in training or missing."""
    rng = np.random.default_rng(seed)
    frame = make_table(n, seed)

    def spoil(column: str, replacements: list[Any]) -> list[Any]:
        values = frame.get_column(column).to_list()
        chosen = rng.choice(
            len(replacements) + 1, size=n, p=[0.7] + [0.3 / len(replacements)] * len(replacements)
        )
        return [values[i] if c == 0 else replacements[c - 1] for i, c in enumerate(chosen)]

    return frame.with_columns(
        pl.Series("user", spoil("user", ["u_new", "u99", None]), dtype=pl.String),
        pl.Series("item", spoil("item", ["i_new", None]), dtype=pl.String),
        pl.Series("city", spoil("city", ["c_new", None]), dtype=pl.String),
        pl.Series("price", spoil("price", [None, 1e6, -1e6]), dtype=pl.Float64),
        pl.Series(
            "tags",
            spoil("tags", [None, "", "t0|t_new", "t_new", "t0|t1|t2|t3|t4"]),
            dtype=pl.String,
        ),
    )


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_bundle(tmp_path_factory.mktemp("export-bundle"))


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return unseen_table(ROWS, seed=11)


@pytest.fixture(scope="module")
def expected(bundle: Bundle, frame: pl.DataFrame) -> np.ndarray:
    with one_thread():
        return bundle.predict(frame)


@pytest.fixture(scope="module")
def exports(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each format exported once, into a folder apart from the bundle's."""
    folder = tmp_path_factory.mktemp("exports")
    with one_thread():
        return {fmt: export_bundle(bundle_dir, fmt, folder / f"model.{fmt}") for fmt in FORMATS}


@pytest.fixture(scope="module")
def scorers(exports: dict[str, Path]) -> dict[str, ExportedScorer]:
    return {fmt: ExportedScorer.load(path, threads=1) for fmt, path in exports.items()}


# ------------------------------------------------------------------------------ exact scores


def test_the_table_holds_unseen_and_missing_values(
    scorers: dict[str, ExportedScorer], frame: pl.DataFrame
) -> None:
    report = scorers["pt2"].encode(frame).report
    for name in ("user", "item", "tags"):
        assert report.columns[name].unseen > 500, name
    for name in ("user", "item", "city", "price_bucket", "tags"):
        assert report.columns[name].missing > 500, name
    assert report.columns["tags"].truncated > 500


@pytest.mark.parametrize("batch_size", [1, 7, 1024])
@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_scores_match_the_bundle(
    scorers: dict[str, ExportedScorer],
    expected: np.ndarray,
    frame: pl.DataFrame,
    fmt: str,
    batch_size: int,
) -> None:
    """All 10,000 rows, encoded once, run through the program ``batch_size`` rows per call
    (the last call is shorter: 10,000 is no multiple of 7 or 1024)."""
    scores = scorers[fmt].predict(frame, batch_size=batch_size)
    assert scores.shape == (ROWS,) and scores.dtype == np.float32
    gap = float(np.max(np.abs(scores - expected)))
    print(f"{fmt} batch {batch_size}: max |export - bundle| = {gap:.3g}")
    assert gap <= TOLERANCE[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_chunks_encoded_apart_match_the_bundle(
    scorers: dict[str, ExportedScorer], expected: np.ndarray, frame: pl.DataFrame, fmt: str
) -> None:
    """Serving's path: each small table encoded on its own (fewer rows than above: encoding
    costs ~3 ms a call, so 1,400 rows in chunks of 1 and 7, not 10,000)."""
    for size, rows in ((1, 200), (7, 1200)):
        scores = np.concatenate(
            [scorers[fmt].predict(frame.slice(start, size)) for start in range(0, rows, size)]
        )
        np.testing.assert_allclose(scores, expected[: len(scores)], rtol=0, atol=TOLERANCE[fmt])


@pytest.mark.parametrize("fmt", FORMATS)
def test_explain_matches_the_bundle(
    scorers: dict[str, ExportedScorer], bundle: Bundle, frame: pl.DataFrame, fmt: str
) -> None:
    want = bundle.explain(frame)
    got = scorers[fmt].explain(frame, batch_size=1000)
    assert set(got) == {"wide_logit", "deep_logit"}
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=RELATIVE, atol=TOLERANCE[fmt])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_dict_of_columns_with_nothing_known_scores_like_the_bundle(
    scorers: dict[str, ExportedScorer], bundle: Bundle, fmt: str
) -> None:
    row = {"user": [None], "item": ["i_new"], "city": [None], "price": [None], "tags": [None]}
    want = bundle.predict(pl.DataFrame(row))
    np.testing.assert_allclose(scorers[fmt].predict(row), want, rtol=0, atol=TOLERANCE[fmt])


# ------------------------------------------------------------------------ the files written


def test_exported_files_score_without_the_bundle(
    exports: dict[str, Path],
    bundle_dir: Path,
    expected: np.ndarray,
    frame: pl.DataFrame,
    tmp_path: Path,
) -> None:
    """Only the files the manifest lists, copied elsewhere, while the bundle is moved away."""
    hidden = tmp_path / "hidden-bundle"
    shutil.move(bundle_dir, hidden)
    try:
        for fmt, path in exports.items():
            manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
            names = [*manifest["files"], path.name + ".manifest.json"]
            assert sorted(names) == sorted(
                [f"model.{fmt}", f"model.{fmt}.preprocessor.json", f"model.{fmt}.manifest.json"]
            )
            target = tmp_path / f"copy-{fmt}"
            target.mkdir()
            for name in names:
                shutil.copy(path.parent / name, target / name)
            scorer = ExportedScorer.load(target / path.name, threads=1)
            scores = scorer.predict(frame.head(2000), batch_size=512)
            np.testing.assert_allclose(scores, expected[:2000], rtol=0, atol=TOLERANCE[fmt])
    finally:
        shutil.move(hidden, bundle_dir)


def test_onnx_inputs_and_outputs_are_named_with_a_dynamic_batch(exports: dict[str, Path]) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert inputs == {
        "ids": (["batch", 5], "tensor(int64)"),
        "dense": (["batch", 1], "tensor(float)"),
        "multi_0": (["batch", "length_0"], "tensor(int64)"),
        "multi_1": (["batch", "length_1"], "tensor(int64)"),
    }
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs == {"probabilities": ["batch"], "wide_logit": ["batch"], "deep_logit": ["batch"]}


def test_pt2_program_takes_plain_tensors_of_any_batch_size(exports: dict[str, Path]) -> None:
    program = torch.export.load(str(exports["pt2"]))
    assert list(program.graph_signature.user_inputs) == ["ids", "dense", "multi_0", "multi_1"]
    module = program.module()
    for rows, length in ((1, 1), (3, 9)):
        ids = torch.ones(rows, 5, dtype=torch.int64)
        dense = torch.zeros(rows, 1)
        multi = [torch.zeros(rows, length, dtype=torch.int64) for _ in range(2)]
        with torch.no_grad():
            scores, wide, deep = module(ids, dense, *multi)
        assert scores.shape == wide.shape == deep.shape == (rows,)
        torch.testing.assert_close(scores, torch.sigmoid(wide + deep))


def test_manifest_describes_the_inputs(exports: dict[str, Path], bundle: Bundle) -> None:
    path = exports["onnx"]
    manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    layout = bundle.preprocessor.layout
    assert manifest["program"] == "onnx" and manifest["objective"] == "binary"
    assert manifest["outputs"] == ["probabilities", "wide_logit", "deep_logit"]
    ids, dense, *multi = manifest["inputs"]
    assert [f["name"] for f in ids["fields"]] == [f.name for f in layout.single]
    assert [f["cardinality"] for f in ids["fields"]] == [f.cardinality for f in layout.single]
    assert dense["columns"] == ["price"]
    assert [m["field"]["name"] for m in multi] == ["tags", "tags_x_item"]


# --------------------------------------------------------------------------------- mistakes


def test_an_unknown_format_is_a_config_error(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"export format must be one of \['pt2', 'onnx'\], got 'tflite'"
    ):
        export_bundle(bundle_dir, "tflite", tmp_path / "model.tflite")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"a pt2 file name must end in '\.pt2'"):
        export_bundle(bundle_dir, "pt2", tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


def test_an_output_without_suffix_is_a_folder(bundle_dir: Path, tmp_path: Path) -> None:
    path = export_bundle(bundle_dir, "pt2", tmp_path / "exported")
    assert path == tmp_path / "exported" / "model.pt2"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "model.pt2",
        "model.pt2.manifest.json",
        "model.pt2.preprocessor.json",
    ]


def test_a_missing_bundle_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle folder there"):
        export_bundle(tmp_path / "nowhere", "pt2", tmp_path / "model.pt2")


def test_a_changed_or_incomplete_export_is_refused(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    path = exports["onnx"]
    copy_dir = Path(shutil.copytree(path.parent, tmp_path / "copy"))
    model = copy_dir / path.name
    preprocessor = copy_dir / f"{path.name}.preprocessor.json"
    preprocessor.write_text(preprocessor.read_text().replace("u1", "u2", 1))
    with pytest.raises(BundleError, match="differs from the manifest"):
        ExportedScorer.load(model)
    (copy_dir / f"{path.name}.manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        ExportedScorer.load(model)
    with pytest.raises(BundleError, match="no exported model there"):
        ExportedScorer.load(copy_dir / "absent.onnx")


def test_batch_size_must_be_positive(
    scorers: dict[str, ExportedScorer], frame: pl.DataFrame
) -> None:
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        scorers["pt2"].predict(frame.head(3), batch_size=0)


@pytest.mark.parametrize("program", ["pt2", "onnx"])
def test_run_takes_the_preprocessors_int32_ids_and_refuses_float_ones(
    scorers: dict[str, ExportedScorer], frame: pl.DataFrame, program: str
) -> None:
    """The programs take int64 ids: run widens the preprocessor's int32 ones a batch at a
    time, and refuses floats, which a cast would truncate without a word."""
    scorer = scorers[program]
    encoded = scorer.encode(frame.head(5))
    assert encoded.ids.dtype == np.int32

    widened = scorer.run(encoded.ids.astype(np.int64), encoded.dense, encoded.multi_ids, 2)
    assert all(
        np.array_equal(scores, widened[name])
        for name, scores in scorer.run(encoded.ids, encoded.dense, encoded.multi_ids, 2).items()
    )
    with pytest.raises(ConfigError, match="ids: the program takes integer ids, got float64"):
        scorer.run(encoded.ids.astype(np.float64), encoded.dense, encoded.multi_ids)


# --------------------------------------------------------------------------- other variants


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["model.parts=wide", "model.wide_bias=false"], id="wide-only"),
        pytest.param(
            [
                "model.parts=deep",
                "model.batch_norm=true",
                "model.activation=gelu",
                "schema.label={column: rating, objective: regression}",
            ],
            id="deep-regression",
        ),
        pytest.param(["model.combine=mean", "model.dropout=0.3"], id="mean+dropout"),
    ],
)
def test_model_variants_export_exactly(
    overrides: list[str], tmp_path: Path, frame: pl.DataFrame
) -> None:
    assert_exports_match(train_bundle(tmp_path, overrides), frame.head(2000), tmp_path / "out")


def test_a_model_without_lists_or_numbers_exports(tmp_path: Path, frame: pl.DataFrame) -> None:
    """No multi-valued input and a (batch, 0) dense input: the smallest signature."""
    train_path, _ = write_tables(tmp_path / "data")
    base = config_dict(train_path)
    schema = base["schema"]
    schema["features"] = [f for f in schema["features"] if f["name"] in ("user", "item")]
    schema["wide"], schema["deep"] = ["user", "item"], ["item"]
    base["train"]["epochs"] = 1
    with one_thread():
        result = train(run_config(base), tmp_path / "run")
    assert_exports_match(result.bundle_dir, frame.head(2000), tmp_path / "out")
