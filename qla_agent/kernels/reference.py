"""Gated DeltaNet (gated delta rule) reference: the executable spec every fast kernel is tested against.

Plain torch, any device, any float input dtype. Shapes and conventions follow flash-linear-attention:

    q, k   [B, T, Hk, K]     queries and keys (Hk key heads)
    v      [B, T, Hv, V]     values; Hv is a multiple of Hk and value head h reads key head h // (Hv // Hk)
    g      [B, T, Hv]        log decay (g <= 0), alpha_t = exp(g_t)
    beta   [B, T, Hv]        write strength in (0, 1)
    state  [N, Hv, K, V]     fp32; N = B, or the number of packed sequences when cu_seqlens is given (B = 1)
    o      [B, T, Hv, V]     in v.dtype

The recurrence (the definition), per sequence and value head, with S_0 = initial state (or zeros):

    S_t = exp(g_t) * S_{t-1}                      decay first
    u_t = beta_t * (v_t - S_t^T k_t)              delta: what the decayed state mispredicts
    S_t = S_t + k_t u_t^T                         rank-1 write, [K, V]
    o_t = S_t^T (scale * q_t)                     read after the write; scale defaults to K**-0.5

i.e. S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale * S_t^T q_t.

The chunked form (chunk C = 64, the WY/UT form the fast kernels imitate). For a chunk of C tokens with
state S at its start, gamma_r = sum_{i<=r} g_i (in-chunk cumsum) and M[r, j] = exp(gamma_r - gamma_j) for
j <= r (0 above the diagonal):

    A[r, j] = beta_r exp(gamma_r - gamma_j) k_r . k_j       strictly lower triangular (j < r)
    (I + A) u = diag(beta) V                                 unit-lower-triangular solves: the UT transform
    (I + A) w = diag(beta exp(gamma)) K
    U = u - w S                                              the chunk's delta values (FLA's v_new)
    O = scale exp(gamma) Q S  +  scale (Q K^T * M) U         inter-chunk + intra-chunk
    S <- exp(gamma_C) S + (exp(gamma_C - gamma) K)^T U       state at the next chunk start

Every exponent is <= 0, so nothing overflows. The last chunk may be shorter than C: the formulas hold
for any length (a kernel pads it with g = 0, beta = 0, k = 0 tokens instead, which is equivalent).
Sequences in a packed batch are chunked from their own start (as FLA does with cu_seqlens). Chunks are
processed one after the other, so memory stays O(C^2) per head whatever T is.

Options: use_qk_l2norm replaces q and k by x * rsqrt(sum(x^2) + 1e-6) before scaling; with A_log and
dt_bias [Hv] given, g and beta hold the raw projections a and b and the gates are computed inside:
g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b).

Precision: everything is computed in fp32 (fp64 when any input is fp64, so tests can check the algebra
to 1e-10); the final state comes back in that dtype, the output in v.dtype. Decode reads and writes its
state pool in the pool's dtype, computing in at least fp32.

The causal depthwise conv1d + SiLU that precedes the GDN core lives in `reference_conv.py`.
"""

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from qla_agent.kernels.checks import check_gdn_decode, check_gdn_prefill, host_offsets

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64
L2NORM_EPS = 1e-6

# core(q, k, v, g, beta, state) on head-major tensors [B, H, T, *] -> (o [B, H, T, V], final state [B, H, K, V])
Core = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """fp64 if any input is fp64, else fp32: the dtype the reference computes (and keeps state) in."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    """x * rsqrt(sum(x^2, -1) + eps), in x's dtype (callers pass fp32 or fp64)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gdn_gates(
    A_log: torch.Tensor, dt_bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b).

    A_log, dt_bias [Hv]; a, b [..., Hv] -> g, beta [..., Hv] in fp32 (fp64 if an input is fp64).
    """
    dtype = compute_dtype(A_log, dt_bias, a, b)
    g = -torch.exp(A_log.to(dtype)) * F.softplus(a.to(dtype) + dt_bias.to(dtype))
    beta = torch.sigmoid(b.to(dtype))
    return g, beta


def _prepare(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float, use_qk_l2norm: bool, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, ...]:
    """Gates, l2norm, scale and grouped heads on [..., H, D] inputs; returns them in `dtype`, heads expanded to Hv."""
    if A_log is not None:
        g, beta = gdn_gates(A_log, dt_bias, g, beta)
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q = q * scale
    group = v.shape[-2] // k.shape[-2]
    if group > 1:
        q, k = q.repeat_interleave(group, dim=-2), k.repeat_interleave(group, dim=-2)
    return q, k, v, g, beta


def recurrent_core(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence. q, k [B, H, T, K]; v [B, H, T, V]; g, beta [B, H, T]; state [B, H, K, V]."""
    outputs = []
    for t in range(q.shape[2]):
        state = state * torch.exp(g[:, :, t, None, None])
        predicted = torch.einsum("bhkv,bhk->bhv", state, k[:, :, t])
        delta = beta[:, :, t, None] * (v[:, :, t] - predicted)
        state = state + k[:, :, t, :, None] * delta[:, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, :, t]))
    return torch.stack(outputs, dim=2), state


def chunk_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of C tokens. q, k [B, H, C, K]; v [B, H, C, V]; g, beta [B, H, C]; state at its start [B, H, K, V]
    -> (o [B, H, C, V], state at its end)."""
    size = q.shape[2]
    gamma = g.cumsum(-1)
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    # Mask before exp: above the diagonal gamma_r - gamma_j > 0 could overflow (and poison gradients).
    gate = torch.exp((gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")))
    strict = (beta[..., None] * (k @ k.transpose(-1, -2)) * gate).tril(-1)
    unit_lower = strict + torch.eye(size, dtype=q.dtype, device=q.device)
    # One unit-lower-triangular solve for both right-hand sides: (I + A) [u | w] = [beta V | beta exp(gamma) K].
    rhs = torch.cat([beta[..., None] * v, (beta * torch.exp(gamma))[..., None] * k], dim=-1)
    u, w = torch.linalg.solve_triangular(unit_lower, rhs, upper=False, unitriangular=True).split(
        [v.shape[-1], k.shape[-1]], dim=-1
    )
    delta = u - w @ state
    inter = (q * torch.exp(gamma)[..., None]) @ state
    intra = ((q @ k.transpose(-1, -2)) * gate) @ delta
    k_to_end = k * torch.exp(gamma[..., -1:] - gamma)[..., None]
    state = state * torch.exp(gamma[..., -1, None, None]) + k_to_end.transpose(-1, -2) @ delta
    return inter + intra, state


def chunk_core(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked WY/UT form, same arguments and result as `recurrent_core`; see the module docstring."""
    outputs = []
    for start in range(0, q.shape[2], chunk_size):
        piece = slice(start, start + chunk_size)
        o, state = chunk_step(q[:, :, piece], k[:, :, piece], v[:, :, piece], g[:, :, piece], beta[:, :, piece], state)
        outputs.append(o)
    return torch.cat(outputs, dim=2), state


def _run(
    core: Core, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None, initial_state: torch.Tensor | None, output_final_state: bool,
    cu_seqlens: torch.Tensor | None, use_qk_l2norm: bool, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate, prepare, run `core` over the batch (or each packed sequence) and restore the layout."""
    dims = check_gdn_prefill(
        q, k, v, g, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, A_log=A_log, dt_bias=dt_bias
    )
    offsets = None if cu_seqlens is None else host_offsets(cu_seqlens)
    dtype = compute_dtype(q, k, v, g, beta, initial_state, A_log, dt_bias)
    out_dtype = v.dtype
    scale = dims.key_dim**-0.5 if scale is None else scale
    q, k, v, g, beta = (
        x.transpose(1, 2)
        for x in _prepare(
            q, k, v, g, beta, scale=scale, use_qk_l2norm=use_qk_l2norm, A_log=A_log, dt_bias=dt_bias, dtype=dtype
        )
    )
    state_shape = (dims.num_seqs, dims.value_heads, dims.key_dim, dims.value_dim)
    if initial_state is None:
        state = torch.zeros(state_shape, dtype=dtype, device=q.device)
    else:
        state = initial_state.to(dtype)
    if offsets is None:
        o, final = core(q, k, v, g, beta, state)
    else:
        pieces, finals = [], []
        for n, (start, end) in enumerate(zip(offsets, offsets[1:])):
            o_n, s_n = core(*(x[:, :, start:end] for x in (q, k, v, g, beta)), state[n : n + 1])
            pieces.append(o_n)
            finals.append(s_n)
        o, final = torch.cat(pieces, dim=2), torch.cat(finals, dim=0)
    o = o.transpose(1, 2).to(out_dtype).contiguous()
    return o, (final if output_final_state else None)


def gdn_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None, use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The definition, token by token.

    q, k [B,T,Hk,K]; v [B,T,Hv,V]; g, beta [B,T,Hv] -> o [B,T,Hv,V], final state [N,Hv,K,V] (or None).
    """
    return _run(
        recurrent_core, q, k, v, g, beta, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm,
        A_log=A_log, dt_bias=dt_bias,
    )


def gdn_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None, use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked WY/UT form; same arguments and results as `gdn_recurrent` (differentiable by autograd)."""

    def core(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return chunk_core(*args, chunk_size=chunk_size)

    return _run(
        core, q, k, v, g, beta, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm,
        A_log=A_log, dt_bias=dt_bias,
    )


# Backend entry point of `qla_agent.kernels.gdn_prefill`: the chunked form with chunk 64.
gdn_prefill = gdn_chunked


def gdn_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor, slots: torch.Tensor, *, scale: float | None = None, use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per sequence; state pool [S,Hv,K,V] updated in place at rows slots [N].

    q, k [N,Hk,K]; v [N,Hv,V]; g, beta [N,Hv] -> o [N,Hv,V] in v.dtype.
    """
    dims = check_gdn_decode(q, k, v, g, beta, state, slots, A_log=A_log, dt_bias=dt_bias)
    dtype = compute_dtype(q, k, v, g, beta, state, A_log, dt_bias)
    out_dtype = v.dtype
    scale = dims.key_dim**-0.5 if scale is None else scale
    q, k, v, g, beta = _prepare(
        q, k, v, g, beta, scale=scale, use_qk_l2norm=use_qk_l2norm, A_log=A_log, dt_bias=dt_bias, dtype=dtype
    )
    rows = slots.long()
    # One step of the recurrence: add a time axis of length 1 in the head-major layout.
    o, new_state = recurrent_core(
        q[:, :, None], k[:, :, None], v[:, :, None], g[:, :, None], beta[:, :, None], state[rows].to(dtype)
    )
    state.index_copy_(0, rows, new_state.to(state.dtype))
    return o[:, :, 0].to(out_dtype)
