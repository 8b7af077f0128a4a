"""Data-parallel training under torchrun: 2 gloo processes on CPU against 1 process.

Each run is ``python -m torch.distributed.run --nproc-per-node 2 -m widedeep train ...`` in a
subprocess, one thread per process, on the tiny synthetic table of ``fixtures_train``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_distributed import assert_same_run, small_config, torchrun
from fixtures_train import one_thread, run_config, skip_plots, write_tables
from widedeep.errors import ConfigError
from widedeep.training.loop import train


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tables(tmp_path_factory.mktemp("data"))


def test_two_processes_train_the_model_of_one(
    tables: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = small_config(tables)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(base))
    skip_plots(monkeypatch)
    train(run_config(base), tmp_path / "one")

    done = torchrun(["-m", "widedeep", "train", str(config_path), "-o", "two"], 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("bundle:") == 1  # rank 0 reports, rank 1 stays quiet

    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / "checkpoint" / "manifest.json").exists()


FAILING_RANK = """\
import os, sys

from widedeep.training import loop


def fail(*args, **kwargs):
    raise RuntimeError("injected failure on rank " + os.environ["RANK"])


if os.environ["RANK"] == "1":
    loop._train_epoch = fail  # rank 0 trains on and waits for rank 1 in the first exchange

from widedeep.cli import main

sys.argv = ["widedeep", *sys.argv[1:]]
main()
"""


def test_a_failure_in_one_rank_ends_the_run(tables: tuple[Path, Path], tmp_path: Path) -> None:
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(small_config(tables)))
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    start = time.perf_counter()
    done = torchrun([str(script), "train", str(config_path), "-o", "run"], 2, tmp_path)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stderr
    assert time.perf_counter() - start < 60  # torchrun stopped rank 0: no wait for a timeout


DIFFERENT_VOCABULARY = """\
import os, sys

from widedeep.features.preprocessor import Preprocessor

fitted = Preprocessor.to_dict


def differently(self):
    return {**fitted(self), "rank": os.environ["RANK"]}


Preprocessor.to_dict = differently  # as if each rank had read other data

from widedeep.cli import main

sys.argv = ["widedeep", *sys.argv[1:]]
main()
"""


def test_ranks_that_fitted_different_preprocessors_are_stopped(
    tables: tuple[Path, Path], tmp_path: Path
) -> None:
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(small_config(tables)))
    script = tmp_path / "different_vocabulary.py"
    script.write_text(DIFFERENT_VOCABULARY)
    done = torchrun([str(script), "train", str(config_path), "-o", "run"], 2, tmp_path)
    assert done.returncode != 0
    assert "The fitted preprocessor differs between ranks" in done.stderr
    assert not (tmp_path / "run" / "bundle").exists()


def test_resume_is_refused_under_torchrun(
    tables: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--resume is not supported under torchrun"):
        train(run_config(small_config(tables)), tmp_path / "run", resume=True)
