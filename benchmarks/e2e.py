"""End-to-end model speed: our runtime vs transformers (with FLA kernels when installed), same run.

Random weights with the shapes of a real checkpoint (default Qwen3.5-0.8B), bf16 on CUDA:
prefill of T tokens onto an empty session, and greedy-style batch-1 decode (argmax, no sampling).

    python benchmarks/e2e.py --shape 0.8b --tokens 8192
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("FLA_FLASH_QLA", "0")

import torch

from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.model import HybridModel

SHAPES = {
    "0.8b": dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=3584, num_attention_heads=8,
                 num_key_value_heads=2, linear_num_key_heads=16, linear_num_value_heads=16, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, num_hidden_layers=32, intermediate_size=9216, num_attention_heads=16,
               num_key_value_heads=4, linear_num_key_heads=16, linear_num_value_heads=32, tie_word_embeddings=True),
}


def text_config(shape: str) -> dict:
    return dict(model_type="qwen3_5_text", vocab_size=248320, head_dim=256, linear_key_head_dim=128,
                linear_value_head_dim=128, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=262144,
                rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
                eos_token_id=248046, **SHAPES[shape])


def random_init_(model: torch.nn.Module) -> None:
    """Small random weights everywhere (norm weights too) so no path sees zeros."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)


def cuda_time(fn, repeats: int, setup=lambda: None) -> float:
    """Median milliseconds of `fn(setup())` over `repeats` runs (setup untimed), after one warm-up."""
    fn(setup())
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        arg = setup()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(arg)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def ours(shape: str, tokens: int, append: int, decode_steps: int, repeats: int) -> dict[str, float]:
    config = ModelConfig.from_dict(text_config(shape))
    model = HybridModel(config, dtype=torch.bfloat16, device="cuda")
    random_init_(model)
    ids = torch.randint(0, 240000, (tokens,), device="cuda")
    new_ids = torch.randint(0, 240000, (append,), device="cuda")
    with torch.inference_mode():
        prefill_ms = cuda_time(lambda _: model.prefill(ids, model.new_state()), repeats)
        session = model.new_state()
        model.prefill(ids, session)
        append_ms = cuda_time(lambda state: model.prefill(new_ids, state), repeats, setup=session.clone)
        state = model.new_state()
        logits = model.prefill(ids[:128], state)

        def decode(_) -> None:
            nonlocal logits
            for _ in range(decode_steps):
                logits = model.decode(logits.argmax()[None], [state])[0]

        decode_ms = cuda_time(decode, 1)
    del model, session
    torch.cuda.empty_cache()
    return {"prefill_ms": prefill_ms, "append_ms": append_ms, "decode_tok_s": decode_steps / decode_ms * 1e3}


def transformers_baseline(
    shape: str, tokens: int, append: int, decode_steps: int, repeats: int
) -> dict[str, float] | None:
    try:
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
    except ImportError as e:
        print(f"transformers baseline skipped: {e}")
        return None
    raw = text_config(shape)
    raw.pop("model_type")
    model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**raw)).to(device="cuda", dtype=torch.bfloat16).eval()
    random_init_(model)
    ids = torch.randint(0, 240000, (1, tokens), device="cuda")
    new_ids = torch.randint(0, 240000, (1, append), device="cuda")
    with torch.inference_mode():
        prefill_ms = cuda_time(lambda _: model(ids, use_cache=True, logits_to_keep=1), repeats)
        session = model(ids, use_cache=True, logits_to_keep=1).past_key_values
        append_ms = cuda_time(
            lambda cache: model(new_ids, past_key_values=cache, use_cache=True, logits_to_keep=1),
            repeats, setup=lambda: copy.deepcopy(session),
        )
        del session
        out = model(ids[:, :128], use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

        def decode(_) -> None:
            nonlocal cache, token
            for _ in range(decode_steps):
                out = model(token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

        decode_ms = cuda_time(decode, 1)
    return {"prefill_ms": prefill_ms, "append_ms": append_ms, "decode_tok_s": decode_steps / decode_ms * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.8b")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--append", type=int, default=256, help="tokens appended to a session of --tokens")
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-baseline", action="store_true", help="skip transformers (time our runtime only)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/e2e.py needs a CUDA GPU")
    started = time.perf_counter()
    rows = {"qla-agent": ours(args.shape, args.tokens, args.append, args.decode_steps, args.repeats)}
    print(f"qla-agent: {rows['qla-agent']}", flush=True)
    baseline = None if args.no_baseline else transformers_baseline(
        args.shape, args.tokens, args.append, args.decode_steps, args.repeats
    )
    if baseline is not None:
        rows["transformers"] = baseline
    print(f"\n{torch.cuda.get_device_name()} · Qwen3.5-{args.shape} shape, random bf16 weights · "
          f"prefill {args.tokens} tokens, append {args.append} onto them, decode batch 1 ({time.perf_counter() - started:.0f} s)")
    print(f"{'runtime':<14}{'prefill ms':>12}{'append ms':>11}{'decode tok/s':>14}")
    for name, row in rows.items():
        print(f"{name:<14}{row['prefill_ms']:>12.1f}{row['append_ms']:>11.2f}{row['decode_tok_s']:>14.1f}")
    if baseline is not None:
        ours_row = rows["qla-agent"]
        print(f"speed-up: prefill {baseline['prefill_ms'] / ours_row['prefill_ms']:.2f}x, "
              f"append {baseline['append_ms'] / ours_row['append_ms']:.2f}x, "
              f"decode {ours_row['decode_tok_s'] / baseline['decode_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
