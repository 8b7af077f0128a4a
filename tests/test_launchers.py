"""The Spark and Ray entry functions, called as their launchers call them, against 1 process.

Neither pyspark nor ray is needed: a TorchDistributor process is a torchrun worker that calls
``spark_train`` and pickles rank 0's result (as TorchDistributor does); a Ray Train worker
is a process that joins a gloo group first (as Ray's TorchConfig does) and then calls
``ray_train_loop``, with a stand-in ``ray.train`` that records what is reported.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_distributed import (
    TIMEOUT_S,
    assert_same_run,
    failure_report,
    free_port,
    small_config,
    torchrun,
    worker_env,
)
from fixtures_train import one_thread, run_config, skip_plots, write_tables
from widedeep.errors import ConfigError
from widedeep.launchers import ray_train_loop
from widedeep.training import distributed
from widedeep.training.loop import train


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The config file of a small run, and the run directory of one process training it."""
    folder = tmp_path_factory.mktemp("launchers")
    base = small_config(write_tables(folder / "data"))
    config_path = folder / "run.yaml"
    config_path.write_text(yaml.safe_dump(base))
    with pytest.MonkeyPatch.context() as monkeypatch, one_thread():
        skip_plots(monkeypatch)
        train(run_config(base), folder / "one")
    return config_path, folder / "one"


SPARK_WORKER = """\
import os, pickle, sys

from widedeep.launchers import spark_train

output = spark_train(sys.argv[1], sys.argv[2])
if os.environ["RANK"] == "0":  # TorchDistributor returns rank 0's value to the driver
    with open("output.pickle", "wb") as file:
        pickle.dump(output, file)
"""


def test_spark_train_on_two_processes_trains_the_model_of_one(
    single_run: tuple[Path, Path], tmp_path: Path
) -> None:
    config_path, one = single_run
    (tmp_path / "spark_worker.py").write_text(SPARK_WORKER)
    done = torchrun(["spark_worker.py", str(config_path), str(tmp_path / "two")], 2, tmp_path)
    assert done.returncode == 0, failure_report(done)

    assert_same_run(one, tmp_path / "two")
    output = pickle.loads((tmp_path / "output.pickle").read_bytes())
    assert output["bundle_dir"] == str(tmp_path / "two" / "bundle")
    assert output["best_epoch"] == 2
    assert 0.5 < output["validation_auc"] <= 1.0
    assert "test_auc" in output


RAY_WORKER = """\
import sys

import torch.distributed as dist

# What Ray's TorchConfig does on each worker before calling the training function.
dist.init_process_group("gloo", init_method="env://")

from widedeep.launchers import ray_train_loop

ray_train_loop({"config": sys.argv[1], "output_dir": sys.argv[2]})
assert dist.is_initialized(), "the launcher's process group was destroyed"
dist.destroy_process_group()  # what Ray does when training ends
"""

RAY_TRAIN_STAND_IN = """\
import json, os


class Checkpoint:
    def __init__(self, path):
        self.path = path

    @classmethod
    def from_directory(cls, path):
        return cls(str(path))


def report(metrics, checkpoint=None):
    path = None if checkpoint is None else checkpoint.path
    with open("report-" + os.environ["RANK"] + ".json", "w") as file:
        json.dump({"metrics": metrics, "checkpoint": path}, file)
"""


def test_ray_train_loop_on_two_workers_trains_the_model_of_one(
    single_run: tuple[Path, Path], tmp_path: Path
) -> None:
    config_path, one = single_run
    (tmp_path / "ray_worker.py").write_text(RAY_WORKER)
    (tmp_path / "ray" / "train").mkdir(parents=True)
    (tmp_path / "ray" / "__init__.py").write_text("")
    (tmp_path / "ray" / "train" / "__init__.py").write_text(RAY_TRAIN_STAND_IN)
    port = str(free_port())
    variables = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    command = [sys.executable, "ray_worker.py", str(config_path), str(tmp_path / "two")]
    logs = [(tmp_path / f"stderr-{rank}.txt").open("w") for rank in range(2)]
    workers = [  # tmp_path first on PYTHONPATH: its ray/ is the stand-in
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=worker_env(tmp_path, RANK=str(rank), LOCAL_RANK=str(rank), **variables),
            stderr=logs[rank],
        )
        for rank in range(2)
    ]
    try:
        codes = [worker.wait(timeout=TIMEOUT_S) for worker in workers]
    finally:
        for worker, log in zip(workers, logs, strict=True):
            worker.kill()  # nothing left to do for a worker that ended
            log.close()
    for rank, code in enumerate(codes):
        assert code == 0, (tmp_path / f"stderr-{rank}.txt").read_text()[-3000:]

    assert_same_run(one, tmp_path / "two")
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in range(2)]
    assert reports[0]["checkpoint"] == str(tmp_path / "two" / "bundle")
    assert reports[1]["checkpoint"] is None  # only rank 0 wrote a bundle
    assert 0.5 < reports[0]["metrics"]["validation_auc"] <= 1.0
    assert reports[0]["metrics"]["best_epoch"] == 2


def test_a_missing_config_fails_every_process_at_once(tmp_path: Path) -> None:
    (tmp_path / "spark_worker.py").write_text(SPARK_WORKER)
    missing = tmp_path / "no-such.yaml"
    done = torchrun(["spark_worker.py", str(missing), str(tmp_path / "run")], 2, tmp_path)
    assert done.returncode != 0
    assert f"cannot read config {missing}" in done.stderr


def test_ray_train_loop_names_a_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config {missing}")):
        ray_train_loop({"config": str(missing), "output_dir": str(tmp_path / "run")})


def test_ray_train_loop_refuses_an_unknown_key(tmp_path: Path) -> None:
    loop_config = {"config": "run.yaml", "output": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"unknown \['output'\], missing \['output_dir'\]"):
        ray_train_loop(loop_config)


def test_a_cpu_run_in_a_gpu_group_is_refused(
    single_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As under TorchTrainer(..., scaling_config=ScalingConfig(use_gpu=True)) with train.device cpu.
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "nccl")
    config_path, _ = single_run
    loop_config = {"config": str(config_path), "output_dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match=r"process group uses nccl, but train\.device 'cpu'"):
        ray_train_loop(loop_config)
    assert not (tmp_path / "run").exists()


def test_a_worker_trains_on_the_gpu_its_launcher_made_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray Train sets the worker's GPU before the loop; it need not be cuda:LOCAL_RANK.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda", 3)
