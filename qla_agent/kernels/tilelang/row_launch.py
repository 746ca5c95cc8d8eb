"""Host side of the row kernels (`norms.py`): how an input's rows are read (views with token and head
strides, a copy only when the kernels cannot read it in place), the output allocation and one launch per
call through the kernel's cached FFI entry. Layouts and configs are cached by shape and strides: the
runtime's prefill makes ~100 of these launches and its wall time on a slow host is Python's.
"""

import functools

import torch

from qla_agent.kernels.tilelang import build
from qla_agent.kernels.tilelang.build import ROW_ALIGN, VECTOR_BYTES
from qla_agent.kernels.tilelang.norms import (
    gated_rms_norm_config, gated_rms_norm_program, rms_norm_config, rms_norm_program, rms_norm_rope_config,
    rms_norm_rope_program, sigmoid_gate_mul_config, sigmoid_gate_mul_program, silu_mul_config, silu_mul_program,
)


def _collapsed_stride(shape: tuple[int, ...], strides: tuple[int, ...]) -> int | None:
    """The one stride between consecutive elements of dims `shape` read as one flat dim (0 when they
    hold at most one element), or None when they do not collapse."""
    stride, expected = 0, None
    for size, step in zip(reversed(shape), reversed(strides)):
        if size == 1:
            continue
        if expected is not None and step != expected:
            return None
        stride = step if expected is None else stride
        expected = step * size
    return stride


def heads_of(*tensors: torch.Tensor) -> int:
    """How the kernels read rows of [..., D] inputs: 1 when every input's rows are one stride apart,
    else as [tokens, heads, D] with heads = shape[-2] (a head-split slice of a wider projection)."""
    for tensor in tensors:
        if not tensor.is_contiguous():
            return _heads(tuple((t.shape, t.stride()) for t in tensors))
    # Compact rows (the runtime's residual stream and norms): 0.3 us instead of the cached lookup's 1.5.
    return 1


# The layout helpers run for every input of every row-kernel launch (~100 launches per prefill), and a
# model's layouts are few: cached by shape and strides, they cost a lookup instead of ~10 us of Python.
@functools.lru_cache(maxsize=4096)
def _heads(layouts: tuple[tuple[torch.Size, tuple[int, ...]], ...]) -> int:
    rows_collapse = (_collapsed_stride(shape[:-1], strides[:-1]) is not None for shape, strides in layouts)
    if len(layouts[0][0]) < 3 or all(rows_collapse):
        return 1
    return layouts[0][0][-2]


@functools.lru_cache(maxsize=4096)
def _strides(shape: torch.Size, strides: tuple[int, ...], heads: int) -> tuple[int, int] | None:
    """(token stride, head stride) of a [..., D] tensor read as [tokens, heads, D], or None when they are
    not multiples of ROW_ALIGN with unit column stride."""
    if strides[-1] != 1:
        return None
    if heads == 1:
        token, head = _collapsed_stride(shape[:-1], strides[:-1]), 0
    else:
        token, head = _collapsed_stride(shape[:-2], strides[:-2]), strides[-2]
    if token is None or token % ROW_ALIGN or head % ROW_ALIGN:
        return None
    return token, head


def _layout(x: torch.Tensor, heads: int) -> tuple[int, int] | None:
    """(token stride, head stride) of x [..., D] read as [tokens, heads, D], or None when the kernels
    cannot read it in place (strides not multiples of ROW_ALIGN, data not 16-byte aligned)."""
    return None if x.data_ptr() % VECTOR_BYTES else _strides(x.shape, x.stride(), heads)


def _as_rows(x: torch.Tensor, heads: int, *, flat: bool = False) -> tuple[torch.Tensor, int, int]:
    """(view [tokens, heads, D], or [tokens, D] when flat (heads = 1), token stride // ROW_ALIGN, head
    stride // ROW_ALIGN), copying x first only when the kernels cannot read it in place."""
    layout = _layout(x, heads)
    if layout is None:
        x = x.clone(memory_format=torch.contiguous_format)
        layout = _layout(x, heads)
    dim = x.shape[-1]
    token, head = layout
    if flat:
        return x.as_strided((x.numel() // dim, dim), (token, 1)), token // ROW_ALIGN, 0
    view = x.as_strided((x.numel() // (heads * dim), heads, dim), (token, head, 1))
    return view, token // ROW_ALIGN, head // ROW_ALIGN


def _output(x: torch.Tensor) -> torch.Tensor:
    """A compact tensor of x's shape, dtype and device: the sizes go in as ints (a torch.Size argument
    takes torch's argument parser 1.5 us longer to read, on empty and view alike)."""
    return x.new_empty(*x.shape)


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """tensor (a weight [D], cos/sin [T, 1, R]), contiguous and 16-byte aligned (a copy only when it is not)."""
    if tensor.is_contiguous() and tensor.data_ptr() % VECTOR_BYTES == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _norm_rows(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, zero_centered: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, s): one launch of the RMSNorm kernel, with the residual add when `residual` is given."""
    heads = heads_of(x, *([] if residual is None else [residual]))
    cfg = rms_norm_config(
        x.shape[-1], heads, x.dtype, weight.dtype, None if residual is None else residual.dtype,
        zero_centered=zero_centered,
    )
    y = _output(x)
    s = None if residual is None else torch.empty_like(y)
    if y.numel() == 0:
        return y, s
    arch, _ = build.device_facts(x.device)
    kernel = build.launcher(rms_norm_program, cfg, arch)
    rows, *x_strides = _as_rows(x, heads)
    dim = x.shape[-1]
    if residual is None:
        kernel(rows, _aligned(weight), y.view(-1, heads, dim), float(eps), *x_strides)
    else:
        residual_rows, *residual_strides = _as_rows(residual, heads)
        kernel(
            rows, residual_rows, _aligned(weight), y.view(-1, heads, dim), s.view(-1, heads, dim), float(eps),
            *x_strides, *residual_strides,
        )
    return y, s


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool = True) -> torch.Tensor:
    """RMSNorm on CUDA; arguments and result as `qla_agent.kernels.rms_norm`: x [..., D] -> y [..., D]."""
    return _norm_rows(x, None, weight, eps, zero_centered)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add + RMSNorm on CUDA in one launch: x, residual [..., D] -> (y, s) [..., D] in x.dtype."""
    return _norm_rows(x, residual, weight, eps, zero_centered)


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, eps: float
) -> torch.Tensor:
    """Zero-centred RMSNorm + partial neox RoPE on CUDA: x [T, heads, D] (a q/k slice of a projection,
    read in place), weight [D], cos, sin [T, 1, R] -> y [T, heads, D] contiguous in x.dtype."""
    heads = x.shape[-2]
    cfg = rms_norm_rope_config(x.shape[-1], cos.shape[-1], heads, x.dtype, weight.dtype)
    y = _output(x)
    if y.numel() == 0:
        return y
    arch, _ = build.device_facts(x.device)
    kernel = build.launcher(rms_norm_rope_program, cfg, arch)
    rows, *x_strides = _as_rows(x, heads)
    kernel(rows, _aligned(weight), _aligned(cos), _aligned(sin), y, float(eps), *x_strides)
    return y


def _launch_on_rows(
    program, cfg, x: torch.Tensor, z: torch.Tensor, heads: int, before_y: tuple = (), after_y: tuple = ()
) -> torch.Tensor:
    """One launch of `program` over x and z read as [tokens, heads, D] rows, called as kernel(x rows, z rows,
    *before_y, y rows, *after_y, x strides, z strides) -> y [..., D] compact in x.dtype."""
    y = _output(x)
    if y.numel() == 0:
        return y
    arch, _ = build.device_facts(x.device)
    (rows, *x_strides), (z_rows, *z_strides) = _as_rows(x, heads), _as_rows(z, heads)
    y_rows = y.view(-1, heads, x.shape[-1])
    build.launcher(program, cfg, arch)(rows, z_rows, *before_y, y_rows, *after_y, *x_strides, *z_strides)
    return y


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Gated RMSNorm on CUDA: x, z [..., D] (z may be a head-split slice of a projection), weight [D]
    -> y [..., D] in x.dtype."""
    heads = heads_of(x, z)
    cfg = gated_rms_norm_config(x.shape[-1], heads, x.dtype, z.dtype, weight.dtype)
    return _launch_on_rows(gated_rms_norm_program, cfg, x, z, heads, (_aligned(weight),), (float(eps),))


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up on CUDA: gate, up [..., I] (rows may be strided, e.g. the halves of a fused
    projection) -> out [..., I] in gate.dtype."""
    dim = gate.shape[-1]
    cfg = silu_mul_config(dim, gate.dtype)
    out = _output(gate)
    if out.numel() == 0:
        return out
    arch, _ = build.device_facts(gate.device)
    kernel = build.launcher(silu_mul_program, cfg, arch)
    (gates, gate_stride8, _), (ups, up_stride8, _) = _as_rows(gate, 1, flat=True), _as_rows(up, 1, flat=True)
    kernel(gates, ups, out if out.dim() == 2 else out.view(-1, dim), gate_stride8, up_stride8)
    return out


def sigmoid_gate_mul(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(gate) on CUDA: x, gate [..., D] (rows may be strided: the attention output in SDPA's
    layout, the gate columns of q_proj) -> y [..., D] contiguous in x.dtype."""
    heads = heads_of(x, gate)
    cfg = sigmoid_gate_mul_config(x.shape[-1], heads, x.dtype)
    return _launch_on_rows(sigmoid_gate_mul_program, cfg, x, gate, heads)
