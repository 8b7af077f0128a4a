"""Shared helpers for the data-parallel tests: a small run config, torchrun on loopback, and
the comparison of a 2-process run with a 1-process one.

Not a test module and not a conftest (as ``fixtures_train``): test modules import it
explicitly, with ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

import widedeep
from fixtures_train import config_dict

# Not bit-identical: float32 sums run in another order (each rank sums its slice, then the
# ranks' sums are added; the slice losses are weighted before, not after, the mean). The
# rounding differences add up over the 38 steps: measured at most 2.3e-6 (about 20 float32
# ulps on a weight of 1.4, in the first MLP layer), under 5e-8 on the epochs' losses.
TOLERANCE = 1e-5
TIMEOUT_S = 120  # a run that takes longer is hanging: the test fails instead of waiting


def small_config(tables: tuple[Path, Path]) -> dict[str, Any]:
    """2 epochs over 1,920 training rows in batches of 101 = 50 + 51 rows, and a last batch
    of 1 row, of which rank 0's slice is empty."""
    base = config_dict(*tables)
    # fp32: the exchange then sums exactly what one process computes (bf16 rounds each
    # slice's products on its own, so a split batch would differ in the last bits)
    base["train"].update({"epochs": 2, "batch_size": 101, "threads": 1, "precision": "fp32"})
    return base


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(*paths: Path, **variables: str) -> dict[str, str]:
    """This environment for a worker process: ``paths`` and the widedeep under test first on
    its ``PYTHONPATH`` (whatever the worker's folder), one thread, a collective timeout that
    ends a hang, Python's stack dump on a crash, and ``variables``."""
    source = Path(widedeep.__file__).resolve().parents[1]
    python_path = [*map(str, paths), str(source), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(python_path),
        "OMP_NUM_THREADS": "1",
        "WIDEDEEP_DISTRIBUTED_TIMEOUT": "60",
        "PYTHONFAULTHANDLER": "1",
        **variables,
    }


def torchrun(target: list[str], processes: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node PROCESSES TARGET...`` on this machine's loopback."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *target,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=cwd, env=worker_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def failure_report(done: subprocess.CompletedProcess[str]) -> str:
    """What a failed torchrun shows: a crashed rank's stack dump (faulthandler's), which
    torchrun's own summary at the end of stderr would push out of view, then that end."""
    text = done.stderr
    crash = text.find("Fatal Python error")
    dump = f"{text[crash : crash + 6000]}\n[...]\n" if crash >= 0 else ""
    return dump + text[-3000:]


def assert_same_run(one: Path, two: Path) -> None:
    """The run directories ``one`` and ``two`` hold the same bundle weights (within
    ``TOLERANCE``) and the same history of losses and validation AUCs."""
    weights_one = load_file(str(one / "bundle" / "weights.safetensors"))
    weights_two = load_file(str(two / "bundle" / "weights.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    for name, weight in weights_one.items():
        gap = (weight - weights_two[name]).abs().max().item() if weight.numel() else 0.0
        assert gap <= TOLERANCE, f"{name}: max difference {gap:.2e}"
    history_one = [json.loads(line) for line in (one / "metrics.jsonl").open()]
    history_two = [json.loads(line) for line in (two / "metrics.jsonl").open()]
    for a, b in zip(history_one, history_two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["validation_auc"] == pytest.approx(a["validation_auc"], abs=1e-5)
