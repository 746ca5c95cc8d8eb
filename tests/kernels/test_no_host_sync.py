"""Validation and the TileLang launchers never read device values, so a call can be graph-captured.

Meta tensors stand in for CUDA tensors: they have shapes, dtypes and strides but no data, so any host
read (.tolist(), .item(), .cpu(), int(), bool() of a tensor) raises. The checks take their value
branch only for `device.type == "cpu"`, so a meta tensor follows exactly the path a CUDA tensor takes.
"""

import pytest
import torch

from qla_agent.kernels import checks
from tests.kernels.decode_inputs import DecodeCase, decode_inputs

META = torch.device("meta")
HK, HV, D = 2, 4, 128


def _prefill_args(total: int, num_seqs: int) -> dict[str, torch.Tensor]:
    """Packed-varlen prefill inputs on the meta device; cu_seqlens holds no readable values."""
    return dict(
        q=torch.empty(1, total, HK, D, device=META, dtype=torch.bfloat16),
        k=torch.empty(1, total, HK, D, device=META, dtype=torch.bfloat16),
        v=torch.empty(1, total, HV, D, device=META, dtype=torch.bfloat16),
        g=torch.empty(1, total, HV, device=META), beta=torch.empty(1, total, HV, device=META),
        initial_state=torch.empty(num_seqs, HV, D, D, device=META),
        cu_seqlens=torch.empty(num_seqs + 1, dtype=torch.int32, device=META),
        A_log=torch.empty(HV, device=META), dt_bias=torch.empty(HV, device=META),
    )


def test_meta_tensors_refuse_host_reads() -> None:
    """The premise: reading a meta tensor's values fails, so the tests below would catch a sync."""
    cu = torch.empty(4, dtype=torch.int32, device=META)
    with pytest.raises((NotImplementedError, RuntimeError)):
        checks.host_offsets(cu)
    with pytest.raises((NotImplementedError, RuntimeError)):
        bool((cu[1:] > cu[:-1]).all())


def test_checks_read_no_values_off_cpu() -> None:
    x = _prefill_args(total=700, num_seqs=3)
    dims = checks.check_gdn_prefill(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["initial_state"], cu_seqlens=x["cu_seqlens"],
        A_log=x["A_log"], dt_bias=x["dt_bias"],
    )
    assert dims.num_seqs == 3 and dims.seqlen == 700
    signature = checks.prefill_signature(
        x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], x["cu_seqlens"], x["A_log"], x["dt_bias"]
    )
    assert signature is not None, "device cu_seqlens must not keep a call from being remembered"
    conv_x = torch.empty(1, 700, 96, device=META)
    conv_state = torch.empty(3, 96, 3, device=META)
    weight = torch.empty(96, 4, device=META)
    assert checks.check_conv(conv_x, weight, conv_state=conv_state, cu_seqlens=x["cu_seqlens"]) == 3
    slots = torch.empty(5, dtype=torch.int64, device=META)
    checks.check_conv_update(torch.empty(5, 96, device=META), weight, torch.empty(8, 96, 3, device=META), slots)
    d = decode_inputs(DecodeCase(N=5, S=8, Hk=HK, Hv=HV), seed=0, device=META)
    dims = checks.check_gdn_decode(
        d["q"], d["k"], d["v"], d["g"], d["beta"], d["state"], slots, A_log=None, dt_bias=None
    )
    assert dims.num_seqs == 5


def test_cpu_cu_seqlens_with_meta_inputs_is_rejected() -> None:
    """cu_seqlens must live with the inputs (a CPU copy would make the kernels read host memory)."""
    x = _prefill_args(total=10, num_seqs=1)
    with pytest.raises(ValueError, match="cu_seqlens is on cpu but the inputs are on meta"):
        checks.check_gdn_prefill(
            x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["initial_state"],
            cu_seqlens=torch.tensor([0, 10]), A_log=None, dt_bias=None,
        )


def test_prefill_launcher_reads_no_values(fake_kernels) -> None:
    from qla_agent.kernels.tilelang import _prefill_reason
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _prefill_args(total=700, num_seqs=3)
    assert _prefill_reason(**x) is None
    o, ht = gdn_prefill(**x, use_qk_l2norm=True)
    assert o.shape == x["v"].shape and ht.shape == x["initial_state"].shape
    assert fake_kernels["chunk_scan"].calls[-1]["n_seqs"] == 3


def test_prefill_launcher_reads_no_values_in_the_runtime_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's slices (q, k, v of the conv output, a, b of the gate projection): the launcher's
    layout decision reads shapes, strides and data pointers only, and copies nothing."""
    from qla_agent.kernels.tilelang import build
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    calls = []
    monkeypatch.setattr(build, "compiled", lambda program, config, arch: lambda *args: calls.append(args))
    monkeypatch.setattr(build, "device_facts", lambda device: ("sm_90a", 132))
    x = _prefill_args(total=700, num_seqs=3)
    u = torch.empty(1, 700, (2 * HK + HV) * D, device=META, dtype=torch.bfloat16)
    ba = torch.empty(1, 700, 2 * HV, device=META, dtype=torch.bfloat16)
    q, k, v = u.split([HK * D, HK * D, HV * D], dim=-1)
    x.update(q=q.unflatten(-1, (HK, D)), k=k.unflatten(-1, (HK, D)), v=v.unflatten(-1, (HV, D)))
    x.update(g=ba[..., HV:], beta=ba[..., :HV])
    gdn_prefill(**x, use_qk_l2norm=True)
    (prep, scan) = calls
    assert prep[0].data_ptr() == x["q"].data_ptr() and prep[3].data_ptr() == x["beta"].data_ptr()
    assert scan[2].data_ptr() == x["v"].data_ptr()


def test_decode_launcher_reads_no_values(fake_kernels) -> None:
    from qla_agent.kernels.tilelang import _decode_reason
    from qla_agent.kernels.tilelang.decode import gdn_decode

    case = DecodeCase(N=5, S=8, Hk=HK, Hv=HV, raw_gates=True, l2norm=True, dtype=torch.bfloat16)
    x = decode_inputs(case, seed=1, device=META)
    assert not x["q"].is_contiguous(), "the launcher must see strided rows, as from a fused projection"
    assert _decode_reason(**x) is None
    o = gdn_decode(**x, use_qk_l2norm=True)
    assert o.shape == (5, HV, D) and o.dtype == torch.bfloat16
    call = fake_kernels["decode"].calls[-1]
    assert call["state"] is x["state"] and call["sq"] == x["q"].stride(0)


def test_conv_launchers_read_no_values(fake_kernels) -> None:
    from qla_agent.kernels.tilelang import _conv_reason, _conv_update_reason
    from qla_agent.kernels.tilelang.conv import causal_conv1d, causal_conv1d_update

    projection = torch.empty(1, 700, 6200, device=META, dtype=torch.bfloat16)
    x, weight = projection[..., :6144], torch.empty(6144, 4, device=META, dtype=torch.bfloat16)
    state = torch.empty(1, 6144, 3, device=META, dtype=torch.bfloat16)
    assert _conv_reason(x, weight, conv_state=state) is None
    y, final = causal_conv1d(x, weight, conv_state=state)
    assert y.shape == x.shape and final.shape == state.shape
    assert fake_kernels["conv"].calls[-1]["sxt"] == 6200
    packed_states = torch.empty(3, 6144, 3, device=META, dtype=torch.bfloat16)
    cu = torch.empty(4, dtype=torch.int64, device=META)
    y, final = causal_conv1d(x, weight, conv_state=packed_states, cu_seqlens=cu)
    assert final.shape == packed_states.shape
    pool = torch.empty(9, 6144, 3, device=META, dtype=torch.bfloat16)
    slots = torch.empty(5, dtype=torch.int64, device=META)
    step = torch.empty(5, 6200, device=META, dtype=torch.bfloat16)[:, :6144]
    assert _conv_update_reason(step, weight, pool, slots) is None
    assert causal_conv1d_update(step, weight, pool, slots).shape == (5, 6144)
    assert fake_kernels["conv"].calls[-1]["conv_state"] is pool
