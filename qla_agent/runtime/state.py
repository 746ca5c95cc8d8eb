"""Per-session model state: GDN recurrent and conv states, attention KV caches, memory policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from qla_agent.errors import SessionError

logger = logging.getLogger(__name__)

# First allocation of a KV cache, in entries; it doubles from there.
_MIN_KV_CAPACITY = 16


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """How a session's attention KV cache grows: `full` keeps everything, `bounded` keeps
    the first `sink_tokens` entries plus the last `window_tokens` (fixed memory)."""

    kind: Literal["full", "bounded"] = "full"
    sink_tokens: int = 4
    window_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in ("full", "bounded"):
            raise ValueError(f"MemoryPolicy.kind must be 'full' or 'bounded', got {self.kind!r}")
        if self.sink_tokens < 0 or self.window_tokens < 1:
            raise ValueError(
                f"MemoryPolicy needs sink_tokens >= 0 and window_tokens >= 1, "
                f"got {self.sink_tokens} and {self.window_tokens}"
            )

    @property
    def max_entries(self) -> int | None:
        """Most KV entries a cache holds under this policy (None: unbounded)."""
        return self.sink_tokens + self.window_tokens if self.kind == "bounded" else None


class KVCache:
    """Keys and values of one attention layer for one session, post-norm and post-RoPE.

    Storage is `[nkv, capacity, head_dim]`. The full policy grows capacity by doubling; the bounded
    policy keeps sinks in slots `[0, sink)` and the window in a ring buffer behind them, so storage
    order differs from token order once it wraps (softmax attention does not care: positions are
    already baked into the keys by RoPE). `keys`/`values` give token order.
    """

    __slots__ = ("policy", "n_seen", "_k", "_v")

    def __init__(
        self,
        num_kv_heads: int,
        head_dim: int,
        *,
        policy: MemoryPolicy = MemoryPolicy(),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.policy = policy
        # Entries appended so far (after truncation: the truncated length).
        self.n_seen = 0
        self._k = torch.empty(num_kv_heads, 0, head_dim, dtype=dtype, device=device)
        self._v = torch.empty(num_kv_heads, 0, head_dim, dtype=dtype, device=device)

    def __len__(self) -> int:
        """Number of entries held (≤ n_seen under the bounded policy)."""
        cap = self.policy.max_entries
        return self.n_seen if cap is None else min(self.n_seen, cap)

    @property
    def capacity(self) -> int:
        """Entries the current storage can hold without reallocating."""
        return self._k.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._k.dtype

    @property
    def device(self) -> torch.device:
        return self._k.device

    @property
    def evicted(self) -> bool:
        """Whether the bounded policy has dropped entries."""
        cap = self.policy.max_entries
        return cap is not None and self.n_seen > cap

    @property
    def keys(self) -> Tensor:
        """Held keys in token order [nkv, len, head_dim] (a view unless the ring has wrapped)."""
        return self._ordered(self._k)

    @property
    def values(self) -> Tensor:
        """Held values in token order [nkv, len, head_dim]."""
        return self._ordered(self._v)

    def context(self) -> tuple[Tensor, Tensor]:
        """Held keys and values in storage order (views) [nkv, len, head_dim]: what attention reads."""
        n = len(self)
        return self._k[:, :n], self._v[:, :n]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new entries k, v [nkv, T, head_dim]; return what the T new queries attend to.

        That is the held entries followed by the T new ones ([nkv, L, head_dim]), so a causal mask over
        the last T columns is correct. Exception, bounded policy with T = 1: the cache after the append
        (sinks + last window entries, the new one included, in storage order).
        """
        if k.shape != v.shape or k.shape[0] != self._k.shape[0] or k.shape[2] != self._k.shape[2]:
            raise ValueError(f"KVCache.append got keys {tuple(k.shape)} and values {tuple(v.shape)}, "
                             f"expected [{self._k.shape[0]}, T, {self._k.shape[2]}] each")
        if self.policy.kind == "full":
            return self._append_full(k, v)
        return self._append_bounded(k, v)

    def _append_full(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.n_seen, self.n_seen + k.shape[1]
        self._reserve(end)
        self._k[:, start:end] = k
        self._v[:, start:end] = v
        self.n_seen = end
        return self._k[:, :end], self._v[:, :end]

    def _append_bounded(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        sink, window = self.policy.sink_tokens, self.policy.window_tokens
        n_new = k.shape[1]
        if n_new == 1 or self.n_seen + n_new <= sink + window:
            # One token (needs no mask) or no eviction (storage still in token order, new entries last):
            # store first and attend over the cache itself, without copying it.
            self._store_bounded(k, v)
            return self.context()
        held_k, held_v = self.context()
        ctx = (torch.cat([held_k, k], dim=1), torch.cat([held_v, v], dim=1)) if len(self) else (k, v)
        self._store_bounded(k, v)
        return ctx

    def _store_bounded(self, k: Tensor, v: Tensor) -> None:
        sink, window = self.policy.sink_tokens, self.policy.window_tokens
        start, end = self.n_seen, self.n_seen + k.shape[1]
        self._reserve(min(end, sink + window))
        # Of the new entries only sinks (token p in slot p) and the last `window` non-sinks survive, token p
        # in ring slot sink + (p - sink) % window. Slot ranges are computed on the host and copied as
        # slices (at most three): no index tensors, no device sync of a boolean mask on the decode path.
        if start < sink:
            n = min(end, sink) - start
            self._k[:, start : start + n] = k[:, :n]
            self._v[:, start : start + n] = v[:, :n]
        p = max(start, sink, end - window)
        while p < end:
            slot = sink + (p - sink) % window
            n = min(end - p, sink + window - slot)
            self._k[:, slot : slot + n] = k[:, p - start : p - start + n]
            self._v[:, slot : slot + n] = v[:, p - start : p - start + n]
            p += n
        self.n_seen = end

    def _reserve(self, needed: int) -> None:
        cap = self.capacity
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap, _MIN_KV_CAPACITY)
        limit = self.policy.max_entries
        if limit is not None:
            new_cap = min(new_cap, limit)
        shape = (self._k.shape[0], new_cap, self._k.shape[2])
        new_k = torch.empty(shape, dtype=self._k.dtype, device=self._k.device)
        new_v = torch.empty(shape, dtype=self._v.dtype, device=self._v.device)
        n = len(self)
        new_k[:, :n] = self._k[:, :n]
        new_v[:, :n] = self._v[:, :n]
        self._k, self._v = new_k, new_v

    def _ordered(self, store: Tensor) -> Tensor:
        if not self.evicted:
            return store[:, : len(self)]
        sink, window = self.policy.sink_tokens, self.policy.window_tokens
        # Slot of the oldest window entry still held (token n_seen - window).
        oldest = (self.n_seen - window - sink) % window
        ring = store[:, sink : sink + window]
        return torch.cat([store[:, :sink], ring[:, oldest:], ring[:, :oldest]], dim=1)

    def truncate(self, length: int) -> None:
        """Forget every entry from token `length` on (keeps the storage for reuse)."""
        if not 0 <= length <= self.n_seen:
            raise SessionError(f"cannot truncate a KV cache of {self.n_seen} tokens to {length}")
        if length < self.n_seen and self.evicted:
            raise SessionError(
                f"cannot truncate a bounded KV cache to {length} tokens: it has seen {self.n_seen} "
                f"and evicted all but {len(self)}; restore from a checkpoint instead"
            )
        self.n_seen = length

    def nbytes(self) -> int:
        """Bytes of the allocated storage (keys + values)."""
        return self._k.nbytes + self._v.nbytes

    def clone(self) -> KVCache:
        """Independent copy holding only the used entries."""
        n = len(self)
        return self._with(self._k[:, :n].clone(), self._v[:, :n].clone())

    def to(self, device: torch.device | str) -> KVCache:
        """Copy on `device` (self when already there)."""
        if self._k.device == torch.device(device):
            return self
        n = len(self)
        return self._with(self._k[:, :n].to(device), self._v[:, :n].to(device))

    def _with(self, k: Tensor, v: Tensor) -> KVCache:
        out = KVCache.__new__(KVCache)
        out.policy, out.n_seen, out._k, out._v = self.policy, self.n_seen, k, v
        return out

    @classmethod
    def from_tensors(
        cls, keys: Tensor, values: Tensor, *, policy: MemoryPolicy = MemoryPolicy(), n_seen: int | None = None
    ) -> KVCache:
        """Rebuild a cache from token-ordered `keys`/`values` [nkv, len, head_dim] (as `.keys` gives)."""
        held = keys.shape[1]
        n_seen = held if n_seen is None else n_seen
        cap = policy.max_entries
        expected = n_seen if cap is None else min(n_seen, cap)
        if keys.shape != values.shape or held != expected:
            raise SessionError(
                f"KV tensors {tuple(keys.shape)}/{tuple(values.shape)} do not fit {n_seen} tokens "
                f"under {policy} (expected {expected} entries)"
            )
        out = cls(keys.shape[0], keys.shape[2], policy=policy, dtype=keys.dtype, device=keys.device)
        if cap is None or n_seen <= cap:
            out._k, out._v = keys.clone(), values.clone()
            out.n_seen = n_seen
            return out
        sink, window = policy.sink_tokens, policy.window_tokens
        pos = torch.cat([torch.arange(sink), torch.arange(n_seen - window, n_seen)]).to(keys.device)
        slots = torch.where(pos < sink, pos, sink + (pos - sink) % window)
        out._k = torch.empty_like(keys).index_copy_(1, slots, keys)
        out._v = torch.empty_like(values).index_copy_(1, slots, values)
        out.n_seen = n_seen
        return out


@dataclass(slots=True)
class SessionState:
    """Everything the model needs to continue a session after `n_tokens` tokens."""

    # Per GDN layer [Hv, K, V] fp32.
    recurrent: list[Tensor]
    # Per GDN layer [conv_dim, W-1] in the model dtype: the last W-1 conv inputs.
    conv: list[Tensor]
    # Per attention layer.
    kv: list[KVCache]
    # Tokens consumed = position of the next token.
    n_tokens: int = 0
    policy: MemoryPolicy = field(default_factory=MemoryPolicy)

    @property
    def device(self) -> torch.device:
        return self.recurrent[0].device if self.recurrent else self.kv[0].device

    def clone(self) -> SessionState:
        """Deep copy (fork)."""
        return SessionState(
            recurrent=[t.clone() for t in self.recurrent],
            conv=[t.clone() for t in self.conv],
            kv=[c.clone() for c in self.kv],
            n_tokens=self.n_tokens,
            policy=self.policy,
        )

    def to(self, device: torch.device | str) -> SessionState:
        """Copy on `device` (tensors already there are shared, as with Tensor.to)."""
        return SessionState(
            recurrent=[t.to(device) for t in self.recurrent],
            conv=[t.to(device) for t in self.conv],
            kv=[c.to(device) for c in self.kv],
            n_tokens=self.n_tokens,
            policy=self.policy,
        )

    def nbytes(self) -> int:
        """Bytes held by every tensor of the state (KV counted at allocated capacity)."""
        return (
            sum(t.nbytes for t in self.recurrent)
            + sum(t.nbytes for t in self.conv)
            + sum(c.nbytes() for c in self.kv)
        )

    def truncate(self, length: int) -> None:
        """Cut the attention caches back to `length` tokens; the caller restores GDN states itself
        (they cannot be rolled back) from a checkpoint taken at `length`."""
        for cache in self.kv:
            cache.truncate(length)
        self.n_tokens = length

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor map for saving (safetensors); KV in token order, contiguous.

        Recurrent/conv entries may share memory with the live state: save them before advancing it."""
        out: dict[str, Tensor] = {}
        for i, t in enumerate(self.recurrent):
            out[f"recurrent.{i}"] = t.contiguous()
        for i, t in enumerate(self.conv):
            out[f"conv.{i}"] = t.contiguous()
        for i, c in enumerate(self.kv):
            out[f"kv.{i}.keys"] = c.keys.contiguous()
            out[f"kv.{i}.values"] = c.values.contiguous()
        return out

    def metadata(self) -> dict[str, str]:
        """String metadata that, with `tensors()`, rebuilds the state via `from_tensors`."""
        return {
            "n_tokens": str(self.n_tokens),
            "policy": self.policy.kind,
            "sink_tokens": str(self.policy.sink_tokens),
            "window_tokens": str(self.policy.window_tokens),
            "kv_seen": ",".join(str(c.n_seen) for c in self.kv),
            "n_recurrent": str(len(self.recurrent)),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metadata: dict[str, str]) -> SessionState:
        """Inverse of `tensors()` + `metadata()`; copies the tensors (the result shares no memory)."""
        try:
            policy = MemoryPolicy(
                kind=metadata["policy"],  # type: ignore[arg-type]
                sink_tokens=int(metadata["sink_tokens"]),
                window_tokens=int(metadata["window_tokens"]),
            )
            n_gdn = int(metadata["n_recurrent"])
            seen = [int(s) for s in metadata["kv_seen"].split(",") if s]
            return cls(
                recurrent=[tensors[f"recurrent.{i}"].clone() for i in range(n_gdn)],
                conv=[tensors[f"conv.{i}"].clone() for i in range(n_gdn)],
                kv=[
                    KVCache.from_tensors(tensors[f"kv.{i}.keys"], tensors[f"kv.{i}.values"], policy=policy, n_seen=n)
                    for i, n in enumerate(seen)
                ],
                n_tokens=int(metadata["n_tokens"]),
                policy=policy,
            )
        except (KeyError, ValueError) as e:
            raise SessionError(f"saved session state is incomplete or corrupt: {e!r}") from e
