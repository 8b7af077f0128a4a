"""Checkpoints of a training run: written atomically, read back exactly, never unpickled.

A checkpoint holds everything the next optimizer step depends on, so a run resumed from it
ends with the same weights, bit for bit, as a run that was never interrupted (same machine,
same thread count, same number of processes)::

    RUN_DIR/checkpoint/
      manifest.json            format, versions; SHA-256 and size of every other file
      state.json               where training is (epoch, step), the history rows, early
                               stopping's scalars, numpy's and Python's RNG states, the
                               optimizers' non-tensor state (step counts), the config,
                               fingerprints of the encoded training and validation tables,
                               and the number of processes that trained (``world_size``)
      state.safetensors        torch's CPU RNG (dropout), the CUDA RNG when training there,
                               the batch generator as it was at the start of the epoch (it
                               redraws the epoch's permutation), the epoch's loss sum so far
      model.safetensors        the model's weights
      optimizers.safetensors   every optimizer's state tensors, named "{optimizer}.{param}.{key}"
      best_model.safetensors   early stopping's best weights (only while it has some)

JSON and safetensors only: reading a checkpoint runs no pickle and no ``torch.load``.

Under torchrun only rank 0 writes, but each rank draws its own dropout masks (rank ``r > 0``
reseeds torch with ``seed + r``), so the checkpoint holds every rank's RNG states: rank 0's
as above, rank ``r``'s under ``"ranks"`` in ``state.json`` (numpy, Python) and as
``rank{r}.torch_rng`` / ``rank{r}.cuda_rng`` in ``state.safetensors``. Everything else is the
same on every rank (the same weights, the same summed gradients, hence the same optimizer
states; the position counts global batches). ``gather_random_states`` collects the ranks'
states on rank 0; on resume every rank reads the checkpoint and ``restore`` applies its own.
A checkpoint is resumed by as many processes as wrote it (``check_config``): with another
count the gradients' float sums and the dropout streams would differ, so it would not be the
same run. A checkpoint without ``world_size`` was written by one process.

Writing (``save_checkpoint``) follows one protocol, so that a crash at any instant leaves a
complete checkpoint, the old or the new:

1. A ``RUN_DIR/checkpoint.tmp`` left by an interrupted save is deleted and made afresh.
2. Every file is written into it, flushed and ``fsync``-ed; ``manifest.json`` goes last (its
   hashes are of the files as written), then the folder itself is ``fsync``-ed.
3. If ``RUN_DIR/checkpoint`` exists, a stale ``RUN_DIR/checkpoint.old`` is deleted and
   ``checkpoint`` is renamed to ``checkpoint.old``. (POSIX cannot rename a folder over a
   non-empty one, so the swap takes two renames.)
4. ``checkpoint.tmp`` is renamed to ``checkpoint`` and ``RUN_DIR`` is ``fsync``-ed, which
   makes both renames durable.
5. ``checkpoint.old`` is deleted.

A crash in 1-2 leaves the old ``checkpoint`` untouched; between 3 and 4 only
``checkpoint.old`` is there, complete, and reading falls back to it (a save in that state
keeps it until its own step 4); after 4, the new one is in place. Reading
(``load_checkpoint``) takes ``checkpoint``, else ``checkpoint.old``, and checks each file's
size and SHA-256 against the manifest before parsing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from widedeep.bundle import package_version
from widedeep.config import RunConfig
from widedeep.data.tensors import TensorTable
from widedeep.errors import CheckpointError, ConfigError
from widedeep.manifest import check_files, file_entries, read_manifest
from widedeep.training import distributed

FORMAT = "widedeep-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT = "checkpoint"
PARTIAL = "checkpoint.tmp"
PREVIOUS = "checkpoint.old"
MANIFEST = "manifest.json"
STATE = "state.json"
STATE_TENSORS = "state.safetensors"
MODEL = "model.safetensors"
OPTIMIZERS = "optimizers.safetensors"
BEST_MODEL = "best_model.safetensors"
REQUIRED_FILES = (STATE, STATE_TENSORS, MODEL, OPTIMIZERS)

# Settings that do not change what training computes: they may differ on resume.
# (Bit-identical results also need the same thread count; more epochs continue the run.)
FREE_KEYS = frozenset({"train.progress", "train.threads", "train.checkpoint_every", "train.epochs"})


@dataclass
class Position:
    """Where training is: the next batch is number ``step + 1`` of ``epoch`` (1-based)."""

    epoch: int
    step: int
    generator_state: Tensor  # the batch generator at the start of ``epoch``
    loss_sum: Tensor  # the epoch's summed batch loss x batch size so far (float64 scalar)
    samples: int  # rows trained in this epoch so far
    seconds: float  # time spent training this epoch so far (across restarts)

    @classmethod
    def epoch_start(cls, epoch: int, generator: torch.Generator, device: torch.device) -> Position:
        """The start of ``epoch``, whose batch order ``generator`` is about to draw."""
        return cls(
            epoch=epoch,
            step=0,
            generator_state=generator.get_state(),
            loss_sum=torch.zeros((), dtype=torch.float64, device=device),
            samples=0,
            seconds=0.0,
        )


@dataclass
class RunState:
    """What the training loop carries from step to step, besides the model and optimizers."""

    config: dict[str, Any]  # RunConfig.to_dict()
    device: str  # the device trained on ("cpu", "cuda", "cuda:1")
    data: dict[str, str]  # SHA-256 of the encoded training and validation tables
    position: Position
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # early stopping ended the run
    early_stopping: dict[str, Any] | None = None  # EarlyStopping.state()
    best_state: dict[str, Tensor] | None = None  # early stopping's best weights
    warm_start: dict[str, Any] | None = None  # the warm-start report, when there was one

    def finished(self, epochs: int) -> bool:
        """Nothing is left to train for a run of ``epochs`` epochs."""
        return self.stopped or self.position.epoch > epochs


@dataclass
class RandomState:
    """Every random number generator training draws from (the batch generator aside)."""

    torch_cpu: Tensor
    cuda: Tensor | None
    numpy: tuple[Any, ...]
    python: tuple[Any, ...]

    @classmethod
    def capture(cls, device: str) -> RandomState:
        return cls(
            torch_cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state(device) if device.startswith("cuda") else None,
            numpy=np.random.get_state(),  # type: ignore[arg-type]
            python=random.getstate(),
        )

    def apply(self, device: str) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


def gather_random_states(device: str) -> list[RandomState]:
    """Every rank's ``RandomState`` in rank order on rank 0, ``[]`` on the other ranks; in
    one process, ``[this process's]``. Under torchrun every rank must call it (a collective).

    ``device``: this rank's training device (its CUDA RNG is captured when it is a GPU).
    """
    return distributed.gather_to_main(RandomState.capture(device))


@dataclass
class Checkpoint:
    """A checkpoint as read from disk and verified, ready to ``restore``."""

    folder: Path
    run: RunState
    model_state: dict[str, Tensor]
    optimizer_states: list[dict[str, Any]]  # torch state_dict()["state"] form, plus "type"
    random: list[RandomState]  # each rank's, in rank order (one in a 1-process run)

    @property
    def world_size(self) -> int:
        """How many processes trained the run."""
        return len(self.random)


# ------------------------------------------------------------------------------ writing


def save_checkpoint(
    run_dir: str | Path,
    run: RunState,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    random_states: list[RandomState] | None = None,
) -> Path:
    """Write ``RUN_DIR/checkpoint`` atomically (see the module docstring); return its path.

    ``random_states``: every rank's, from ``gather_random_states`` (under torchrun, rank 0
    writes them all); by default this process's, for a 1-process run.
    """
    if random_states is None:
        if distributed.is_distributed():
            raise CheckpointError(
                "under torchrun a checkpoint needs every rank's random states "
                "(gather_random_states)"
            )
        random_states = [RandomState.capture(run.device)]
    run_dir = Path(run_dir)
    target, partial, previous = run_dir / CHECKPOINT, run_dir / PARTIAL, run_dir / PREVIOUS
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        files = _write_contents(partial, run, model, optimizers, random_states)
        _write_json(partial / MANIFEST, _manifest(partial, files))
        _fsync_folder(partial)
        if target.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(target, previous)
        os.replace(partial, target)
        _fsync_folder(run_dir)
        if previous.exists():
            shutil.rmtree(previous)
    except OSError as error:
        raise CheckpointError(f"{target}: the checkpoint could not be written: {error}") from error
    return target


def _write_contents(
    folder: Path,
    run: RunState,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    random_states: list[RandomState],
) -> list[str]:
    """Every file but the manifest, each fsynced; returns their names."""
    randomness, *others = random_states
    optimizer_tensors, optimizer_scalars = _split_optimizers(optimizers)
    position = run.position
    small = {
        **_random_tensors(randomness, ""),
        "generator_state": position.generator_state,
        "loss_sum": position.loss_sum,
    }
    for number, other in enumerate(others, start=1):
        small.update(_random_tensors(other, f"rank{number}."))
    state = {
        "config": run.config,
        "device": run.device,
        "data": run.data,
        "position": {
            "epoch": position.epoch,
            "step": position.step,
            "samples": position.samples,
            "seconds": position.seconds,
        },
        "history": run.history,
        "stopped": run.stopped,
        "early_stopping": run.early_stopping,
        "warm_start": run.warm_start,
        "optimizers": optimizer_scalars,
        **_random_json(randomness),
        "world_size": len(random_states),
        "ranks": [_random_json(other) for other in others],  # ranks 1, 2, ...
    }
    _write_json(folder / STATE, state)
    _write_tensors(folder / STATE_TENSORS, small)
    _write_tensors(folder / MODEL, model.state_dict())
    _write_tensors(folder / OPTIMIZERS, optimizer_tensors)
    files = [STATE, STATE_TENSORS, MODEL, OPTIMIZERS]
    if run.best_state is not None:
        _write_tensors(folder / BEST_MODEL, run.best_state)
        files.append(BEST_MODEL)
    return files


def _random_tensors(randomness: RandomState, prefix: str) -> dict[str, Tensor]:
    """torch's RNG states, for ``state.safetensors`` (``prefix``: "" for rank 0)."""
    tensors = {f"{prefix}torch_rng": randomness.torch_cpu}
    if randomness.cuda is not None:
        tensors[f"{prefix}cuda_rng"] = randomness.cuda
    return tensors


def _random_json(randomness: RandomState) -> dict[str, Any]:
    """numpy's and Python's RNG states, for ``state.json``."""
    kind, keys, *rest = randomness.numpy
    version, internal, gauss_next = randomness.python
    return {
        "numpy_rng": [kind, keys.tolist(), *rest],
        "python_rng": [version, list(internal), gauss_next],
    }


def _split_optimizers(
    optimizers: list[torch.optim.Optimizer],
) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Each optimizer's state: tensors (for safetensors) and the rest (for JSON).

    Hyperparameters (``param_groups``) are not saved: the optimizers are rebuilt from the
    same config, so they come back as they were.
    """
    tensors: dict[str, Tensor] = {}
    described = []
    for i, optimizer in enumerate(optimizers):
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in optimizer.state_dict()["state"].items():
            kept: dict[str, Any] = {}
            for key, value in entry.items():
                if isinstance(value, Tensor):
                    tensors[f"{i}.{index}.{key}"] = value
                elif isinstance(value, bool | int | float):
                    kept[key] = value
                else:
                    raise CheckpointError(
                        f"{type(optimizer).__name__} state '{key}' is a "
                        f"{type(value).__name__}; a checkpoint holds tensors and numbers only"
                    )
            scalars[str(index)] = kept
        described.append({"type": type(optimizer).__name__, "state": scalars})
    return tensors, described


def _manifest(folder: Path, files: list[str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "widedeep_version": package_version(),
        "torch_version": torch.__version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": file_entries(folder, files),
    }


def _write_json(path: Path, data: Any) -> None:
    with path.open("w") as handle:
        json.dump(data, handle, indent=1)  # NaN metrics are written as NaN, read back as NaN
        handle.flush()
        os.fsync(handle.fileno())


def _write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    save_file(cpu, str(path), metadata={"format": FORMAT})
    with path.open("r+b") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable; POSIX only."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ------------------------------------------------------------------------------ reading


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's complete checkpoint folder: ``checkpoint``, else ``checkpoint.old`` (a
    save interrupted between its two renames), else None."""
    for name in (CHECKPOINT, PREVIOUS):
        folder = Path(run_dir) / name
        if folder.is_dir():
            return folder
    return None


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read and verify the checkpoint of ``run_dir``; raise CheckpointError if it cannot be."""
    folder = find_checkpoint(run_dir)
    if folder is None:
        raise CheckpointError(
            f"{run_dir}: no checkpoint to resume from ({Path(run_dir) / CHECKPOINT} does not "
            "exist); start the run without resuming"
        )
    files = _verify(folder)
    try:
        state = json.loads((folder / STATE).read_text())
        small = load_file(str(folder / STATE_TENSORS))
        model_state = load_file(str(folder / MODEL))
        optimizer_tensors = load_file(str(folder / OPTIMIZERS))
        best_state = load_file(str(folder / BEST_MODEL)) if BEST_MODEL in files else None
        return _parse(folder, state, small, model_state, optimizer_tensors, best_state)
    except (json.JSONDecodeError, SafetensorError, KeyError, IndexError, TypeError) as error:
        raise CheckpointError(f"{folder}: cannot be read: {error!r}") from None
    except ValueError as error:
        raise CheckpointError(f"{folder}: cannot be read: {error}") from None


def _verify(folder: Path) -> dict[str, Any]:
    """Check the manifest and every file it lists; return its "files" entry."""
    manifest = read_manifest(
        folder / MANIFEST, "checkpoint", FORMAT, FORMAT_VERSION, CheckpointError
    )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{folder / MANIFEST}: 'files' is not a mapping")
    unknown = sorted(set(files) - {*REQUIRED_FILES, BEST_MODEL})
    if unknown:
        raise CheckpointError(f"{folder / MANIFEST}: unexpected file names {unknown}")
    names = (*REQUIRED_FILES, *([BEST_MODEL] if BEST_MODEL in files else []))
    check_files(folder, folder / MANIFEST, files, names, CheckpointError)
    return files


def _parse(
    folder: Path,
    state: dict[str, Any],
    small: dict[str, Tensor],
    model_state: dict[str, Tensor],
    optimizer_tensors: dict[str, Tensor],
    best_state: dict[str, Tensor] | None,
) -> Checkpoint:
    spot = state["position"]
    position = Position(
        epoch=int(spot["epoch"]),
        step=int(spot["step"]),
        generator_state=small["generator_state"],
        loss_sum=small["loss_sum"],
        samples=int(spot["samples"]),
        seconds=float(spot["seconds"]),
    )
    run = RunState(
        config=state["config"],
        device=str(state["device"]),
        data=dict(state["data"]),
        position=position,
        history=list(state["history"]),
        stopped=bool(state["stopped"]),
        early_stopping=state["early_stopping"],
        best_state=best_state,
        warm_start=state["warm_start"],
    )
    world_size = int(state.get("world_size", 1))  # absent: written by one process
    ranks = [state, *state.get("ranks", [])]
    if world_size < 1 or len(ranks) != world_size:
        raise ValueError(
            f"{STATE} says {world_size} processes trained, but holds the random states of "
            f"{len(ranks)}"
        )
    randomness = [
        _parse_random(ranks[r], small, "" if r == 0 else f"rank{r}.") for r in range(world_size)
    ]
    optimizer_states: list[dict[str, Any]] = [
        {
            "type": described["type"],
            "state": {int(index): dict(scalars) for index, scalars in described["state"].items()},
        }
        for described in state["optimizers"]
    ]
    for name, tensor in optimizer_tensors.items():
        number, index, key = name.split(".", 2)
        optimizer_states[int(number)]["state"][int(index)][key] = tensor
    return Checkpoint(folder, run, model_state, optimizer_states, randomness)


def _parse_random(state: dict[str, Any], small: dict[str, Tensor], prefix: str) -> RandomState:
    """One rank's RNG states: numpy's and Python's from ``state``, torch's from ``small``."""
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    version, internal, gauss_next = state["python_rng"]
    return RandomState(
        torch_cpu=small[f"{prefix}torch_rng"],
        cuda=small.get(f"{prefix}cuda_rng"),
        numpy=(kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
        python=(version, tuple(internal), gauss_next),
    )


# ---------------------------------------------------------------------------- restoring


def restore(
    checkpoint: Checkpoint, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]
) -> None:
    """Load the checkpoint's weights, optimizer states and RNG states (in place).

    Call it after everything that draws random numbers while setting up (building the model,
    reseeding a rank), so that the next draw is the one the interrupted run would have made.
    Under torchrun each rank takes its own RNG states (``check_config`` has made sure that
    as many processes wrote the checkpoint).
    """
    folder = checkpoint.folder
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{folder / MODEL}: does not fit the model: {error}") from None
    saved = checkpoint.optimizer_states
    kinds = [type(o).__name__ for o in optimizers]
    if [s["type"] for s in saved] != kinds:
        raise CheckpointError(
            f"{folder}: holds the state of optimizers {[s['type'] for s in saved]}, "
            f"this run builds {kinds}"
        )
    for optimizer, state in zip(optimizers, saved, strict=True):
        current = optimizer.state_dict()
        try:
            optimizer.load_state_dict(
                {"state": state["state"], "param_groups": current["param_groups"]}
            )
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"{folder / OPTIMIZERS}: does not fit {type(optimizer).__name__}: {error}"
            ) from None
    me, world_size = distributed.rank(), distributed.world_size()
    if checkpoint.world_size != world_size:
        raise CheckpointError(
            f"{folder}: written by {_processes(checkpoint.world_size)}, restored by "
            f"{_processes(world_size)}"
        )
    # Rank 0's device name is the one recorded; under torchrun on CUDA, this rank's GPU.
    device = str(distributed.local_device(torch.device(checkpoint.run.device)))
    try:
        checkpoint.random[me].apply(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / STATE}: invalid random state: {error}") from None


# ----------------------------------------------------------------------------- matching


_FINGERPRINT_ROWS = 65_536  # rows of ids widened at a time: no table-sized copy


def table_fingerprint(table: TensorTable) -> str:
    """SHA-256 of an encoded table's tensors (shapes, dtypes and bytes). Id matrices are
    hashed as int64, as they were held before they became int32, so a checkpoint written
    then still matches the same table encoded now."""
    digest = hashlib.sha256()
    for matrix in (table.ids, *table.multi_ids):
        ids = np.ascontiguousarray(matrix.detach().cpu().numpy())
        digest.update(f"int64{ids.shape};".encode())
        for start in range(0, ids.shape[0], _FINGERPRINT_ROWS):
            digest.update(ids[start : start + _FINGERPRINT_ROWS].astype(np.int64).data)
    tensors = [table.dense] if table.labels is None else [table.dense, table.labels]
    for tensor in tensors:
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(f"{array.dtype}{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()


_ABSENT = object()


def check_config(checkpoint: Checkpoint, config: RunConfig, device: str) -> None:
    """Raise ConfigError, naming each key, where ``config`` (or the device it resolves to)
    differs from the checkpoint's in anything that changes training."""
    run = checkpoint.run
    problems = [
        f"{key}: the checkpoint has {_show(old)}, the config gives {_show(new)}"
        for key, old, new in _differences(_with_defaults(run.config), config.to_dict(), "")
        if key not in FREE_KEYS
    ]
    saved, current = checkpoint.world_size, distributed.world_size()
    if saved != current:
        how = "one process" if saved == 1 else f"torchrun --nproc-per-node {saved}"
        problems.append(
            f"processes: the checkpoint was written by {_processes(saved)}, this run has "
            f"{_processes(current)}; resume it with {how} (another count would sum the "
            "gradients in another order and draw other dropout masks)"
        )
    if _device_differs(run.device, device):
        problems.append(
            f"train.device: the checkpoint was trained on {run.device}, this run would train "
            f"on {device}"
        )
    epochs, position = config.train.epochs, run.position
    started = position.epoch - 1 + (1 if position.step > 0 else 0)
    if not run.stopped and started > epochs:
        problems.append(
            f"train.epochs: the checkpoint has trained into epoch {started}, the config asks "
            f"for {epochs} in all"
        )
    _raise_problems(checkpoint.folder, problems)


def _processes(count: int) -> str:
    return f"{count} process{'es' if count != 1 else ''}"


def _device_differs(saved: str, device: str) -> bool:
    """Under torchrun each rank trains on its own GPU (``cuda:LOCAL_RANK``) while the
    checkpoint names rank 0's: there only the kind of device counts."""
    if distributed.launched():
        return torch.device(saved).type != torch.device(device).type
    return saved != device


def check_data(checkpoint: Checkpoint, data: dict[str, str]) -> None:
    """Raise ConfigError when the encoded tables (``table_fingerprint`` per split) differ
    from those the checkpoint was trained on."""
    problems = [
        f"data.{split}: the encoded {split} rows differ from the checkpoint's (the table "
        "or its preprocessing changed)"
        for split, fingerprint in data.items()
        if checkpoint.run.data.get(split) != fingerprint
    ]
    _raise_problems(checkpoint.folder, problems)


def _raise_problems(folder: Path, problems: list[str]) -> None:
    if problems:
        count = len(problems)
        raise ConfigError(
            f"cannot resume from {folder}: {count} difference{'s' if count != 1 else ''} "
            "that change training\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys added to ``RunConfig`` since it was written at
    their defaults (which train as before), so that a newer widedeep resumes it; as saved
    where it no longer validates (its differences are then reported key by key)."""
    try:
        return RunConfig.from_dict(saved).to_dict()
    except ConfigError:
        return saved


def _differences(old: Any, new: Any, path: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for each leaf where two JSON documents differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*new, *(k for k in old if k not in new)]
        found = []
        for key in keys:
            sub = f"{path}.{key}" if path else str(key)
            found += _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), sub)
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        found = []
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            found += _differences(a, b, f"{path}.{index}")
        return found
    return [] if old == new else [(path, old, new)]


def _show(value: Any) -> str:
    return "no such key" if value is _ABSENT else json.dumps(value)
