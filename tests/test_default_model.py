"""The embedded default model that `qla-agent serve` runs without arguments is a complete, sound checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from qla_agent.runtime.chat_template import ChatTemplate
from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.loader import load_model
from qla_agent.runtime.tokenizer import Tokenizer
from tests.tiny_models import load_hf_reference

DEFAULT = Path(__file__).resolve().parent.parent / "qla_agent" / "configs" / "default"


def test_default_model_logits_match_transformers() -> None:
    model = load_model(DEFAULT, device="cpu", dtype=torch.float32, progress=False)
    ref_model = load_hf_reference(DEFAULT)
    ids = torch.tensor([257, 117, 115, 101, 114, 10, 72, 105, 258, 10, 257, 97, 10])
    ref = ref_model(ids[None]).logits[0].float()
    out = model.prefill(ids, model.new_state(), all_logits=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_default_model_has_real_gdn_head_dims_so_the_fast_kernels_run_on_it() -> None:
    config = ModelConfig.from_dir(DEFAULT)
    assert (config.linear_key_head_dim, config.linear_value_head_dim) == (128, 128)
    assert "full_attention" in config.layer_types and "linear_attention" in config.layer_types


def test_default_model_tokenizer_and_template_round_trip_a_tool_conversation() -> None:
    tokenizer, template = Tokenizer.from_dir(DEFAULT), ChatTemplate.from_dir(DEFAULT)
    tools = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic",
              "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Wie viel ist 6×7? 😀"}]
    text = template.render(messages, tools=tools)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert ids[0] == tokenizer.token_id("<|im_start|>")
    assert tokenizer.token_id("<|im_end|>") in tokenizer.eos_token_ids
    assert template.tool_format == "qwen_xml"
    assert max(ids) < ModelConfig.from_dir(DEFAULT).vocab_size
