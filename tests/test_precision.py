"""The precision names shared by training and scoring."""

from __future__ import annotations

import pytest
import torch

from widedeep.errors import ConfigError
from widedeep.precision import check_precision, mixed_precision, resolve_precision


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16"), (False, False, "fp32")],
)
def test_auto_precision_is_bf16_only_on_a_cpu_that_multiplies_bf16_natively(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, expected: str
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(cpu, explicit) == resolve_precision(cuda, explicit) == explicit
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert resolve_precision(cpu, "auto") == expected
    assert resolve_precision(cuda, "auto") == "fp32"


def test_auto_precision_is_fp32_on_a_torch_without_the_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert resolve_precision(torch.device("cpu"), "auto") == "fp32"


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
