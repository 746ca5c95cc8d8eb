"""Input validation of the norm and activation ops: shapes, dtypes, devices and eps.

Every failure raises ValueError naming the argument, the expected shape and what was passed. Nothing
here reads a tensor's values, so a validated call can be captured in a CUDA graph.
"""

import math

import torch

from qla_agent.kernels.checks import _expect_float_on_device, _expect_ndim, _expect_tensor, _fmt


def _expect_rows(name: str, x: torch.Tensor) -> int:
    """x is a tensor [..., D] with D >= 1; returns D."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [..., D], got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [..., D] with D >= 1, got {_fmt(x.shape)}")
    return x.shape[-1]


def _expect_like(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.shape != ref.shape:
        shape = _fmt(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must have the shape of {ref_name}, {_fmt(ref.shape)}, got {shape}")


def _expect_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (e.g. 1e-6), got {eps!r}")


def check_rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float, residual: torch.Tensor | None = None) -> None:
    """Validate rms_norm / add_rms_norm inputs: x [..., D], weight [D], residual like x."""
    dim = _expect_rows("x", x)
    _expect_tensor("weight", weight, (dim,), "[D]")
    if residual is not None:
        _expect_like("residual", residual, "x", x)
    _expect_float_on_device("x", x, weight=weight, residual=residual)
    _expect_eps(eps)


def check_gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, *, eps: float) -> None:
    """Validate gated_rms_norm inputs: x [..., D], z like x, weight [D]."""
    dim = _expect_rows("x", x)
    _expect_like("z", z, "x", x)
    _expect_tensor("weight", weight, (dim,), "[D]")
    _expect_float_on_device("x", x, z=z, weight=weight)
    _expect_eps(eps)


def check_silu_mul(gate: torch.Tensor, up: torch.Tensor) -> None:
    """Validate silu_mul inputs: gate [..., I], up like gate."""
    _expect_rows("gate", gate)
    _expect_like("up", up, "gate", gate)
    _expect_float_on_device("gate", gate, up=up)


def check_sigmoid_gate_mul(x: torch.Tensor, gate: torch.Tensor) -> None:
    """Validate sigmoid_gate_mul inputs: x [..., D], gate like x."""
    _expect_rows("x", x)
    _expect_like("gate", gate, "x", x)
    _expect_float_on_device("x", x, gate=gate)


def check_rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, eps: float
) -> None:
    """Validate rms_norm_rope inputs: x [T, heads, D], weight [D], cos [T, 1, R] with R even and <= D, sin like cos."""
    _expect_ndim("x", x, 3, "[T, heads, D]")
    tokens, _, dim = x.shape
    _expect_tensor("weight", weight, (dim,), "[D]")
    _expect_ndim("cos", cos, 3, "[T, 1, R]")
    rotary_dim = cos.shape[-1]
    if cos.shape[:2] != (tokens, 1) or rotary_dim % 2 or not 2 <= rotary_dim <= dim:
        raise ValueError(f"cos must have shape [T, 1, R] = [{tokens}, 1, R] with R even, 2 <= R <= D = {dim}, "
                         f"got {_fmt(cos.shape)}")
    _expect_like("sin", sin, "cos", cos)
    _expect_float_on_device("x", x, weight=weight, cos=cos, sin=sin)
    _expect_eps(eps)
