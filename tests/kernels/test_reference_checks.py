"""Bad inputs raise ValueError naming the argument and the expected shape; dispatch picks and reports."""

import logging
from collections.abc import Callable

import pytest
import torch

from qla_agent.kernels import dispatch
from qla_agent.kernels import causal_conv1d, causal_conv1d_update, gdn_decode, gdn_prefill

B, T, HK, HV, K, V = 1, 10, 2, 4, 8, 16


def _prefill(**changes: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        q=torch.randn(B, T, HK, K), k=torch.randn(B, T, HK, K), v=torch.randn(B, T, HV, V),
        g=-torch.rand(B, T, HV), beta=torch.rand(B, T, HV),
    )
    args.update(changes)
    return args


def _decode(**changes: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        q=torch.randn(3, HK, K), k=torch.randn(3, HK, K), v=torch.randn(3, HV, V), g=-torch.rand(3, HV),
        beta=torch.rand(3, HV), state=torch.zeros(5, HV, K, V), slots=torch.tensor([0, 4, 2]),
    )
    args.update(changes)
    return args


def _both(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x])


def _bad(call: Callable[[], object], match: str, name: str) -> object:
    return pytest.param(call, match, id=name)


P, D = _prefill, _decode
SHAPE_N = r"\[N, Hv, K, V\]"
BAD_CALLS = [
    _bad(lambda: gdn_prefill(**P(k=torch.randn(B, T, HK, K + 1))), r"k must have shape \[B, T, Hk, K\]", "k_shape"),
    _bad(lambda: gdn_prefill(**P(q=torch.randn(T, HK, K))), r"q must have shape \[B, T, Hk, K\]", "q_ndim"),
    _bad(lambda: gdn_prefill(**{n: x[:, :0] for n, x in P().items()}),
         r"q must have shape \[B, T, Hk, K\] with B >= 1 and T >= 1", "empty_T"),
    _bad(lambda: gdn_prefill(**P(v=torch.randn(B, T + 1, HV, V))),
         r"v must have shape \[B, T, Hv, V\] = \[1, 10, Hv, V\]", "v_T"),
    _bad(lambda: gdn_prefill(**P(v=torch.randn(B, T, 3, V), g=torch.zeros(B, T, 3), beta=torch.zeros(B, T, 3))),
         r"v must have shape \[B, T, Hv, V\] with Hv a multiple of Hk=2", "Hv_not_multiple"),
    _bad(lambda: gdn_prefill(**P(g=torch.zeros(B, T, HK))), r"g must have shape \[B, T, Hv\] = \[1, 10, 4\]", "g"),
    _bad(lambda: gdn_prefill(**P(beta=torch.zeros(B, T))), r"beta must have shape \[B, T, Hv\]", "beta"),
    _bad(lambda: gdn_prefill(**P(initial_state=torch.zeros(B, HV, V, K))),
         rf"initial_state must have shape {SHAPE_N} = \[1, 4, 8, 16\]", "initial_state_transposed"),
    _bad(lambda: gdn_prefill(**P(initial_state=torch.zeros(1, HV, K, V)), cu_seqlens=torch.tensor([0, 4, 10])),
         rf"initial_state must have shape {SHAPE_N} = \[2, 4, 8, 16\]", "initial_state_varlen"),
    _bad(lambda: gdn_prefill(**P(), cu_seqlens=torch.tensor([0, 6, 6, 10])),
         r"cu_seqlens must be strictly increasing", "cu_not_increasing"),
    _bad(lambda: gdn_prefill(**P(), cu_seqlens=torch.tensor([1, 10])), r"cu_seqlens must start at 0", "cu_start"),
    _bad(lambda: gdn_prefill(**P(), cu_seqlens=torch.tensor([0, 9])), r"cu_seqlens must end at T=10", "cu_end"),
    _bad(lambda: gdn_prefill(**P(), cu_seqlens=torch.tensor([0.0, 10.0])), r"cu_seqlens must be an integer", "cu_float"),
    _bad(lambda: gdn_prefill(**{n: _both(x) for n, x in P().items()}, cu_seqlens=torch.tensor([0, 10])),
         r"batch size B must be 1", "cu_with_B2"),
    _bad(lambda: gdn_prefill(**P(), A_log=torch.zeros(HV)), r"A_log and dt_bias", "A_log_alone"),
    _bad(lambda: gdn_prefill(**P(), dt_bias=torch.zeros(HV)), r"A_log and dt_bias", "dt_bias_alone"),
    _bad(lambda: gdn_prefill(**P(), A_log=torch.zeros(HV, dtype=torch.int64), dt_bias=torch.zeros(HV)),
         r"A_log must be a floating", "int_A_log"),
    _bad(lambda: gdn_prefill(**P(initial_state=torch.zeros(B, HV, K, V, device="meta"))),
         r"initial_state is on meta but the inputs are on cpu", "initial_state_device"),
    _bad(lambda: gdn_prefill(**P(q=torch.randn(B, T, 0, K), k=torch.randn(B, T, 0, K))),
         r"Hv a multiple of Hk=0", "Hk_zero"),
    _bad(lambda: gdn_prefill(**P(), A_log=torch.zeros(HV), dt_bias=torch.zeros(HK)),
         r"dt_bias must have shape \[Hv\] = \[4\]", "dt_bias_shape"),
    _bad(lambda: gdn_prefill(**P(v=torch.zeros(B, T, HV, V, dtype=torch.int64))), r"v must be a floating", "int_v"),
    _bad(lambda: gdn_decode(**D(state=torch.zeros(5, HV, V, K))),
         r"state must have shape \[S, Hv, K, V\] = \[S, 4, 8, 16\]", "decode_state"),
    _bad(lambda: gdn_decode(**D(v=torch.zeros(2, HV, V))), r"v must have shape \[N, Hv, V\] = \[3, Hv, V\]", "decode_v"),
    _bad(lambda: gdn_decode(**D(slots=torch.tensor([0, 1]))), r"slots must have shape \[N\] = \[3\]", "slots_len"),
    _bad(lambda: gdn_decode(**D(slots=torch.tensor([0, 5, 1]))), r"slots must index rows .*\[0, 5\)", "slots_range"),
    _bad(lambda: gdn_decode(**D(slots=torch.tensor([1, 1, 2]))), r"slots must be distinct", "slots_repeat"),
    _bad(lambda: causal_conv1d(torch.zeros(1, 5, 6), torch.zeros(6, 1, 4)), r"weight must have shape \[C, W\]", "conv_w"),
    _bad(lambda: causal_conv1d(torch.zeros(1, 0, 6), torch.zeros(6, 4)), r"x must have shape \[B, T, C\] with", "conv_T0"),
    _bad(lambda: causal_conv1d(torch.zeros(1, 5, 6), torch.zeros(6, 4), conv_state=torch.zeros(1, 6, 4)),
         r"conv_state must have shape \[N, C, W-1\] = \[1, 6, 3\]", "conv_state"),
    _bad(lambda: causal_conv1d(torch.zeros(1, 5, 6), torch.zeros(6, 4), cu_seqlens=torch.tensor([0, 3, 2, 5])),
         r"cu_seqlens must be strictly increasing", "conv_cu"),
    _bad(lambda: causal_conv1d_update(torch.zeros(2, 6), torch.zeros(6, 4), torch.zeros(4, 6, 4)),
         r"conv_state must have shape \[S, C, W-1\] = \[S, 6, 3\]", "conv_update_state"),
    _bad(lambda: causal_conv1d_update(torch.zeros(3, 6), torch.zeros(6, 4), torch.zeros(2, 6, 3)),
         r"conv_state pool has 2 rows", "conv_update_pool_small"),
]


@pytest.mark.parametrize("call,match", BAD_CALLS)
def test_bad_inputs_raise_value_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_prefill_checks_return_the_sizes() -> None:
    """Dense and packed calls: the sizes, N from B or from cu_seqlens."""
    from qla_agent.kernels import checks

    x = _prefill(initial_state=torch.zeros(B, HV, K, V), A_log=torch.zeros(HV), dt_bias=torch.zeros(HV))
    dense = checks.check_gdn_prefill(**x, cu_seqlens=None)
    x["initial_state"] = torch.zeros(2, HV, K, V)
    packed = checks.check_gdn_prefill(**x, cu_seqlens=torch.tensor([0, 4, 10]))
    assert dense == checks.GdnDims(B, T, HK, HV, K, V, num_seqs=1)
    assert packed == checks.GdnDims(B, T, HK, HV, K, V, num_seqs=2)


def test_impl_argument_and_environment(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    args = _prefill()
    ref_o, ref_s = gdn_prefill(**args, impl="reference")
    monkeypatch.setattr(dispatch, "_logged", set())
    with caplog.at_level(logging.DEBUG, logger="qla_agent.kernels.dispatch"):
        out_o, out_s = gdn_prefill(**args, impl="auto")
        gdn_prefill(**args, impl="auto")
    assert torch.equal(ref_o, out_o) and torch.equal(ref_s, out_s)
    fallbacks = [r.getMessage() for r in caplog.records if "torch reference" in r.getMessage()]
    assert fallbacks == ["gdn_prefill: using the torch reference (inputs are on cpu, tilelang kernels need CUDA)"]
    with pytest.raises(ValueError, match=r"impl='tilelang' cannot run gdn_prefill: inputs are on cpu"):
        gdn_prefill(**args, impl="tilelang")
    with pytest.raises(ValueError, match=r"impl must be one of"):
        gdn_prefill(**args, impl="triton")
    monkeypatch.setenv("QLA_KERNEL_IMPL", "reference")
    out_o, _ = gdn_prefill(**args, impl="tilelang")
    assert torch.equal(ref_o, out_o)
    monkeypatch.setenv("QLA_KERNEL_IMPL", "tilelang")
    with pytest.raises(ValueError, match=r"impl='tilelang' cannot run"):
        gdn_prefill(**args)
    monkeypatch.setenv("QLA_KERNEL_IMPL", "fast")
    with pytest.raises(ValueError, match=r"QLA_KERNEL_IMPL must be one of"):
        gdn_prefill(**args)
