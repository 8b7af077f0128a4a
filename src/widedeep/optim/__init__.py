"""Optimizers written for widedeep: FTRL-Proximal for the wide part, row-sparse (lazy)
Adam and AdaGrad for embedding tables; all, and torch's Adam, Adagrad and SGD as
``widedeep.optim.eager`` gives them, load no compiler in a process that compiles nothing."""

from widedeep.optim.ftrl import FTRL
from widedeep.optim.lazy import LazyAdagrad, LazyAdam

__all__ = ["FTRL", "LazyAdagrad", "LazyAdam"]
