"""CPU checks of the TileLang norm, SiLU-mul and sigmoid-gate-mul launchers.

SiLU-mul and sigmoid-gate-mul have no reduction, so their real prim_funcs run on TileLang's C backend
(fp32, vectorisation off: the C backend has no vector exp). The norms reduce over fragments, which the C backend cannot
lower, so their launchers are checked against the real prim_funcs' signatures instead: every tensor's
dtype, shape and strides (the row strides the kernel is told must be the tensor's), with numerics
left to the GPU tests. The layout helpers decide when a strided input is read in place.
"""

import shutil

import pytest
import torch

from qla_agent.kernels import reference_norms
from tests.kernels.gdn_inputs import rel_err
from tests.kernels.test_tilelang_compile import ARCHS
from tests.kernels.tilelang_fakes import TL_DTYPE, SignatureCheck

tilelang = pytest.importorskip("tilelang")

EPS = 1e-6


@pytest.mark.parametrize("rows", [1, 13, 257], ids=lambda r: f"T{r}")
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "gate_up"])
def test_silu_mul_program_matches_reference(c_kernels_scalar, rows: int, fused: bool) -> None:
    """I = 96 (a 32-column block); with gate_up the halves of one [T, 2I] tensor are read in place."""
    from qla_agent.kernels.tilelang.row_launch import silu_mul

    gen = torch.Generator().manual_seed(rows)
    gate_up = torch.randn(rows, 192, generator=gen) * 3
    gate, up = (gate_up[:, :96], gate_up[:, 96:]) if fused else (gate_up[:, :96].clone(), gate_up[:, 96:].clone())
    out = silu_mul(gate, up)
    assert rel_err(reference_norms.silu_mul(gate.double(), up.double()), out) < 1e-6


def _attention_output(rows: int, heads: int, dim: int, layout: str, gen: torch.Generator) -> torch.Tensor:
    """[rows, heads, dim] as SDPA may return it for q.transpose(0, 1)[None]: compact (q's layout kept) or
    head-major ([heads, rows, dim] memory seen through the transpose)."""
    if layout == "compact":
        return torch.randn(rows, heads, dim, generator=gen)
    return torch.randn(heads, rows, dim, generator=gen).transpose(0, 1)


@pytest.mark.parametrize("rows", [1, 13, 257], ids=lambda r: f"T{r}")
@pytest.mark.parametrize("layout", ["compact", "head_major"])
def test_sigmoid_gate_mul_program_matches_reference(c_kernels_scalar, rows: int, layout: str) -> None:
    """The attention output [T, 8, 32] in either SDPA layout times sigmoid of the gate columns of a
    [T, 8, 2 * 32] q projection, both read in place; y compact."""
    from qla_agent.kernels.tilelang.row_launch import sigmoid_gate_mul

    gen = torch.Generator().manual_seed(rows)
    x = _attention_output(rows, 8, 32, layout, gen)
    gate = (torch.randn(rows, 8, 64, generator=gen) * 4)[..., 32:]
    out = sigmoid_gate_mul(x, gate)
    assert out.is_contiguous() and out.shape == x.shape
    assert rel_err(reference_norms.sigmoid_gate_mul(x.double(), gate.double()), out) < 1e-6


def _wide(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def test_norm_launchers_match_kernel_signatures(fake_kernels: dict[str, SignatureCheck]) -> None:
    """Hidden-state norms ([T, D]), a q-norm on q sliced out of [T, H, 2 * 256] and the gated norm on z
    sliced out of the GDN projection ([T, 8224] -> [T, 16, 128]): no copies, strides passed through."""
    from qla_agent.kernels.tilelang import row_launch

    x, residual, w = _wide(7, 1024), _wide(7, 1024), _wide(1024)
    y, s = row_launch.add_rms_norm(x, residual, w, eps=EPS)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].data_ptr() == x.data_ptr() and call["s"].data_ptr() == s.data_ptr()
    assert call["y"].data_ptr() == y.data_ptr() and s.shape == y.shape == x.shape
    q = _wide(5, 8, 512)[..., :256]
    row_launch.rms_norm(q, _wide(256), eps=EPS, zero_centered=False)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].data_ptr() == q.data_ptr() and call["x_token_stride8"] == 512 // 8
    projection = _wide(9, 8224)
    z = projection[:, 6144:8192].view(9, 16, 128)
    core = _wide(9, 16, 128)
    out = row_launch.gated_rms_norm(core, z, _wide(128, dtype=torch.float32), eps=EPS)
    call = fake_kernels["norms"].calls[-1]
    assert call["z"].data_ptr() == z.data_ptr() and (call["z_token_stride8"], call["z_head_stride8"]) == (1028, 16)
    assert out.shape == core.shape and out.dtype == core.dtype
    assert fake_kernels["norms"].prim_func.attrs["global_symbol"] == "gated_rms_norm"


def test_silu_mul_launcher_reads_gate_up_halves_in_place(fake_kernels: dict[str, SignatureCheck]) -> None:
    from qla_agent.kernels.tilelang import row_launch

    gate_up = _wide(3, 11, 2 * 3584)
    out = row_launch.silu_mul(gate_up[..., :3584], gate_up[..., 3584:])
    call = fake_kernels["norms"].calls[-1]
    assert call["gate"].data_ptr() == gate_up.data_ptr() and call["gate_stride8"] == 2 * 3584 // 8
    assert call["up"].data_ptr() == gate_up[..., 3584:].data_ptr() and out.shape == (3, 11, 3584)


@pytest.mark.parametrize("layout", ["compact", "head_major"])
def test_sigmoid_gate_mul_launcher_reads_attention_and_gate_in_place(
    fake_kernels: dict[str, SignatureCheck], layout: str
) -> None:
    """The 0.8B attention layer (8 heads of 256): the SDPA output and the gate columns of q_proj
    ([T, 8 * 2 * 256], per head [query | gate]) go to the kernel without a copy, strides passed through.
    Gate rows are evenly spaced (512 apart), so with a compact x all rows are one stride apart (heads = 1)."""
    from qla_agent.kernels.tilelang import row_launch

    x = _attention_output(5, 8, 256, layout, torch.Generator().manual_seed(1)).bfloat16()
    gate = _wide(5, 8 * 2 * 256).view(5, 8, 512)[..., 256:]
    out = row_launch.sigmoid_gate_mul(x, gate)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].data_ptr() == x.data_ptr() and call["gate"].data_ptr() == gate.data_ptr()
    strides = [call[f"{name}_{axis}_stride8"] * 8 for name in ("x", "gate") for axis in ("token", "head")]
    assert strides == ([256, 0, 512, 0] if layout == "compact" else [256, 5 * 256, 4096, 512])
    assert call["y"].data_ptr() == out.data_ptr() and out.is_contiguous() and out.shape == x.shape


def test_sigmoid_gate_mul_launcher_reads_one_decode_token_as_rows(fake_kernels: dict[str, SignatureCheck]) -> None:
    """One session's decode token: x [1, 8, 256] and its gate collapse to 8 rows one head stride apart."""
    from qla_agent.kernels.tilelang import row_launch

    x, gate = _wide(1, 8, 256), _wide(1, 8, 512)[..., 256:]
    row_launch.sigmoid_gate_mul(x, gate)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].shape == call["gate"].shape == (8, 1, 256) and call["gate"].data_ptr() == gate.data_ptr()
    assert (call["x_token_stride8"], call["gate_token_stride8"]) == (256 // 8, 512 // 8)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
def test_sigmoid_gate_mul_compiles(arch: str) -> None:
    """The 0.8B attention shape (8 heads of 256, bf16) builds for `arch`; x, gate and y move in 16-byte vectors."""
    from qla_agent.kernels.tilelang import build, norms

    config = norms.sigmoid_gate_mul_config(256, 8, torch.bfloat16)
    source = build.compiled(norms.sigmoid_gate_mul_program, config, arch).get_kernel_source()
    assert f"__launch_bounds__({config.block.threads}" in source
    for operand in ("x", "gate", "y"):
        assert f"*(uint4*)({operand} + " in source, f"sigmoid_gate_mul moves {operand} without 16-byte vectors"


def _cos_sin(tokens: int, rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _wide(tokens, 1, rotary_dim), _wide(tokens, 1, rotary_dim)


def test_rms_norm_rope_launcher_reads_q_in_place(fake_kernels: dict[str, SignatureCheck]) -> None:
    """The 0.8B q/k norms: q sliced out of q_proj's [T, 8 * 2 * 256] (per head [query | gate]) and k [T, 2, 256]
    go to the kernel without a copy, read per head (cos/sin are per token); y compact."""
    from qla_agent.kernels.tilelang import row_launch

    cos, sin = _cos_sin(5, 64)
    q = _wide(5, 8 * 2 * 256).view(5, 8, 512)[..., :256]
    out = row_launch.rms_norm_rope(q, _wide(256), cos, sin, eps=EPS)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].data_ptr() == q.data_ptr() and call["x"].shape == (5, 8, 256)
    assert (call["x_token_stride8"], call["x_head_stride8"]) == (4096 // 8, 512 // 8)
    assert call["cos"].data_ptr() == cos.data_ptr() and call["sin"].data_ptr() == sin.data_ptr()
    assert call["y"].data_ptr() == out.data_ptr() and out.is_contiguous() and out.shape == q.shape
    k = _wide(5, 2, 256)
    row_launch.rms_norm_rope(k, _wide(256), cos, sin, eps=EPS)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].data_ptr() == k.data_ptr() and (call["x_token_stride8"], call["x_head_stride8"]) == (64, 32)
    assert fake_kernels["norms"].prim_func.attrs["global_symbol"] == "rms_norm_rope"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
def test_rms_norm_rope_compiles(arch: str) -> None:
    """The 0.8B q and k shapes (8 and 2 heads of 256, R = 64, bf16) build for `arch`; x, cos, sin and y move in
    16-byte vectors."""
    from qla_agent.kernels.tilelang import build, norms

    for heads in (8, 2):
        config = norms.rms_norm_rope_config(256, 64, heads, torch.bfloat16, torch.bfloat16)
        source = build.compiled(norms.rms_norm_rope_program, config, arch).get_kernel_source()
        assert f"__launch_bounds__({config.block.threads}" in source
        for operand in ("x", "cos_1", "sin_1", "y"):
            assert f"*(uint4*)({operand} + " in source, f"rms_norm_rope moves {operand} without 16-byte vectors"


@pytest.mark.parametrize("dim,rotary_dim,itemsize", [(256, 64, 2), (256, 64, 4), (128, 128, 2), (128, 32, 4)])
def test_rope_block_splits_both_parts_into_whole_vectors(dim: int, rotary_dim: int, itemsize: int) -> None:
    from qla_agent.kernels.tilelang.norms import MAX_VECTORS, rope_block

    block = rope_block(dim, rotary_dim, itemsize, 8)
    rows, unit = block.block_tokens * block.block_heads, block.threads * 16 // itemsize
    assert rows * rotary_dim % unit == 0 and rows * (dim - rotary_dim) % unit == 0
    assert rows * dim // unit <= MAX_VECTORS


def test_empty_inputs_launch_nothing(fake_kernels: dict[str, SignatureCheck]) -> None:
    from qla_agent.kernels.tilelang import row_launch

    assert row_launch.rms_norm(_wide(0, 1024), _wide(1024), eps=EPS).shape == (0, 1024)
    assert row_launch.silu_mul(_wide(0, 64), _wide(0, 64)).shape == (0, 64)
    assert row_launch.sigmoid_gate_mul(_wide(0, 8, 256), _wide(0, 8, 256)).shape == (0, 8, 256)
    assert row_launch.rms_norm_rope(_wide(0, 8, 256), _wide(256), *_cos_sin(0, 64), eps=EPS).shape == (0, 8, 256)
    assert all(not check.calls for check in fake_kernels.values())


LAYOUTS = [
    pytest.param(lambda: _wide(6, 64), 1, (64, 0), id="contiguous"),
    pytest.param(lambda: _wide(6, 200)[:, 8:72], 1, (200, 0), id="row_slice"),
    pytest.param(lambda: _wide(2, 3, 4, 64), 1, (64, 0), id="collapsible_4d"),
    pytest.param(lambda: _wide(5, 4, 128)[:, :, :64], 1, (128, 0), id="head_slice"),
    pytest.param(lambda: _wide(5, 3 * 128 + 8)[:, 8:].view(5, 3, 128), 3, (392, 128), id="projection_heads"),
    pytest.param(lambda: _wide(1, 64), 1, (0, 0), id="one_row"),
]


@pytest.mark.parametrize("make,heads,strides", LAYOUTS)
def test_inputs_are_read_in_place(make, heads: int, strides: tuple[int, int]) -> None:
    from qla_agent.kernels.tilelang.row_launch import _as_rows, heads_of

    x = make()
    assert heads_of(x) == heads
    view, token8, head8 = _as_rows(x, heads)
    assert view.data_ptr() == x.data_ptr() and (token8 * 8, head8 * 8) == strides
    assert torch.equal(view.reshape(x.shape), x)


COPIED = [
    pytest.param(lambda: _wide(6, 100)[:, 4:68], id="row_stride_not_multiple_of_8"),
    pytest.param(lambda: _wide(6 * 64 + 4)[4:].view(6, 64), id="unaligned_start"),
    pytest.param(lambda: _wide(64, 6).T, id="columns"),
]


@pytest.mark.parametrize("make", COPIED)
def test_other_inputs_are_copied(make) -> None:
    from qla_agent.kernels.tilelang.row_launch import _as_rows, heads_of

    x = make()
    view, token8, _ = _as_rows(x, heads_of(x))
    assert view.data_ptr() != x.data_ptr() and view.is_contiguous() and token8 * 8 == 64
    assert torch.equal(view.reshape(x.shape), x)


META = torch.device("meta")


def _meta(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype)


def test_model_shapes_are_supported() -> None:
    from qla_agent.kernels.tilelang import (
        _gated_rms_norm_reason, _rms_norm_reason, _rms_norm_rope_reason, _sigmoid_gate_mul_reason, _silu_mul_reason,
    )

    for dim in (1024, 2048, 2560, 4096, 5120, 8192):
        assert _rms_norm_reason(_meta(3, dim), _meta(dim), residual=_meta(3, dim)) is None, dim
    assert _rms_norm_reason(_meta(3, 8, 256), _meta(256, dtype=torch.float32)) is None
    assert _gated_rms_norm_reason(_meta(3, 16, 128), _meta(3, 16, 128), _meta(128, dtype=torch.float32)) is None
    for dim in (3584, 6144, 9216, 12288, 17408):
        assert _silu_mul_reason(_meta(3, dim), _meta(3, dim)) is None, dim
    for heads in (8, 16):
        assert _sigmoid_gate_mul_reason(_meta(3, heads, 256), _meta(3, heads, 512)[..., 256:]) is None, heads
    for heads in (1, 2, 4, 8, 16):
        rope = (_meta(3, 1, 64), _meta(3, 1, 64))
        assert _rms_norm_rope_reason(_meta(3, heads, 512)[..., :256], _meta(256), *rope) is None, heads


REFUSALS = [
    pytest.param(lambda r: r._rms_norm_reason(_meta(3, 100), _meta(100)), "D=100", id="width_not_multiple_of_8"),
    pytest.param(lambda r: r._rms_norm_reason(_meta(3, 8 * 40), _meta(8 * 40)), "D=320", id="width_odd_vectors"),
    pytest.param(lambda r: r._rms_norm_reason(_meta(3, 64, dtype=torch.float64), _meta(64)), "float64", id="fp64"),
    pytest.param(lambda r: r._gated_rms_norm_reason(_meta(3, 128), _meta(3, 128, dtype=torch.float64), _meta(128)),
                 "z float64", id="gated_fp64_z"),
    pytest.param(lambda r: r._silu_mul_reason(_meta(3, 64), _meta(3, 64, dtype=torch.float16)), "gate/up dtypes",
                 id="silu_mixed"),
    pytest.param(lambda r: r._silu_mul_reason(_meta(3, 60), _meta(3, 60)), "I=60", id="silu_width"),
    pytest.param(lambda r: r._sigmoid_gate_mul_reason(_meta(3, 256), _meta(3, 256, dtype=torch.float16)),
                 "x/gate dtypes", id="sigmoid_gate_mixed"),
    pytest.param(lambda r: r._sigmoid_gate_mul_reason(_meta(3, 100), _meta(3, 100)), "D=100", id="sigmoid_gate_width"),
    pytest.param(lambda r: r._rms_norm_rope_reason(_meta(3, 2, 256), _meta(256), _meta(3, 1, 24), _meta(3, 1, 24)),
                 "R=24", id="rope_rotary_dim"),
    pytest.param(lambda r: r._rms_norm_rope_reason(
        _meta(3, 2, 256), _meta(256), *(_meta(3, 1, 64, dtype=torch.float32) for _ in "cs")), "x/cos/sin dtypes",
        id="rope_cos_dtype"),
]


@pytest.mark.parametrize("reason,fragment", REFUSALS)
def test_unsupported_calls_say_why(reason, fragment: str) -> None:
    import qla_agent.kernels.tilelang as backend

    message = reason(backend)
    assert message is not None and fragment in message
