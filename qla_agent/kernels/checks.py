"""Input validation shared by every kernel backend: shapes, dtypes, devices and cu_seqlens.

Every failure raises ValueError naming the argument, the expected shape and what was passed.

Host-sync rule: the values of index tensors (cu_seqlens, slots) are checked only when they live on
the CPU. For any other device (CUDA) the checks look at shapes, dtypes and devices alone, never at
values (no .tolist(), .item(), .cpu(), int() or bool() of a device tensor), so a validated call can
be captured in a CUDA graph; wrong values there are the caller's bug. `host_offsets` is the one
function that reads cu_seqlens values on any device: the torch references use it (they loop over
sequences on the host and are not graph-capturable anyway), the fast backends never do.
"""

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class GdnDims:
    """Sizes of one gated-delta-rule call (decode calls have seqlen 1 and batch = num_seqs)."""

    batch: int
    seqlen: int
    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    num_seqs: int


def _fmt(shape: torch.Size | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _expect(name: str, tensor: torch.Tensor, expected: tuple[int, ...], symbolic: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"{name} must have shape {symbolic} = {_fmt(expected)}, got {_fmt(tensor.shape)}"
        )


def _expect_ndim(name: str, tensor: torch.Tensor, ndim: int, symbolic: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {symbolic}, got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have shape {symbolic} ({ndim}-D), got {_fmt(tensor.shape)}")


def _expect_tensor(name: str, tensor: torch.Tensor, expected: tuple[int, ...], symbolic: str) -> None:
    _expect_ndim(name, tensor, len(expected), symbolic)
    _expect(name, tensor, expected, symbolic)


def _expect_tokens(name: str, tensor: torch.Tensor, batch: int, seqlen: int, symbolic: str) -> None:
    if batch < 1 or seqlen < 1:
        raise ValueError(f"{name} must have shape {symbolic} with B >= 1 and T >= 1, got {_fmt(tensor.shape)}")


def _expect_same_device(ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != ref.device:
            raise ValueError(f"{name} is on {tensor.device} but the inputs are on {ref.device}; move it there")


def _expect_float_on_device(ref_name: str, ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """ref and every given tensor are floating point; the tensors live on ref's device."""
    for name, tensor in {ref_name: ref, **tensors}.items():
        if tensor is not None and not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    _expect_same_device(ref, **tensors)


def _num_seqs(cu_seqlens: torch.Tensor | None, batch: int, seqlen: int, device: torch.device) -> int:
    """Number of sequences N: B, or len(cu_seqlens) - 1 (validated; values only on CPU)."""
    if cu_seqlens is None:
        return batch
    return check_cu_seqlens(cu_seqlens, batch, seqlen, device=device)


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seqlen: int, *, device: torch.device) -> int:
    """Validate packed-sequence offsets [N+1] (0 = cu[0] < cu[1] < ... < cu[N] = T, B = 1); return N.

    The values are checked only for a CPU tensor (see the host-sync rule in the module docstring).
    """
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
        shape = _fmt(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor [N+1], got {shape}")
    if cu_seqlens.is_floating_point() or cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be an integer tensor (int32/int64), got dtype {cu_seqlens.dtype}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but the inputs are on {device}; move it there")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the batch size B must be 1 (sequences packed along T), got B={batch}")
    if cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must have shape [N+1] with N >= 1 sequences, got {_fmt(cu_seqlens.shape)}")
    if cu_seqlens.device.type == "cpu":
        _check_offset_values(host_offsets(cu_seqlens), seqlen)
    return cu_seqlens.shape[0] - 1


def host_offsets(cu_seqlens: torch.Tensor) -> list[int]:
    """cu_seqlens as a Python list (a host sync on CUDA: for the torch references only)."""
    return [int(x) for x in cu_seqlens.tolist()]


def _check_offset_values(offsets: list[int], seqlen: int) -> None:
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {offsets[:4]}...")
    if offsets[-1] != seqlen:
        raise ValueError(f"cu_seqlens must end at T={seqlen} (the packed length), got last offset {offsets[-1]}")
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"cu_seqlens must be strictly increasing (every sequence >= 1 token), got {offsets}")


def _check_gates(
    dims: tuple[int, ...], g: torch.Tensor, beta: torch.Tensor,
    A_log: torch.Tensor | None, dt_bias: torch.Tensor | None, symbolic: str,
) -> None:
    value_heads = dims[-1]
    _expect_tensor("g", g, dims, symbolic)
    _expect_tensor("beta", beta, dims, symbolic)
    if (A_log is None) != (dt_bias is None):
        raise ValueError("A_log and dt_bias must be given together (raw gate inputs) or both left None")
    if A_log is not None:
        _expect_tensor("A_log", A_log, (value_heads,), "[Hv]")
        _expect_tensor("dt_bias", dt_bias, (value_heads,), "[Hv]")


def _check_heads(v: torch.Tensor, key_heads: int, symbolic: str) -> None:
    value_heads = v.shape[-2]
    if key_heads < 1 or value_heads % key_heads != 0:
        raise ValueError(
            f"v must have shape {symbolic} with Hv a multiple of Hk={key_heads} (the heads of q and k), "
            f"got {_fmt(v.shape)} (Hv={value_heads}); value head h reads key head h // (Hv // Hk)"
        )


def check_gdn_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
) -> GdnDims:
    """Validate gdn_prefill inputs (no host sync for CUDA tensors); return the sizes."""
    _expect_ndim("q", q, 4, "[B, T, Hk, K]")
    batch, seqlen, key_heads, key_dim = q.shape
    _expect_tokens("q", q, batch, seqlen, "[B, T, Hk, K]")
    _expect_ndim("k", k, 4, "[B, T, Hk, K]")
    _expect("k", k, tuple(q.shape), "[B, T, Hk, K] (same as q)")
    _expect_ndim("v", v, 4, "[B, T, Hv, V]")
    if tuple(v.shape[:2]) != (batch, seqlen):
        raise ValueError(f"v must have shape [B, T, Hv, V] = [{batch}, {seqlen}, Hv, V], got {_fmt(v.shape)}")
    value_heads, value_dim = v.shape[2], v.shape[3]
    _check_heads(v, key_heads, "[B, T, Hv, V]")
    _check_gates((batch, seqlen, value_heads), g, beta, A_log, dt_bias, "[B, T, Hv]")
    _expect_float_on_device("q", q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, A_log=A_log, dt_bias=dt_bias)
    num_seqs = _num_seqs(cu_seqlens, batch, seqlen, q.device)
    if initial_state is not None:
        _expect_tensor("initial_state", initial_state, (num_seqs, value_heads, key_dim, value_dim), "[N, Hv, K, V]")
    return _dims(batch, seqlen, key_heads, value_heads, key_dim, value_dim, num_seqs)


# Shapes recur (one per layer shape and prompt length or batch size): a cached record costs 0.2 us, a new one 1.5.
_dims = functools.lru_cache(maxsize=1024)(GdnDims)


def prefill_signature(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
) -> tuple | None:
    """A key that decides `check_gdn_prefill` for every call sharing it (and a backend's `supports`, which
    reads less): B, the head counts and dims, every dtype and device, the shapes of the optional tensors.
    The token count T is left out, so a new prompt length reuses the key: instead this compares it across
    q, k, v, g and beta and returns None when they disagree (or T < 1), as for anything not a tensor and
    for CPU cu_seqlens (their values are checked per call); None sends the call through the checks.
    """
    try:
        shape, v_shape = q.shape, v.shape
        batch, seqlen, key_heads, key_dim = shape
        _, _, value_heads, value_dim = v_shape
        gates = (batch, seqlen, value_heads)
        if (
            seqlen < 1 or k.shape != shape or v_shape[1] != seqlen or v_shape[0] != batch
            or g.shape != gates or beta.shape != gates
        ):
            return None
        h, a, d, cu = initial_state, A_log, dt_bias, cu_seqlens
        if cu is not None and cu.device.type == "cpu":
            return None
        return (
            batch, key_heads, key_dim, value_heads, value_dim,
            q.dtype, k.dtype, v.dtype, g.dtype, beta.dtype, q.device, k.device, v.device, g.device, beta.device,
            None if h is None else (h.shape, h.dtype, h.device),
            None if a is None else (a.shape, a.dtype, a.device),
            None if d is None else (d.shape, d.dtype, d.device),
            None if cu is None else (cu.shape, cu.dtype, cu.device),
        )
    # Not tensors, or q / v of another rank: the checks name what is wrong.
    except (AttributeError, TypeError, ValueError):
        return None


# Index tensors: the checks read their values when they live on the CPU (slots, cu_seqlens).
_INDEX_DTYPES = frozenset({torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool})
# Plain values a key holds as (type, value): eps is checked by value, and True == 1 must not pass for 1.
_KEYED_VALUES = frozenset({float, int, bool, str, type(None)})


def call_signature(arguments: dict[str, object]) -> tuple | None:
    """A key that decides an op's checks and a backend's `supports` for every call sharing it: each tensor
    argument's shape, strides, dtype and device, every other argument as (type, value), in order. None
    (check this call) for a CPU index tensor, whose values the checks read, or an argument of another type.

    Shapes are kept whole (T included): supports reads layouts whose meaning can change with T (rows that
    collapse only at T = 1, the conv's int32 span), so a new length is checked once per op and layout.
    """
    key = []
    for value in arguments.values():
        if isinstance(value, torch.Tensor):
            dtype = value.dtype
            if dtype in _INDEX_DTYPES and value.device.type == "cpu":
                return None
            key.append((value.shape, value.stride(), dtype, value.device))
        elif value.__class__ in _KEYED_VALUES:
            key.append((value.__class__, value))
        else:
            return None
    return tuple(key)


def check_slots(slots: torch.Tensor, count: int, pool_size: int, pool_name: str) -> None:
    """Validate pool row indices [N]: integer, in [0, S) and distinct (values checked on CPU only)."""
    _expect_ndim("slots", slots, 1, "[N]")
    if slots.is_floating_point() or slots.is_complex() or slots.dtype == torch.bool:
        raise ValueError(f"slots must be an int32/int64 tensor [N], got dtype {slots.dtype}")
    _expect("slots", slots, (count,), "[N]")
    if slots.device.type != "cpu":
        return
    values = [int(s) for s in slots.tolist()]
    bad = [s for s in values if not 0 <= s < pool_size]
    if bad:
        raise ValueError(f"slots must index rows of {pool_name} in [0, {pool_size}), got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"slots must be distinct (each row is updated in place once), got {values}")


def check_gdn_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor, slots: torch.Tensor, *, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
) -> GdnDims:
    """Validate gdn_decode inputs (one token per sequence, state pool [S, Hv, K, V]); return the sizes."""
    _expect_ndim("q", q, 3, "[N, Hk, K]")
    count, key_heads, key_dim = q.shape
    _expect_ndim("k", k, 3, "[N, Hk, K]")
    _expect("k", k, tuple(q.shape), "[N, Hk, K] (same as q)")
    _expect_ndim("v", v, 3, "[N, Hv, V]")
    if v.shape[0] != count:
        raise ValueError(f"v must have shape [N, Hv, V] = [{count}, Hv, V], got {_fmt(v.shape)}")
    value_heads, value_dim = v.shape[1], v.shape[2]
    _check_heads(v, key_heads, "[N, Hv, V]")
    _check_gates((count, value_heads), g, beta, A_log, dt_bias, "[N, Hv]")
    _expect_ndim("state", state, 4, "[S, Hv, K, V]")
    if tuple(state.shape[1:]) != (value_heads, key_dim, value_dim):
        raise ValueError(
            f"state must have shape [S, Hv, K, V] = [S, {value_heads}, {key_dim}, {value_dim}], got {_fmt(state.shape)}"
        )
    _expect_float_on_device("q", q, k=k, v=v, g=g, beta=beta, state=state, A_log=A_log, dt_bias=dt_bias)
    _expect_same_device(q, slots=slots)
    check_slots(slots, count, state.shape[0], "state")
    return _dims(count, 1, key_heads, value_heads, key_dim, value_dim, count)


def check_conv(
    x: torch.Tensor, weight: torch.Tensor, *, conv_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
) -> int:
    """Validate causal_conv1d inputs: x [B, T, C], weight [C, W], conv_state [N, C, W-1]; return N."""
    _expect_ndim("x", x, 3, "[B, T, C]")
    batch, seqlen, channels = x.shape
    _expect_tokens("x", x, batch, seqlen, "[B, T, C]")
    _expect_ndim("weight", weight, 2, "[C, W]")
    if weight.shape[0] != channels or weight.shape[1] < 2:
        raise ValueError(
            f"weight must have shape [C, W] = [{channels}, W] with W >= 2, got {_fmt(weight.shape)} "
            "(for a torch Conv1d weight [C, 1, W] pass weight[:, 0, :])"
        )
    _expect_float_on_device("x", x, weight=weight, conv_state=conv_state)
    num_seqs = _num_seqs(cu_seqlens, batch, seqlen, x.device)
    if conv_state is not None:
        _expect_tensor("conv_state", conv_state, (num_seqs, channels, weight.shape[1] - 1), "[N, C, W-1]")
    return num_seqs


def check_conv_update(
    x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor, slots: torch.Tensor | None,
) -> None:
    """Validate causal_conv1d_update inputs: x [N, C], weight [C, W], conv_state pool [S, C, W-1]."""
    _expect_ndim("x", x, 2, "[N, C]")
    count, channels = x.shape
    _expect_ndim("weight", weight, 2, "[C, W]")
    if weight.shape[0] != channels or weight.shape[1] < 2:
        raise ValueError(f"weight must have shape [C, W] = [{channels}, W] with W >= 2, got {_fmt(weight.shape)}")
    _expect_ndim("conv_state", conv_state, 3, "[S, C, W-1]")
    if tuple(conv_state.shape[1:]) != (channels, weight.shape[1] - 1):
        raise ValueError(
            f"conv_state must have shape [S, C, W-1] = [S, {channels}, {weight.shape[1] - 1}], "
            f"got {_fmt(conv_state.shape)}"
        )
    _expect_float_on_device("x", x, weight=weight, conv_state=conv_state)
    _expect_same_device(x, slots=slots)
    if slots is None:
        if count > conv_state.shape[0]:
            raise ValueError(
                f"conv_state pool has {conv_state.shape[0]} rows but x has N={count} tokens; "
                "pass slots or a larger pool"
            )
        return
    check_slots(slots, count, conv_state.shape[0], "conv_state")
