"""Time to resume a long session from disk + first token, against prefilling its history from scratch.

    python benchmarks/resume.py                          # CPU: a small Qwen3.5-shaped random model
    python benchmarks/resume.py --preset 0.8b --device cuda --tokens 2048 8192 32768
    python benchmarks/resume.py --model /path/to/Qwen3.5-0.8B

For each history length the script builds a conversation of that many tokens, runs one turn of it
in a session (saved to disk), then measures, each on a freshly started engine:
  scratch   a stateless request carrying the whole history + a new question (everything prefilled)
  resume    the same question sent to the saved session: load the file, prefill the question only
  warm      the same question to the session still in memory (for reference)
each to its first token (max_tokens=1; Finished comes later, once the session file is saved). `cold` evicts the session file from the page cache first
(posix_fadvise DONTNEED; the file is clean after the engine's fsync). Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qla_agent.runtime.chat_template import ChatTemplate  # noqa: E402
from qla_agent.runtime.config import ModelConfig  # noqa: E402
from qla_agent.runtime.engine import Engine, EngineSettings  # noqa: E402
from qla_agent.runtime.loader import load_model  # noqa: E402
from qla_agent.runtime.model import HybridModel  # noqa: E402
from qla_agent.runtime.requests import ChatRequest, Finished, SamplingParams, Started  # noqa: E402
from qla_agent.runtime.tokenizer import Tokenizer  # noqa: E402

# Text-config shapes: "cpu" is a scaled-down Qwen3.5; "0.8b" is Qwen3.5-0.8B's (model_spec.md §2).
PRESETS = {
    "cpu": dict(hidden_size=256, num_hidden_layers=8, linear_num_key_heads=4, linear_num_value_heads=8,
                linear_key_head_dim=64, linear_value_head_dim=64, num_attention_heads=4, num_key_value_heads=2,
                head_dim=64, intermediate_size=768, vocab_size=8192),
    "0.8b": dict(hidden_size=1024, num_hidden_layers=24, linear_num_key_heads=16, linear_num_value_heads=16,
                 linear_key_head_dim=128, linear_value_head_dim=128, num_attention_heads=8, num_key_value_heads=2,
                 head_dim=256, intermediate_size=3584, vocab_size=248320),
}
SENTENCE = ("The quick brown fox jumps over the lazy dog while we check the weather in Paris today, "
            "then call the function get_weather with the city parameter and return the result. ")
QUESTION = {"role": "user", "content": "And what should I pack for tomorrow?"}
ONE_TOKEN = SamplingParams(temperature=0.0, max_tokens=1)


def random_model(preset: str, device: str, dtype: torch.dtype) -> HybridModel:
    """A Qwen3.5-shaped model with seeded random weights (timing only: the text is meaningless)."""
    raw = dict(model_type="qwen3_5_text", tie_word_embeddings=True, max_position_embeddings=262144,
               eos_token_id=2, **PRESETS[preset])
    model = HybridModel(ModelConfig.from_dict(raw), dtype=dtype, device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=gen) * math.log(16.0))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model.eval()


def test_tokenizer_dir() -> Path:
    """The test suite's tiny Qwen-style tokenizer and Qwen3.5 template, written to a temp dir."""
    from tests.tokenizer_fixtures import write_tokenizer_files

    return write_tokenizer_files(Path(tempfile.mkdtemp(prefix="qla-bench-tok-")), "qwen3_5")


def conversation(tokenizer: Tokenizer, template: ChatTemplate, n_tokens: int) -> list[dict]:
    """System + user/assistant turns of filler text, ending with a user turn, about `n_tokens` long."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    i = 0
    while True:
        messages.append({"role": "user", "content": f"Question {i}: " + SENTENCE * 4})
        rendered = tokenizer.encode(template.render(messages, add_generation_prompt=True))
        if len(rendered) >= n_tokens:
            return messages
        messages.append({"role": "assistant", "content": f"Answer {i}: " + SENTENCE * 4})
        i += 1


async def first_token(engine: Engine, request: ChatRequest) -> tuple[float, Finished]:
    """Seconds to the first output event (the first token's text, or Finished when it has none) and Finished."""
    start = time.perf_counter()
    first = None
    async for event in engine.chat(request):
        if isinstance(event, Started):
            continue
        first = first or time.perf_counter() - start
        if isinstance(event, Finished):
            return first, event
    raise RuntimeError("no Finished event")


def evict_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def measure(model, tokenizer, template, n_tokens: int, repeat: int, workdir: Path) -> dict:
    messages = conversation(tokenizer, template, n_tokens)
    saved = workdir / f"saved-{n_tokens}"
    engine = Engine(model, tokenizer, template, settings=EngineSettings(sessions_dir=saved))
    await engine.start()
    info = await engine.sessions.create(messages=messages)
    _, built = await first_token(engine, ChatRequest([], session_id=info.id, sampling=ONE_TOKEN))
    session = await engine.sessions.get(info.id)
    history = [*session.messages, QUESTION]
    warm = []
    for _ in range(repeat):
        fork = await engine.sessions.fork(info.id)
        warm.append((await first_token(engine, ChatRequest([QUESTION], session_id=fork.id, sampling=ONE_TOKEN)))[0])
        await engine.sessions.delete(fork.id)
    await engine.stop()
    file = saved / f"{info.id}.safetensors"

    scratch, resume, cold, cached = [], [], [], 0
    for i in range(repeat):
        fresh = Engine(model, tokenizer, template, settings=EngineSettings())
        await fresh.start()
        seconds, fin = await first_token(fresh, ChatRequest(history, sampling=ONE_TOKEN))
        scratch.append(seconds)
        assert fin.usage.cached_tokens == 0
        await fresh.stop()
        for bucket, evict in ((resume, False), (cold, True)):
            copy_dir = workdir / f"run-{n_tokens}-{i}-{int(evict)}"
            shutil.copytree(saved, copy_dir)
            if evict:
                evict_from_page_cache(copy_dir / file.name)
            restarted = Engine(model, tokenizer, template, settings=EngineSettings(sessions_dir=copy_dir))
            await restarted.start()
            seconds, fin = await first_token(restarted, ChatRequest([QUESTION], session_id=info.id,
                                                                    sampling=ONE_TOKEN))
            bucket.append(seconds)
            cached = fin.usage.cached_tokens
            await restarted.stop()
            shutil.rmtree(copy_dir)
    return dict(tokens=fin.usage.prompt_tokens, cached=cached, scratch=statistics.median(scratch),
                resume=statistics.median(resume), cold=statistics.median(cold), warm=statistics.median(warm),
                file_mb=file.stat().st_size / 2**20, built=built.usage.prompt_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a real checkpoint folder (default: a random model of --preset)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda")
                                                          else torch.float32)
    if args.model:
        model = load_model(args.model, device=args.device, dtype=dtype, progress=False)
        tok_dir = Path(args.model)
        label = Path(args.model).name
    else:
        model = random_model(args.preset, args.device, dtype)
        tok_dir = test_tokenizer_dir()
        label = f"random {args.preset}"
    tokenizer, template = Tokenizer.from_dir(tok_dir), ChatTemplate.from_dir(tok_dir)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"model: {label} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {dtype}) on "
          f"{device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'history':>8} {'reused':>8} {'scratch s':>10} {'resume s':>10} {'cold s':>10} {'warm s':>10} "
          f"{'speedup':>8} {'file MiB':>9}")
    with tempfile.TemporaryDirectory(prefix="qla-bench-resume-") as tmp:
        for n in args.tokens:
            r = asyncio.run(measure(model, tokenizer, template, n, args.repeat, Path(tmp)))
            print(f"{r['tokens']:>8} {r['cached']:>8} {r['scratch']:>10.3f} {r['resume']:>10.3f} {r['cold']:>10.3f} "
                  f"{r['warm']:>10.3f} {r['scratch'] / r['resume']:>7.1f}x {r['file_mb']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
