"""TileLang backend of `qla_agent.kernels`: CUDA kernels for sm_80 ... sm_90 (the portable mma.sync path).

`supports(op, **arguments)` says whether a call can run here (None) or why not; the op functions
take the public signature minus `impl`. See README.md beside this file for the kernel design.
"""

import logging

import torch

from qla_agent.kernels.tilelang.build import HEAD_DIM, ROW_ALIGN, VECTOR_BYTES, device_arch
from qla_agent.kernels.tilelang.conv import causal_conv1d, causal_conv1d_update
from qla_agent.kernels.tilelang.decode import gdn_decode
from qla_agent.kernels.tilelang.norms import MAX_GRID_Y, MAX_VECTORS, rope_block, row_block, silu_mul_tile
from qla_agent.kernels.tilelang.row_launch import (
    add_rms_norm, gated_rms_norm, heads_of, rms_norm, rms_norm_rope, sigmoid_gate_mul, silu_mul,
)
from qla_agent.kernels.tilelang.prefill import gdn_prefill

logger = logging.getLogger(__name__)

__all__ = [
    "add_rms_norm", "causal_conv1d", "causal_conv1d_update", "gated_rms_norm", "gdn_decode", "gdn_prefill",
    "rms_norm", "rms_norm_rope", "sigmoid_gate_mul", "silu_mul", "supports",
]

IO_DTYPES = (torch.bfloat16, torch.float16)
# Decode has no tensor-core GEMM, so fp32 q/k/v run too.
DECODE_IO_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
GATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SLOT_DTYPES = (torch.int32, torch.int64)
CONV_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_CONV_WIDTH = 8
ROW_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
INT32_LIMIT = 2**31


def _gdn_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    A_log: torch.Tensor | None, dt_bias: torch.Tensor | None, io_dtypes: tuple[torch.dtype, ...],
) -> str | None:
    """What prefill and decode both need: 128-wide heads, one q/k/v dtype, float gates."""
    if q.shape[-1] != HEAD_DIM or v.shape[-1] != HEAD_DIM:
        return f"head dims K={q.shape[-1]}, V={v.shape[-1]}: the kernels are built for K = V = {HEAD_DIM}"
    if q.dtype not in io_dtypes or k.dtype != q.dtype or v.dtype != q.dtype:
        names = "/".join(str(d).removeprefix("torch.") for d in io_dtypes)
        return f"q/k/v dtypes {q.dtype}/{k.dtype}/{v.dtype}: need one of {names} for all three"
    if g.dtype not in GATE_DTYPES or beta.dtype != g.dtype:
        return f"g/beta dtypes {g.dtype}/{beta.dtype}: need the same fp32/bf16/fp16 dtype for both"
    if A_log is not None and (A_log.dtype not in GATE_DTYPES or dt_bias.dtype not in GATE_DTYPES):
        return f"A_log/dt_bias dtypes {A_log.dtype}/{dt_bias.dtype}: need fp32/bf16/fp16"
    return None


def _prefill_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    initial_state: torch.Tensor | None = None, A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None, **_: object,
) -> str | None:
    if initial_state is not None and initial_state.dtype != torch.float32:
        return f"initial_state dtype {initial_state.dtype}: the kernels keep the state in fp32"
    return _gdn_reason(q, k, v, g, beta, A_log, dt_bias, IO_DTYPES)


def _decode_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor, slots: torch.Tensor, *, A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None, **_: object,
) -> str | None:
    if state.dtype != torch.float32 or not state.is_contiguous():
        return f"state pool ({state.dtype}, contiguous={state.is_contiguous()}): need a contiguous fp32 pool"
    if slots.dtype not in SLOT_DTYPES:
        return f"slots dtype {slots.dtype}: need int32 or int64"
    return _gdn_reason(q, k, v, g, beta, A_log, dt_bias, DECODE_IO_DTYPES)


def _conv_dtypes_reason(x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor | None) -> str | None:
    dtypes = [t.dtype for t in (x, weight, conv_state) if t is not None]
    if any(d not in CONV_DTYPES for d in dtypes):
        return f"x/weight/conv_state dtypes {dtypes}: need bf16/fp16/fp32"
    if weight.shape[1] > MAX_CONV_WIDTH:
        return f"conv width W={weight.shape[1]}: the kernels unroll up to W = {MAX_CONV_WIDTH}"
    return None


def _conv_reason(
    x: torch.Tensor, weight: torch.Tensor, *, conv_state: torch.Tensor | None = None, **_: object,
) -> str | None:
    span = 1 + sum((size - 1) * stride for size, stride in zip(x.shape, x.stride()))
    if span >= INT32_LIMIT:
        return f"x spans {span} elements: the conv kernel indexes x with int32 (< {INT32_LIMIT})"
    return _conv_dtypes_reason(x, weight, conv_state)


def _conv_update_reason(
    x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor, slots: torch.Tensor | None = None, **_: object,
) -> str | None:
    if not conv_state.is_contiguous():
        return "conv_state pool is not contiguous: it is updated in place, pass a contiguous pool"
    if slots is not None and slots.dtype not in SLOT_DTYPES:
        return f"slots dtype {slots.dtype}: need int32 or int64"
    return _conv_dtypes_reason(x, weight, conv_state)


def _row_dtypes_reason(**tensors: torch.Tensor | None) -> str | None:
    dtypes = {name: t.dtype for name, t in tensors.items() if t is not None}
    if any(d not in ROW_DTYPES for d in dtypes.values()):
        named = ", ".join(f"{name} {str(d).removeprefix('torch.')}" for name, d in dtypes.items())
        return f"dtypes ({named}): the row kernels take bf16/fp16/fp32"
    return None


def _row_width_reason(x: torch.Tensor, *others: torch.Tensor | None) -> str | None:
    dim, itemsize = x.shape[-1], x.element_size()
    heads = heads_of(x, *(t for t in others if t is not None))
    if heads > MAX_GRID_Y:
        return f"x {list(x.shape)} would be read as [tokens, {heads} heads, D]: at most {MAX_GRID_Y} heads"
    if row_block(dim, itemsize, 1) is None:
        per_vector = VECTOR_BYTES // itemsize
        return (
            f"row width D={dim} ({x.dtype}): the norm kernels need D a multiple of {ROW_ALIGN} whose "
            f"{per_vector}-element vectors split evenly over a CTA (a power of two up to 128 per row, else a "
            f"multiple of 32 vectors, at most {MAX_VECTORS} per thread of 256)"
        )
    return None


def _rms_norm_reason(
    x: torch.Tensor, weight: torch.Tensor, *, residual: torch.Tensor | None = None, **_: object
) -> str | None:
    return _row_dtypes_reason(x=x, weight=weight, residual=residual) or _row_width_reason(x, residual)


def _gated_rms_norm_reason(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, **_: object) -> str | None:
    return _row_dtypes_reason(x=x, z=z, weight=weight) or _row_width_reason(x, z)


def _silu_mul_reason(gate: torch.Tensor, up: torch.Tensor, **_: object) -> str | None:
    if gate.dtype != up.dtype:
        return f"gate/up dtypes {gate.dtype}/{up.dtype}: the kernel takes one dtype for both"
    reason = _row_dtypes_reason(gate=gate)
    if reason is None and silu_mul_tile(gate.shape[-1], gate.element_size()) is None:
        return f"width I={gate.shape[-1]}: the kernel needs a multiple of {ROW_ALIGN}"
    return reason


def _sigmoid_gate_mul_reason(x: torch.Tensor, gate: torch.Tensor, **_: object) -> str | None:
    if x.dtype != gate.dtype:
        return f"x/gate dtypes {x.dtype}/{gate.dtype}: the kernel takes one dtype for both"
    return _row_dtypes_reason(x=x) or _row_width_reason(x, gate)


def _rms_norm_rope_reason(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, **_: object
) -> str | None:
    if cos.dtype != x.dtype or sin.dtype != x.dtype:
        dtypes = f"{x.dtype}/{cos.dtype}/{sin.dtype}"
        return f"x/cos/sin dtypes {dtypes}: the kernel rotates in x's dtype, pass cos/sin in it"
    if x.shape[-2] > MAX_GRID_Y:
        return f"x {list(x.shape)}: at most {MAX_GRID_Y} heads"
    reason = _row_dtypes_reason(x=x, weight=weight) or _row_width_reason(x)
    if reason is None and rope_block(x.shape[-1], cos.shape[-1], x.element_size(), x.shape[-2]) is None:
        per_vector = VECTOR_BYTES // x.element_size()
        return (
            f"rotary_dim R={cos.shape[-1]} of D={x.shape[-1]} ({x.dtype}): the kernel needs R a multiple of "
            f"{2 * per_vector} (whole 16-byte vectors in each half) and at most {MAX_VECTORS} vectors per thread"
        )
    return reason


_REASONS = {
    "gdn_prefill": _prefill_reason,
    "gdn_decode": _decode_reason,
    "causal_conv1d": _conv_reason,
    "causal_conv1d_update": _conv_update_reason,
    "rms_norm": _rms_norm_reason,
    "rms_norm_rope": _rms_norm_rope_reason,
    "add_rms_norm": _rms_norm_reason,
    "gated_rms_norm": _gated_rms_norm_reason,
    "silu_mul": _silu_mul_reason,
    "sigmoid_gate_mul": _sigmoid_gate_mul_reason,
}


def supports(op: str, **arguments: object) -> str | None:
    """None when this backend can run `op` on these (validated, CUDA) arguments, else the reason."""
    if op not in _REASONS:
        return f"the TileLang backend does not implement {op} yet"
    device = next(a.device for a in arguments.values() if isinstance(a, torch.Tensor))
    arch = device_arch(device)
    if arch is None:
        major, minor = torch.cuda.get_device_capability(device)
        return f"compute capability {major}.{minor}: the TileLang kernels are built for sm_80 ... sm_90"
    return _REASONS[op](**arguments)
