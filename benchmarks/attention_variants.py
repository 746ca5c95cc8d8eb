"""Which SDPA call shape is fastest for the gated-attention prefill (fresh causal context, GQA).

    python benchmarks/attention_variants.py [--tokens 8192]

Times q [T, nh, d] / k, v [nkv, T, d] -> out [T, nh * d] end to end (kv expansion, layout copies, SDPA,
output flatten) for each variant, and names the attention kernel torch picked.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def repeat_kv(q, k, v, scale):
    group = q.shape[1] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], is_causal=True, scale=scale)
    return out[0].transpose(0, 1).flatten(-2)


def enable_gqa(q, k, v, scale):
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k[None], v[None], is_causal=True, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1).flatten(-2)


def contiguous_q(q, k, v, scale):
    group = q.shape[1] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).contiguous()[None], k[None], v[None], is_causal=True, scale=scale
    )
    return out[0].transpose(0, 1).flatten(-2)


def expand_kv(q, k, v, scale):
    """kv heads broadcast with expand (a view) instead of repeat_interleave."""
    nkv, length, d = k.shape
    group = q.shape[1] // nkv
    k = k[:, None].expand(nkv, group, length, d).reshape(nkv * group, length, d)
    v = v[:, None].expand(nkv, group, length, d).reshape(nkv * group, length, d)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], is_causal=True, scale=scale)
    return out[0].transpose(0, 1).flatten(-2)


VARIANTS = {f.__name__: f for f in (repeat_kv, enable_gqa, contiguous_q, expand_kv)}


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def kernels_of(fn) -> str:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_time_total > 0]
    return "; ".join(n[:60] for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()
    t, nh, nkv, d = args.tokens, 8, 2, 256
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(t, nh, 2 * d, device="cuda", dtype=torch.bfloat16, generator=gen)[..., :d]
    k = torch.randn(nkv, t, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(nkv, t, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    ref = repeat_kv(q, k, v, d**-0.5).float()
    print(f"{'variant':<14}{'ms':>8}  max|diff|  kernels")
    for name, fn in VARIANTS.items():
        try:
            out = fn(q, k, v, d**-0.5)
            diff = (out.float() - ref).abs().max().item()
            ms = time_ms(lambda: fn(q, k, v, d**-0.5))
            print(f"{name:<14}{ms:>8.3f}  {diff:.1e}  {kernels_of(lambda: fn(q, k, v, d**-0.5))}")
        except RuntimeError as e:
            print(f"{name:<14}  failed: {str(e)[:120]}")


if __name__ == "__main__":
    main()
