"""The TileLang decode program run on the CPU, and a float64 emulation of its algebra.

TileLang's C backend lowers the same prim_func (with fp32 q/k/v: it has no bf16) to a loop nest over
the grid, and `c_kernels` routes the launcher's `build.compiled` there, so these tests run the real
launcher and kernel program on CPU tensors: index math, gate and norm formulas, grouped heads,
strided rows, slots, in-place update. The CUDA lowering (thread mapping, shared staging, syncs) is
checked by the GPU tests in test_tilelang_decode.py.
"""

import pytest
import torch

from qla_agent.kernels import reference
from tests.kernels.decode_inputs import DecodeCase, as_fp64, decode_inputs
from tests.kernels.gdn_inputs import GdnShape, gdn_inputs, rel_err

pytest.importorskip("tilelang")

CASES = [
    DecodeCase(N=3, S=5, Hk=2, Hv=4, raw_gates=True, l2norm=True, block_v=32),
    DecodeCase(N=1, S=1, Hk=1, Hv=1, slot_dtype=torch.int32, fused=False, block_v=16),
    DecodeCase(N=4, S=9, Hk=1, Hv=4, l2norm=True, slot_dtype=torch.int32, block_v=128),
    DecodeCase(N=2, S=3, Hk=2, Hv=2, raw_gates=True, block_v=64),
]


def _kwargs(x: dict[str, torch.Tensor], l2norm: bool) -> dict:
    return dict(use_qk_l2norm=l2norm, A_log=x.get("A_log"), dt_bias=x.get("dt_bias"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decode_program_matches_reference(c_kernels, case: DecodeCase) -> None:
    from qla_agent.kernels.tilelang.decode import gdn_decode

    x = decode_inputs(case, seed=case.N * 7 + case.Hv)
    ref = as_fp64(x)
    ref_o = reference.gdn_decode(
        ref["q"], ref["k"], ref["v"], ref["g"], ref["beta"], ref["state"], x["slots"], **_kwargs(ref, case.l2norm)
    )
    before = x["state"].clone()
    out = torch.full((case.N, case.Hv, 128), float("nan"))
    o = gdn_decode(
        x["q"], x["k"], x["v"], x["g"], x["beta"], x["state"], x["slots"], out=out, block_v=case.block_v,
        **_kwargs(x, case.l2norm),
    )
    assert o.data_ptr() == out.data_ptr()
    assert rel_err(ref_o, o) < 1e-5
    rows = x["slots"].long()
    assert rel_err(ref["state"][rows], x["state"][rows]) < 1e-5
    untouched = torch.ones(case.S, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(x["state"][untouched], before[untouched])


def test_decode_after_prefill_equals_one_prefill(c_kernels) -> None:
    """Reference prefill of 40 tokens, then 3 kernel decode steps == reference prefill of 43 tokens."""
    from qla_agent.kernels.tilelang.decode import gdn_decode

    shape = GdnShape(B=1, T=43, Hk=2, Hv=4, K=128, V=128)
    x = gdn_inputs(shape, seed=5)
    gen = torch.Generator().manual_seed(6)
    x["g"], x["beta"] = torch.randn(1, 43, 4, generator=gen, dtype=torch.float64), x["beta"] * 4 - 2
    gates = dict(A_log=torch.randn(4, generator=gen, dtype=torch.float64), dt_bias=torch.zeros(4, dtype=torch.float64))
    tokens = {n: x[n] for n in ("q", "k", "v", "g", "beta")}
    whole_o, _ = reference.gdn_prefill(**tokens, initial_state=x["initial_state"], use_qk_l2norm=True, **gates)
    head = {n: t[:, :40] for n, t in tokens.items()}
    _, state = reference.gdn_prefill(**head, initial_state=x["initial_state"], use_qk_l2norm=True, **gates)
    pool = torch.zeros(2, 4, 128, 128)
    pool[1] = state[0].float()
    slots = torch.tensor([1])
    for t in range(40, 43):
        step = {n: tokens[n][:, t].float() for n in tokens}
        o = gdn_decode(**step, state=pool, slots=slots, use_qk_l2norm=True, **{n: p.float() for n, p in gates.items()})
        assert rel_err(whole_o[:, t], o) < 1e-5, f"step {t}"
    assert torch.equal(pool[0], torch.zeros_like(pool[0]))


def emulate_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
    slots: torch.Tensor, *, scale: float, l2norm: bool, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
) -> torch.Tensor:
    """The decode kernel's algebra in float64 (one pass over the old state column), state updated in place."""
    if A_log is not None:
        alpha = torch.exp(-torch.exp(A_log) * torch.nn.functional.softplus(g + dt_bias))
        beta = torch.sigmoid(beta)
    else:
        alpha = torch.exp(g)
    group = v.shape[1] // k.shape[1]
    k, q = k.repeat_interleave(group, dim=1), q.repeat_interleave(group, dim=1)
    rows = slots.long()
    s = state[rows]
    pk, pq = torch.einsum("nhkv,nhk->nhv", s, k), torch.einsum("nhkv,nhk->nhv", s, q)
    kk, qq, kq = (k * k).sum(-1), (q * q).sum(-1), (k * q).sum(-1)
    rk = torch.rsqrt(kk + 1e-6) if l2norm else torch.ones_like(kk)
    rq = torch.rsqrt(qq + 1e-6) if l2norm else torch.ones_like(qq)
    a, rk, rq = alpha[..., None], rk[..., None], rq[..., None]
    u = beta[..., None] * (v - a * rk * pk)
    o = scale * rq * (a * pq + u * rk * kq[..., None])
    state[rows] = a[..., None] * s + (rk * k)[..., :, None] * u[..., None, :]
    return o


@pytest.mark.parametrize("case", CASES[:1] + CASES[2:], ids=[c.id for c in CASES[:1] + CASES[2:]])
def test_kernel_algebra_in_fp64(case: DecodeCase) -> None:
    """The expanded read o = scale rq (alpha S^T q + u rk k.q) equals the recurrence to fp64 rounding."""
    x = as_fp64(decode_inputs(case, seed=11))
    ref_state, out_state = x["state"].clone(), x["state"].clone()
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    ref_o = reference.gdn_decode(*args, ref_state, x["slots"], **_kwargs(x, case.l2norm))
    out_o = emulate_decode(
        *args, out_state, x["slots"], scale=128**-0.5, l2norm=case.l2norm, A_log=x.get("A_log"),
        dt_bias=x.get("dt_bias"),
    )
    assert rel_err(ref_o, out_o) < 1e-12
    assert rel_err(ref_state, out_state) < 1e-12
