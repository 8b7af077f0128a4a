"""Manifests: the list of a saved folder's files with their size and SHA-256.

Bundles, exports and checkpoints are each a few files plus a JSON manifest. Writing records
every file's size and digest; reading checks the manifest's format and version, then every
listed file, before anything is parsed, so a truncated, replaced or tampered file is refused
with an error that names it (and nothing is ever unpickled).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from widedeep.errors import WideDeepError


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The manifest's "files" mapping for ``names`` in ``folder``: size and SHA-256 each."""
    return {
        name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
        for name in names
    }


def read_manifest(
    path: Path, kind: str, format_name: str, version: int, error: type[WideDeepError]
) -> dict[str, Any]:
    """The JSON manifest at ``path`` if it is a ``kind`` manifest of ``format_name`` and
    ``version``; else ``error`` saying what is wrong."""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path.parent}: not a {kind} ({path.name} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise error(f"{path}: not a widedeep {kind} manifest")
    if manifest.get("format_version") != version:
        raise error(
            f"{path.parent}: {kind} format version {manifest.get('format_version')!r}, "
            f"this widedeep reads version {version}"
        )
    return manifest


def check_files(
    folder: Path, manifest_path: Path, files: Any, names: Iterable[str], error: type[WideDeepError]
) -> None:
    """Check that each of ``names`` is listed in ``files`` (the manifest's "files"), is a plain
    name, exists in ``folder``, and has the recorded size and SHA-256."""
    if not isinstance(files, dict):
        raise error(f"{manifest_path}: 'files' is not a mapping")
    for name in names:
        if "/" in name or "\\" in name or name.startswith("."):
            raise error(f"{manifest_path}: unsafe file name {name!r}")
        expected, file = files.get(name), folder / name
        if not isinstance(expected, dict):
            raise error(f"{manifest_path}: no entry for '{name}'")
        if not file.is_file():
            raise error(f"{folder}: '{name}' is missing")
        size = file.stat().st_size
        if size != expected.get("bytes"):
            raise error(
                f"{file}: {size} bytes, the manifest says {expected.get('bytes')} "
                "(truncated or replaced since it was written)"
            )
        if file_sha256(file) != expected.get("sha256"):
            raise error(
                f"{file}: its SHA-256 differs from the manifest's (changed since it was written)"
            )
