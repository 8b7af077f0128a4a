"""FTRL-Proximal (McMahan et al., KDD 2013), the optimizer of the wide (linear) part.

It keeps most wide weights exactly 0 (L1), gives each coordinate its own learning rate, and with a
sparse gradient (``nn.Embedding(sparse=True)``) reads and writes only the rows in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from widedeep import kernels
from widedeep.errors import ConfigError
from widedeep.optim.eager import EagerOptimizer
from widedeep.optim.rows import RowSums


class FTRL(EagerOptimizer):
    """FTRL-Proximal with L1 and L2 regularization (McMahan et al., KDD 2013).

    Per coordinate, with gradient ``g``, state ``z`` and ``n`` (zeros at first) and
    ``alpha = lr``::

        sigma = (sqrt(n + g^2) - sqrt(n)) / alpha
        z    <- z + g - sigma * w
        n    <- n + g^2
        w     = 0 if |z| <= l1 else -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)

    Why: the L1 term keeps most weights exactly 0, every coordinate gets its own learning rate
    ``alpha / (beta + sqrt(n))``, and a sparse gradient (``nn.Embedding(sparse=True)``) updates
    only the rows it touches. Dense gradients work too.

    Start the weights at 0 (for example ``nn.init.zeros_``): ``w`` is re-derived from ``z`` and
    ``n`` at every update, so an initial value survives only until its coordinate's first
    update (a dense gradient updates every coordinate; a sparse one only the touched rows).

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: ``alpha``, the learning-rate scale; > 0.
        beta: smoothing of the per-coordinate rate for coordinates seen little; >= 0.
        l1: L1 strength; a weight is exactly 0 while ``|z| <= l1``; >= 0.
        l2: L2 strength; >= 0.

    Example::

        wide = nn.Embedding(num_ids, 1, sparse=True)
        nn.init.zeros_(wide.weight)
        opt = FTRL(wide.parameters(), lr=0.1, l1=1.0)
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        if not lr > 0.0:
            raise ConfigError(f"FTRL: expected lr > 0, got lr={lr!r}.")
        if not beta >= 0.0:
            raise ConfigError(f"FTRL: expected beta >= 0, got beta={beta!r}.")
        if not l1 >= 0.0:
            raise ConfigError(f"FTRL: expected l1 >= 0, got l1={l1!r}.")
        if not l2 >= 0.0:
            raise ConfigError(f"FTRL: expected l2 >= 0, got l2={l2!r}.")
        super().__init__(params, {"lr": lr, "beta": beta, "l1": l1, "l2": l2})
        self._row_sums = RowSums()

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every parameter that has a gradient; return the closure's loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, l1, l2 = group["lr"], group["beta"], group["l1"], group["l2"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["z"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["n"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                z, n = state["z"], state["n"]
                grad = param.grad
                if grad.is_sparse and grad.sparse_dim() != 1:
                    grad = grad.to_dense()  # not an embedding's row-sparse gradient
                if grad.is_sparse:
                    # Duplicate ids summed; then each touched row is distinct, so
                    # gather → update → write back gives the dense update on those rows.
                    rows, values = self._row_sums(param, grad)
                    if kernels.usable(param, z, n, values):
                        kernels.ftrl_rows_(param, z, n, rows, values, (lr, beta, l1, l2))
                        continue
                    new_w, new_z, new_n = _ftrl_update(
                        param.index_select(0, rows),
                        z.index_select(0, rows),
                        n.index_select(0, rows),
                        values,
                        lr, beta, l1, l2,
                    )  # fmt: skip
                    param.index_copy_(0, rows, new_w)
                    z.index_copy_(0, rows, new_z)
                    n.index_copy_(0, rows, new_n)
                else:
                    new_w, new_z, new_n = _ftrl_update(param, z, n, grad, lr, beta, l1, l2)
                    param.copy_(new_w)
                    z.copy_(new_z)
                    n.copy_(new_n)
        return loss


def _ftrl_update(
    w: Tensor, z: Tensor, n: Tensor, g: Tensor, lr: float, beta: float, l1: float, l2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One FTRL-Proximal step on matching tensors; returns the new ``(w, z, n)``."""
    new_n = n + g * g
    sqrt_new_n = new_n.sqrt()
    sigma = (sqrt_new_n - n.sqrt()) / lr
    new_z = z + g - sigma * w
    shrunk = new_z - new_z.sign() * l1
    new_w = -shrunk / ((beta + sqrt_new_n) / lr + l2)
    # Where |z| <= l1 the weight is exactly 0 (the other branch may be 0/0 there: never chosen).
    new_w = torch.where(new_z.abs() <= l1, torch.zeros_like(new_w), new_w)
    return new_w, new_z, new_n
