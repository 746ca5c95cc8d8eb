"""Our logits equal transformers' on tiny random checkpoints of every family and layout (fp32, CPU)."""

import pytest
import torch

from qla_agent.runtime.loader import load_model
from tests.tiny_models import load_hf_reference, write_tiny_checkpoint

# id -> (family, write_tiny_checkpoint options)
VARIANTS = {
    "qwen3_5": ("qwen3_5", {}),
    "qwen3_5-vlm-tied": ("qwen3_5", {"vlm": True, "tie": True}),
    "qwen3_next": ("qwen3_next", {}),
    "qwen3_next-dense-layer1-untopk": ("qwen3_next", {"mlp_only_layers": [1], "norm_topk_prob": False}),
    "qwen3_5_moe-fused": ("qwen3_5_moe", {}),
    "qwen3_5_moe-per-expert": ("qwen3_5_moe", {"fused_experts": False}),
    "qwen3_5_moe-vlm-fused": ("qwen3_5_moe", {"vlm": True}),
}
PROMPT_LENGTHS = (1, 7, 70)


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(transformers model, our model) loaded from the same tiny checkpoint folder."""
    family, options = VARIANTS[request.param]
    path = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), family, seed=3, **options)
    return load_hf_reference(path), load_model(path, device="cpu", progress=False)


def _assert_rel_close(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    err = (out - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3e} > {rel} x max |ref| {scale:.3e}"


@pytest.mark.parametrize("length", PROMPT_LENGTHS, ids=[f"T{n}" for n in PROMPT_LENGTHS])
def test_prefill_logits_match_transformers(pair, length):
    hf, ours = pair
    ids = torch.randint(0, ours.config.vocab_size, (length,), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        ref = hf(input_ids=ids[None]).logits[0].float()
    out = ours.prefill(ids, ours.new_state(), all_logits=True)
    assert out.shape == (length, ours.config.vocab_size) and out.dtype == torch.float32
    _assert_rel_close(out, ref)


def test_prefill_then_decode_match_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, ours.config.vocab_size, (12,), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        ref = hf(input_ids=ids[None]).logits[0].float()
    state = ours.new_state()
    out = [ours.prefill(ids[:8], state)]
    out += [ours.decode(ids[i : i + 1], [state])[0] for i in range(8, 12)]
    _assert_rel_close(torch.stack(out), ref[7:])
    assert state.n_tokens == 12
