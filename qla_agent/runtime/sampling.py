"""Next-token sampling for a batch of requests, each with its own parameters and random stream.

Randomness is counter-based: the noise of a request's k-th token comes from a generator seeded with
mix(seed, k). So a row's draw never depends on which other rows share the batch, and a session's RNG
is two integers (seed, counter) that persist and survive a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qla_agent.runtime.requests import SamplingParams

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, counter: int) -> int:
    """A 63-bit generator seed from (seed, counter) (splitmix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + counter * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


class SamplerState:
    """Per-request sampling state: parameters, random stream, and token counts for the penalties."""

    __slots__ = ("params", "seed", "counter", "counts", "seen", "bias_ids", "bias_values")

    def __init__(
        self,
        params: SamplingParams,
        *,
        seed: int,
        counter: int,
        prompt_tokens: Sequence[int],
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.params = params
        self.seed = seed
        # Tokens drawn so far from this stream (the k of mix(seed, k)).
        self.counter = counter
        needs_counts = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        # [V] int32: how often each token occurs in the completion so far.
        self.counts = torch.zeros(vocab_size, dtype=torch.int32, device=device) if needs_counts else None
        # [V] bool: tokens of the prompt or the completion (repetition penalty).
        self.seen: Tensor | None = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = torch.tensor([t for t in prompt_tokens if 0 <= t < vocab_size], dtype=torch.long)
            self.seen[ids.to(device)] = True
        self.bias_ids: Tensor | None = None
        self.bias_values: Tensor | None = None
        bias = {t: b for t, b in params.logit_bias.items() if 0 <= t < vocab_size}
        if bias:
            self.bias_ids = torch.tensor(list(bias), dtype=torch.long, device=device)
            self.bias_values = torch.tensor(list(bias.values()), dtype=torch.float32, device=device)

    def observe(self, token: int) -> None:
        """Record a sampled token of the completion (for the penalties)."""
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True


@dataclass(slots=True)
class _Rows:
    """Per-row parameters of the rows that sample (not greedy), as tensors on the logits' device, and
    whether any row truncates (top-k/top-p) or floors (min-p), decided on the host (no device sync)."""

    index: Tensor
    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    min_p: Tensor
    truncates: bool
    floors: bool


def _apply_penalties(logits: Tensor, rows: Sequence[SamplerState]) -> Tensor:
    """Logit bias, repetition, presence and frequency penalties, row by row where set. [N, V] fp32."""
    for i, row in enumerate(rows):
        p = row.params
        line = logits[i]
        if row.bias_ids is not None:
            line.index_add_(0, row.bias_ids, row.bias_values)
        if row.seen is not None:
            penalised = torch.where(line > 0, line / p.repetition_penalty, line * p.repetition_penalty)
            line.copy_(torch.where(row.seen, penalised, line))
        if row.counts is not None:
            counts = row.counts.to(torch.float32)
            line -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(torch.float32)
    return logits


def _filtered_probs(logits: Tensor, rows: _Rows) -> Tensor:
    """Unnormalised probabilities after temperature, top-k, top-p and min-p. [M, V] fp32."""
    logits = logits / rows.temperature[:, None]
    vocab = logits.shape[-1]
    if rows.truncates:
        sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
        rank = torch.arange(vocab, device=logits.device)
        k = torch.where(rows.top_k > 0, rows.top_k, vocab)
        drop = rank[None, :] >= k[:, None]
        sorted_probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # Keep the smallest head whose mass reaches top_p: drop a token once the mass before it does.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= mass_before >= rows.top_p[:, None]
        drop[:, 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    if rows.floors:
        floor = rows.min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs


def sample(logits: Tensor, rows: Sequence[SamplerState], *, generator: torch.Generator) -> list[int]:
    """Pick one token per row of `logits` [N, V] fp32 (modified in place); advances each row's counter.

    Greedy rows take the argmax of the penalised logits; the others race exponential noise drawn from
    their own stream (argmax of p / E with E ~ Exp(1) is a draw from p).
    """
    if logits.shape[0] != len(rows):
        raise ValueError(f"sample got {logits.shape[0]} logit rows for {len(rows)} requests")
    logits = _apply_penalties(logits, rows)
    picks = logits.argmax(dim=-1)
    hot = [i for i, row in enumerate(rows) if not row.params.greedy]
    if hot:
        device = logits.device
        params = [rows[i].params for i in hot]
        # Built on the CPU, where the flags are read, then moved (as torch.tensor(..., device=) would).
        top_k = torch.tensor([p.top_k for p in params])
        top_p = torch.tensor([p.top_p for p in params])
        min_p = torch.tensor([p.min_p for p in params])
        sub = _Rows(
            index=torch.tensor(hot, device=device),
            temperature=torch.tensor([p.temperature for p in params], device=device),
            top_k=top_k.to(device),
            top_p=top_p.to(device),
            min_p=min_p.to(device),
            truncates=bool((top_k > 0).any()) or bool((top_p < 1.0).any()),
            floors=bool((min_p > 0).any()),
        )
        probs = _filtered_probs(logits[sub.index], sub)
        noise = torch.empty_like(probs)
        for j, i in enumerate(hot):
            generator.manual_seed(mix_seed(rows[i].seed, rows[i].counter))
            noise[j].exponential_(generator=generator)
        # A zero draw would turn a zero probability into nan.
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)
        picks[sub.index] = (probs / noise).argmax(dim=-1)
    out = picks.tolist()
    for row, token in zip(rows, out):
        row.counter += 1
        row.observe(token)
    return out
