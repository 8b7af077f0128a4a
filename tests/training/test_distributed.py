"""Data-parallel training under torchrun: 2 gloo processes on CPU against 1 process, and a
2-process run crashed and resumed against one never interrupted.

Each run is ``python -m torch.distributed.run --nproc-per-node 2 -m widedeep train ...`` in a
subprocess, one thread per process, on the tiny synthetic table of ``fixtures_train``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_distributed import assert_same_run, failure_report, small_config, torchrun
from fixtures_train import one_thread, run_config, skip_plots, write_tables
from widedeep.errors import ConfigError
from widedeep.training import distributed
from widedeep.training.checkpoint import check_config, load_checkpoint
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
    assert done.returncode == 0, failure_report(done)
    assert done.stdout.count("bundle:") == 1  # rank 0 reports, rank 1 stays quiet

    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / "checkpoint" / "manifest.json").exists()


def test_two_processes_stream_their_own_shares_of_a_parquet_table(
    tables: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = small_config(tables)
    base["data"].update(validation=str(tables[1]), stream={"shuffle_buffer": 400})
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(base))
    skip_plots(monkeypatch)
    single = train(run_config(base), tmp_path / "one")

    done = torchrun(["-m", "widedeep", "train", str(config_path), "-o", "two"], 2, tmp_path)
    assert done.returncode == 0, failure_report(done)
    assert done.stdout.count("bundle:") == 1
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["rows"]["train"] == 2400
    history = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    assert len(history) == 2
    # Other rows meet in each global batch than in one process, so the models differ a little.
    assert metrics["validation"]["auc"] == pytest.approx(single.validation_metrics["auc"], abs=0.03)


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


RECORDING_COLLECTIVES = """\
import os, sys

import torch.distributed as dist

log = open(sys.argv.pop(1) + "." + os.environ["RANK"], "w")


def recorded(name):
    call = getattr(dist, name)

    def record(*args, **kwargs):
        result = call(*args, **kwargs)
        log.write(name + "\\n")
        log.flush()
        return result

    return record


for name in (
    "all_reduce", "all_gather", "all_gather_object", "all_to_all", "barrier", "broadcast",
    "broadcast_object_list", "gather", "gather_object", "recv", "reduce", "reduce_scatter",
    "scatter", "scatter_object_list", "send",
):
    setattr(dist, name, recorded(name))

from widedeep.cli import main

sys.argv = ["widedeep", *sys.argv[1:]]
main()
"""


def test_every_rank_ends_its_collectives_with_a_barrier(
    tables: tuple[Path, Path], tmp_path: Path
) -> None:
    # A rank that left right after a collective could be finalizing while gloo's worker
    # thread still waited for the GIL to free that collective's tensors: the process then
    # aborted (1 run in 10 to 43 of the resume test below failed so). The barrier's wait
    # lets the worker finish first, and it must come after every other collective.
    config = small_config(tables)
    config["train"]["epochs"] = 1
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    script = tmp_path / "recording_collectives.py"
    script.write_text(RECORDING_COLLECTIVES)
    log = tmp_path / "collectives"
    done = torchrun([str(script), str(log), "train", str(config_path), "-o", "run"], 2, tmp_path)
    assert done.returncode == 0, failure_report(done)
    for rank in (0, 1):
        calls = Path(f"{log}.{rank}").read_text().split()
        assert "gather_object" in calls  # the checkpoints gathered the random states
        assert calls[-1] == "barrier", (rank, calls[-5:])


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


# ------------------------------------------------------------------------------ resume

CRASH_AFTER_CHECKPOINT = """\
import os, signal, sys

from widedeep.training import loop

written = loop.save_checkpoint


def save_then_crash(run_dir, run, *args):
    path = written(run_dir, run, *args)
    if (run.position.epoch, run.position.step) == ({epoch}, {step}):
        os.kill(os.getpid(), signal.SIGKILL)  # rank 0 dies; torchrun stops rank 1
    return path


loop.save_checkpoint = save_then_crash  # only rank 0 writes checkpoints

from widedeep.cli import main

sys.argv = ["widedeep", *sys.argv[1:]]
main()
"""

# 20 steps an epoch (1920 rows in batches of 101); with checkpoint_every=7 the checkpoints
# are at (epoch, step) (1, 7) (1, 14), (2, 0) at the epoch's end, (2, 1) (2, 8) (2, 15), ...
RESUMABLE = ["model.dropout=0.2"]  # each rank draws its own dropout masks


@pytest.fixture(scope="module")
def two_process_run(tables: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process run (no step checkpoints), trained once for the module."""
    folder = tmp_path_factory.mktemp("two-process-run")
    config_path = folder / "run.yaml"
    config_path.write_text(yaml.safe_dump(run_config(small_config(tables), RESUMABLE).to_dict()))
    done = torchrun(["-m", "widedeep", "train", str(config_path), "-o", "run"], 2, folder)
    assert done.returncode == 0, failure_report(done)
    return folder


def test_a_crashed_two_process_run_resumes_to_the_same_weights(
    two_process_run: Path, tmp_path: Path
) -> None:
    stop = (2, 8)  # mid-epoch, after the epoch-boundary checkpoint (2, 0) was written
    config_path = tmp_path / "run.yaml"
    config = yaml.safe_load((two_process_run / "run.yaml").read_text())
    config["train"]["checkpoint_every"] = 7
    config_path.write_text(yaml.safe_dump(config))
    script = tmp_path / "crash_after_checkpoint.py"
    script.write_text(CRASH_AFTER_CHECKPOINT.format(epoch=stop[0], step=stop[1]))
    crashed = torchrun([str(script), "train", str(config_path), "-o", "run"], 2, tmp_path)
    assert crashed.returncode != 0
    assert not (tmp_path / "run" / "bundle").exists()
    saved = load_checkpoint(tmp_path / "run")
    assert (saved.run.position.epoch, saved.run.position.step) == stop
    assert saved.world_size == 2  # rank 1's RNG states, gathered to rank 0, are in it
    assert not torch.equal(saved.random[0].torch_cpu, saved.random[1].torch_cpu)

    command = ["-m", "widedeep", "train", str(config_path), "--resume", "run"]
    resumed = torchrun(command, 2, tmp_path)
    assert resumed.returncode == 0, failure_report(resumed)
    assert resumed.stdout.count("bundle:") == 1

    # Bit for bit: the same computations in the same order as the uninterrupted run.
    expected = load_file(str(two_process_run / "run" / "bundle" / "weights.safetensors"))
    got = load_file(str(tmp_path / "run" / "bundle" / "weights.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    timing = {"seconds", "samples_per_s"}
    histories = [
        [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (folder / "run" / "metrics.jsonl").open()
        ]
        for folder in (two_process_run, tmp_path)
    ]
    assert histories[0] == histories[1]


def test_resuming_with_another_number_of_processes_is_refused(
    two_process_run: Path,
    tables: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    skip_plots(monkeypatch)
    config = run_config(small_config(tables), RESUMABLE)
    folder = two_process_run / "run"
    manifest = folder / "checkpoint" / "manifest.json"
    before = manifest.read_bytes()
    with pytest.raises(ConfigError) as raised:
        train(config, folder, resume=True)  # one process
    assert (
        "processes: the checkpoint was written by 2 processes, this run has 1 process; "
        "resume it with torchrun --nproc-per-node 2" in str(raised.value)
    )
    assert manifest.read_bytes() == before  # refused before writing anything

    # A 1-process checkpoint under torchrun (2 ranks, as distributed.world_size says there).
    one = train(run_config(small_config(tables), [*RESUMABLE, "train.epochs=1"]), tmp_path / "one")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError) as raised:
        check_config(load_checkpoint(one.run_dir), config, "cpu")
    assert (
        "processes: the checkpoint was written by 1 process, this run has 2 processes; "
        "resume it with one process" in str(raised.value)
    )
