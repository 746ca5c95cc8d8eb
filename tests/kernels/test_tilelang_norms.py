"""GPU tests of the TileLang norm (alone, gated, + RoPE), SiLU-mul and sigmoid-gate-mul kernels against the
torch references.

The references run on the same inputs in the same dtype: the kernels round at the same places, so
an output may differ from the reference only where the fp32 results (sums of squares added in
another order) fall on different sides of a rounding boundary: by one unit in the last place, in a
small fraction of elements. The residual sum s is exact. A second check against the fp64 reference
bounds the absolute error. The allocator cache is NaN-filled first, so an element never written fails.
"""

import pytest
import torch
import torch.nn.functional as F

from qla_agent import kernels
from qla_agent.kernels import reference_norms
from tests.kernels.gdn_inputs import rel_err

pytestmark = pytest.mark.gpu

EPS = 1e-6
DTYPES = [torch.bfloat16, torch.float16]
ROWS = [1, 63, 8193]
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}
# Share of elements allowed one unit in the last place away from the reference.
ULP_FRACTION = 0.01
FP64_BOUND = 8e-3
# rms_norm_rope: units in the last place of the larger element of each rotated pair (assert_rope_close).
ROPE_ULPS = 4


def _poison_allocator() -> None:
    junk = torch.full((256 << 20,), float("nan"), device="cuda")
    del junk


def _randn(*shape: int, dtype: torch.dtype = torch.bfloat16, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to("cuda", dtype)


def assert_within_one_ulp(ref: torch.Tensor, out: torch.Tensor, ulps: int = 1) -> None:
    """Every element of out is within `ulps` units in the last place of ref, and few differ at all."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    ref64, out64 = ref.double(), out.double()
    assert torch.isfinite(out64).all(), "out has NaN/inf (unwritten elements?)"
    tiny = torch.finfo(ref.dtype).tiny
    ulp = torch.exp2(torch.floor(torch.log2(ref64.abs().clamp_min(tiny))) - MANTISSA_BITS[ref.dtype])
    diff = (out64 - ref64).abs()
    assert bool((diff <= ulps * ulp).all()), f"max difference {float((diff / ulp).max()):.1f} ulp"
    if ref.dtype != torch.float32:
        # In fp32 the GPU contracts x cos + r sin into one FMA (one rounding fewer than torch's ops), so
        # most elements differ in the last bit; the ulp bound above is the check there (run 7: it held).
        differing = float((diff > 0).double().mean())
        assert differing <= ULP_FRACTION, f"{differing:.2%} of the elements differ from the reference"


@pytest.mark.parametrize("dim", [1024, 2560, 4096, 8192], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("rows", ROWS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_matches_reference(dim: int, rows: int, dtype: torch.dtype) -> None:
    from qla_agent.kernels.tilelang.row_launch import rms_norm

    x, w = _randn(rows, dim, dtype=dtype, seed=rows, scale=3.0), _randn(dim, dtype=dtype, seed=dim, scale=0.2)
    _poison_allocator()
    out = rms_norm(x, w, eps=EPS)
    assert_within_one_ulp(reference_norms.rms_norm(x, w, eps=EPS), out)
    assert rel_err(reference_norms.rms_norm(x.double(), w.double(), eps=EPS), out) < FP64_BOUND


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32], ids=str)
def test_plain_rms_norm_matches_reference(weight_dtype: torch.dtype) -> None:
    from qla_agent.kernels.tilelang.row_launch import rms_norm

    x, w = _randn(1000, 2048, seed=1), _randn(2048, dtype=weight_dtype, seed=2)
    _poison_allocator()
    out = rms_norm(x, w, eps=EPS, zero_centered=False)
    assert_within_one_ulp(reference_norms.rms_norm(x, w, eps=EPS, zero_centered=False), out)


@pytest.mark.parametrize("rows", ROWS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_head_norms_on_projection_slices(rows: int, dtype: torch.dtype) -> None:
    """Attention q/k norms (head_dim 256): q sliced out of [T, 8, 2 * 256] (q and its gate per head), k [T, 2, 256]."""
    from qla_agent.kernels.tilelang.row_launch import rms_norm

    q = _randn(rows, 8, 512, dtype=dtype, seed=3)[..., :256]
    k = _randn(rows, 2, 256, dtype=dtype, seed=4)
    w = _randn(256, dtype=dtype, seed=5, scale=0.2)
    for x in (q, k):
        _poison_allocator()
        out = rms_norm(x, w, eps=EPS)
        assert_within_one_ulp(reference_norms.rms_norm(x, w, eps=EPS), out)


@pytest.mark.parametrize("dim", [1024, 2560], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("rows", ROWS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual_fp32", [False, True], ids=["residual_same", "residual_fp32"])
def test_add_rms_norm_matches_reference(dim: int, rows: int, dtype: torch.dtype, residual_fp32: bool) -> None:
    from qla_agent.kernels.tilelang.row_launch import add_rms_norm

    x = _randn(rows, dim, dtype=dtype, seed=rows)
    residual = _randn(rows, dim, dtype=torch.float32 if residual_fp32 else dtype, seed=rows + 1, scale=4.0)
    w = _randn(dim, dtype=dtype, seed=dim, scale=0.2)
    _poison_allocator()
    out_y, out_s = add_rms_norm(x, residual, w, eps=EPS)
    ref_y, ref_s = reference_norms.add_rms_norm(x, residual, w, eps=EPS)
    assert torch.equal(ref_s, out_s), "s = x + residual rounded once: it must be exact"
    assert_within_one_ulp(ref_y, out_y)


@pytest.mark.parametrize("rows", ROWS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight_dtype", [None, torch.float32], ids=["w_same", "w_fp32"])
def test_gated_rms_norm_matches_reference(rows: int, dtype: torch.dtype, weight_dtype: torch.dtype | None) -> None:
    """The GDN output norm of the 0.8B model: x [T, 16, 128] and z the columns 6144:8192 of the
    [T, 8224] input projection, read as [T, 16, 128] without a copy."""
    from qla_agent.kernels.tilelang.row_launch import gated_rms_norm

    x = _randn(rows, 16, 128, dtype=dtype, seed=rows)
    z = _randn(rows, 8224, dtype=dtype, seed=rows + 1, scale=2.0)[:, 6144:8192].view(rows, 16, 128)
    w = 1 + _randn(128, dtype=weight_dtype or dtype, seed=6, scale=0.2)
    _poison_allocator()
    out = gated_rms_norm(x, z, w, eps=EPS)
    # Rounded twice on the way (rms(x) to the dtype, then w * that): an intermediate one ulp off, where
    # the sums of squares round differently, is scaled by silu(z) and rounded again, so up to 4 ulps
    # (seen: 3 at T = 8193 on the H100).
    assert_within_one_ulp(reference_norms.gated_rms_norm(x, z, w, eps=EPS), out, ulps=4)
    assert rel_err(reference_norms.gated_rms_norm(x.double(), z.double(), w.double(), eps=EPS), out) < FP64_BOUND


@pytest.mark.parametrize("dim", [3584, 9216], ids=lambda d: f"I{d}")
@pytest.mark.parametrize("rows", ROWS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "gate_up"])
def test_silu_mul_matches_reference(dim: int, rows: int, dtype: torch.dtype, fused: bool) -> None:
    from qla_agent.kernels.tilelang.row_launch import silu_mul

    gate_up = _randn(rows, 2 * dim, dtype=dtype, seed=rows, scale=3.0)
    gate, up = gate_up[:, :dim], gate_up[:, dim:]
    if not fused:
        gate, up = gate.contiguous(), up.contiguous()
    _poison_allocator()
    out = silu_mul(gate, up)
    assert_within_one_ulp(reference_norms.silu_mul(gate, up), out)


def _cos_sin(rows: int, dtype: torch.dtype, rotary_dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The runtime's cos, sin [rows, 1, R] (PartialRope, theta 1e7) at positions 5 ... 5 + rows - 1."""
    from qla_agent.runtime.layers.attention import PartialRope

    return PartialRope(rotary_dim, 1e7).cos_sin(torch.arange(5, 5 + rows, device="cuda"), dtype)


def assert_rope_close(
    x: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor
) -> None:
    """out within ROPE_ULPS units in the last place of the larger of |n_j| and |n_partner| (n the normed row,
    rounded) of the reference, and few elements differ at all: the norm may round one element of a pair
    one ulp the other way (see the module docstring); that ulp passes through two products (|cos|, |sin| <= 1),
    each rounded, and their rounded sum, which may cancel, so the bound is on the pair, not on y."""
    ref = reference_norms.rms_norm_rope(x, w, cos, sin, eps=EPS)
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    assert torch.isfinite(out).all(), "out has NaN/inf (unwritten elements?)"
    normed = reference_norms.rms_norm(x, w, eps=EPS).double().abs()
    half = cos.shape[-1] // 2
    pair = normed.clone()
    pair[..., : 2 * half] = torch.maximum(normed[..., : 2 * half], normed[..., : 2 * half].roll(half, dims=-1))
    tiny = torch.finfo(ref.dtype).tiny
    ulp = torch.exp2(torch.floor(torch.log2(pair.clamp_min(tiny))) - MANTISSA_BITS[ref.dtype])
    diff = (out.double() - ref.double()).abs()
    assert bool((diff <= ROPE_ULPS * ulp).all()), f"max difference {float((diff / ulp).max()):.1f} ulp of the pair"
    if ref.dtype != torch.float32:
        # In fp32 the GPU contracts x cos + r sin into one FMA (one rounding fewer than torch's ops), so
        # most elements differ in the last bit; the ulp bound above is the check there (run 7: it held).
        differing = float((diff > 0).double().mean())
        assert differing <= ULP_FRACTION, f"{differing:.2%} of the elements differ from the reference"


@pytest.mark.parametrize("rows", ROWS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight_dtype", [None, torch.float32], ids=["w_same", "w_fp32"])
def test_rms_norm_rope_matches_reference(rows: int, dtype: torch.dtype, weight_dtype: torch.dtype | None) -> None:
    """The 0.8B attention q/k norm + RoPE (R = 64 of 256): q sliced out of [T, 8, 2 * 256] (per head
    [query | gate]) and k [T, 2, 256], read in place; y compact."""
    from qla_agent.kernels.tilelang.row_launch import rms_norm_rope

    q = _randn(rows, 8, 512, dtype=dtype, seed=rows, scale=3.0)[..., :256]
    k = _randn(rows, 2, 256, dtype=dtype, seed=rows + 1, scale=3.0)
    w = _randn(256, dtype=weight_dtype or dtype, seed=7, scale=0.2)
    cos, sin = _cos_sin(rows, dtype)
    for x in (q, k):
        _poison_allocator()
        out = rms_norm_rope(x, w, cos, sin, eps=EPS)
        assert_rope_close(x, w, cos, sin, out)
        ref64 = reference_norms.rms_norm_rope(x.double(), w.double(), cos.double(), sin.double(), eps=EPS)
        assert rel_err(ref64, out) < FP64_BOUND


def test_rms_norm_rope_full_rotation_in_fp32() -> None:
    """R = D (every dim rotated, no pass-through loop), fp32 rows of 128, one head."""
    from qla_agent.kernels.tilelang.row_launch import rms_norm_rope

    x, w = _randn(63, 1, 128, dtype=torch.float32, seed=30), _randn(128, dtype=torch.float32, seed=31, scale=0.2)
    cos, sin = _cos_sin(63, torch.float32, rotary_dim=128)
    _poison_allocator()
    assert_rope_close(x, w, cos, sin, rms_norm_rope(x, w, cos, sin, eps=EPS))


def _attention_output(rows: int, layout: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[rows, 8, 256] as SDPA may return it: compact, or head-major memory seen through a transpose."""
    if layout == "compact":
        return _randn(rows, 8, 256, dtype=dtype, seed=seed)
    return _randn(8, rows, 256, dtype=dtype, seed=seed).transpose(0, 1)


@pytest.mark.parametrize("rows", ROWS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["compact", "head_major"])
def test_sigmoid_gate_mul_matches_reference(rows: int, dtype: torch.dtype, layout: str) -> None:
    """The gated attention output of the 0.8B model: x [T, 8, 256] in either layout, times sigmoid of the
    gate columns of the [T, 8 * 2 * 256] q projection (per head [query | gate]), both read in place."""
    from qla_agent.kernels.tilelang.row_launch import sigmoid_gate_mul

    x = _attention_output(rows, layout, dtype, seed=rows)
    gate = _randn(rows, 8, 512, dtype=dtype, seed=rows + 1, scale=4.0)[..., 256:]
    _poison_allocator()
    out = sigmoid_gate_mul(x, gate)
    assert out.is_contiguous()
    assert_within_one_ulp(reference_norms.sigmoid_gate_mul(x, gate), out)
    assert rel_err(reference_norms.sigmoid_gate_mul(x.double(), gate.double()), out) < FP64_BOUND


def test_sigmoid_gate_mul_reads_the_sdpa_output_in_place() -> None:
    """The runtime's prefill attention (causal, 8 q / 2 kv heads of 256, q passed as q.transpose(0, 1)[None]):
    the layout SDPA returns is read without a copy."""
    from qla_agent.kernels.tilelang import row_launch

    q, keys, values = _randn(1000, 8, 256, seed=20), _randn(2, 1000, 256, seed=21), _randn(2, 1000, 256, seed=22)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys[None], values[None], is_causal=True, scale=256**-0.5, enable_gqa=True
    )[0].transpose(0, 1)
    gate = _randn(1000, 8, 512, seed=23)[..., 256:]
    rows, *_ = row_launch._as_rows(out, row_launch.heads_of(out, gate))
    assert rows.data_ptr() == out.data_ptr(), f"SDPA output strides {out.stride()} are copied"
    assert_within_one_ulp(reference_norms.sigmoid_gate_mul(out, gate), row_launch.sigmoid_gate_mul(out, gate))


def test_public_entry_points_take_the_kernels() -> None:
    """impl="tilelang" runs every op."""
    x, z, w = _randn(5, 1024, seed=7), _randn(5, 1024, seed=8), _randn(1024, seed=9)
    assert_within_one_ulp(reference_norms.rms_norm(x, w, eps=EPS), kernels.rms_norm(x, w, eps=EPS, impl="tilelang"))
    out_y, out_s = kernels.add_rms_norm(x, z, w, eps=EPS, impl="tilelang")
    assert torch.equal(out_s, (x + z))
    heads_x, heads_z, head_w = x.view(5, 8, 128), z.view(5, 8, 128), w[:128]
    assert_within_one_ulp(
        reference_norms.gated_rms_norm(heads_x, heads_z, head_w, eps=EPS),
        kernels.gated_rms_norm(heads_x, heads_z, head_w, eps=EPS, impl="tilelang"),
    )
    assert_within_one_ulp(reference_norms.silu_mul(x, z), kernels.silu_and_mul(torch.cat([x, z], -1), impl="tilelang"))
    assert_within_one_ulp(
        reference_norms.sigmoid_gate_mul(heads_x, heads_z),
        kernels.sigmoid_gate_mul(heads_x, heads_z, impl="tilelang"),
    )
    cos, sin = _cos_sin(5, torch.bfloat16)
    heads_w = _randn(128, seed=10, scale=0.2)
    out = kernels.rms_norm_rope(heads_x, heads_w, cos, sin, eps=EPS, impl="tilelang")
    assert_rope_close(heads_x, heads_w, cos, sin, out)


def test_kernels_replay_in_a_cuda_graph() -> None:
    """No host syncs: a captured add_rms_norm + gated norm + silu_mul + sigmoid-gate-mul + q norm-and-RoPE
    (strided inputs) replays on new input values."""
    from qla_agent.kernels.tilelang import row_launch

    x, residual, w = _randn(300, 1024, seed=10), _randn(300, 1024, seed=11), _randn(1024, seed=12)
    core, z, head_w = _randn(300, 16, 128, seed=13), _randn(300, 16, 128, seed=14), _randn(128, seed=15)
    attended, projection = _attention_output(300, "head_major", torch.bfloat16, seed=20), _randn(300, 8, 512, seed=21)
    cos, sin = _cos_sin(300, torch.bfloat16)

    def step() -> tuple[torch.Tensor, ...]:
        y, s = row_launch.add_rms_norm(x, residual, w, eps=EPS)
        gated = row_launch.sigmoid_gate_mul(attended, projection[..., 256:])
        rotated = row_launch.rms_norm_rope(projection[..., :256], w[:256], cos, sin, eps=EPS)
        return y, s, row_launch.gated_rms_norm(core, z, head_w, eps=EPS), row_launch.silu_mul(y, s), gated, rotated

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    for tensor, seed in (
        (x, 16), (residual, 17), (core, 18), (z, 19), (attended, 22), (projection, 23), (cos, 24), (sin, 25)
    ):
        tensor.copy_(_randn(*tensor.shape, seed=seed))
    graph.replay()
    torch.cuda.synchronize()
    for out, ref in zip(outputs, step()):
        assert torch.equal(out, ref)
