"""Checkpoints: atomic writes, exact resume (in process and after SIGKILLs), refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_train import config_dict, one_thread, run_config, run_main, skip_plots, write_tables
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError, WideDeepError
from widedeep.optim import FTRL, LazyAdagrad, LazyAdam
from widedeep.training import checkpoint as ckpt
from widedeep.training.checkpoint import (
    CheckpointError,
    Position,
    RunState,
    check_config,
    load_checkpoint,
    restore,
    save_checkpoint,
    table_fingerprint,
)
from widedeep.training.loop import TrainResult, train

# ``widedeep.training.loop`` by module: the package re-exports a function named ``train``.
loop = importlib.import_module("widedeep.training.loop")

# 1920 training rows in batches of 64: 30 steps an epoch. With checkpoint_every=7, the
# checkpoints are at (epoch, step) (1, 7) (1, 14) (1, 21) (1, 28), (2, 0) at the epoch's end,
# (2, 5) (2, 12) (2, 19) (2, 26), (3, 0), (3, 3) (3, 10) (3, 17) (3, 24), (4, 0), ...


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    skip_plots(monkeypatch)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tables(tmp_path_factory.mktemp("data"))


@pytest.fixture
def base(tables: tuple[Path, Path]) -> dict[str, Any]:
    return config_dict(*tables)


class Interrupted(Exception):
    """Stands for a crash right after a checkpoint was written."""


def stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch, epoch: int, step: int) -> None:
    """Make training raise Interrupted once it has checkpointed position (epoch, step)."""
    real = loop.save_checkpoint

    def save_then_stop(run_dir: Path, run: RunState, *args: Any) -> Path:
        path = real(run_dir, run, *args)
        if (run.position.epoch, run.position.step) == (epoch, step):
            raise Interrupted(f"stopped at epoch {epoch}, step {step}")
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)


def interrupted_then_resumed(
    base: dict[str, Any],
    folder: Path,
    stops: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
) -> TrainResult:
    """Train, stopping after each checkpoint in ``stops`` and resuming, until done."""
    config = run_config(base, [*overrides, "train.checkpoint_every=7"])
    for number, (epoch, step) in enumerate(stops):
        with monkeypatch.context() as patch:
            stop_after_checkpoint(patch, epoch, step)
            with pytest.raises(Interrupted):
                train(config, folder, resume=number > 0)
    return train(config, folder, resume=bool(stops))


_REFERENCE: dict[tuple[str, ...], TrainResult] = {}


def uninterrupted(base: dict[str, Any], folder: Path, overrides: list[str]) -> TrainResult:
    """The run never stopped (no step checkpoints either), once per set of overrides."""
    key = tuple(overrides)
    if key not in _REFERENCE:
        _REFERENCE[key] = train(run_config(base, overrides), folder)
    return _REFERENCE[key]


def assert_same_run(resumed: TrainResult, reference: TrainResult) -> None:
    """Weights torch.equal; every epoch's loss and validation metrics equal."""
    assert resumed.model is not None and reference.model is not None
    left, right = resumed.model.state_dict(), reference.model.state_dict()
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name
    assert len(resumed.history) == len(reference.history)
    for a, b in zip(resumed.history, reference.history, strict=True):
        timing = {"seconds", "samples_per_s"}
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing
        }
    assert resumed.best_epoch == reference.best_epoch
    assert resumed.validation_metrics == reference.validation_metrics
    assert resumed.test_metrics == reference.test_metrics
    saved = load_file(str(resumed.bundle_dir / "weights.safetensors"))
    expected = load_file(str(reference.bundle_dir / "weights.safetensors"))
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


PAPER = ["model.dropout=0.2"]  # FTRL + AdaGrad; dropout draws from torch's RNG
ADAM = [
    "train.wide_optimizer={name: adam, lr: 0.05}",
    "train.deep_optimizer={name: adam, lr: 0.01}",
    "model.dropout=0.2",
    "train.progress=true",  # the bar starts at the resumed step
]
DENSE_ADAM = ["model.embed_reg=0.0001", "train.deep_optimizer={name: adam, lr: 0.01}"]


# ------------------------------------------------------------------------ exact resume


@pytest.mark.parametrize(
    ("overrides", "stops"),
    [
        pytest.param(PAPER, [(2, 12)], id="ftrl+adagrad-mid-epoch"),
        pytest.param(PAPER, [(2, 0)], id="ftrl+adagrad-epoch-boundary"),
        pytest.param(ADAM, [(1, 7), (2, 0), (3, 17)], id="lazy+fused-adam-three-stops"),
        pytest.param(DENSE_ADAM, [(3, 24)], id="ftrl+dense-adam-last-checkpoint"),
    ],
)
def test_a_resumed_run_equals_an_uninterrupted_one(
    base: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    stops: list[tuple[int, int]],
) -> None:
    reference = uninterrupted(base, tmp_path / "reference", overrides)
    resumed = interrupted_then_resumed(base, tmp_path / "run", stops, monkeypatch, overrides)
    assert_same_run(resumed, reference)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["train_loss"] for line in lines] == [
        row["train_loss"] for row in reference.history
    ]


def test_a_resumed_streamed_run_equals_an_uninterrupted_one(
    base: dict[str, Any],
    tables: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The epoch's chunks are read and shuffled again up to the stopped step, then trained on.
    streamed = [
        f"data.validation={tables[1]}",
        "data.stream={shuffle_buffer: 500, chunk_rows: 128}",
        *ADAM,
    ]
    reference = uninterrupted(base, tmp_path / "reference", streamed)
    resumed = interrupted_then_resumed(
        base, tmp_path / "run", [(1, 14), (2, 4)], monkeypatch, streamed
    )
    assert_same_run(resumed, reference)


def test_early_stopping_state_and_best_weights_survive_a_resume(
    base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No epoch beats the first by 0.5 AUC: stop after epoch 3 and keep epoch 1's weights,
    # which only the checkpoint's best_model.safetensors still holds when epoch 3 resumes.
    overrides = [
        "train.epochs=5",
        "train.early_stopping={metric: auc, patience: 2, min_delta: 0.5}",
    ]
    reference = uninterrupted(base, tmp_path / "reference", overrides)
    assert (len(reference.history), reference.best_epoch) == (3, 1)
    resumed = interrupted_then_resumed(base, tmp_path / "run", [(3, 10)], monkeypatch, overrides)
    assert_same_run(resumed, reference)


def test_resuming_a_finished_run_trains_nothing_and_rewrites_the_bundle(
    base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = uninterrupted(base, tmp_path / "reference", PAPER)
    folder = tmp_path / "run"
    train(run_config(base, PAPER), folder)
    (folder / "bundle" / "weights.safetensors").unlink()  # as if killed while writing it

    def no_training(*args: Any) -> float:
        raise AssertionError("a finished run must not train")

    monkeypatch.setattr(loop, "_train_epoch", no_training)
    again = train(run_config(base, PAPER), folder, resume=True)
    assert_same_run(again, finished)


def test_a_finished_run_resumed_with_more_epochs_continues_exactly(
    base: dict[str, Any], tmp_path: Path
) -> None:
    four = uninterrupted(base, tmp_path / "reference", [*PAPER, "train.epochs=4"])
    folder = tmp_path / "run"
    train(run_config(base, PAPER), folder)  # 3 epochs
    resumed = train(run_config(base, [*PAPER, "train.epochs=4"]), folder, resume=True)
    assert_same_run(resumed, four)


def test_a_warm_started_run_resumes_exactly(
    base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = uninterrupted(base, tmp_path / "source", PAPER).bundle_dir
    config = run_config(base, ["train.checkpoint_every=7"])
    reference = train(config, tmp_path / "reference", warm_start_from=source)
    folder = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, 2, 5)
        with pytest.raises(Interrupted):
            train(config, folder, warm_start_from=source)
    with pytest.raises(ConfigError, match="warm_start_from: the checkpointed run started from"):
        train(config, folder, warm_start_from=tmp_path / "another", resume=True)
    assert_same_run(train(config, folder, warm_start_from=source, resume=True), reference)
    metrics, expected = (
        json.loads((d / "metrics.json").read_text()) for d in (folder, reference.run_dir)
    )
    assert metrics["warm_start"] == expected["warm_start"]
    assert metrics["warm_start"]["source"] == str(source)


# ------------------------------------------------------------- optimizer state round trip


def _optimizers(kind: str, model: nn.Module) -> list[torch.optim.Optimizer]:
    table, dense = [model[0].weight], list(model[1].parameters())  # type: ignore[index]
    if kind == "ftrl":
        return [FTRL(table, lr=0.5, l1=0.01, l2=0.01), torch.optim.Adagrad(dense, fused=True)]
    if kind == "lazy_adam":
        return [LazyAdam(table, lr=0.01), torch.optim.Adam(dense, lr=0.01, fused=True)]
    if kind == "lazy_adagrad":
        return [LazyAdagrad(table, lr=0.1), torch.optim.Adagrad(dense, lr=0.1)]
    return [torch.optim.Adam([*table, *dense], lr=0.01)]  # unfused, dense: 0-dim step tensors


@pytest.mark.parametrize("kind", ["ftrl", "lazy_adam", "lazy_adagrad", "adam"])
def test_every_optimizer_state_comes_back_exactly(tmp_path: Path, kind: str) -> None:
    def build() -> tuple[nn.Module, list[torch.optim.Optimizer]]:
        torch.manual_seed(0)
        sparse = kind != "adam"
        model = nn.Sequential(nn.EmbeddingBag(50, 4, mode="sum", sparse=sparse), nn.Linear(4, 1))
        return model, _optimizers(kind, model)

    def steps(model: nn.Module, optimizers: list[torch.optim.Optimizer], seed: int) -> None:
        ids = torch.randint(0, 50, (8, 3), generator=torch.Generator().manual_seed(seed))
        for optimizer in optimizers:
            optimizer.zero_grad()
        model(ids).pow(2).sum().backward()
        for optimizer in optimizers:
            optimizer.step()

    model, optimizers = build()
    for seed in range(3):
        steps(model, optimizers, seed)
    run = RunState(
        config={},
        device="cpu",
        data={},
        position=Position.epoch_start(1, torch.Generator(), torch.device("cpu")),
    )
    save_checkpoint(tmp_path, run, model, optimizers)
    for seed in range(3, 6):
        steps(model, optimizers, seed)

    fresh, fresh_optimizers = build()
    restore(load_checkpoint(tmp_path), fresh, fresh_optimizers)
    for seed in range(3, 6):
        steps(fresh, fresh_optimizers, seed)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    for old, new in zip(optimizers, fresh_optimizers, strict=True):
        for p_old, p_new in zip(old.state.values(), new.state.values(), strict=True):
            for key, value in p_old.items():
                assert torch.equal(torch.as_tensor(p_new[key]), torch.as_tensor(value)), key


# ------------------------------------------------------------------------- atomic writes


def _tiny(tmp_path: Path, fill: float) -> tuple[RunState, nn.Module]:
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.fill_(fill)
    run = RunState(
        config={"fill": fill},
        device="cpu",
        data={},
        position=Position.epoch_start(1, torch.Generator(), torch.device("cpu")),
    )
    return run, model


@pytest.mark.parametrize("failing_call", [1, 2], ids=["first-rename", "second-rename"])
def test_a_failed_rename_leaves_the_previous_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    save_checkpoint(tmp_path, *_tiny(tmp_path, 1.0), [])
    real_replace, calls = os.replace, []

    def replace(source: Any, target: Any) -> None:
        calls.append((source, target))
        if len(calls) == failing_call:
            raise OSError("disk gone")
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        with pytest.raises(CheckpointError, match="could not be written: disk gone"):
            save_checkpoint(tmp_path, *_tiny(tmp_path, 2.0), [])
    loaded = load_checkpoint(tmp_path)
    assert loaded.run.config == {"fill": 1.0}
    assert torch.equal(loaded.model_state["weight"], torch.ones(1, 3))
    # Between the two renames only checkpoint.old is there; the next save replaces it.
    assert (tmp_path / "checkpoint").is_dir() == (failing_call == 1)
    save_checkpoint(tmp_path, *_tiny(tmp_path, 3.0), [])
    assert load_checkpoint(tmp_path).run.config == {"fill": 3.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_save_interrupted_while_writing_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, *_tiny(tmp_path, 1.0), [])

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("killed while writing")

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "_manifest", crash)  # the files are written, the manifest not
        with pytest.raises(CheckpointError):
            save_checkpoint(tmp_path, *_tiny(tmp_path, 2.0), [])
    assert (tmp_path / "checkpoint.tmp").is_dir()
    assert load_checkpoint(tmp_path).run.config == {"fill": 1.0}
    save_checkpoint(tmp_path, *_tiny(tmp_path, 3.0), [])
    assert not (tmp_path / "checkpoint.tmp").exists()


# ------------------------------------------------------------------------------ refusals


@pytest.fixture
def stopped_run(
    base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], Path]:
    """A run directory whose checkpoint is mid-epoch 2 (training 'crashed' there)."""
    folder = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, 2, 5)
        with pytest.raises(Interrupted):
            train(run_config(base, ["train.checkpoint_every=7"]), folder)
    return base, folder


def test_resume_runs_no_pickle(
    stopped_run: tuple[dict[str, Any], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, folder = stopped_run
    reference = uninterrupted(base, tmp_path / "reference", [])

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("resuming must not unpickle anything")

    for target, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
    ]:
        monkeypatch.setattr(target, name, refuse)
    assert_same_run(train(run_config(base), folder, resume=True), reference)


@pytest.mark.parametrize("name", ["model.safetensors", "state.json", "optimizers.safetensors"])
def test_a_tampered_checkpoint_is_refused(
    stopped_run: tuple[dict[str, Any], Path], name: str
) -> None:
    base, folder = stopped_run
    file = folder / "checkpoint" / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{name}: its SHA-256 differs"):
        train(run_config(base), folder, resume=True)


def test_a_missing_checkpoint_is_a_clear_error(base: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(WideDeepError, match="no checkpoint to resume from"):
        train(run_config(base), tmp_path / "never-trained", resume=True)


def test_a_config_that_changes_training_is_refused_by_key(
    stopped_run: tuple[dict[str, Any], Path],
) -> None:
    base, folder = stopped_run
    changed = ["train.batch_size=32", "model.hidden_units=[32, 8]", "train.progress=true"]
    with pytest.raises(ConfigError) as raised:
        train(run_config(base, changed), folder, resume=True)
    message = str(raised.value)
    assert "2 differences" in message
    assert "train.batch_size: the checkpoint has 64, the config gives 32" in message
    assert "model.hidden_units.0: the checkpoint has 16, the config gives 32" in message
    assert "progress" not in message  # display settings may differ
    with pytest.raises(ConfigError, match=r"train\.epochs: .* into epoch 2, .* for 1"):
        train(run_config(base, ["train.epochs=1"]), folder, resume=True)


def test_a_checkpoint_from_before_a_config_key_existed_resumes_with_its_default(
    stopped_run: tuple[dict[str, Any], Path],
) -> None:
    """A newer widedeep adds config keys (``train.compile`` was one): a checkpoint written
    without one compares as if it had the default, which trains as before; a real
    difference is still refused."""
    base, folder = stopped_run
    checkpoint = load_checkpoint(folder)
    del checkpoint.run.config["train"]["compile"]  # as an older widedeep wrote it
    device = checkpoint.run.device
    check_config(checkpoint, run_config(base), device)  # no error
    with pytest.raises(ConfigError, match=r"train\.compile: the checkpoint has false"):
        check_config(checkpoint, run_config(base, ["train.compile=true"]), device)
    checkpoint.run.config["train"]["no_such_key"] = 1  # no longer a valid config: as saved
    with pytest.raises(ConfigError, match=r"train\.no_such_key: the checkpoint has 1"):
        check_config(checkpoint, run_config(base), device)


def test_changed_training_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_path, test_path = write_tables(tmp_path / "data")
    config = run_config(config_dict(train_path, test_path), ["train.checkpoint_every=7"])
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, 1, 7)
        with pytest.raises(Interrupted):
            train(config, tmp_path / "run")
    table = pl.read_parquet(train_path)
    table.with_columns(pl.col("price").reverse()).write_parquet(train_path)  # same path
    with pytest.raises(ConfigError, match=r"data\.train: the encoded train rows differ"):
        train(config, tmp_path / "run", resume=True)


def test_the_cli_resume_option(
    stopped_run: tuple[dict[str, Any], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    base, folder = stopped_run
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(base))
    outcome = run_main(
        ["train", str(config_file), "--resume", str(tmp_path / "elsewhere")], monkeypatch, capsys
    )
    assert outcome.code == 2 and outcome.stderr.startswith("error: ")
    assert "no checkpoint to resume from" in outcome.stderr
    outcome = run_main(
        ["train", str(config_file), "-o", str(tmp_path / "x"), "--resume", str(folder)],
        monkeypatch,
        capsys,
    )
    assert outcome.code == 2 and "name different run directories" in outcome.stderr
    outcome = run_main(["train", str(config_file), "--resume", str(folder)], monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr
    assert f"bundle:  {folder / 'bundle'}" in outcome.stdout


# -------------------------------------------------------------------------- crash test


def _manifest(folder: Path) -> bytes | None:
    try:
        return (folder / "checkpoint" / "manifest.json").read_bytes()
    except FileNotFoundError:  # none yet, or between the two renames of a save
        return None


def _wait_for_checkpoint(
    folder: Path, before: bytes | None, process: subprocess.Popen[bytes], limit: float
) -> bool:
    """Poll until a checkpoint other than ``before`` is in place (True) or the process ends
    (False)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if _manifest(folder) not in (None, before):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("the training process wrote no checkpoint")


@pytest.mark.slow  # about 20 s: four interpreter starts (imports) dominate
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkilled_training_resumes_to_the_same_bundle(
    base: dict[str, Any], tmp_path: Path
) -> None:
    """``widedeep train`` killed at random times, resumed with --resume until done."""
    overrides = [
        "train.batch_size=16",  # 120 steps an epoch: kills land mid-epoch
        "train.epochs=3",
        "train.checkpoint_every=25",
        "train.threads=1",
        "model.dropout=0.2",
    ]
    config = run_config(base, overrides)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    reference = train(config, tmp_path / "reference")

    folder = tmp_path / "run"
    command = [sys.executable, "-m", "widedeep", "train", str(config_file)]
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    delays = random.Random(7)
    kills = 0
    for attempt in range(4):
        arguments = ["-o", str(folder)] if attempt == 0 else ["--resume", str(folder)]
        with (tmp_path / f"attempt{attempt}.log").open("wb") as log:
            process = subprocess.Popen([*command, *arguments], stdout=log, stderr=log, env=env)
            # Wait for this process's first checkpoint, then kill it a random moment later.
            if attempt < 3 and _wait_for_checkpoint(folder, _manifest(folder), process, 120):
                time.sleep(delays.uniform(0.0, 0.6))
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
            code = process.wait(timeout=120)
        if attempt < 3 and code == -signal.SIGKILL:
            continue
        assert code == 0, (tmp_path / f"attempt{attempt}.log").read_text()
        break
    assert kills >= 1
    saved = load_file(str(folder / "bundle" / "weights.safetensors"))
    expected = load_file(str(reference.bundle_dir / "weights.safetensors"))
    assert saved.keys() == expected.keys()
    for name in expected:
        assert torch.equal(saved[name], expected[name]), name
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["train_loss"] for line in lines]
    assert losses == [row["train_loss"] for row in reference.history]


def test_a_table_fingerprint_holds_across_the_change_to_int32_ids() -> None:
    """Checkpoints written while ids were int64 name their tables by that fingerprint: the
    same table with int32 ids must give it, block after block of rows, and any other id
    must not."""
    rows = 65_536 * 2 + 5  # several blocks of widened ids, the last one short
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 2**31 - 1, (rows, 3), generator=generator, dtype=torch.int64)
    table = TensorTable(
        ids=ids.to(torch.int32),
        multi_ids=(torch.randint(0, 1000, (rows, 2), generator=generator, dtype=torch.int32),),
        dense=torch.rand(rows, 4, generator=generator),
        labels=torch.zeros(rows),
    )

    before = hashlib.sha256()  # the definition checkpoints were written with
    multi = table.multi_ids[0].to(torch.int64)
    for tensor in (ids, multi, table.dense, table.labels):
        before.update(f"{tensor.numpy().dtype}{tuple(tensor.shape)};".encode())
        before.update(tensor.numpy().tobytes())
    changed = table.ids.clone()
    changed[-1, -1] += 1

    assert table_fingerprint(table) == before.hexdigest()
    widened = dataclasses.replace(table, ids=ids, multi_ids=(multi,))
    assert table_fingerprint(widened) == before.hexdigest()
    assert table_fingerprint(dataclasses.replace(table, ids=changed)) != before.hexdigest()
