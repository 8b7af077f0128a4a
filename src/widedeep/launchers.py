"""Entry functions that Spark's TorchDistributor and Ray Train call on each worker.

Both launchers start N processes and call one function in each; that function calls
``widedeep.train``, which trains data-parallel as under torchrun
(``widedeep.training.distributed``). What each launcher sets up before the call:

- ``TorchDistributor(num_processes=N, ...).run(spark_train, CONFIG, OUTPUT_DIR)`` runs
  torchrun, so each process has torchrun's environment (``RANK``, ``WORLD_SIZE``, ...) and
  ``train`` joins the process group itself. The driver gets rank 0's return value.
- ``TorchTrainer(ray_train_loop, train_loop_config=..., scaling_config=...)`` sets the same
  variables and initializes the process group itself (gloo, or NCCL with ``use_gpu=True``)
  before the call; ``train`` reuses that group and leaves it to Ray. Ray's driver gets the
  metrics and the bundle that rank 0 reported with ``ray.train.report``.

Neither pyspark nor ray is imported here: the functions only need what the workers have.
Every path (config, data, output) must be the same on every worker (shared storage).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from widedeep.config import RunConfig, apply_overrides, load_config
from widedeep.errors import ConfigError
from widedeep.training import distributed
from widedeep.training.loop import TrainResult, resolve_device, train

log = logging.getLogger(__name__)

RAY_LOOP_KEYS = ("config", "output_dir", "overrides", "warm_start_from")


def spark_train(
    config: str | Path | RunConfig,
    output_dir: str | Path,
    overrides: list[str] | None = None,
    warm_start_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train on one TorchDistributor process; return ``run_summary`` (the driver gets rank
    0's: the run directory, the bundle and the final metrics, small and picklable)."""
    result = train(_run_config(config, overrides), output_dir, warm_start_from=warm_start_from)
    return run_summary(result)


def ray_train_loop(loop_config: dict[str, Any]) -> None:
    """Train on one Ray Train worker, in the process group Ray started; then report
    ``run_summary`` to Ray (rank 0 with its bundle as the checkpoint) when ray is importable.

    ``loop_config`` (TorchTrainer's ``train_loop_config``): ``config`` (a YAML path or a
    RunConfig) and ``output_dir``, optionally ``overrides`` and ``warm_start_from``.
    """
    unknown = sorted(set(loop_config) - set(RAY_LOOP_KEYS))
    missing = [key for key in ("config", "output_dir") if key not in loop_config]
    if unknown or missing:
        raise ConfigError(
            f"train_loop_config: expected keys {', '.join(RAY_LOOP_KEYS)} (config and "
            f"output_dir required); unknown {unknown}, missing {missing}"
        )
    config = _run_config(loop_config["config"], loop_config.get("overrides"))
    _check_launcher_group(config)
    result = train(
        config, loop_config["output_dir"], warm_start_from=loop_config.get("warm_start_from")
    )
    _report_to_ray(run_summary(result), result.bundle_dir if distributed.is_main() else None)


def run_summary(result: TrainResult) -> dict[str, Any]:
    """What a launcher hands back to its driver: where the run is and how it scored (rank
    0's; the other ranks write nothing and have no final metrics)."""
    summary: dict[str, Any] = {
        "run_dir": str(result.run_dir),
        "bundle_dir": str(result.bundle_dir),
        "best_epoch": result.best_epoch,
    }
    summary |= {f"validation_{k}": v for k, v in result.validation_metrics.items()}
    summary |= {f"test_{k}": v for k, v in (result.test_metrics or {}).items()}
    return summary


def _run_config(config: str | Path | RunConfig, overrides: list[str] | None) -> RunConfig:
    """``config`` read as the command line reads it (a YAML path), or a RunConfig, with
    ``--set``-style ``overrides`` applied."""
    if not isinstance(config, RunConfig):
        return load_config(config, overrides)
    if not overrides:
        return config
    return RunConfig.from_dict(apply_overrides(config.to_dict(), overrides))


def _check_launcher_group(config: RunConfig) -> None:
    """Refuse a device the launcher's process group cannot exchange gradients on (Ray picks
    NCCL from ``use_gpu=True``, gloo otherwise; widedeep's collectives follow the device)."""
    if not distributed.is_distributed():
        return
    device = resolve_device(config.train.device).type
    backend = dist.get_backend()
    if (backend == "nccl") != (device == "cuda"):
        raise ConfigError(
            f"The launcher's process group uses {backend}, but train.device "
            f"'{config.train.device}' trains on {device}: use a GPU scaling config "
            "(use_gpu=True) for cuda, a CPU one for cpu, or set train.device to match"
        )


def _report_to_ray(summary: dict[str, Any], bundle_dir: Path | None) -> None:
    """``ray.train.report`` on every rank (Ray expects all workers to report); rank 0 passes
    the bundle folder as the checkpoint, so it reaches Ray's storage. No ray: nothing."""
    try:
        from ray import train as ray_train
    except ImportError:
        log.info("ray is not installed: the run's summary is not reported")
        return
    checkpoint = None if bundle_dir is None else ray_train.Checkpoint.from_directory(bundle_dir)
    ray_train.report(summary, checkpoint=checkpoint)
