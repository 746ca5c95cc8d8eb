"""The norm and activation references reproduce transformers' Qwen3.5 norms bit for bit (their
expressions are written out below), and the public entry points validate their inputs and fall back
to the references on the CPU."""

import pytest
import torch
import torch.nn.functional as F

from qla_agent import kernels
from qla_agent.kernels import reference_norms

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
EPS = 1e-6


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _transformers_rms(x: torch.Tensor) -> torch.Tensor:
    """Qwen3_5RMSNorm._norm / Qwen3_5RMSNormGated: x * rsqrt(mean(x^2) + eps) in fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("zero_centered", [True, False], ids=["zero_centered", "plain"])
def test_rms_norm_is_the_model_norm(dtype: torch.dtype, zero_centered: bool) -> None:
    """Zero-centred: (rms(x) * (1 + w.float())).to(dtype), as Qwen3_5RMSNorm; plain: times w.float()."""
    x, w = _randn(3, 5, 64, dtype=dtype, seed=2) * 3, _randn(64, dtype=dtype, seed=1) / 4
    scale = 1.0 + w.float() if zero_centered else w.float()
    expected = (_transformers_rms(x) * scale).to(dtype)
    assert torch.equal(reference_norms.rms_norm(x, w, eps=EPS, zero_centered=zero_centered), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight_dtype", [None, torch.float32], ids=["w_same", "w_fp32"])
def test_gated_rms_norm_is_the_model_norm(dtype: torch.dtype, weight_dtype: torch.dtype | None) -> None:
    """Qwen3_5RMSNormGated: w * rms(x).to(dtype) (in the promoted dtype), times silu(z.float()), to dtype."""
    w = 1 + _randn(128, dtype=weight_dtype or dtype, seed=5) / 4
    x, z = _randn(4, 3, 128, dtype=dtype, seed=6), _randn(4, 3, 128, dtype=dtype, seed=7) * 2
    expected = ((w * _transformers_rms(x).to(dtype)) * F.silu(z.float())).to(dtype)
    assert torch.equal(reference_norms.gated_rms_norm(x, z, w, eps=EPS), expected)


@pytest.mark.parametrize("residual_dtype", DTYPES, ids=str)
def test_add_rms_norm_rounds_the_sum_to_x_dtype(residual_dtype: torch.dtype) -> None:
    x, w = _randn(9, 48, dtype=torch.bfloat16, seed=8), _randn(48, dtype=torch.bfloat16, seed=9)
    residual = _randn(9, 48, dtype=residual_dtype, seed=10) * 5
    y, s = reference_norms.add_rms_norm(x, residual, w, eps=EPS)
    assert s.dtype == y.dtype == torch.bfloat16
    assert torch.equal(s, (x.float() + residual.float()).bfloat16())
    assert torch.equal(y, reference_norms.rms_norm(s, w, eps=EPS))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_silu_mul_is_torch(dtype: torch.dtype) -> None:
    gate, up = _randn(6, 40, dtype=dtype, seed=11) * 4, _randn(6, 40, dtype=dtype, seed=12)
    expected = F.silu(gate) * up
    assert torch.equal(reference_norms.silu_mul(gate, up), expected)
    gate_up = torch.cat([gate, up], dim=-1)
    assert torch.equal(kernels.silu_and_mul(gate_up), F.silu(gate_up[:, :40]) * gate_up[:, 40:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sigmoid_gate_mul_is_the_model_gate(dtype: torch.dtype) -> None:
    """Qwen3.5 attention: attn_output * torch.sigmoid(gate) on [T, nh*d]; the reference on the [T, nh, d]
    views (gate the strided columns of q_proj, per head [query | gate]) gives the same bits."""
    projection = _randn(7, 4, 2 * 64, dtype=dtype, seed=18) * 4
    x, gate = _randn(7, 4, 64, dtype=dtype, seed=19), projection[..., 64:]
    expected = x.flatten(-2) * torch.sigmoid(gate.flatten(-2))
    out = reference_norms.sigmoid_gate_mul(x, gate)
    assert out.shape == x.shape and torch.equal(out.flatten(-2), expected)


def test_fp64_inputs_are_computed_in_fp64() -> None:
    x, w = _randn(5, 64, dtype=torch.float64, seed=13), _randn(64, dtype=torch.float64, seed=14)
    exact = x / (x.pow(2).mean(-1, keepdim=True) + EPS).sqrt() * (1 + w)
    out = reference_norms.rms_norm(x, w, eps=EPS)
    assert out.dtype == torch.float64 and (out - exact).abs().max() < 1e-12


def test_public_entry_points_use_the_reference_on_cpu() -> None:
    x, z, w = (_randn(2, 4, 64, dtype=torch.bfloat16, seed=s) for s in (15, 16, 17))
    w = w[0, 0]
    assert torch.equal(kernels.rms_norm(x, w, eps=EPS), reference_norms.rms_norm(x, w, eps=EPS))
    for out, ref in zip(kernels.add_rms_norm(x, z, w, eps=EPS), reference_norms.add_rms_norm(x, z, w, eps=EPS)):
        assert torch.equal(out, ref)
    assert torch.equal(kernels.gated_rms_norm(x, z, w, eps=EPS), reference_norms.gated_rms_norm(x, z, w, eps=EPS))
    assert torch.equal(kernels.silu_mul(x, z), reference_norms.silu_mul(x, z))
    assert torch.equal(kernels.sigmoid_gate_mul(x, z), reference_norms.sigmoid_gate_mul(x, z))
    with pytest.raises(ValueError, match="inputs are on cpu"):
        kernels.rms_norm(x, w, eps=EPS, impl="tilelang")


X = torch.zeros(3, 64)
W = torch.zeros(64)
REJECTED = [
    pytest.param(lambda: kernels.rms_norm(X, torch.zeros(32), eps=EPS), r"weight must have shape \[D\] = \[64\]",
                 id="weight_width"),
    pytest.param(lambda: kernels.rms_norm(X, W, eps=-1.0), "eps must be a finite number >= 0", id="negative_eps"),
    pytest.param(lambda: kernels.rms_norm(X.long(), W, eps=EPS), "x must be a floating-point tensor", id="int_x"),
    pytest.param(lambda: kernels.rms_norm(torch.zeros(3, 0), torch.zeros(0), eps=EPS), "D >= 1", id="empty_rows"),
    pytest.param(lambda: kernels.add_rms_norm(X, X[:2], W, eps=EPS), "residual must have the shape of x",
                 id="residual_shape"),
    pytest.param(lambda: kernels.gated_rms_norm(X, X.T, W, eps=EPS), "z must have the shape of x", id="z_shape"),
    pytest.param(lambda: kernels.silu_mul(X, X[:, :32]), "up must have the shape of gate", id="up_shape"),
    pytest.param(lambda: kernels.sigmoid_gate_mul(X, X[:, :32]), "gate must have the shape of x", id="gate_shape"),
    pytest.param(lambda: kernels.sigmoid_gate_mul(X, X.long()), "gate must be a floating-point tensor",
                 id="int_gate"),
    pytest.param(lambda: kernels.silu_and_mul(torch.zeros(3, 5)), r"gate_up must have shape \[..., 2I\]",
                 id="odd_gate_up"),
    pytest.param(lambda: kernels.rms_norm(X, W, eps=EPS, impl="fast"), "impl must be one of", id="unknown_impl"),
    pytest.param(lambda: kernels.rms_norm_rope(X, W, X[:, None, :16], X[:, None, :16], eps=EPS),
                 r"x must have shape \[T, heads, D\]", id="rope_x_2d"),
    pytest.param(lambda: kernels.rms_norm_rope(X[None], W, X[:1, None, :15], X[:1, None, :15], eps=EPS),
                 "R even", id="rope_odd_rotary_dim"),
    pytest.param(lambda: kernels.rms_norm_rope(X[None], W, X[:1, None, :16], X[:1, None, :8], eps=EPS),
                 "sin must have the shape of cos", id="rope_sin_shape"),
]


@pytest.mark.parametrize("call,message", REJECTED)
def test_invalid_inputs_are_rejected(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def _runtime_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb (partial, neox) as the runtime ran it after the q/k norm: each
    op in x.dtype."""
    rotary_dim = cos.shape[-1]
    rot, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = torch.cat([-rot[..., rotary_dim // 2 :], rot[..., : rotary_dim // 2]], dim=-1)
    return torch.cat([rot * cos + rotated * sin, passed], dim=-1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_rope_is_the_model_norm_then_rope(dtype: torch.dtype) -> None:
    """q sliced out of [T, heads, 2 * D] (per head [query | gate]): rms_norm, then RoPE on the first R dims,
    bit for bit; cos/sin from the runtime's PartialRope."""
    from qla_agent.runtime.layers.attention import PartialRope

    x = _randn(9, 4, 2 * 64, dtype=dtype, seed=20)[..., :64] * 3
    w = _randn(64, dtype=dtype, seed=21) / 4
    cos, sin = PartialRope(16, 10_000.0).cos_sin(torch.arange(100, 109), dtype)
    expected = _runtime_rope(reference_norms.rms_norm(x, w, eps=EPS), cos, sin)
    out = reference_norms.rms_norm_rope(x, w, cos, sin, eps=EPS)
    assert out.dtype == dtype and torch.equal(out, expected)
    assert torch.equal(kernels.rms_norm_rope(x, w, cos, sin, eps=EPS), expected)
