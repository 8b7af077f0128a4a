"""The precision names shared by training and scoring."""

from __future__ import annotations

import pytest
import torch

from widedeep.errors import ConfigError
from widedeep.precision import check_precision, mixed_precision, resolve_precision


def test_auto_precision_is_bf16_only_on_a_cpu_with_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(cpu, explicit) == resolve_precision(cuda, explicit) == explicit
    assert resolve_precision(cuda, "auto") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision(cpu, "auto") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision(cpu, "auto") == "fp32"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert resolve_precision(cpu, "auto") == "fp32"


def test_an_unknown_precision_is_an_error_naming_the_setting() -> None:
    with pytest.raises(
        ConfigError, match=r"--precision must be one of \['auto', 'fp32', 'bf16'\], got 'fp16'"
    ):
        check_precision("fp16", "--precision")
    with pytest.raises(ConfigError, match="precision must be one of"):
        mixed_precision(torch.device("cpu"), "half")


def test_bf16_runs_matrix_products_in_bfloat16_and_fp32_does_not() -> None:
    a = torch.randn(4, 8)
    with mixed_precision(torch.device("cpu"), "bf16"):
        assert (a @ a.T).dtype == torch.bfloat16
    with mixed_precision(torch.device("cpu"), "fp32"):
        assert (a @ a.T).dtype == torch.float32
