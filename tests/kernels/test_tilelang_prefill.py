"""GPU tests of the TileLang GDN prefill against the fp64 reference, with FLA's error as the yardstick.

Every case runs our kernels on bf16/fp16 inputs, and the fp64 reference on the same (rounded) inputs;
our relative error must stay within 2x FLA Triton's error on the same inputs. Where FLA is not
installed, or skipped with QLA_TEST_SKIP_FLA=1 (its Triton autotuning costs tens of seconds per head
config on a short GPU lease), the bound is FALLBACK_BOUND. Outputs are allocated NaN-filled, and the
allocator cache is NaN-filled before each run, so an element the kernels never write fails.
"""

import dataclasses
import os
from dataclasses import dataclass

import pytest
import torch

from qla_agent.kernels import reference
from tests.kernels.gdn_inputs import GdnShape, gdn_inputs, rel_err

pytestmark = pytest.mark.gpu

# FLA Triton lands near 3e-3 to 5e-3 on these bf16 inputs; without it, allow twice that.
FALLBACK_BOUND = 1e-2


@dataclass(frozen=True, slots=True)
class PrefillCase:
    """One test case; lens given means packed varlen (B = 1)."""

    shape: GdnShape
    lens: tuple[int, ...] | None = None
    h0: bool = True
    l2norm: bool = False
    raw_gates: bool = False
    store_ht: bool = True
    dtype: torch.dtype = torch.bfloat16
    gate_dtype: torch.dtype = torch.float32

    @property
    def id(self) -> str:
        parts = [self.shape.id, f"lens{'_'.join(map(str, self.lens))}" if self.lens else "dense"]
        parts += [name for name, on in (("h0", self.h0), ("l2", self.l2norm), ("raw", self.raw_gates)) if on]
        parts += [] if self.store_ht else ["noht"]
        parts += [] if self.gate_dtype == torch.float32 else [f"gates_{str(self.gate_dtype).removeprefix('torch.')}"]
        return "-".join(parts + [str(self.dtype).removeprefix("torch.")])


def _shape(B: int, T: int, Hk: int, Hv: int) -> GdnShape:
    return GdnShape(B=B, T=T, Hk=Hk, Hv=Hv, K=128, V=128)


CASES = [
    PrefillCase(_shape(1, 1, 2, 2)),
    PrefillCase(_shape(2, 63, 2, 4), l2norm=True),
    PrefillCase(_shape(1, 1000, 1, 4), h0=False, l2norm=True, raw_gates=True),
    PrefillCase(_shape(1, 493, 2, 4), lens=(1, 63, 64, 65, 300), l2norm=True),
    PrefillCase(_shape(1, 1137, 4, 4), lens=(130, 7, 1000), raw_gates=True, store_ht=False),
    PrefillCase(_shape(3, 200, 2, 2), l2norm=True, dtype=torch.float16),
    PrefillCase(_shape(1, 8192, 1, 2), l2norm=True),
    # Longer appends, which the launcher runs as one fused launch (dense B = 2 and varlen).
    PrefillCase(_shape(2, 150, 2, 4), l2norm=True, raw_gates=True),
    PrefillCase(_shape(1, 300, 2, 4), lens=(100, 7, 193), l2norm=True),
]
# Long dense calls with few heads, which the launcher splits into partitions (context_parts > 1 on any GPU
# with >= 64 SMs). gdn_inputs' slow heads (0.01 per token) walk their warm-up back past earlier partitions
# to the sequence start, its fast ones stop after a few chunks; the third is the runtime's 16/16 layer.
CP_CASES = [
    PrefillCase(_shape(1, 4100, 2, 4), h0=False, l2norm=True),
    PrefillCase(_shape(2, 2500, 1, 2), l2norm=True),
    PrefillCase(_shape(1, 4096, 16, 16), l2norm=True, raw_gates=True, gate_dtype=torch.bfloat16),
]


def _poison_allocator(device: torch.device) -> None:
    """Fill cached allocator blocks with NaN so internal torch.empty buffers start poisoned."""
    junk = torch.full((64 << 20,), float("nan"), dtype=torch.float32, device=device)
    del junk


def _inputs(case: PrefillCase, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Inputs in the kernel dtype (q, k, v), case.gate_dtype (gates) and fp32 (state); g/beta raw when raw_gates."""
    num_states = len(case.lens) if case.lens else case.shape.B
    x = gdn_inputs(case.shape, seed=seed, with_state=case.h0, num_states=num_states)
    if case.l2norm:
        x["k"] = x["k"] * 3.0
    out = {name: t.to(device) for name, t in x.items()}
    for name in ("q", "k", "v"):
        out[name] = out[name].to(case.dtype)
    for name in ("g", "beta"):
        out[name] = out[name].float()
    if "initial_state" in out:
        out["initial_state"] = out["initial_state"].float()
    if case.raw_gates:
        gen = torch.Generator().manual_seed(seed + 1)
        hv = case.shape.Hv
        out["A_log"] = torch.randn(hv, generator=gen).to(device)
        out["dt_bias"] = torch.randn(hv, generator=gen).to(device)
        out["g"] = torch.randn(out["g"].shape, generator=gen).to(device)
        out["beta"] = torch.randn(out["beta"].shape, generator=gen).to(device)
    if case.lens:
        out["cu_seqlens"] = torch.tensor([0, *torch.tensor(case.lens).cumsum(0).tolist()], device=device)
    out["g"], out["beta"] = out["g"].to(case.gate_dtype), out["beta"].to(case.gate_dtype)
    return out


def _kwargs(case: PrefillCase, x: dict[str, torch.Tensor]) -> dict:
    return dict(
        initial_state=x.get("initial_state"), cu_seqlens=x.get("cu_seqlens"), use_qk_l2norm=case.l2norm,
        A_log=x.get("A_log"), dt_bias=x.get("dt_bias"),
    )


def _fla_error(case: PrefillCase, x: dict[str, torch.Tensor], ref: torch.Tensor) -> float | None:
    """FLA Triton's relative error on the same inputs, or None where FLA is missing."""
    if os.environ.get("QLA_TEST_SKIP_FLA") == "1":
        return None
    os.environ.setdefault("FLA_FLASH_QLA", "0")
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None
    g, beta = x["g"], x["beta"]
    if case.raw_gates:
        g, beta = reference.gdn_gates(x["A_log"], x["dt_bias"], g, beta)
    o, _ = chunk_gated_delta_rule(
        x["q"], x["k"], x["v"], g.float(), beta.float(), initial_state=x.get("initial_state"),
        output_final_state=True, cu_seqlens=x.get("cu_seqlens"), use_qk_l2norm_in_kernel=case.l2norm,
    )
    return rel_err(ref, o)


@pytest.mark.parametrize("case", CASES + CP_CASES, ids=[c.id for c in CASES + CP_CASES])
def test_prefill_matches_reference(case: PrefillCase) -> None:
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    device = torch.device("cuda")
    x = _inputs(case, device, seed=len(case.id))
    fp64 = {name: t.double() for name, t in x.items() if t.is_floating_point()}
    ref_o, ref_ht = reference.gdn_chunked(
        fp64["q"], fp64["k"], fp64["v"], fp64["g"], fp64["beta"], **_kwargs(case, {**x, **fp64})
    )
    out_o = torch.full_like(x["v"], float("nan"))
    out_ht = torch.full_like(ref_ht, float("nan"), dtype=torch.float32) if case.store_ht else None
    _poison_allocator(device)
    o, ht = gdn_prefill(
        x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=case.store_ht, out=out_o,
        final_state_out=out_ht, **_kwargs(case, x),
    )
    torch.cuda.synchronize()
    assert o.data_ptr() == out_o.data_ptr()
    fla = _fla_error(case, x, ref_o)
    bound = FALLBACK_BOUND if fla is None else max(2 * fla, 1e-3)
    err_o = rel_err(ref_o, o)
    assert err_o <= bound, f"o: rel err {err_o:.2e} > bound {bound:.2e} (FLA {fla})"
    if case.store_ht:
        err_ht = rel_err(ref_ht, ht)
        assert err_ht <= bound, f"final state: rel err {err_ht:.2e} > bound {bound:.2e} (FLA {fla})"
    else:
        assert ht is None


# The scan's value-rows layout (ScanConfig.value_rows) as (block_v, wgmma): each tile width on mma.sync,
# the 4- and 8-warp tiles on wgmma (sm_90a).
VALUE_ROW_VARIANTS = [(32, False), (64, False), (128, False), (64, True), (128, True)]


@pytest.mark.parametrize(
    ("block_v", "wgmma"), VALUE_ROW_VARIANTS, ids=[f"bv{b}{'-wgmma' * w}" for b, w in VALUE_ROW_VARIANTS]
)
@pytest.mark.parametrize("case", CASES + CP_CASES, ids=[c.id for c in CASES + CP_CASES])
def test_value_rows_scan_matches_reference(case: PrefillCase, block_v: int, wgmma: bool) -> None:
    """The transposed scan (S^T in registers, 16 value columns per warp) against the fp64 reference, the
    warm-up of context parallelism included, at each of its tile widths."""
    overrides = dict(value_rows=True, threads=2 * block_v, split_k=False, wgmma=wgmma)
    _variant_matches_reference(case, wgmma, block_v=block_v, scan_overrides=overrides)


@pytest.mark.parametrize("wgmma", [False, True], ids=["mma", "wgmma"])
@pytest.mark.parametrize("case", CASES + CP_CASES, ids=[c.id for c in CASES + CP_CASES])
def test_prepped_scan_matches_reference(case: PrefillCase, wgmma: bool) -> None:
    """The self-prepping scan (one launch: each CTA computes its chunks' T, P and vectors itself) against
    the fp64 reference on every case, long ones included (the launcher takes it only for short calls)."""
    _variant_matches_reference(case, wgmma, prepped=True, scan_overrides=dict(wgmma=wgmma), context_parallel=False)


@pytest.mark.parametrize("wgmma", [False, True], ids=["mma", "wgmma"])
@pytest.mark.parametrize("case", CASES + CP_CASES, ids=[c.id for c in CASES + CP_CASES])
def test_fused_prefill_matches_reference(case: PrefillCase, wgmma: bool) -> None:
    """One cooperative launch (the prep on every CTA, a grid barrier, the scan) against the fp64 reference
    on every case, long ones included (their prep items loop over the grid)."""
    _variant_matches_reference(case, wgmma, fused=True, scan_overrides=dict(wgmma=wgmma), context_parallel=False)


def _variant_matches_reference(case: PrefillCase, wgmma: bool, **variant) -> None:
    """The launcher with `variant` (its tile arguments) on `case` against the fp64 reference (FALLBACK_BOUND);
    a wgmma variant runs on sm_90a only."""
    from qla_agent.kernels.tilelang import build
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    device = torch.device("cuda")
    if wgmma and build.device_arch(device) != "sm_90a":
        pytest.skip("wgmma is Hopper's")
    x = _inputs(case, device, seed=len(case.id))
    fp64 = {name: t.double() for name, t in x.items() if t.is_floating_point()}
    ref_o, ref_ht = reference.gdn_chunked(
        fp64["q"], fp64["k"], fp64["v"], fp64["g"], fp64["beta"], **_kwargs(case, {**x, **fp64})
    )
    _poison_allocator(device)
    o, ht = gdn_prefill(
        x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=case.store_ht, **variant, **_kwargs(case, x)
    )
    torch.cuda.synchronize()
    assert rel_err(ref_o, o) <= FALLBACK_BOUND, f"o: rel err {rel_err(ref_o, o):.2e}"
    if case.store_ht:
        assert rel_err(ref_ht, ht) <= FALLBACK_BOUND, f"final state: rel err {rel_err(ref_ht, ht):.2e}"


@pytest.mark.parametrize("case", CP_CASES, ids=[c.id for c in CP_CASES])
def test_context_parallel_matches_whole_sequences(case: PrefillCase) -> None:
    """The partitioned scan agrees with the whole-sequence one (different tiles: bf16 rounding apart), also
    for a head that never decays (g = 0: its warm-up reaches back to the sequence start, exactly)."""
    from qla_agent.kernels.tilelang import build
    from qla_agent.kernels.tilelang.prefill import context_parts, gdn_prefill

    device = torch.device("cuda")
    s = case.shape
    assert context_parts(s.B, s.T, s.Hv, build.device_facts(device)[1])[0] > 1
    x = _inputs(case, device, seed=7)
    if not case.raw_gates:
        x["g"][..., 0] = 0.0
    args = [x[n] for n in ("q", "k", "v", "g", "beta")]
    whole_o, whole_ht = gdn_prefill(*args, context_parallel=False, **_kwargs(case, x))
    _poison_allocator(device)
    o, ht = gdn_prefill(*args, **_kwargs(case, x))
    torch.cuda.synchronize()
    assert rel_err(whole_o, o) <= FALLBACK_BOUND and rel_err(whole_ht, ht) <= FALLBACK_BOUND
    if not case.raw_gates:
        assert rel_err(whole_o[:, :, 0], o[:, :, 0]) <= FALLBACK_BOUND


@pytest.mark.parametrize("split", [1, 64, 100])
def test_prefill_in_two_calls_equals_one(split: int) -> None:
    """prefill(T1) then prefill(T2) from its final state == prefill(T1 + T2), to bf16 rounding."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    case = PrefillCase(_shape(1, 300, 2, 4), l2norm=True)
    x = _inputs(case, torch.device("cuda"), seed=split)
    whole_o, whole_ht = gdn_prefill(x["q"], x["k"], x["v"], x["g"], x["beta"], **_kwargs(case, x))
    parts = {n: x[n] for n in ("q", "k", "v", "g", "beta")}
    first = {n: t[:, :split] for n, t in parts.items()}
    second = {n: t[:, split:] for n, t in parts.items()}
    o1, h1 = gdn_prefill(**first, initial_state=x["initial_state"], use_qk_l2norm=True)
    o2, h2 = gdn_prefill(**second, initial_state=h1, use_qk_l2norm=True)
    assert rel_err(whole_o, torch.cat([o1, o2], dim=1)) < 2e-2
    assert rel_err(whole_ht, h2) < 1e-2


def test_dispatch_uses_tilelang() -> None:
    """The public entry point picks this backend for CUDA bf16 inputs (impl="tilelang" must not raise)."""
    from qla_agent.kernels import gdn_prefill

    case = PrefillCase(_shape(1, 100, 2, 2), l2norm=True)
    x = _inputs(case, torch.device("cuda"), seed=3)
    ref_o, _ = gdn_prefill(x["q"], x["k"], x["v"], x["g"], x["beta"], impl="reference", **_kwargs(case, x))
    out_o, _ = gdn_prefill(x["q"], x["k"], x["v"], x["g"], x["beta"], impl="tilelang", **_kwargs(case, x))
    assert rel_err(ref_o, out_o) < 2e-2


def runtime_layout(x: dict[str, torch.Tensor], pad: int = 0, skip: int = 0) -> dict[str, torch.Tensor]:
    """x with q, k, v as column slices of one conv output u [B, T, pad + (2 Hk + Hv) 128] and the gates as
    the halves of one [B, T, 2 Hv] projection (b first), as qla_agent/runtime/layers/gdn.py passes them.

    pad > 0 puts NaN columns before q, and stores the projection column-major: with a pad that is not a
    multiple of 8 the kernels cannot read the rows in place and the launcher copies them. skip > 0 puts
    NaN tokens before each batch row's (of u and of the projection), so the rows are slices of longer
    ones: a batch stride other than T x the token stride, which the kernels read in place.
    """
    q, k, v = x["q"], x["k"], x["v"]
    hk, hv = q.shape[2], v.shape[2]
    packed = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1)
    batch, seqlen, width = packed.shape
    u = torch.full((batch, skip + seqlen, pad + width), float("nan"), dtype=q.dtype, device=q.device)
    u[:, skip:, pad:] = packed
    qs, ks, vs = u[:, skip:, pad:].split([hk * 128, hk * 128, hv * 128], dim=-1)
    gates = torch.cat([x["beta"], x["g"]], dim=-1)
    ba = torch.full((batch, skip + seqlen, 2 * hv), float("nan"), dtype=gates.dtype, device=gates.device)
    if pad:
        ba = ba.transpose(1, 2).contiguous().transpose(1, 2)
    ba[:, skip:] = gates
    b, a = ba[:, skip:].chunk(2, dim=-1)
    heads = dict(q=qs.unflatten(-1, (hk, 128)), k=ks.unflatten(-1, (hk, 128)), v=vs.unflatten(-1, (hv, 128)))
    return {**x, **heads, "g": a, "beta": b}


# Configs shared with CASES and CP_CASES (compiled once), plus the runtime's 16/16 layer with bf16 raw gates;
# B = 3 at T = 1 (token stride never read), B = 2 dense (with sliced rows: a batch stride of its own; the
# context-parallel case's warm-up reads it too) and varlen.
RUNTIME = PrefillCase(_shape(1, 100, 16, 16), l2norm=True, raw_gates=True, gate_dtype=torch.bfloat16)
LAYOUT_CASES = [
    PrefillCase(_shape(1, 1, 2, 2)),
    PrefillCase(_shape(3, 1, 2, 2)),
    PrefillCase(_shape(2, 63, 2, 4), l2norm=True),
    PrefillCase(_shape(1, 1000, 1, 4), h0=False, l2norm=True, raw_gates=True),
    PrefillCase(_shape(1, 493, 2, 4), lens=(1, 63, 64, 65, 300), l2norm=True),
    CP_CASES[1],
    RUNTIME,
]


@pytest.mark.parametrize(("pad", "skip"), [(0, 0), (4, 0), (0, 5)], ids=["in_place", "copied", "sliced_rows"])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[c.id for c in LAYOUT_CASES])
def test_prefill_reads_the_runtime_layout(case: PrefillCase, pad: int, skip: int) -> None:
    """Strided q/k/v/gates give the compact inputs' results bit for bit, and the reference's to bf16 rounding:
    read in place (also batch rows sliced from longer ones, B > 1) or copied."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill, input_strides

    device = torch.device("cuda")
    x = _inputs(case, device, seed=len(case.id))
    strided = runtime_layout(x, pad, skip)
    names = ("q", "k", "v", "g", "beta")
    assert (input_strides(*(strided[n] for n in names)) is None) == (pad > 0)
    fp64 = {name: t.double() for name, t in x.items() if t.is_floating_point()}
    ref_o, ref_ht = reference.gdn_chunked(*(fp64[n] for n in names), **_kwargs(case, {**x, **fp64}))
    compact_o, compact_ht = gdn_prefill(*(x[n] for n in names), **_kwargs(case, x))
    out_o = torch.full_like(x["v"], float("nan"))
    out_ht = torch.full_like(ref_ht, float("nan"), dtype=torch.float32)
    _poison_allocator(device)
    o, ht = gdn_prefill(*(strided[n] for n in names), out=out_o, final_state_out=out_ht, **_kwargs(case, x))
    torch.cuda.synchronize()
    assert rel_err(ref_o, o) <= FALLBACK_BOUND and rel_err(ref_ht, ht) <= FALLBACK_BOUND
    assert torch.equal(o, compact_o) and torch.equal(ht, compact_ht)


@pytest.mark.parametrize(
    ("tokens", "kernels"),
    [(100, ("chunk_scan_prepped",)), (300, ("chunk_fused",)), (600, ("chunk_prep", "chunk_scan"))],
    ids=["append", "longer_append", "prompt"],
)
def test_runtime_layout_launches_only_its_kernels(tokens: int, kernels: tuple[str, ...]) -> None:
    """The runtime layer's call (public entry, strided inputs, state in and out) launches its kernels and
    nothing else (no copies): the self-prepping scan alone for an append, the fused kernel alone for a
    longer one, else the prep, then the scan."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from qla_agent.kernels import gdn_prefill

    case = dataclasses.replace(RUNTIME, shape=_shape(1, tokens, 16, 16))
    x = runtime_layout(_inputs(case, torch.device("cuda"), seed=5))

    def call() -> None:
        gdn_prefill(
            x["q"], x["k"], x["v"], x["g"], x["beta"], scale=128**-0.5, impl="tilelang", **_kwargs(case, x)
        )

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    launched = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    assert [name.removesuffix("_kernel") for name in launched] == list(kernels), launched


@dataclass(frozen=True, slots=True)
class PrepCase:
    """A direct test of chunk_prep's outputs; lens are packed sequence lengths (varlen when several)."""

    lens: tuple[int, ...]
    hk: int
    hv: int
    l2norm: bool = True
    raw_gates: bool = False

    @property
    def id(self) -> str:
        flags = [name for name, on in (("l2", self.l2norm), ("raw", self.raw_gates)) if on]
        return "-".join([f"lens{'_'.join(map(str, self.lens))}", f"Hk{self.hk}-Hv{self.hv}", *flags])


PREP_CASES = [
    PrepCase((200,), 2, 2),
    PrepCase((1, 63, 64, 65, 300), 2, 4, raw_gates=True),
    PrepCase((1000,), 1, 4, l2norm=False),
    PrepCase((130, 7), 4, 8, raw_gates=True),
]


@pytest.mark.parametrize("case", PREP_CASES, ids=[c.id for c in PREP_CASES])
def test_chunk_prep_matches_definitions(case: PrepCase) -> None:
    """T, P (tpmat [chunks, Hv, 2, 64, 64]) and vecs of every chunk (strided inputs) against their fp64
    definitions; spare slots untouched."""
    from qla_agent.kernels.tilelang import build, chunk_prep
    from qla_agent.kernels.tilelang.prefill import input_strides
    from tests.kernels.test_chunk_prep_algebra import prep_expected

    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(len(case.id))
    ntok, varlen = sum(case.lens), len(case.lens) > 1
    q = torch.randn(ntok, case.hk, 128, generator=gen).to(device, torch.bfloat16)
    k = (3 * torch.randn(ntok, case.hk, 128, generator=gen)).to(device, torch.bfloat16)
    if not case.l2norm:
        k = k / k.float().norm(dim=-1, keepdim=True).to(torch.bfloat16)
    if case.raw_gates:
        g, beta = torch.randn(ntok, case.hv, generator=gen), torch.randn(ntok, case.hv, generator=gen)
        a_log, dt_bias = torch.randn(case.hv, generator=gen), torch.randn(case.hv, generator=gen)
    else:
        g, beta = -0.2 * torch.rand(ntok, case.hv, generator=gen), torch.rand(ntok, case.hv, generator=gen)
        a_log = dt_bias = torch.zeros(case.hv)
    g, beta, a_log, dt_bias = (x.to(device) for x in (g, beta, a_log, dt_bias))
    # Read as the runtime passes them: q, k column slices of a conv output (v's columns NaN), the
    # gates the halves of one [T, 2 Hv] projection.
    v_nan = torch.full((1, ntok, case.hv, 128), float("nan"), dtype=torch.bfloat16, device=device)
    views = runtime_layout(dict(q=q[None], k=k[None], v=v_nan, g=g[None], beta=beta[None]))
    qs, ks, vs, gs, bs = (views[n] for n in ("q", "k", "v", "g", "beta"))
    cu = torch.tensor([0, *torch.tensor(case.lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    cfg = chunk_prep.PrepConfig(
        key_heads=case.hk, value_heads=case.hv, dtype="bfloat16", gate_dtype="float32", param_dtype="float32",
        raw_gates=case.raw_gates, l2norm=case.l2norm, varlen=varlen, scale=128**-0.5,
    )
    kernel = build.compiled(chunk_prep.program, cfg, build.device_arch(device))
    chunks = sum(-(-n // 64) for n in case.lens)
    slots = ntok // 64 + len(case.lens) if varlen else chunks
    tpmat = torch.full((slots, case.hv, 2, 64, 64), float("nan"), dtype=torch.bfloat16, device=device)
    vecs = torch.full((slots, case.hv, 4, 64), float("nan"), dtype=torch.float32, device=device)
    prep_strides, _ = input_strides(qs, ks, vs, gs, bs)
    kernel(qs, ks, gs, bs, a_log, dt_bias, cu, tpmat, vecs, ntok, *prep_strides)
    torch.cuda.synchronize()
    tmat, pmat = tpmat[:, :, 0], tpmat[:, :, 1]
    ref_t, ref_p, ref_v = prep_expected(
        q.cpu(), k.cpu(), g.cpu(), beta.cpu(), scale=128**-0.5, l2norm=case.l2norm,
        a_log=a_log.cpu() if case.raw_gates else None, dt_bias=dt_bias.cpu() if case.raw_gates else None,
        lens=list(case.lens),
    )
    bounds = {"tmat": 1e-2, "pmat": 1e-2, "vecs": 1e-4}
    for (name, bound), ref, out in zip(bounds.items(), (ref_t, ref_p, ref_v), (tmat, pmat, vecs)):
        err = rel_err(ref, out[:chunks].cpu())
        assert err <= bound, f"{name}: rel err {err:.2e} > {bound:.0e}"
    assert torch.isnan(tmat[chunks:].float()).all(), "a spare chunk slot was written"
