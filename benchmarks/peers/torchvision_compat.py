"""Let PyPI's torchvision import beside the CPU build of torch 2.13.0.

pytorch-widedeep imports torchvision at import time (for its image components). With torch pinned
to the CPU wheel, pip takes torchvision 0.28.0 from PyPI, a CUDA build whose compiled ops need
``libc10_cuda.so``; they fail to load, and ``import torchvision`` then stops with
``RuntimeError: operator torchvision::nms does not exist`` while registering fake kernels for
``nms`` and ``qnms``. Defining those two schemas first lets the pure-Python part import. No
torchvision op runs in a tabular benchmark; calling one would fail with "no kernel".
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def torchvision_ops_load() -> bool:
    """Whether torchvision's compiled ops load here (tried the way torchvision loads them)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # nothing to fix: the import will fail plainly
    library = next(Path(spec.origin).parent.glob("_C*.so"), None)
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))
    except OSError:
        return False
    return True


def allow_torchvision_without_ops() -> bool:
    """Define the two op schemas torchvision needs at import when its ops cannot load.

    Returns whether the stand-in was needed. Call it before anything imports torchvision.
    """
    if torchvision_ops_load():
        return False
    for name in ("nms", "qnms"):
        torch.library.define(f"torchvision::{name}", NMS_SCHEMA)
    return True
