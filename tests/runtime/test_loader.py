"""load_model: layouts, sharding, the Hugging Face cache, dtypes, and errors that name the problem."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qla_agent.errors import CheckpointError
from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.loader import load_model, load_weights
from qla_agent.runtime.model import HybridModel
from qla_agent.runtime.model_files import resolve_model_dir
from qla_agent.runtime.weights import plan
from qla_agent.runtime.weights.qwen3_next import ba_rows, qkvz_rows
from tests.tiny_models import write_tiny_checkpoint

IDS = torch.tensor([3, 141, 59, 26, 53, 5, 8, 97, 9, 401, 32])


@pytest.fixture(scope="module")
def qwen3_5_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("qwen3_5"), "qwen3_5", seed=1)


def _logits(path, **kwargs) -> torch.Tensor:
    model = load_model(path, device="cpu", progress=False, **kwargs)
    return model.prefill(IDS, model.new_state(), all_logits=True)


@pytest.mark.parametrize(
    "family,options",
    [("qwen3_5", {"vlm": True}), ("qwen3_next", {}), ("qwen3_5_moe", {}), ("qwen3_5_moe", {"fused_experts": False})],
    ids=["qwen3_5-vlm", "qwen3_next", "qwen3_5_moe-fused", "qwen3_5_moe-per-expert"],
)
def test_every_parameter_element_is_written(tmp_path, family, options):
    path = write_tiny_checkpoint(tmp_path, family, **options)
    model = HybridModel(ModelConfig.from_dir(path))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    load_weights(model, path)
    unwritten = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert unwritten == []


def test_sharded_checkpoint_equals_single_file(tmp_path, qwen3_5_dir):
    sharded = write_tiny_checkpoint(tmp_path, "qwen3_5", seed=1, shards=3)
    assert len(list(sharded.glob("model-*-of-00003.safetensors"))) == 3
    torch.testing.assert_close(_logits(sharded), _logits(qwen3_5_dir), rtol=0, atol=0)


def test_qwen3_next_rows_are_a_permutation():
    config = ModelConfig.from_dict(json.loads(
        '{"model_type": "qwen3_next", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 4,'
        ' "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 8,'
        ' "linear_num_key_heads": 2, "linear_num_value_heads": 6, "linear_key_head_dim": 4, "linear_value_head_dim": 2}'
    ))
    rows = qkvz_rows(config)
    assert sorted(rows.tolist()) == list(range(2 * (4 + 4 + 3 * 2 + 3 * 2)))
    # Group 1 starts at row 20: its q rows come right after group 0's q rows.
    assert rows[:8].tolist() == [0, 1, 2, 3, 20, 21, 22, 23]
    # v of value head 3 (group 1, first of its 3 heads) sits at 20 + 8 in the fused layout.
    v_start = 2 * 8
    assert rows[v_start + 3 * 2 : v_start + 4 * 2].tolist() == [28, 29]
    assert ba_rows(config).tolist() == [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]


def test_bf16_load_keeps_gates_fp32(qwen3_5_dir):
    model = load_model(qwen3_5_dir, device="cpu", dtype="bfloat16", progress=False)
    assert model.dtype == torch.bfloat16
    gdn = model.layers[0].linear_attn
    assert gdn.A_log.dtype == torch.float32 and gdn.in_proj.weight.dtype == torch.bfloat16
    state = model.new_state()
    assert state.recurrent[0].dtype == torch.float32 and state.conv[0].dtype == torch.bfloat16
    out = model.prefill(IDS, state, all_logits=True)
    ref = _logits(qwen3_5_dir)
    assert out.dtype == torch.float32
    # bf16 round-off through 4 random layers: transformers' own bf16 model is off by ~9% of max here.
    assert (out - ref).abs().max() < 0.2 * ref.abs().max()


def test_progress_bar_and_default_device(qwen3_5_dir):
    model = load_model(qwen3_5_dir, progress=True)
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert model.model_dir == qwen3_5_dir


def test_loads_from_the_hf_cache_by_repo_id(tmp_path, qwen3_5_dir, monkeypatch):
    repo = tmp_path / "hub" / "models--TinyOrg--Tiny-Qwen"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(qwen3_5_dir, target_is_directory=True)
    (repo / "snapshots" / "older").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_dir("TinyOrg/Tiny-Qwen") == snapshot
    torch.testing.assert_close(_logits("TinyOrg/Tiny-Qwen"), _logits(qwen3_5_dir), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="'TinyOrg/Other'.*local Hugging Face cache"):
        load_model("TinyOrg/Other", progress=False)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert resolve_model_dir("TinyOrg/Tiny-Qwen") == snapshot


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="no model folder"):
        load_model(tmp_path / "nowhere", progress=False)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path, progress=False)


def test_missing_shard_names_the_file(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "qwen3_next", shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors"):
        load_model(path, progress=False)


def test_no_weights_file(tmp_path, qwen3_5_dir):
    (tmp_path / "config.json").write_text((qwen3_5_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no model.safetensors.*pytorch_model\.bin"):
        load_model(tmp_path, progress=False)


def test_missing_tensor_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "qwen3_5")
    file = path / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "model.layers.3.self_attn.k_norm.weight"}
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match=r"model\.layers\.3\.self_attn\.k_norm\.weight"):
        load_model(path, progress=False)


def test_untied_config_without_lm_head_names_it(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "qwen3_5", tie=True)
    config = json.loads((path / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        load_model(path, progress=False)


def test_wrong_model_type_is_named(tmp_path, qwen3_5_dir):
    config = json.loads((qwen3_5_dir / "config.json").read_text())
    config["model_type"] = "qwen3"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'qwen3'.*supported: qwen3_next"):
        load_model(tmp_path, progress=False)


def test_mismatched_shape_names_tensor_and_both_shapes(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "qwen3_5")
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 80
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.layers\.\d\.mlp\.\w+_proj\.weight.*\[(96, 64|64, 96)\], expected \[(80, 64|64, 80)\]"):
        load_model(path, progress=False)


def test_plan_reads_the_layout_off_the_names(qwen3_5_dir):
    config = ModelConfig.from_dir(qwen3_5_dir)
    vlm_names = {"model.language_model.embed_tokens.weight", "model.visual.patch_embed.proj.weight"}
    assert "model.language_model.layers.0.linear_attn.in_proj_qkv.weight" in plan(config, vlm_names)
    assert "model.layers.0.linear_attn.in_proj_qkv.weight" in plan(config, {"model.embed_tokens.weight"})


def test_mtp_is_ignored_and_unknown_tensors_are_reported(tmp_path, qwen3_5_dir, caplog):
    path = write_tiny_checkpoint(tmp_path, "qwen3_5", seed=1)
    file = path / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["mtp.fc.weight"] = torch.zeros(64, 128)
    tensors["model.layers.9.mlp.up_proj.weight"] = torch.zeros(96, 64)
    save_file(tensors, str(file))
    with caplog.at_level("WARNING", logger="qla_agent.runtime.loader"):
        out = _logits(path)
    torch.testing.assert_close(out, _logits(qwen3_5_dir), rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "model.layers.9.mlp.up_proj.weight" in warnings[0] and "mtp.fc" not in warnings[0]


def test_quantized_checkpoint_is_refused(tmp_path, qwen3_5_dir):
    config = json.loads((qwen3_5_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'fp8'-quantized"):
        load_model(tmp_path, progress=False)
