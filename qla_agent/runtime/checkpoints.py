"""Message-boundary checkpoints: copies of the GDN states after a prefix of a session's tokens.

A checkpoint holds what cannot be rolled back (GDN recurrent and conv states). Under the full memory
policy the attention KV of any prefix is the live cache truncated, so a checkpoint stores only its
length; under the bounded policy the cache may have evicted entries, so it stores a copy.
Checkpoint tensors are never written after creation, so forks share them.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qla_agent.runtime.state import KVCache, SessionState

logger = logging.getLogger(__name__)

_COMPARE_CHUNK = 4096


def token_array(tokens: Sequence[int] = ()) -> array:
    """Compact int32 token list (4 bytes a token; slices compare in C)."""
    return array("i", tokens)


def token_digest(tokens: array, n: int | None = None) -> bytes:
    """Hash of the first `n` tokens (all when None): 16 bytes of BLAKE2b over int32 values."""
    view = tokens if n is None or n == len(tokens) else tokens[:n]
    return hashlib.blake2b(view.tobytes(), digest_size=16).digest()


def prefix_digests(tokens: array, lengths: Sequence[int]) -> dict[int, bytes]:
    """`token_digest(tokens, n)` for every n in `lengths` (≤ len(tokens)), hashing the tokens once."""
    out: dict[int, bytes] = {}
    hasher = hashlib.blake2b(digest_size=16)
    done = 0
    for n in sorted(set(lengths)):
        if n > len(tokens):
            break
        hasher.update(tokens[done:n].tobytes())
        done = n
        out[n] = hasher.copy().digest()
    return out


def common_prefix_length(a: array, b: array) -> int:
    """Number of leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    start = 0
    while start < n:
        end = min(start + _COMPARE_CHUNK, n)
        if a[start:end] != b[start:end]:
            for i in range(start, end):
                if a[i] != b[i]:
                    return i
        start = end
    return n


@dataclass(slots=True, eq=False)
class Checkpoint:
    """Model state after the first `n_tokens` tokens of a session, at a message boundary.

    `n_messages` messages were fully rendered at that point; `digest` is `token_digest` of the
    tokens. `recurrent` [Hv,K,V] fp32 and `conv` [C,W-1] per GDN layer; `kv` per attention layer,
    or None when the live cache truncated to `n_tokens` reproduces it.
    """

    n_tokens: int
    n_messages: int
    digest: bytes
    recurrent: list[Tensor]
    conv: list[Tensor]
    kv: list[KVCache] | None

    @classmethod
    def capture(cls, state: SessionState, *, n_messages: int, digest: bytes) -> Checkpoint:
        """Copy the states a rollback needs out of `state`."""
        kv = [c.clone() for c in state.kv] if state.policy.kind == "bounded" else None
        return cls(
            n_tokens=state.n_tokens,
            n_messages=n_messages,
            digest=digest,
            recurrent=[t.clone() for t in state.recurrent],
            conv=[t.clone() for t in state.conv],
            kv=kv,
        )

    def restore_into(self, state: SessionState) -> None:
        """Make the live `state` equal to this checkpoint (its KV must hold at least `n_tokens`)."""
        if self.kv is None:
            state.truncate(self.n_tokens)
        else:
            state.kv = [c.clone() for c in self.kv]
            state.n_tokens = self.n_tokens
        for live, saved in zip(state.recurrent, self.recurrent, strict=True):
            live.copy_(saved)
        for live, saved in zip(state.conv, self.conv, strict=True):
            live.copy_(saved)

    def branch(self, live: SessionState) -> SessionState:
        """A new independent state equal to this checkpoint, taking the KV prefix from `live`."""
        if self.kv is not None:
            kv = [c.clone() for c in self.kv]
        else:
            kv = [
                KVCache.from_tensors(c.keys[:, : self.n_tokens], c.values[:, : self.n_tokens], policy=c.policy)
                for c in live.kv
            ]
        return SessionState(
            recurrent=[t.clone() for t in self.recurrent],
            conv=[t.clone() for t in self.conv],
            kv=kv,
            n_tokens=self.n_tokens,
            policy=live.policy,
        )

    def to(self, device: torch.device | str) -> Checkpoint:
        """Copy on `device` (self when already there)."""
        if not self.recurrent or self.recurrent[0].device == torch.device(device):
            return self
        return Checkpoint(
            n_tokens=self.n_tokens,
            n_messages=self.n_messages,
            digest=self.digest,
            recurrent=[t.to(device) for t in self.recurrent],
            conv=[t.to(device) for t in self.conv],
            kv=None if self.kv is None else [c.to(device) for c in self.kv],
        )

    def nbytes(self) -> int:
        """Bytes of the copied tensors."""
        kv = 0 if self.kv is None else sum(c.nbytes() for c in self.kv)
        return sum(t.nbytes for t in self.recurrent) + sum(t.nbytes for t in self.conv) + kv


def keep_checkpoints(checkpoints: list[Checkpoint], limit: int) -> list[Checkpoint]:
    """At most `limit` checkpoints: the first (often a shared system prompt) and the most recent."""
    if len(checkpoints) <= limit:
        return checkpoints
    if limit <= 1:
        return checkpoints[-limit:] if limit else []
    return [checkpoints[0], *checkpoints[len(checkpoints) - limit + 1 :]]
