"""Optimizers written for widedeep: FTRL-Proximal for the wide part."""

from widedeep.optim.ftrl import FTRL

__all__ = ["FTRL"]
