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

import functools
import sys
from collections.abc import Callable
from types import CodeType
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as torch_optimizer


def _compiler_loaded() -> bool:
    """Whether ``torch._dynamo`` is loaded, so a trace may be running."""
    return "torch._dynamo" in sys.modules


def _wrapper_code(make: Callable[[Callable[..., Any]], Any] | None) -> CodeType | None:
    """The code of the wrappers ``make`` puts around a function (None if this torch has no
    such decorator): wrapping loads nothing, only a wrapper's first call does."""
    if make is None:
        return None
    try:
        code: CodeType = make(lambda *args: None).__code__
    except (AttributeError, TypeError):
        return None
    return code


# The wrappers known to do nothing outside a trace. Where a torch wraps these methods in
# anything else, it is always called.
_DISABLE_DYNAMO = _wrapper_code(getattr(torch, "_disable_dynamo", None))
_GRAD_MODE = _wrapper_code(getattr(torch_optimizer, "_use_grad_for_differentiable", None))


def _inside(wrapper: Callable[..., Any], known: CodeType | None) -> Callable[..., Any] | None:
    """The function ``wrapper`` calls, if ``wrapper`` is one of the ``known`` wrappers and
    no compiler is loaded; else None (call ``wrapper`` itself)."""
    if known is None or getattr(wrapper, "__code__", None) is not known or _compiler_loaded():
        return None
    return getattr(wrapper, "__wrapped__", None)


def _call(wrapped: Callable[..., Any], optimizer: Optimizer, *args: Any) -> Any:
    """``wrapped(*args)`` (a bound torch method), or the function inside its wrapper."""
    inner = _inside(wrapped, _DISABLE_DYNAMO)
    return wrapped(*args) if inner is None else inner(optimizer, *args)


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


@functools.cache
def _torch_step(kind: type) -> Callable[..., Any]:
    """``kind``'s ``step``, less the profiling hook that torch puts around a class's
    ``step`` when the first optimizer of that class is made (ours get their own hook). The
    same function whether or not the hook is there yet: looked up once per class."""
    step = next(k.__dict__["step"] for k in kind.__mro__ if "step" in k.__dict__)
    unhooked: Callable[..., Any] = (
        getattr(step, "__wrapped__", step) if getattr(step, "hooked", False) else step
    )
    return unhooked


def _eager_step(optimizer: Optimizer, kind: type, closure: Any) -> Any:
    """One ``kind.step`` of ``optimizer``: the function inside torch's wrapper, under the
    grad mode the wrapper sets, where no compiler is loaded; else through the wrapper."""
    step = _torch_step(kind)
    inner = _inside(step, _GRAD_MODE)
    if inner is None:
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
