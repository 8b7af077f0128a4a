"""The promotion gate: a newly trained bundle replaces the serving one only if it is no worse.

Both bundles are scored on the same labelled holdout table with the objective's metrics
(``Bundle.evaluate``); one metric decides. For a metric where higher is better (AUC,
accuracy) the new bundle is promoted when ``new >= old - tolerance``; where lower is better
(logloss, ECE, RMSE, MAE) when ``new <= old + tolerance``. Without an old bundle (the first
model) the new one is promoted unconditionally.

``promote`` records the decision in ``promotion.json`` and, when promoted and given a target,
installs the new bundle there:

1. copy the new bundle into a temporary folder beside the target
   (``.<name>.incoming-<random>``, same file system) and verify it against its manifest;
2. if a bundle is at the target, rename it to ``<name>.previous`` (an older ``.previous`` is
   deleted first);
3. rename the temporary folder to the target.

Each rename is atomic (``os.replace`` on one file system), so a reader of the target sees a
complete old bundle or a complete new one, never a half-copied one; between steps 2 and 3
(two renames, microseconds apart) the target path is briefly absent. If step 3 fails, the
previous bundle is renamed back. ``<name>.previous`` is kept for a manual rollback.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from widedeep.bundle import Bundle, load_bundle, verify_bundle
from widedeep.errors import BundleError, ConfigError
from widedeep.tables import TableSource, describe_source

RECORD = "promotion.json"
# The metrics of each objective's report that can decide, and whether higher is better.
METRICS: dict[str, dict[str, bool]] = {
    "binary": {"auc": True, "accuracy": True, "logloss": False, "ece": False},
    "regression": {"rmse": False, "mae": False},
}
DEFAULT_METRIC = {"binary": "auc", "regression": "rmse"}  # as early stopping's default


@dataclass(frozen=True)
class PromotionDecision:
    """Both bundles' scores on the holdout and whether the new one is promoted.

    ``old_value`` is None when there was no old bundle. ``record`` and ``installed`` are set
    by ``promote``: where ``promotion.json`` was written and where the bundle was installed.
    """

    promoted: bool
    metric: str
    higher_is_better: bool
    tolerance: float
    new_value: float
    old_value: float | None
    reason: str
    new_metrics: dict[str, float]
    old_metrics: dict[str, float] | None
    new_bundle: str
    old_bundle: str | None
    new_created_utc: str | None = None
    old_created_utc: str | None = None
    record: Path | None = None
    installed: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (NaN metrics become null)."""
        return {
            "decision": "promoted" if self.promoted else "refused",
            "promoted": self.promoted,
            "reason": self.reason,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "tolerance": self.tolerance,
            "new": {
                "bundle": self.new_bundle,
                "created_utc": self.new_created_utc,
                "value": _finite(self.new_value),
                "metrics": _finite_values(self.new_metrics),
            },
            "old": None
            if self.old_bundle is None and self.old_value is None
            else {
                "bundle": self.old_bundle,
                "created_utc": self.old_created_utc,
                "value": None if self.old_value is None else _finite(self.old_value),
                "metrics": None if self.old_metrics is None else _finite_values(self.old_metrics),
            },
            "installed": None if self.installed is None else str(self.installed),
        }


def promotion_decision(
    new_bundle: Bundle | str | Path,
    old_bundle: Bundle | str | Path | None,
    holdout: TableSource,
    metric: str | None = None,
    tolerance: float = 0.0,
) -> PromotionDecision:
    """Score both bundles on ``holdout`` and decide; no file is written.

    ``old_bundle`` None, or a path where nothing exists, means there is no model yet: the new
    one is promoted. ``metric`` defaults to AUC (binary) or RMSE (regression).
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance}")
    new = new_bundle if isinstance(new_bundle, Bundle) else load_bundle(new_bundle)
    objective = new.model.objective
    name = metric or DEFAULT_METRIC[objective]
    choices = METRICS[objective]
    if name not in choices:
        raise ConfigError(
            f"unknown metric '{name}' for the {objective} objective; "
            f"expected one of {', '.join(choices)}"
        )
    higher = choices[name]
    new_where = _where(new)
    old: Bundle | None = None
    if isinstance(old_bundle, Bundle):
        old = old_bundle
    elif old_bundle is not None and Path(old_bundle).exists():
        old = load_bundle(old_bundle)
    if old is not None and old.model.objective != objective:
        raise ConfigError(
            f"the new bundle's objective is '{objective}', the old one's "
            f"'{old.model.objective}': they cannot be compared"
        )
    new_metrics = new.evaluate(holdout)
    new_value = _decisive(new_metrics, name, new_where, holdout)
    if old is None:
        absent = None if isinstance(old_bundle, Bundle | None) else Path(old_bundle).absolute()
        missing = "none given" if absent is None else f"nothing at {absent}"
        return PromotionDecision(
            promoted=True,
            metric=name,
            higher_is_better=higher,
            tolerance=tolerance,
            new_value=new_value,
            old_value=None,
            reason=f"no old bundle ({missing}): the first model is promoted unconditionally",
            new_metrics=new_metrics,
            old_metrics=None,
            new_bundle=new_where,
            old_bundle=None if absent is None else str(absent),
            new_created_utc=new.manifest.get("created_utc"),
        )
    old_where = _where(old)
    old_metrics = old.evaluate(holdout)
    old_value = _decisive(old_metrics, name, old_where, holdout)
    if higher:
        promoted = new_value >= old_value - tolerance
        rule = (
            f"new {new_value:.6g} {'>=' if promoted else '<'} old {old_value:.6g} - {tolerance:g}"
        )
    else:
        promoted = new_value <= old_value + tolerance
        rule = (
            f"new {new_value:.6g} {'<=' if promoted else '>'} old {old_value:.6g} + {tolerance:g}"
        )
    return PromotionDecision(
        promoted=promoted,
        metric=name,
        higher_is_better=higher,
        tolerance=tolerance,
        new_value=new_value,
        old_value=old_value,
        reason=f"{name}: {rule}",
        new_metrics=new_metrics,
        old_metrics=old_metrics,
        new_bundle=new_where,
        old_bundle=old_where,
        new_created_utc=new.manifest.get("created_utc"),
        old_created_utc=old.manifest.get("created_utc"),
    )


def promote(
    new_bundle: str | Path,
    old_bundle: str | Path | None,
    holdout: TableSource,
    target: str | Path | None = None,
    metric: str | None = None,
    tolerance: float = 0.0,
    record_dir: str | Path | None = None,
) -> PromotionDecision:
    """Decide (``promotion_decision``), write ``promotion.json``, install when promoted.

    ``record_dir`` defaults to the new bundle's parent (its run directory). With a ``target``
    and a positive decision, the new bundle is installed there as the module docstring
    describes; without one, only the decision is recorded.
    """
    started = _now()
    source = Path(new_bundle)
    destination = None if target is None else Path(target)
    if destination is not None:
        _check_target(source, destination)
    folder = Path(record_dir) if record_dir is not None else source.resolve().parent
    decision = promotion_decision(source, old_bundle, holdout, metric, tolerance)
    if decision.promoted and destination is not None:
        install(source, destination)
        decision = replace(decision, installed=destination.absolute())
    record = folder / RECORD
    payload = {
        **decision.to_dict(),
        "holdout": describe_source(holdout),
        "target": None if destination is None else str(destination.absolute()),
        "started_utc": started,
        "finished_utc": _now(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(payload, indent=1))
    return replace(decision, record=record)


def install(bundle: str | Path, target: str | Path) -> Path:
    """Install a copy of ``bundle`` at ``target``, replacing what is there atomically.

    The previous bundle at ``target`` is kept as ``<target>.previous``. See the module
    docstring for the exact steps.
    """
    source, destination = Path(bundle), Path(target)
    _check_target(source, destination)
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{destination.name}.incoming-", dir=parent))
    try:
        shutil.copytree(source, incoming, dirs_exist_ok=True)
        verify_bundle(incoming)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    previous = destination.with_name(destination.name + ".previous")
    moved = False
    if destination.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(destination, previous)
        moved = True
    try:
        os.replace(incoming, destination)
    except OSError:
        if moved:
            os.replace(previous, destination)
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return destination


def _check_target(source: Path, destination: Path) -> None:
    """The target must be a bundle folder or absent, and not the new bundle itself."""
    if destination.resolve() == source.resolve():
        raise ConfigError(f"the target {destination} is the new bundle itself")
    if source.resolve() in destination.resolve().parents:
        raise ConfigError(f"the target {destination} lies inside the new bundle {source}")
    if destination.exists() and not (destination / "manifest.json").is_file():
        raise BundleError(
            f"the target {destination} exists but is not a bundle folder; "
            "refusing to replace it (remove it or choose another target)"
        )


def _decisive(metrics: dict[str, float], name: str, where: str, holdout: TableSource) -> float:
    value = float(metrics[name])
    if math.isnan(value):
        raise ConfigError(
            f"{name} of {where} is undefined on {describe_source(holdout)} "
            "(AUC needs both classes in the holdout); choose another metric or holdout"
        )
    return value


def _where(bundle: Bundle) -> str:
    """The bundle's folder as an absolute path (a record may be read from anywhere)."""
    return "an unsaved bundle" if bundle.folder is None else str(bundle.folder.absolute())


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _finite_values(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: _finite(float(v)) for k, v in metrics.items()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
