"""The GDN reference: chunked form vs the recurrence, varlen, state carry, decode, grouped heads, layout."""

import pytest
import torch

from qla_agent.kernels import gdn_decode, gdn_gates, gdn_prefill
from qla_agent.kernels.reference import gdn_chunked, gdn_recurrent
from tests.kernels.gdn_inputs import GdnShape, gdn_inputs, rel_err

TOL64 = 1e-10

SHAPES = [
    GdnShape(B=1, T=1, Hk=1, Hv=1, K=8, V=8),
    GdnShape(B=2, T=63, Hk=2, Hv=4, K=16, V=8),
    GdnShape(B=1, T=64, Hk=1, Hv=3, K=8, V=16),
    GdnShape(B=2, T=65, Hk=2, Hv=2, K=16, V=16),
    GdnShape(B=1, T=130, Hk=2, Hv=6, K=32, V=16),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_chunked_matches_recurrence(shape: GdnShape, with_state: bool) -> None:
    inputs = gdn_inputs(shape, with_state=with_state)
    ref_o, ref_s = gdn_recurrent(**inputs)
    out_o, out_s = gdn_chunked(**inputs)
    assert rel_err(ref_o, out_o) <= TOL64
    assert rel_err(ref_s, out_s) <= TOL64


@pytest.mark.parametrize("shape", [GdnShape(1, 130, 2, 4, 16, 16)], ids=lambda s: s.id)
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_strong_decay_and_chunk_size(shape: GdnShape, chunk_size: int) -> None:
    # Gates down to -30 per token: cumulative in-chunk decays underflow exp() without NaN or overflow.
    inputs = gdn_inputs(shape, strong_decay=True)
    ref_o, ref_s = gdn_recurrent(**inputs)
    out_o, out_s = gdn_chunked(**inputs, chunk_size=chunk_size)
    assert rel_err(ref_o, out_o) <= TOL64
    assert rel_err(ref_s, out_s) <= TOL64


@pytest.mark.parametrize("cu", [[0, 1, 64, 130, 200], [0, 65, 66, 129]], ids=lambda c: "cu" + "-".join(map(str, c)))
def test_varlen_matches_each_sequence_alone(cu: list[int]) -> None:
    shape = GdnShape(B=1, T=cu[-1], Hk=2, Hv=4, K=16, V=8)
    inputs = gdn_inputs(shape, num_states=len(cu) - 1)
    out_o, out_s = gdn_prefill(**inputs, cu_seqlens=torch.tensor(cu, dtype=torch.int32))
    for n, (start, end) in enumerate(zip(cu, cu[1:])):
        alone = {name: x[:, start:end] for name, x in inputs.items() if name != "initial_state"}
        ref_o, ref_s = gdn_recurrent(**alone, initial_state=inputs["initial_state"][n : n + 1])
        assert rel_err(ref_o, out_o[:, start:end]) <= TOL64
        assert rel_err(ref_s, out_s[n : n + 1]) <= TOL64


@pytest.mark.parametrize("t1", [1, 40, 64, 100])
def test_two_calls_carrying_state_equal_one_call(t1: int) -> None:
    shape = GdnShape(B=2, T=130, Hk=1, Hv=2, K=16, V=16)
    inputs = gdn_inputs(shape)
    ref_o, ref_s = gdn_prefill(**inputs)
    first = {name: x[:, :t1] for name, x in inputs.items() if name != "initial_state"}
    second = {name: x[:, t1:] for name, x in inputs.items() if name != "initial_state"}
    o1, s1 = gdn_prefill(**first, initial_state=inputs["initial_state"])
    o2, s2 = gdn_prefill(**second, initial_state=s1)
    assert rel_err(ref_o, torch.cat([o1, o2], dim=1)) <= TOL64
    assert rel_err(ref_s, s2) <= TOL64


@pytest.mark.parametrize("shape", [GdnShape(2, 65, 2, 6, 16, 8)], ids=lambda s: s.id)
def test_grouped_value_heads_equal_repeated_heads(shape: GdnShape) -> None:
    inputs = gdn_inputs(shape)
    group = shape.Hv // shape.Hk
    repeated = dict(inputs, q=inputs["q"].repeat_interleave(group, 2), k=inputs["k"].repeat_interleave(group, 2))
    for fn in (gdn_recurrent, gdn_chunked):
        ref_o, ref_s = fn(**repeated)
        out_o, out_s = fn(**inputs)
        assert rel_err(ref_o, out_o) <= TOL64
        assert rel_err(ref_s, out_s) <= TOL64


@pytest.mark.parametrize("slots_dtype", [torch.int32, torch.int64])
def test_decode_step_equals_one_token_prefill(slots_dtype: torch.dtype) -> None:
    shape = GdnShape(B=3, T=1, Hk=2, Hv=4, K=16, V=8)
    inputs = gdn_inputs(shape, with_state=False, seed=1)
    pool = torch.randn(6, shape.Hv, shape.K, shape.V, dtype=torch.float64)
    slots = torch.tensor([4, 0, 2], dtype=slots_dtype)
    untouched = pool[[1, 3, 5]].clone()
    ref_o, ref_s = gdn_prefill(**inputs, initial_state=pool[slots.long()].clone())
    out_o = gdn_decode(*(inputs[n][:, 0] for n in ("q", "k", "v", "g", "beta")), pool, slots)
    assert rel_err(ref_o[:, 0], out_o) <= TOL64
    assert rel_err(ref_s, pool[slots.long()]) <= TOL64
    assert torch.equal(pool[[1, 3, 5]], untouched)


def test_prefill_then_decode_steps_equal_one_prefill() -> None:
    shape = GdnShape(B=2, T=70, Hk=1, Hv=2, K=8, V=8)
    inputs = gdn_inputs(shape)
    ref_o, ref_s = gdn_prefill(**inputs)
    t0 = 66
    head = {name: x[:, :t0] for name, x in inputs.items() if name != "initial_state"}
    _, state = gdn_prefill(**head, initial_state=inputs["initial_state"])
    pool = state.clone()
    slots = torch.tensor([0, 1])
    outs = [gdn_decode(*(inputs[n][:, t] for n in ("q", "k", "v", "g", "beta")), pool, slots) for t in range(t0, 70)]
    assert rel_err(ref_o[:, t0:], torch.stack(outs, dim=1)) <= TOL64
    assert rel_err(ref_s, pool) <= TOL64


@pytest.mark.parametrize("i,j", [(1, 5), (6, 2)])
def test_state_layout_is_k_by_v(i: int, j: int) -> None:
    # State [K, V] with o = scale * S^T q: a one-hot S[i, j] read with q = e_i gives scale * e_j (not e_i).
    K = V = 8
    state = torch.zeros(1, 1, K, V, dtype=torch.float64)
    state[0, 0, i, j] = 1.0
    q = torch.zeros(1, 1, 1, K, dtype=torch.float64)
    q[..., i] = 1.0
    k = torch.zeros_like(q)
    v = torch.zeros(1, 1, 1, V, dtype=torch.float64)
    zeros = torch.zeros(1, 1, 1, dtype=torch.float64)
    expected = torch.zeros(V, dtype=torch.float64)
    expected[j] = K**-0.5
    for fn in (gdn_recurrent, gdn_chunked):
        out_o, _ = fn(q, k, v, zeros, zeros, initial_state=state)
        assert torch.equal(out_o[0, 0, 0], expected)
    out_o = gdn_decode(q[:, 0], k[:, 0], v[:, 0], zeros[:, 0], zeros[:, 0], state, torch.tensor([0]))
    assert torch.equal(out_o[0, 0], expected)


def test_raw_gates_l2norm_and_scale_options() -> None:
    shape = GdnShape(B=1, T=20, Hk=2, Hv=4, K=16, V=8)
    inputs = gdn_inputs(shape)
    a, b = torch.randn(1, 20, 4, dtype=torch.float64), torch.randn(1, 20, 4, dtype=torch.float64)
    A_log, dt_bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    g, beta = gdn_gates(A_log, dt_bias, a, b)
    assert torch.allclose(g, -torch.exp(A_log) * torch.log1p(torch.exp(a + dt_bias)), rtol=1e-12, atol=0)
    assert torch.allclose(beta, 1 / (1 + torch.exp(-b)), rtol=1e-12, atol=0)

    q, k = inputs["q"], inputs["k"] * 3.0
    qn = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    kn = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    scale = 0.37
    ref_o, ref_s = gdn_recurrent(
        qn * (scale / 16**-0.5), kn, inputs["v"], g, beta, initial_state=inputs["initial_state"]
    )
    for fn in (gdn_recurrent, gdn_prefill):
        out_o, out_s = fn(
            q, k, inputs["v"], a, b, scale=scale, use_qk_l2norm=True, A_log=A_log, dt_bias=dt_bias,
            initial_state=inputs["initial_state"],
        )
        assert rel_err(ref_o, out_o) <= TOL64
        assert rel_err(ref_s, out_s) <= TOL64


def test_low_precision_inputs_keep_fp32_state() -> None:
    shape = GdnShape(B=1, T=100, Hk=2, Hv=4, K=32, V=32)
    inputs64 = gdn_inputs(shape, with_state=False)
    inputs16 = {name: x.to(torch.bfloat16) for name, x in inputs64.items()}
    ref_o, ref_s = gdn_recurrent(**{name: x.double() for name, x in inputs16.items()})
    out_o, out_s = gdn_prefill(**inputs16)
    assert out_o.dtype == torch.bfloat16 and out_s.dtype == torch.float32
    assert rel_err(ref_o, out_o) <= 1e-2
    assert rel_err(ref_s, out_s) <= 1e-5
    _, none_state = gdn_prefill(**inputs16, output_final_state=False)
    assert none_state is None
