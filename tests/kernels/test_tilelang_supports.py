"""The TileLang backend says why it cannot run a call (and `auto` then falls back to the reference).

The reason functions look at shapes, dtypes and layouts only, so meta tensors stand in for CUDA ones.
"""

import pytest
import torch

from tests.kernels.decode_inputs import DecodeCase, decode_inputs

pytest.importorskip("tilelang")

META = torch.device("meta")


def _decode(**changes: object) -> dict[str, object]:
    x: dict[str, object] = decode_inputs(DecodeCase(N=3, S=5, Hk=2, Hv=4, dtype=torch.bfloat16), seed=0, device=META)
    x.update(changes)
    return x


def _conv(**changes: object) -> dict[str, object]:
    x: dict[str, object] = dict(
        x=torch.empty(1, 10, 256, device=META, dtype=torch.bfloat16),
        weight=torch.empty(256, 4, device=META, dtype=torch.bfloat16),
        conv_state=torch.empty(1, 256, 3, device=META, dtype=torch.bfloat16),
    )
    x.update(changes)
    return x


POOL = (5, 4, 128, 128)
DECODE_REFUSALS = [
    pytest.param(dict(state=torch.empty(POOL, device=META).transpose(2, 3)), "contiguous fp32 pool", id="pool_strided"),
    pytest.param(dict(state=torch.empty(POOL, device=META, dtype=torch.bfloat16)), "fp32 pool", id="pool_bf16"),
    pytest.param(dict(slots=torch.empty(3, device=META, dtype=torch.int16)), "slots dtype", id="slots_int16"),
    pytest.param(dict(v=torch.empty(3, 4, 128, device=META, dtype=torch.float16)), "q/k/v dtypes", id="mixed_dtypes"),
    pytest.param(dict(q=torch.empty(3, 2, 64, device=META, dtype=torch.bfloat16)), "head dims", id="K64"),
]


def test_supported_calls_have_no_reason() -> None:
    from qla_agent.kernels.tilelang import _conv_reason, _conv_update_reason, _decode_reason

    assert _decode_reason(**_decode()) is None
    assert _conv_reason(**_conv()) is None
    pool = torch.empty(4, 256, 3, device=META, dtype=torch.bfloat16)
    assert _conv_update_reason(torch.empty(2, 256, device=META, dtype=torch.bfloat16), _conv()["weight"], pool) is None


@pytest.mark.parametrize("changes,reason", DECODE_REFUSALS)
def test_decode_refusals(changes: dict, reason: str) -> None:
    from qla_agent.kernels.tilelang import _decode_reason

    assert reason in (_decode_reason(**_decode(**changes)) or "")


def test_conv_refusals() -> None:
    from qla_agent.kernels.tilelang import _conv_reason, _conv_update_reason

    wide = torch.empty(256, 9, device=META, dtype=torch.bfloat16)
    assert "W=9" in _conv_reason(**_conv(weight=wide, conv_state=None))
    assert "dtypes" in _conv_reason(**_conv(x=torch.empty(1, 10, 256, device=META, dtype=torch.float64)))
    huge = torch.empty(1, 2**31 // 256 + 1, 256, device=META, dtype=torch.bfloat16)
    assert "int32" in _conv_reason(**_conv(x=huge))
    strided_pool = torch.empty(4, 3, 256, device=META, dtype=torch.bfloat16).transpose(1, 2)
    x = torch.empty(2, 256, device=META, dtype=torch.bfloat16)
    assert "not contiguous" in _conv_update_reason(x, _conv()["weight"], strided_pool)
