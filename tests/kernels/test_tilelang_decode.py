"""GPU tests of the TileLang GDN decode against the fp64 reference.

The reference runs in fp64 on the same (rounded) inputs, so the only error left is the kernel's fp32
arithmetic and the rounding of o to the input dtype. Outputs are NaN-poisoned; pool rows outside
`slots` must come back bit-identical.
"""

import pytest
import torch

from qla_agent.kernels import reference
from tests.kernels.decode_inputs import DecodeCase, as_fp64, decode_inputs
from tests.kernels.gdn_inputs import GdnShape, gdn_inputs, rel_err

pytestmark = pytest.mark.gpu

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# o is rounded once to the output dtype; the fp32 state carries only fp32 arithmetic error.
O_BOUND = {BF16: 8e-3, FP16: 2e-3, FP32: 1e-5}
STATE_BOUND = 1e-5

CASES = [
    DecodeCase(N=1, S=4, Hk=1, Hv=1, dtype=BF16),
    DecodeCase(N=5, S=16, Hk=2, Hv=4, raw_gates=True, l2norm=True, dtype=BF16),
    DecodeCase(N=33, S=40, Hk=4, Hv=16, raw_gates=True, l2norm=True, slot_dtype=torch.int32, dtype=BF16),
    DecodeCase(N=8, S=8, Hk=16, Hv=32, raw_gates=True, l2norm=True, dtype=BF16),
    DecodeCase(N=3, S=7, Hk=2, Hv=2, l2norm=True, fused=False, dtype=FP16),
    DecodeCase(N=2, S=3, Hk=1, Hv=2, raw_gates=True, dtype=FP32),
    *[
        DecodeCase(N=3, S=9, Hk=2, Hv=4, raw_gates=True, l2norm=True, dtype=BF16, block_v=bv)
        for bv in (16, 32, 64, 128)
    ],
]


def _kwargs(x: dict[str, torch.Tensor], case: DecodeCase) -> dict:
    return dict(use_qk_l2norm=case.l2norm, A_log=x.get("A_log"), dt_bias=x.get("dt_bias"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decode_matches_reference(case: DecodeCase) -> None:
    from qla_agent.kernels.tilelang.decode import gdn_decode

    x = decode_inputs(case, seed=case.N + 31 * case.Hv, device="cuda")
    ref = as_fp64(x)
    args = ("q", "k", "v", "g", "beta")
    ref_o = reference.gdn_decode(*(ref[n] for n in args), ref["state"], x["slots"], **_kwargs(ref, case))
    before = x["state"].clone()
    out = torch.full((case.N, case.Hv, 128), float("nan"), dtype=case.dtype, device="cuda")
    o = gdn_decode(*(x[n] for n in args), x["state"], x["slots"], out=out, block_v=case.block_v, **_kwargs(x, case))
    torch.cuda.synchronize()
    assert o.data_ptr() == out.data_ptr()
    err_o = rel_err(ref_o, o)
    assert err_o <= O_BOUND[case.dtype], f"o: rel err {err_o:.2e}"
    rows = x["slots"].long()
    err_s = rel_err(ref["state"][rows], x["state"][rows])
    assert err_s <= STATE_BOUND, f"state: rel err {err_s:.2e}"
    untouched = torch.ones(case.S, dtype=torch.bool, device="cuda")
    untouched[rows] = False
    assert torch.equal(x["state"][untouched], before[untouched])


def test_decode_after_prefill_equals_one_prefill() -> None:
    """TileLang prefill of 100 tokens, then 3 TileLang decode steps == fp64 reference over 103 tokens."""
    from qla_agent.kernels.tilelang.decode import gdn_decode
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    shape = GdnShape(B=1, T=103, Hk=2, Hv=4, K=128, V=128)
    x64 = gdn_inputs(shape, seed=9)
    gen = torch.Generator().manual_seed(10)
    x64["g"] = torch.randn(1, 103, 4, generator=gen, dtype=torch.float64)
    x64["beta"] = torch.randn(1, 103, 4, generator=gen, dtype=torch.float64)
    gates64 = {n: torch.randn(4, generator=gen, dtype=torch.float64) for n in ("A_log", "dt_bias")}
    x = {n: t.to("cuda", BF16 if n in ("q", "k", "v") else FP32) for n, t in x64.items()}
    gates = {n: t.to("cuda", FP32) for n, t in gates64.items()}
    ref_in = {n: t.double() for n, t in x.items()}
    tokens = ("q", "k", "v", "g", "beta")
    ref_o, ref_ht = reference.gdn_prefill(
        *(ref_in[n] for n in tokens), initial_state=ref_in["initial_state"], use_qk_l2norm=True,
        **{n: t.double() for n, t in gates.items()},
    )
    _, head_state = gdn_prefill(
        *(x[n][:, :100] for n in tokens), initial_state=x["initial_state"], use_qk_l2norm=True, **gates
    )
    pool = torch.zeros(2, 4, 128, 128, device="cuda")
    pool[1] = head_state[0]
    slots = torch.tensor([1], device="cuda")
    for t in range(100, 103):
        o = gdn_decode(*(x[n][:, t] for n in tokens), pool, slots, use_qk_l2norm=True, **gates)
        assert rel_err(ref_o[:, t], o) < 1e-2, f"step {t}"
    assert rel_err(ref_ht[0], pool[1]) < 1e-2
    assert torch.equal(pool[0], torch.zeros_like(pool[0]))


def test_dispatch_uses_tilelang_decode() -> None:
    """The public entry point runs this kernel for CUDA bf16 inputs (impl="tilelang" must not raise)."""
    from qla_agent.kernels import gdn_decode

    case = DecodeCase(N=4, S=6, Hk=2, Hv=4, raw_gates=True, l2norm=True, dtype=BF16)
    x = decode_inputs(case, seed=2, device="cuda")
    ref_pool, out_pool = x["state"].clone(), x["state"].clone()
    args = [x[n] for n in ("q", "k", "v", "g", "beta")]
    ref_o = gdn_decode(*args, ref_pool, x["slots"], impl="reference", **_kwargs(x, case))
    out_o = gdn_decode(*args, out_pool, x["slots"], impl="tilelang", **_kwargs(x, case))
    assert rel_err(ref_o, out_o) < O_BOUND[BF16]
    assert rel_err(ref_pool, out_pool) < STATE_BOUND
