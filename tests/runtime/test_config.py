"""ModelConfig parsing for every supported config.json layout."""

import json

import pytest
from transformers import Qwen3_5Config, Qwen3_5MoeTextConfig, Qwen3NextConfig

from qla_agent.errors import CheckpointError
from qla_agent.runtime.config import ModelConfig

DIMS = dict(
    vocab_size=300, hidden_size=64, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16, max_position_embeddings=512,
)


def _saved(cfg) -> dict:
    """The dict transformers writes to config.json."""
    return json.loads(cfg.to_json_string())


def test_qwen3_next_flat_config_with_moe_and_dense_layers():
    raw = _saved(Qwen3NextConfig(**DIMS, intermediate_size=96, num_experts=4, num_experts_per_tok=2,
                                 moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                 mlp_only_layers=[1], decoder_sparse_step=1, norm_topk_prob=False,
                                 eos_token_id=7))
    out = ModelConfig.from_dict(raw)
    assert out.family == "qwen3_next" and out.model_type == "qwen3_next"
    assert out.layer_types == ("linear_attention",) * 3 + ("full_attention",) + ("linear_attention",) * 3 + ("full_attention",)
    assert out.gdn_layers == (0, 1, 2, 4, 5, 6) and out.attention_layers == (3, 7)
    assert [out.is_moe_layer(i) for i in range(4)] == [True, False, True, True]
    assert out.norm_topk_prob is False and out.num_experts == 4 and out.intermediate_size == 96
    assert out.rotary_dim == 8 and out.head_dim == 32
    assert out.conv_dim == 2 * 32 + 64 and out.eos_token_ids == (7,)


def test_vlm_config_unwraps_text_config_and_top_level_tie():
    raw = _saved(Qwen3_5Config(text_config=dict(**DIMS, intermediate_size=96, eos_token_id=5),
                               tie_word_embeddings=True, eos_token_id=9))
    out = ModelConfig.from_dict(raw, generation={"eos_token_id": [9, 11]})
    assert out.model_type == "qwen3_5" and out.family == "qwen3_5"
    assert out.hidden_size == 64 and out.num_experts == 0 and out.intermediate_size == 96
    assert out.tie_word_embeddings is True
    assert out.eos_token_ids == (9, 5, 11)


def test_moe_text_config_always_renormalises():
    raw = _saved(Qwen3_5MoeTextConfig(**DIMS, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                     shared_expert_intermediate_size=48))
    out = ModelConfig.from_dict(raw)
    assert out.family == "qwen3_5_moe" and out.norm_topk_prob is True
    assert all(out.is_moe_layer(i) for i in range(8))


def test_layer_types_built_from_interval_when_absent():
    raw = _saved(Qwen3NextConfig(**DIMS, intermediate_size=96))
    del raw["layer_types"]
    raw["full_attention_interval"] = 2
    out = ModelConfig.from_dict(raw)
    assert out.attention_layers == (1, 3, 5, 7)


def test_flat_rope_theta_and_partial_factor():
    raw = _saved(Qwen3NextConfig(**DIMS, intermediate_size=96))
    del raw["rope_parameters"]
    raw.update(rope_theta=5e6, partial_rotary_factor=0.5)
    out = ModelConfig.from_dict(raw)
    assert out.rope_theta == 5e6 and out.rotary_dim == 16


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_type": "llama"}, r"'llama'.*qwen3_next, qwen3_5, qwen3_5_text, qwen3_5_moe, qwen3_5_moe_text"),
        ({"layer_types": ["linear_attention"] * 3}, "3 entries but num_hidden_layers is 8"),
        ({"layer_types": ["mamba"] * 8}, "mamba"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"linear_num_value_heads": 3}, "not a multiple"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ],
    ids=["model_type", "layer_count", "layer_kind", "act", "heads", "rope"],
)
def test_bad_configs_name_the_problem(change, match):
    raw = _saved(Qwen3NextConfig(**DIMS, intermediate_size=96))
    raw.update(change)
    with pytest.raises(CheckpointError, match=match):
        ModelConfig.from_dict(raw)


def test_missing_key_and_missing_file(tmp_path):
    raw = _saved(Qwen3NextConfig(**DIMS, intermediate_size=96))
    del raw["hidden_size"]
    with pytest.raises(CheckpointError, match="hidden_size"):
        ModelConfig.from_dict(raw)
    with pytest.raises(CheckpointError, match="config.json"):
        ModelConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        ModelConfig.from_dir(tmp_path)
