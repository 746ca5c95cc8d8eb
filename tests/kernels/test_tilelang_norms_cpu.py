"""CPU checks of the TileLang norm and SiLU-mul launchers.

SiLU-mul has no reduction, so its real prim_func runs on TileLang's C backend (fp32, vectorisation
off: the C backend has no vector exp). The norms reduce over fragments, which the C backend cannot
lower, so their launchers are checked against the real prim_funcs' signatures instead: every tensor's
dtype, shape and strides (the row strides the kernel is told must be the tensor's), with numerics
left to the GPU tests. The layout helpers decide when a strided input is read in place.
"""

import pytest
import torch

from qla_agent.kernels import reference_norms
from tests.kernels.gdn_inputs import rel_err
from tests.kernels.tilelang_fakes import TL_DTYPE, SignatureCheck

tilelang = pytest.importorskip("tilelang")

EPS = 1e-6


@pytest.mark.parametrize("rows", [1, 13, 257], ids=lambda r: f"T{r}")
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "gate_up"])
def test_silu_mul_program_matches_reference(c_kernels_scalar, rows: int, fused: bool) -> None:
    """I = 96 (a 32-column block); with gate_up the halves of one [T, 2I] tensor are read in place."""
    from qla_agent.kernels.tilelang.norms import silu_mul

    gen = torch.Generator().manual_seed(rows)
    gate_up = torch.randn(rows, 192, generator=gen) * 3
    gate, up = (gate_up[:, :96], gate_up[:, 96:]) if fused else (gate_up[:, :96].clone(), gate_up[:, 96:].clone())
    out = silu_mul(gate, up)
    assert rel_err(reference_norms.silu_mul(gate.double(), up.double()), out) < 1e-6


def _wide(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def test_norm_launchers_match_kernel_signatures(fake_kernels: dict[str, SignatureCheck]) -> None:
    """Hidden-state norms ([T, D]), a q-norm on q sliced out of [T, H, 2 * 256] and the gated norm on z
    sliced out of the GDN projection ([T, 8224] -> [T, 16, 128]): no copies, strides passed through."""
    from qla_agent.kernels.tilelang import norms

    x, residual, w = _wide(7, 1024), _wide(7, 1024), _wide(1024)
    y, s = norms.add_rms_norm(x, residual, w, eps=EPS)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].data_ptr() == x.data_ptr() and call["s"].data_ptr() == s.data_ptr()
    assert call["y"].data_ptr() == y.data_ptr() and s.shape == y.shape == x.shape
    q = _wide(5, 8, 512)[..., :256]
    norms.rms_norm(q, _wide(256), eps=EPS, zero_centered=False)
    call = fake_kernels["norms"].calls[-1]
    assert call["x"].data_ptr() == q.data_ptr() and call["x_token_stride8"] == 512 // 8
    projection = _wide(9, 8224)
    z = projection[:, 6144:8192].view(9, 16, 128)
    core = _wide(9, 16, 128)
    out = norms.gated_rms_norm(core, z, _wide(128, dtype=torch.float32), eps=EPS)
    call = fake_kernels["norms"].calls[-1]
    assert call["z"].data_ptr() == z.data_ptr() and (call["z_token_stride8"], call["z_head_stride8"]) == (1028, 16)
    assert out.shape == core.shape and out.dtype == core.dtype
    assert fake_kernels["norms"].prim_func.attrs["global_symbol"] == "gated_rms_norm"


def test_silu_mul_launcher_reads_gate_up_halves_in_place(fake_kernels: dict[str, SignatureCheck]) -> None:
    from qla_agent.kernels.tilelang import norms

    gate_up = _wide(3, 11, 2 * 3584)
    out = norms.silu_mul(gate_up[..., :3584], gate_up[..., 3584:])
    call = fake_kernels["norms"].calls[-1]
    assert call["gate"].data_ptr() == gate_up.data_ptr() and call["gate_stride8"] == 2 * 3584 // 8
    assert call["up"].data_ptr() == gate_up[..., 3584:].data_ptr() and out.shape == (3, 11, 3584)


def test_empty_inputs_launch_nothing(fake_kernels: dict[str, SignatureCheck]) -> None:
    from qla_agent.kernels.tilelang import norms

    assert norms.rms_norm(_wide(0, 1024), _wide(1024), eps=EPS).shape == (0, 1024)
    assert norms.silu_mul(_wide(0, 64), _wide(0, 64)).shape == (0, 64)
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
    from qla_agent.kernels.tilelang.norms import _as_rows, heads_of

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
    from qla_agent.kernels.tilelang.norms import _as_rows, heads_of

    x = make()
    view, token8, _ = _as_rows(x, heads_of(x))
    assert view.data_ptr() != x.data_ptr() and view.is_contiguous() and token8 * 8 == 64
    assert torch.equal(view.reshape(x.shape), x)


META = torch.device("meta")


def _meta(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype)


def test_model_shapes_are_supported() -> None:
    from qla_agent.kernels.tilelang import _gated_rms_norm_reason, _rms_norm_reason, _silu_mul_reason

    for dim in (1024, 2048, 2560, 4096, 5120, 8192):
        assert _rms_norm_reason(_meta(3, dim), _meta(dim), residual=_meta(3, dim)) is None, dim
    assert _rms_norm_reason(_meta(3, 8, 256), _meta(256, dtype=torch.float32)) is None
    assert _gated_rms_norm_reason(_meta(3, 16, 128), _meta(3, 16, 128), _meta(128, dtype=torch.float32)) is None
    for dim in (3584, 6144, 9216, 12288, 17408):
        assert _silu_mul_reason(_meta(3, dim), _meta(3, dim)) is None, dim


REFUSALS = [
    pytest.param(lambda r: r._rms_norm_reason(_meta(3, 100), _meta(100)), "D=100", id="width_not_multiple_of_8"),
    pytest.param(lambda r: r._rms_norm_reason(_meta(3, 8 * 40), _meta(8 * 40)), "D=320", id="width_odd_vectors"),
    pytest.param(lambda r: r._rms_norm_reason(_meta(3, 64, dtype=torch.float64), _meta(64)), "float64", id="fp64"),
    pytest.param(lambda r: r._gated_rms_norm_reason(_meta(3, 128), _meta(3, 128, dtype=torch.float64), _meta(128)),
                 "z float64", id="gated_fp64_z"),
    pytest.param(lambda r: r._silu_mul_reason(_meta(3, 64), _meta(3, 64, dtype=torch.float16)), "gate/up dtypes",
                 id="silu_mixed"),
    pytest.param(lambda r: r._silu_mul_reason(_meta(3, 60), _meta(3, 60)), "I=60", id="silu_width"),
]


@pytest.mark.parametrize("reason,fragment", REFUSALS)
def test_unsupported_calls_say_why(reason, fragment: str) -> None:
    import qla_agent.kernels.tilelang as backend

    message = reason(backend)
    assert message is not None and fragment in message
