"""Causal depthwise conv1d + SiLU reference (the short conv in front of every GDN layer).

    x           [B, T, C]      inputs (for Qwen: the q|k|v projections, C = 2*Hk*K + Hv*V)
    weight      [C, W]         one filter per channel, W = 4; weight[:, W-1] multiplies the current token
    conv_state  [N, C, W-1]    the last W-1 inputs before this call, oldest first (zeros at sequence start)
    y           [B, T, C]      in x.dtype

    y[t, c] = silu( sum_{j=0..W-1} weight[c, j] * x[t - (W-1) + j, c] )

where x at negative positions comes from conv_state (column W-1+i holds x[i] for i = -(W-1)..-1).
After the call the state holds the last W-1 inputs of the extended sequence [conv_state | x], so a
prefill followed by one-token updates equals one prefill over everything. Sums are done in fp32 (fp64
for fp64 inputs); the final state keeps conv_state's dtype (x's dtype when no state was passed).
With cu_seqlens (B = 1) each packed sequence n uses and returns its own row n of the state.
"""

import torch
import torch.nn.functional as F

from qla_agent.kernels.checks import check_conv, check_conv_update, host_offsets
from qla_agent.kernels.reference import compute_dtype


def _conv_one(
    x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence: x [T, C], weight [C, W], state [C, W-1] -> (y [T, C] in dtype, new state [C, W-1])."""
    width = weight.shape[1]
    extended = torch.cat([state.to(dtype).transpose(0, 1), x.to(dtype)], dim=0)
    # Depthwise cross-correlation over the state-extended sequence: y[t, c] = sum_j w[c, j] * extended[t + j, c].
    y = F.conv1d(extended.transpose(0, 1)[None], weight.to(dtype)[:, None, :], groups=weight.shape[0])
    y = F.silu(y[0].transpose(0, 1))
    return y, extended[-(width - 1) :].transpose(0, 1)


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, *, conv_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill: x [B,T,C], weight [C,W], conv_state [N,C,W-1] or None -> (y [B,T,C], final_conv_state [N,C,W-1])."""
    check_conv(x, weight, conv_state=conv_state, cu_seqlens=cu_seqlens)
    offsets = None if cu_seqlens is None else host_offsets(cu_seqlens)
    dtype = compute_dtype(x, weight, conv_state)
    state_dtype = x.dtype if conv_state is None else conv_state.dtype
    if offsets is None:
        sequences = [x[b] for b in range(x.shape[0])]
    else:
        sequences = [x[0, start:end] for start, end in zip(offsets, offsets[1:])]
    if conv_state is None:
        conv_state = x.new_zeros(len(sequences), x.shape[2], weight.shape[1] - 1)
    outputs, finals = [], []
    for n, seq in enumerate(sequences):
        y_n, s_n = _conv_one(seq, weight, conv_state[n], dtype)
        outputs.append(y_n)
        finals.append(s_n)
    y = torch.stack(outputs) if offsets is None else torch.cat(outputs)[None]
    return y.to(x.dtype), torch.stack(finals).to(state_dtype)


def causal_conv1d_update(
    x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor, slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per sequence: x [N,C], conv_state pool [S,C,W-1] updated in place at rows slots -> y [N,C]."""
    check_conv_update(x, weight, conv_state, slots)
    dtype = compute_dtype(x, weight, conv_state)
    rows = torch.arange(x.shape[0], device=x.device) if slots is None else slots.long()
    extended = torch.cat([conv_state[rows].to(dtype), x.to(dtype)[:, :, None]], dim=2)
    y = F.silu((extended * weight.to(dtype)).sum(-1))
    conv_state.index_copy_(0, rows, extended[:, :, 1:].to(conv_state.dtype))
    return y.to(x.dtype)
