"""The errors widedeep raises for a user's mistake.

Every message says what was expected, what was found, and where (file, column, row or key)::

    WideDeepError            base class: catch this to handle any widedeep problem
    ├── ConfigError          a config, schema document or argument is invalid (all problems at once)
    ├── SchemaError          a table does not match the schema (names the column, row, dtype)
    ├── NotFittedError       a preprocessor was used before ``fit``
    ├── BundleError          a saved bundle is missing, changed, truncated or of another version
    └── CheckpointError      a training checkpoint is missing, changed or unreadable
"""

from __future__ import annotations


class WideDeepError(Exception):
    """Base class of every error widedeep raises on purpose."""


class ConfigError(WideDeepError, ValueError):
    """A configuration value, key or file is invalid."""


class SchemaError(WideDeepError, ValueError):
    """The feature schema is inconsistent, or a table does not match it."""


class NotFittedError(WideDeepError, RuntimeError):
    """A preprocessor was asked to transform before it was fitted."""


class BundleError(WideDeepError, RuntimeError):
    """A saved model bundle cannot be loaded as it is."""


class CheckpointError(WideDeepError, RuntimeError):
    """A checkpoint is missing, changed since it was written, or unreadable."""
