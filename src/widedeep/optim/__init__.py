"""Optimizers written for widedeep: FTRL-Proximal for the wide part, row-sparse (lazy)
Adam and AdaGrad for embedding tables."""

from widedeep.optim.ftrl import FTRL
from widedeep.optim.lazy import LazyAdagrad, LazyAdam

__all__ = ["FTRL", "LazyAdagrad", "LazyAdam"]
