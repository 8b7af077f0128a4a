"""Row-sparse optimizers for embedding tables: a step touches only the rows of the batch.

torch's own ``SparseAdam`` goes through ``sparse_mask`` on the whole state tensors, which on
CPU costs time in proportion to the table, not the batch (measured here: ~280 ms a step for
26 Criteo-sized tables). These optimizers gather the touched rows of each state tensor with
``index_select``, update them, and write them back with ``index_copy_``: O(rows in the batch).

Dense gradients (a bias, a table trained with dense gradients) get the ordinary update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from widedeep import kernels
from widedeep.errors import ConfigError
from widedeep.optim.eager import EagerOptimizer
from widedeep.optim.rows import RowSums


def _run(closure: Callable[[], float] | None) -> float | None:
    """The loss from an optimizer closure (re-evaluated with gradients), if one is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class LazyAdam(EagerOptimizer):
    """Adam whose moments and weights change only on the rows a batch touches.

    As TensorFlow's LazyAdam: an untouched row keeps its moments (they are not decayed
    while its id is absent), which is what makes the step cost independent of table size.
    The bias correction uses the optimizer's step count.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not lr > 0:
            raise ConfigError(f"LazyAdam: expected lr > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(f"LazyAdam: expected betas in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self._row_sums = RowSums()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = _run(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                # torch.optim.Adam's formula: lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
                size = group["lr"] / (1 - beta1**step)
                root_bc2 = math.sqrt(1 - beta2**step)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if param.grad.is_sparse:
                    rows, grad = self._row_sums(param, param.grad)
                    if kernels.usable(param, exp_avg, exp_avg_sq, grad):
                        betas = (beta1, beta2)
                        eps = group["eps"]
                        kernels.adam_rows_(
                            param, exp_avg, exp_avg_sq, rows, grad, size, betas, root_bc2, eps
                        )
                        continue
                    m = exp_avg.index_select(0, rows).mul_(beta1).add_(grad, alpha=1 - beta1)
                    v = exp_avg_sq.index_select(0, rows).mul_(beta2)
                    v.addcmul_(grad, grad, value=1 - beta2)
                    exp_avg.index_copy_(0, rows, m)
                    exp_avg_sq.index_copy_(0, rows, v)
                    denom = v.sqrt_().div_(root_bc2).add_(group["eps"])
                    # rows are distinct: gather, update, write back (index_add_ handles
                    # duplicates one index at a time and was 2x slower here)
                    weights = param.index_select(0, rows).add_(m.div_(denom), alpha=-size)
                    param.index_copy_(0, rows, weights)
                else:
                    grad = param.grad
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = exp_avg_sq.sqrt().div_(root_bc2).add_(group["eps"])
                    param.addcdiv_(exp_avg, denom, value=-size)
        return loss


class LazyAdagrad(EagerOptimizer):
    """AdaGrad (the paper's deep-part optimizer) updating only the touched rows."""

    def __init__(
        self, params: Iterable[Tensor], lr: float = 0.01, eps: float = 1e-10, initial: float = 0.0
    ) -> None:
        if not lr > 0:
            raise ConfigError(f"LazyAdagrad: expected lr > 0, got {lr}")
        super().__init__(params, {"lr": lr, "eps": eps, "initial": initial})
        self._row_sums = RowSums()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = _run(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["sum"] = torch.full_like(param, group["initial"])
                total = state["sum"]
                if param.grad.is_sparse:
                    rows, grad = self._row_sums(param, param.grad)
                    if kernels.usable(param, total, grad):
                        kernels.adagrad_rows_(param, total, rows, grad, group["lr"], group["eps"])
                        continue
                    s = total.index_select(0, rows).addcmul_(grad, grad)
                    total.index_copy_(0, rows, s)
                    update = grad / s.sqrt_().add_(group["eps"])
                    weights = param.index_select(0, rows).add_(update, alpha=-group["lr"])
                    param.index_copy_(0, rows, weights)
                else:
                    grad = param.grad
                    total.addcmul_(grad, grad)
                    param.addcdiv_(grad, total.sqrt().add_(group["eps"]), value=-group["lr"])
        return loss
