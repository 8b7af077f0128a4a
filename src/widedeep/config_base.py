"""Strict, frozen config records and the one place pydantic's errors become ConfigError.

Every config record forbids unknown keys (a typo is an error, not silently ignored) and is
immutable once built. ``validate_model`` reports every problem of a document at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from widedeep.errors import ConfigError


class Record(BaseModel):
    """Base class of every config record: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


R = TypeVar("R", bound=BaseModel)


def format_validation_error(error: ValidationError, where: str, data: Any = None) -> str:
    """One line per problem: the dotted key path, then what was wrong. Where the path goes
    through an item of a list that has a name in ``data`` (the document validated), the
    name follows its index: ``schema.features.3 ('C1').num_buckets``."""
    lines = []
    for problem in error.errors():
        path = _named_path(problem["loc"], data) or "(top level)"
        value = problem.get("input")
        if problem["type"] == "extra_forbidden":
            messages = ["unknown key"]
        elif problem["type"] == "value_error":
            # Our validators put one problem per line; the input is a whole document.
            messages = problem["msg"].removeprefix("Value error, ").split("\n")
        elif problem["type"] != "missing" and not isinstance(value, dict | list | tuple):
            messages = [f"{problem['msg']} (got {value!r})"]
        else:
            messages = [problem["msg"]]
        lines += [f"  - {path}: {message}" for message in messages]
    count = len(lines)
    header = f"{where}: {count} problem{'s' if count != 1 else ''}"
    return header + "\n" + "\n".join(lines)


def _named_path(loc: tuple[int | str, ...], data: Any) -> str:
    """``loc`` dotted, each list index followed by the item's ``name`` where it has one."""
    parts, node = [], data
    for part in loc:
        step = str(part)
        if isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, dict) else None
            if isinstance(name, str):
                step += f" ({name!r})"
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif not (isinstance(node, dict) and part == node.get("kind")):
            node = None  # past the document (a union's tag, say): no more names
        parts.append(step)
    return ".".join(parts)


def validate_model(cls: type[R], data: Any, where: str) -> R:
    """Build ``cls`` from plain data, raising ConfigError that lists every problem."""
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, where, data)) from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file with ``safe_load`` (never constructs Python objects)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from None
