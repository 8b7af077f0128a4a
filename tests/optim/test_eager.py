"""widedeep's optimizers load no compiler, and update, save and hook as torch's own do."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from widedeep.optim import eager
from widedeep.optim.eager import SGD, Adagrad, Adam

TESTS = Path(__file__).resolve().parents[1]

# Training in a fresh process, with every optimizer the configs can pick (sparse and dense
# tables, fused dense updates), a checkpoint each epoch and a run resumed from one.
TRAIN_WITHOUT_COMPILER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, {tests!r})
    from fixtures_train import config_dict, run_config, write_tables

    from widedeep.training.loop import train

    folder = Path(sys.argv[1])
    train_path, test_path = write_tables(folder / "data")
    base = config_dict(train_path, test_path)
    settings = [
        [],
        ["train.wide_optimizer.name=adam", "train.deep_optimizer.name=adam"],
        ["train.wide_optimizer.name=sgd", "train.deep_optimizer.name=sgd"],
        ["model.embed_reg=0.000001", "model.w_reg=0.000001"],
    ]
    for i, overrides in enumerate(settings):
        config = run_config(base, ["train.epochs=1", *overrides])
        train(config, folder / f"run-{{i}}")
    config = run_config(base, ["train.epochs=2"])
    train(config, folder / "run-0", resume=True)
    print("compiler loaded:", "torch._dynamo" in sys.modules)
    """
)


def test_training_loads_no_compiler(tmp_path: Path) -> None:
    script = TRAIN_WITHOUT_COMPILER.format(tests=str(TESTS))
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiler loaded: False" in done.stdout, done.stdout[-2000:]


Builder = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

TWINS: list[tuple[str, Builder, Builder]] = [
    ("adam", lambda p: Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (
        "adam-fused",
        lambda p: Adam(p, lr=0.01, fused=True),
        lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
    ),
    ("adagrad", lambda p: Adagrad(p, lr=0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    (
        "adagrad-fused",
        lambda p: Adagrad(p, lr=0.1, fused=True),
        lambda p: torch.optim.Adagrad(p, lr=0.1, fused=True),
    ),
    ("sgd", lambda p: SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (
        "sgd-momentum",
        lambda p: SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    ),
]


def _twin_params() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    return ours, theirs


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    weight, bias = params
    x = torch.linspace(-1.0, 1.0, 15).view(3, 5) * (step + 1)
    return ((x @ weight + bias) ** 2).sum()


@pytest.fixture(params=[False, True], ids=["no-compiler", "compiler-loaded"])
def compiler_loaded(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both paths: torch's functions called directly, and through torch's wrappers."""
    loaded: bool = request.param
    monkeypatch.setattr(eager, "_compiler_loaded", lambda: loaded)
    return loaded


@pytest.mark.parametrize(("name", "make_ours", "make_theirs"), TWINS, ids=[t[0] for t in TWINS])
def test_updates_and_state_equal_torchs(
    compiler_loaded: bool, name: str, make_ours: Builder, make_theirs: Builder
) -> None:
    ours_params, theirs_params = _twin_params()
    ours, theirs = make_ours(ours_params), make_theirs(theirs_params)
    assert type(ours).__name__ == type(theirs).__name__  # checkpoints record the name
    for step in range(4):
        for optimizer, params in ((ours, ours_params), (theirs, theirs_params)):
            optimizer.zero_grad(set_to_none=True)
            _loss(params, step).backward()
            optimizer.step()
    for mine, reference in zip(ours_params, theirs_params, strict=True):
        assert torch.equal(mine, reference)
    assert _same_state(ours.state_dict(), theirs.state_dict())

    # torch's state loads into ours and the next steps still agree
    again_params = [p.detach().clone().requires_grad_(True) for p in theirs_params]
    again = make_ours(again_params)
    again.load_state_dict(copy.deepcopy(theirs.state_dict()))  # not sharing its tensors
    for optimizer, params in ((again, again_params), (theirs, theirs_params)):
        optimizer.zero_grad()
        _loss(params, 9).backward()
        optimizer.step()
    for mine, reference in zip(again_params, theirs_params, strict=True):
        assert torch.equal(mine, reference)
    assert all(p.grad is not None for p in again_params)
    again.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in again_params)


def _same_state(ours: Any, theirs: Any) -> bool:
    """Whether two state dicts hold the same entries, tensors equal in value and dtype."""
    if isinstance(ours, torch.Tensor) or isinstance(theirs, torch.Tensor):
        return (
            isinstance(ours, torch.Tensor)
            and isinstance(theirs, torch.Tensor)
            and ours.dtype == theirs.dtype
            and torch.equal(ours, theirs)
        )
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(_same_state(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list | tuple) and isinstance(theirs, list | tuple):
        return len(ours) == len(theirs) and all(
            _same_state(a, b) for a, b in zip(ours, theirs, strict=True)
        )
    return bool(ours == theirs)


def test_hooks_run_once_a_step_after_torchs_class_was_hooked(compiler_loaded: bool) -> None:
    """torch puts its profiling hook on a class's ``step`` when the first optimizer of the
    class is made; ours calls torch's step without it, so hooks still run once."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch.optim.Adam.step now hooked
    params, _ = _twin_params()
    ours = Adam(params, lr=0.01)
    calls: list[str] = []
    ours.register_step_pre_hook(lambda *args: calls.append("pre"))
    ours.register_step_post_hook(lambda *args: calls.append("post"))
    _loss(params, 0).backward()
    ours.step()
    assert calls == ["pre", "post"]


def test_step_returns_the_closures_loss(compiler_loaded: bool) -> None:
    params, _ = _twin_params()
    ours = SGD(params, lr=0.1)

    def closure() -> torch.Tensor:
        ours.zero_grad()
        loss = _loss(params, 0)
        loss.backward()
        return loss

    before = _loss(params, 0).item()
    loss = ours.step(closure)
    assert loss is not None and loss.item() == pytest.approx(before)
    assert _loss(params, 0).item() < before


@pytest.mark.parametrize("make", [Adam, torch.optim.Adam], ids=["ours", "torch"])
def test_a_differentiable_step_records_its_graph(compiler_loaded: bool, make: type) -> None:
    """``differentiable=True`` steps with gradients on (the update joins the graph), as
    torch's wrapper sets it; otherwise the update is recorded nowhere."""
    for differentiable in (True, False):
        leaf = torch.randn(3, requires_grad=True)
        param = leaf.clone() if differentiable else leaf  # only then may it be a non-leaf
        before = param.grad_fn
        optimizer = make([param], lr=0.1, differentiable=differentiable)
        param.grad = torch.ones(3)
        optimizer.step()
        assert (param.grad_fn is not before) == differentiable


def test_zero_grad_keeps_zeroed_gradients_when_asked(compiler_loaded: bool) -> None:
    params, _ = _twin_params()
    ours = Adagrad(params, lr=0.1)
    _loss(params, 0).backward()
    ours.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)


def test_under_torch_compile_it_traces_as_torchs_does() -> None:
    """With the compiler loaded, ours goes through torch's wrappers: a compiled training
    step breaks its graph and calls where torch's own Adam makes it do so."""
    dynamo = pytest.importorskip("torch._dynamo")
    from torch._dynamo.utils import counters

    seen = []
    for make in (Adam, torch.optim.Adam):
        dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 1)
        optimizer = make(layer.parameters(), lr=0.01, foreach=True)
        x = torch.randn(8, 4)

        def train_step(
            layer: torch.nn.Module = layer, optimizer: Any = optimizer, x: torch.Tensor = x
        ) -> None:
            optimizer.zero_grad()
            layer(x).pow(2).mean().backward()
            optimizer.step()

        compiled = torch.compile(train_step, backend="eager")
        for _ in range(3):
            compiled()
        weights = [p.detach().clone() for p in layer.parameters()]
        seen.append((dict(counters["stats"]), len(counters["graph_break"]), weights))
    dynamo.reset()
    (ours_stats, ours_breaks, ours_weights), (stats, breaks, weights) = seen
    assert ours_breaks == breaks > 0
    assert ours_stats == stats
    assert all(torch.equal(a, b) for a, b in zip(ours_weights, weights, strict=True))
