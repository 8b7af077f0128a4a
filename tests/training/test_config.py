"""The run config: YAML files, ``--set`` overrides, strict keys, every problem at once."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_train import config_dict
from widedeep.config import RunConfig, apply_overrides, load_config
from widedeep.errors import ConfigError


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    """A valid config as plain data (the files it names need not exist to validate)."""
    return config_dict(tmp_path / "train.parquet", tmp_path / "test.parquet")


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ loading


def test_load_config_reads_a_yaml_file(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(write_yaml(tmp_path / "run.yaml", base))
    assert config == RunConfig.from_dict(base)
    assert config.train.epochs == 3
    assert config.model.hidden_units == (16, 8)
    assert config.feature_schema.label is not None
    assert config.feature_schema.label.column == "click"


def test_the_packaged_adult_config_loads() -> None:
    source = resources.files("widedeep") / "configs" / "adult.yaml"
    with resources.as_file(source) as path:
        config = load_config(path)
    assert config.data.builtin == "adult"
    assert config.train.wide_optimizer.name == "ftrl"
    assert config.train.deep_optimizer.name == "adagrad"
    assert len(config.feature_schema.features) == 17


def test_defaults_follow_the_paper(base: dict[str, Any]) -> None:
    del base["model"], base["train"]
    config = RunConfig.from_dict(base)
    assert config.model.parts == "wide_deep" and config.model.combine == "sum"
    assert config.train.wide_optimizer.name == "ftrl"
    assert config.train.deep_optimizer.name == "adagrad"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "cannot read"),  # no file at all
        ("train: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_unreadable_configs_are_config_errors(tmp_path: Path, text: str | None, match: str) -> None:
    path = tmp_path / "run.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_yaml_tags_are_never_constructed(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_configs_are_frozen(base: dict[str, Any]) -> None:
    config = RunConfig.from_dict(base)
    with pytest.raises(Exception, match="frozen"):
        config.train.epochs = 5  # type: ignore[misc]


# ---------------------------------------------------------------------------- overrides


def test_overrides_set_nested_keys_and_list_items(tmp_path: Path, base: dict[str, Any]) -> None:
    path = write_yaml(tmp_path / "run.yaml", base)
    config = load_config(
        path,
        [
            "train.epochs=2",
            "schema.features.0.embedding_dim=4",
            "schema.features.1.embedding_dim=7",
            "model.hidden_units=[5, 3]",
            "train.deep_optimizer={name: adam, lr: 0.01}",
            "model.dropout=0.25",
        ],
    )
    assert config.train.epochs == 2
    assert config.feature_schema.features[0].embedding_dim == 4  # type: ignore[union-attr]
    assert config.feature_schema.features[1].embedding_dim == 7  # type: ignore[union-attr]
    assert config.model.hidden_units == (5, 3)
    assert config.train.deep_optimizer.name == "adam"
    assert config.model.dropout == 0.25


def test_overrides_leave_the_input_untouched(base: dict[str, Any]) -> None:
    before = yaml.safe_dump(base)
    apply_overrides(base, ["train.epochs=9", "schema.features.0.name=renamed"])
    assert yaml.safe_dump(base) == before


def test_override_of_a_missing_section_creates_it(base: dict[str, Any]) -> None:
    del base["model"]
    config = RunConfig.from_dict(apply_overrides(base, ["model.parts=deep"]))
    assert config.model.parts == "deep"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs", "key=value"),
        ("=3", "key=value"),
        ("train.epochs=[1, 2", "not valid YAML"),
        ("schema.features.99.embedding_dim=4", "not an index of a 7-item list"),
        ("schema.features.first.embedding_dim=4", "not an index"),
        ("train.epochs.deeper=1", "'train.epochs' is not a mapping"),
    ],
)
def test_bad_override_syntax_is_a_config_error(
    base: dict[str, Any], override: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_overrides(base, [override])


def test_overrides_are_validated_like_the_file(tmp_path: Path, base: dict[str, Any]) -> None:
    path = write_yaml(tmp_path / "run.yaml", base)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(path, ["train.epochs=zero"])
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key"):
        load_config(path, ["train.epochz=2"])


# ---------------------------------------------------------------------------- validation


def test_every_problem_is_reported_at_once(tmp_path: Path, base: dict[str, Any]) -> None:
    base["train"]["epochz"] = 2  # typo
    base["train"]["batch_size"] = 0
    base["model"]["dropout"] = 1.5
    base["model"]["activation"] = "swishy"
    base["data"]["split_seed"] = "forty-two"
    path = write_yaml(tmp_path / "run.yaml", base)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: 5 problems")
    for key in (
        "train.epochz: unknown key",
        "train.batch_size",
        "model.dropout",
        "model.activation",
        "data.split_seed",
    ):
        assert key in message


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.prts=wide", r"model\.prts: unknown key"),
        ("schema.features.0.embeding_dim=4", "embeding_dim"),
        ("train.deep_optimizer={name: ftrl, lr: 0.1}", "deep_optimizer"),
        ("train.wide_optimizer={name: adam, lr: 0.1, l1: 0.1}", "FTRL settings"),
        ("train.device=tpu", "device"),
        ("data.builtin=adult", "exactly one of data.builtin or data.train"),
        ("data.test_fraction=0.9", "below 1"),
        ("schema.label=null", "schema.label is required"),
        ("train.early_stopping={metric: f1}", "early_stopping.metric"),
    ],
)
def test_invalid_values_are_config_errors_naming_the_key(
    base: dict[str, Any], override: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(apply_overrides(base, [override]))


def test_to_dict_round_trips(base: dict[str, Any]) -> None:
    base["train"].pop("early_stopping")
    config = RunConfig.from_dict(base)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


def test_to_dict_round_trips_disabled_early_stopping(base: dict[str, Any]) -> None:
    config = RunConfig.from_dict(base)
    assert config.train.early_stopping is None
    again = RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config
    assert again.train.early_stopping is None


@pytest.mark.parametrize(
    ("label", "metric", "expected"),
    [
        ("{column: click}", None, "auc"),
        ("{column: rating, objective: regression}", None, "rmse"),
        ("{column: click}", "logloss", "logloss"),
        ("{column: rating, objective: regression}", "mae", "mae"),
    ],
)
def test_early_stopping_metric_defaults_to_the_objectives(
    base: dict[str, Any], label: str, metric: str | None, expected: str
) -> None:
    stopping = "{patience: 2}" if metric is None else f"{{metric: {metric}}}"
    config = RunConfig.from_dict(
        apply_overrides(base, [f"schema.label={label}", f"train.early_stopping={stopping}"])
    )
    assert config.early_stopping_metric == expected


@pytest.mark.parametrize(
    ("label", "metric"),
    [
        ("{column: rating, objective: regression}", "auc"),
        ("{column: click}", "rmse"),
    ],
)
def test_early_stopping_metric_of_the_other_objective_is_refused(
    base: dict[str, Any], label: str, metric: str
) -> None:
    overrides = [f"schema.label={label}", f"train.early_stopping={{metric: {metric}}}"]
    with pytest.raises(ConfigError, match=rf"train\.early_stopping\.metric '{metric}'"):
        RunConfig.from_dict(apply_overrides(base, overrides))
