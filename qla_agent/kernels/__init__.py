"""Public kernel entry points (GDN, conv, norms); each dispatches to a fast backend or the torch reference.

Every function takes impl="auto" | "tilelang" | "reference" (see `dispatch`); QLA_KERNEL_IMPL=reference
forces the reference. The math, shapes and dtypes are documented in `reference`, `reference_conv` and `reference_norms`.
Inputs are validated here (ValueError naming the argument and the expected shape) before any backend
sees them, once per signature (`checks.call_signature`: every tensor's shape, strides, dtype and device;
gdn_prefill's `checks.prefill_signature` leaves T out): a fast backend chosen for a signature is
remembered and a call that repeats it goes straight there (`dispatch.call`), as the runtime's layers do.
"""

import torch

from qla_agent.kernels import checks, checks_norms
from qla_agent.kernels.dispatch import call, remembered, resolve
from qla_agent.kernels.reference import gdn_gates

__all__ = [
    "add_rms_norm", "causal_conv1d", "causal_conv1d_update", "gated_rms_norm", "gdn_decode", "gdn_gates", "gdn_prefill",
    "rms_norm", "rms_norm_rope", "sigmoid_gate_mul", "silu_and_mul", "silu_mul",
]


def gdn_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None, use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over T tokens (chunked).

    q, k [B,T,Hk,K]; v [B,T,Hv,V]; g, beta [B,T,Hv] (raw a, b when A_log, dt_bias [Hv] are given);
    initial_state [N,Hv,K,V] fp32 (N = B, or len(cu_seqlens) - 1 with B = 1)
    -> o [B,T,Hv,V] in v.dtype, final_state [N,Hv,K,V] fp32 (None unless output_final_state).
    """
    # `dispatch.call`'s path by hand: any T of a signature checked before goes straight to the backend
    # chosen for it, and only a new signature builds the argument dict that checks and `resolve` read
    # (an agent's appends are host-bound: this call is on their critical path).
    signature = checks.prefill_signature(q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias)
    fn = remembered("gdn_prefill", impl, signature)
    if fn is None:
        checks.check_gdn_prefill(
            q, k, v, g, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, A_log=A_log, dt_bias=dt_bias
        )
        arguments = dict(
            q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm,
            A_log=A_log, dt_bias=dt_bias,
        )
        fn = resolve("gdn_prefill", impl, arguments, signature=signature)
    return fn(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm, A_log=A_log, dt_bias=dt_bias,
    )


def gdn_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor, slots: torch.Tensor, *, scale: float | None = None, use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, impl: str = "auto",
) -> torch.Tensor:
    """One token per sequence; the state pool is updated in place at rows `slots`.

    q, k [N,Hk,K]; v [N,Hv,V]; g, beta [N,Hv]; state [S,Hv,K,V] fp32; slots [N] int32/int64, distinct
    -> o [N,Hv,V] in v.dtype.
    """
    arguments = dict(
        q=q, k=k, v=v, g=g, beta=beta, state=state, slots=slots, scale=scale, use_qk_l2norm=use_qk_l2norm,
        A_log=A_log, dt_bias=dt_bias,
    )
    return call("gdn_decode", impl, arguments, lambda: checks.check_gdn_decode(
        q, k, v, g, beta, state, slots, A_log=A_log, dt_bias=dt_bias
    ))


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, *, conv_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv + SiLU over T tokens.

    x [B,T,C]; weight [C,W]; conv_state [N,C,W-1] (last W-1 inputs before this call, zeros if None)
    -> y [B,T,C] in x.dtype, final_conv_state [N,C,W-1].
    """
    arguments = dict(x=x, weight=weight, conv_state=conv_state, cu_seqlens=cu_seqlens)
    return call("causal_conv1d", impl, arguments, lambda: checks.check_conv(
        x, weight, conv_state=conv_state, cu_seqlens=cu_seqlens
    ))


def causal_conv1d_update(
    x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor, slots: torch.Tensor | None = None, *,
    impl: str = "auto",
) -> torch.Tensor:
    """One token per sequence: x [N,C]; conv_state pool [S,C,W-1] updated in place at rows slots
    (rows 0..N-1 if None) -> y [N,C] in x.dtype."""
    arguments = dict(x=x, weight=weight, conv_state=conv_state, slots=slots)
    return call("causal_conv1d_update", impl, arguments, lambda: checks.check_conv_update(x, weight, conv_state, slots))


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool = True, impl: str = "auto"
) -> torch.Tensor:
    """RMSNorm of each row: x [..., D], weight [D] -> y [..., D] in x.dtype.

    y = rms(x) * (1 + w) (zero_centered, the weight stores w - 1) or rms(x) * w, in fp32.
    """
    arguments = dict(x=x, weight=weight, eps=eps, zero_centered=zero_centered)
    return call("rms_norm", impl, arguments, lambda: checks_norms.check_rms_norm(x, weight, eps=eps))


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, eps: float, impl: str = "auto"
) -> torch.Tensor:
    """The attention q/k norm and RoPE: x [T, heads, D] (may be a strided slice of a projection), weight [D]
    (zero-centred), cos, sin [T, 1, R] (`PartialRope.cos_sin`) -> y [T, heads, D] in x.dtype.

    y = rms_norm(x) rounded to x.dtype, then neox-rotated on dims [0, R) in x.dtype arithmetic.
    """
    arguments = dict(x=x, weight=weight, cos=cos, sin=sin, eps=eps)
    return call("rms_norm_rope", impl, arguments, lambda: checks_norms.check_rms_norm_rope(
        x, weight, cos, sin, eps=eps
    ))


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool = True,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add, then RMSNorm: x, residual [..., D], weight [D] -> (y, s) [..., D] in x.dtype.

    s = x + residual rounded to x.dtype (the next residual), y = rms_norm(s).
    """
    arguments = dict(x=x, residual=residual, weight=weight, eps=eps, zero_centered=zero_centered)
    return call("add_rms_norm", impl, arguments, lambda: checks_norms.check_rms_norm(
        x, weight, eps=eps, residual=residual
    ))


def gated_rms_norm(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, *, eps: float, impl: str = "auto"
) -> torch.Tensor:
    """The GDN output norm: x, z [..., D] (z may be a strided slice), weight [D] -> y [..., D] in x.dtype.

    y = (w * rms(x) in x.dtype) * silu(z in fp32), rounded to x.dtype.
    """
    arguments = dict(x=x, z=z, weight=weight, eps=eps)
    return call("gated_rms_norm", impl, arguments, lambda: checks_norms.check_gated_rms_norm(x, z, weight, eps=eps))


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """The MLP activation: gate, up [..., I] -> silu(gate) * up [..., I] (== F.silu(gate) * up)."""
    return call("silu_mul", impl, dict(gate=gate, up=up), lambda: checks_norms.check_silu_mul(gate, up))


def sigmoid_gate_mul(x: torch.Tensor, gate: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """The gated attention output: x, gate [..., D] (either may be strided, e.g. gate the gate columns of
    q_proj) -> x * sigmoid(gate) [..., D], contiguous in the TileLang kernel (== x * torch.sigmoid(gate))."""
    return call("sigmoid_gate_mul", impl, dict(x=x, gate=gate), lambda: checks_norms.check_sigmoid_gate_mul(x, gate))


def silu_and_mul(gate_up: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """silu_mul on a fused projection: gate_up [..., 2I] = [gate | up] -> [..., I]; the halves are read
    in place (no copy) by the TileLang kernel."""
    if not isinstance(gate_up, torch.Tensor) or gate_up.dim() < 1 or gate_up.shape[-1] % 2:
        shape = list(gate_up.shape) if isinstance(gate_up, torch.Tensor) else type(gate_up).__name__
        raise ValueError(f"gate_up must have shape [..., 2I] (gate then up), got {shape}")
    gate, up = gate_up.chunk(2, dim=-1)
    return silu_mul(gate, up, impl=impl)
