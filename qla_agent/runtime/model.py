"""HybridModel: the Qwen hybrid decoder (GDN + gated attention layers) running on session states."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.layers.attention import GatedAttention, PartialRope
from qla_agent.runtime.layers.gdn import GatedDeltaNet
from qla_agent.runtime.layers.mlp import make_ffn
from qla_agent.runtime.layers.norms import ZeroCenteredRMSNorm
from qla_agent.runtime.state import KVCache, MemoryPolicy, SessionState

logger = logging.getLogger(__name__)


class DecoderLayer(nn.Module):
    """x + mixer(norm(x)), then + ffn(norm(.)); the mixer is `linear_attn` (GDN) or `self_attn`.

    HybridModel runs the residual stream itself so each add is fused into the norm after it.
    """

    def __init__(self, config: ModelConfig, layer: int, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.kind = config.layer_types[layer]
        eps = config.rms_norm_eps
        self.input_layernorm = ZeroCenteredRMSNorm(config.hidden_size, eps, dtype=dtype, device=device)
        self.post_attention_layernorm = ZeroCenteredRMSNorm(config.hidden_size, eps, dtype=dtype, device=device)
        if self.kind == "linear_attention":
            self.linear_attn = GatedDeltaNet(config, dtype=dtype, device=device)
        else:
            self.self_attn = GatedAttention(config, dtype=dtype, device=device)
        self.mlp = make_ffn(config, layer, dtype=dtype, device=device)


class HybridModel(nn.Module):
    """Token embedding, decoder layers, final zero-centred norm, lm_head (or the tied embedding).

    `prefill` runs T tokens of one session, `decode` one token for each of N sessions; both advance the
    given SessionState objects in place and return fp32 logits.
    """

    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            DecoderLayer(c, i, dtype=dtype, device=device) for i in range(c.num_hidden_layers)
        )
        self.norm = ZeroCenteredRMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, device=device)
        self.lm_head = (
            None if c.tie_word_embeddings
            else nn.Linear(c.hidden_size, c.vocab_size, bias=False, dtype=dtype, device=device)
        )
        # The folder the weights came from (set by the loader).
        self.model_dir: Path | None = None
        # RoPE angles, computed once per forward and shared by every attention layer.
        self.rope = PartialRope(c.rotary_dim, c.rope_theta)
        # Layer index -> index into SessionState.recurrent/conv (GDN) or .kv (attention).
        self._slot = {i: n for ids in (c.gdn_layers, c.attention_layers) for n, i in enumerate(ids)}

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_state(self, policy: MemoryPolicy = MemoryPolicy()) -> SessionState:
        """Empty state of a new session on the model's device."""
        c, dev = self.config, self.device
        n_gdn = len(c.gdn_layers)
        # One zeroed buffer per kind, unbound into per-layer views: two launches instead of one per layer
        # (the host's lead before the first prefill kernel); savers copy each view out on its own.
        recurrent = torch.zeros(
            n_gdn, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim,
            dtype=torch.float32, device=dev,
        )
        conv = torch.zeros(n_gdn, c.conv_dim, c.linear_conv_kernel_dim - 1, dtype=self.dtype, device=dev)
        return SessionState(
            recurrent=list(recurrent.unbind(0)),
            conv=list(conv.unbind(0)),
            kv=[KVCache(c.num_key_value_heads, c.head_dim, policy=policy, dtype=self.dtype, device=dev)
                for _ in c.attention_layers],
            n_tokens=0,
            policy=policy,
        )

    def _layers(self, x: Tensor, mixer: Callable[[int, DecoderLayer, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """The decoder stack on embeddings x [T, H] -> (delta, residual): the hidden state is their sum.

        Each block adds its mixer's and its FFN's outputs to the residual stream inside the norm that
        follows (one fused kernel); the last FFN output stays unadded for `_logits`.
        """
        delta, residual = x, None
        for i, layer in enumerate(self.layers):
            if residual is None:
                h, residual = layer.input_layernorm(delta), delta
            else:
                h, residual = layer.input_layernorm.add(delta, residual)
            h, residual = layer.post_attention_layernorm.add(mixer(i, layer, h), residual)
            delta = layer.mlp(h)
        return delta, residual

    def _logits(self, delta: Tensor, residual: Tensor) -> Tensor:
        """fp32 logits of the hidden states delta + residual [T, H]."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.norm.add(delta, residual)[0], weight).float()

    def _check_ids(self, input_ids: Tensor, what: str) -> Tensor:
        if input_ids.dim() != 1 or input_ids.numel() == 0:
            raise ValueError(f"{what} takes a non-empty 1-D LongTensor of token ids, got shape {tuple(input_ids.shape)}")
        return input_ids.to(device=self.device, dtype=torch.long)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, state: SessionState, *, all_logits: bool = False) -> Tensor:
        """Run T tokens [T] on `state` (advanced in place) -> fp32 logits [vocab] of the last token,
        or [T, vocab] when all_logits."""
        ids = self._check_ids(input_ids, "prefill")
        n = ids.shape[0]
        rope: list[tuple[Tensor, Tensor]] = []

        def mixer(i: int, layer: DecoderLayer, h: Tensor) -> Tensor:
            s = self._slot[i]
            if layer.kind == "linear_attention":
                # The layer returns the states after its tokens as new tensors: swapped in, not copied back.
                out, state.recurrent[s], state.conv[s] = layer.linear_attn.prefill(
                    h, state.recurrent[s], state.conv[s]
                )
                return out
            if not rope:
                # At the first attention layer, not up front: the GPU starts on the embedding and the first
                # GDN layer while the host computes these (its lead before the first kernel is the prefill's
                # only idle GPU time).
                positions = torch.arange(state.n_tokens, state.n_tokens + n, device=self.device)
                rope.append(self.rope.cos_sin(positions, self.dtype))
            return layer.self_attn.prefill(h, state.kv[s], rope[0])

        delta, residual = self._layers(self.embed_tokens(ids), mixer)
        state.n_tokens += n
        if not all_logits:
            delta, residual = delta[-1:], residual[-1:]
        logits = self._logits(delta, residual)
        return logits if all_logits else logits[0]

    @torch.no_grad()
    def decode(self, input_ids: Tensor, states: Sequence[SessionState]) -> Tensor:
        """One token per session: input_ids [N], N distinct states (each advanced in place)
        -> fp32 logits [N, vocab]."""
        ids = self._check_ids(input_ids, "decode")
        if len(states) != ids.shape[0]:
            raise ValueError(f"decode got {ids.shape[0]} token ids for {len(states)} session states")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("decode got the same session state twice; each session decodes one token per step")
        cos_sin = self.rope.cos_sin(torch.tensor([s.n_tokens for s in states], device=self.device), self.dtype)
        slots = torch.arange(len(states), device=self.device)

        def mixer(i: int, layer: DecoderLayer, h: Tensor) -> Tensor:
            s = self._slot[i]
            if layer.kind == "linear_attention":
                return self._decode_gdn(layer.linear_attn, h, states, s, slots)
            return layer.self_attn.decode(h, [st.kv[s] for st in states], cos_sin)

        logits = self._logits(*self._layers(self.embed_tokens(ids), mixer))
        for st in states:
            st.n_tokens += 1
        return logits

    @staticmethod
    def _decode_gdn(gdn: GatedDeltaNet, h: Tensor, states: Sequence[SessionState], s: int, slots: Tensor) -> Tensor:
        """GDN decode over the sessions' states gathered into a pool (written back afterwards)."""
        if len(states) == 1:
            # A one-row view of the session's own tensors: the kernel updates them directly.
            return gdn.decode(h, states[0].recurrent[s][None], states[0].conv[s][None], slots)
        recurrent = torch.stack([st.recurrent[s] for st in states])
        conv = torch.stack([st.conv[s] for st in states])
        out = gdn.decode(h, recurrent, conv, slots)
        for j, st in enumerate(states):
            st.recurrent[s].copy_(recurrent[j])
            st.conv[s].copy_(conv[j])
        return out
