"""torch's optimizers, without loading ``torch._dynamo`` in a process that compiles nothing.

torch wraps ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` in ``torch._disable_dynamo``, and the ``step`` of ``Adam``, ``Adagrad``
and ``SGD`` in a wrapper that calls ``torch._dynamo.graph_break()``. Either wrapper imports
``torch._dynamo`` on its first call, which took 1.1-1.3 s and 71 MB of RSS in a bare script
on the 2-core CPU (3 runs), the first time an optimizer was made in a process. Outside a
compiler's trace the wrappers do nothing, and no trace can run before ``torch._dynamo`` is
loaded. So while it is not loaded, these classes call the functions inside torch's wrappers
(what ``functools.wraps`` names ``__wrapped__``); once it is (a ``torch.compile`` anywhere in
the process), they call the wrappers, as torch's own classes do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


def _compiler_loaded() -> bool:
    """Whether ``torch._dynamo`` is loaded, so a trace may be running."""
    return "torch._dynamo" in sys.modules


def _call(wrapped: Callable[..., Any], optimizer: Optimizer, *args: Any) -> Any:
    """``wrapped(*args)`` (a bound torch method), or the function its wrapper calls where
    no compiler is loaded."""
    inner = getattr(wrapped, "__wrapped__", None)
    if inner is None or _compiler_loaded():
        return wrapped(*args)
    return inner(optimizer, *args)


class EagerOptimizer(Optimizer):
    """``torch.optim.Optimizer`` whose bookkeeping methods load no compiler (module
    docstring); the base of widedeep's optimizers."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``."""
        _call(super().add_param_group, self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``torch.optim.Optimizer.zero_grad``."""
        _call(super().zero_grad, self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """As ``torch.optim.Optimizer.state_dict``."""
        state: dict[str, Any] = _call(super().state_dict, self)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``."""
        _call(super().load_state_dict, self, state_dict)


def _torch_step(kind: type[Optimizer]) -> Callable[..., Any]:
    """``kind``'s own ``step``, less the profiling hook that torch puts around a class's
    ``step`` when the first optimizer of that class is made (ours get their own hook)."""
    step = kind.__dict__["step"]
    unhooked: Callable[..., Any] = step.__wrapped__ if getattr(step, "hooked", False) else step
    return unhooked


def _eager_step(optimizer: Optimizer, kind: type[Optimizer], closure: Any) -> Any:
    """One ``kind.step`` of ``optimizer``: torch's step function, under the grad mode its
    wrapper sets, where no compiler is loaded; else through the wrapper."""
    step = _torch_step(kind)
    inner = getattr(step, "__wrapped__", None)
    if inner is None or _compiler_loaded():
        return step(optimizer, closure)
    with torch.set_grad_enabled(optimizer.defaults.get("differentiable", False)):
        return inner(optimizer, closure)


class Adam(EagerOptimizer, torch.optim.Adam):
    """``torch.optim.Adam``, the same update and state (and name, which checkpoints record)."""

    def step(self, closure: Any = None) -> Any:
        """As ``torch.optim.Adam.step``."""
        return _eager_step(self, torch.optim.Adam, closure)


class Adagrad(EagerOptimizer, torch.optim.Adagrad):
    """``torch.optim.Adagrad``, the same update, state and name."""

    def step(self, closure: Any = None) -> Any:
        """As ``torch.optim.Adagrad.step``."""
        return _eager_step(self, torch.optim.Adagrad, closure)


class SGD(EagerOptimizer, torch.optim.SGD):
    """``torch.optim.SGD``, the same update, state and name."""

    def step(self, closure: Any = None) -> Any:
        """As ``torch.optim.SGD.step``."""
        return _eager_step(self, torch.optim.SGD, closure)
