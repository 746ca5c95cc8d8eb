"""Time the GDN prefill in both forms of what chunk_prep hands chunk_scan ("t": T; "wy": Wk and U0) in one process.

    source .device/setup.sh && python benchmarks/scan_forms.py [--forms t,wy] [--shapes "1x8192 16/16" ...]

Model-like inputs as the runtime passes them: q, k, v column slices of one bf16 conv output, raw bf16
gates the halves of one [T, 2 Hv] projection, fp32 A_log / dt_bias, q/k L2 norm in the kernel; the
append shape also starts from a state. Per form: the whole call and chunk_prep alone (prep_only), device
microseconds per call from CUDA-graph replays (benchmarks.kernels_decode.graph_us); "scan" is their
difference, and "per chunk" divides it by the chunk count (one CTA walks every chunk of its sequence).
The last column is max |o - o_first| / max |o_first| against the first form listed (bf16: ~1e-2 is rounding).
"""

import argparse

import torch

# name -> (tokens, key heads, value heads, with an initial state)
SHAPES = {
    "1x8192 16/16": (8192, 16, 16, False),
    "1x16384 16/32": (16384, 16, 32, False),
    "1x32768 16/64": (32768, 16, 64, False),
    "append 1x256 16/16 +h0": (256, 16, 16, True),
}


def layer_inputs(ntok: int, hk: int, hv: int, with_state: bool, device: torch.device) -> dict:
    """gdn_prefill's arguments as the runtime's GDN layer passes them (column slices, no copies)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device)

    u = randn(1, ntok, (2 * hk + hv) * 128).bfloat16()
    ba = randn(1, ntok, 2 * hv).bfloat16()
    q, k, v = u.split([hk * 128, hk * 128, hv * 128], dim=-1)
    beta, g = ba.chunk(2, dim=-1)
    state = 0.1 * randn(1, hv, 128, 128) if with_state else None
    return dict(
        q=q.unflatten(-1, (hk, 128)), k=k.unflatten(-1, (hk, 128)), v=v.unflatten(-1, (hv, 128)), g=g, beta=beta,
        A_log=randn(hv) - 3, dt_bias=randn(hv), initial_state=state, use_qk_l2norm=True, scale=128**-0.5,
    )


def main() -> None:
    from benchmarks.kernels_decode import graph_us
    from qla_agent.kernels.tilelang import chunk_prep
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", default=",".join(chunk_prep.FORMS))
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}; GDN prefill, device us per call (CUDA graph, median)")
    print(f"{'shape':>24}  {'form':>4}  {'total':>8}  {'prep':>8}  {'scan':>8}  {'per chunk':>9}  o vs first")
    for name in args.shapes:
        ntok, hk, hv, with_state = SHAPES[name]
        x = layer_inputs(ntok, hk, hv, with_state, device)
        chunks = -(-ntok // 64)
        first = None
        for form in args.forms.split(","):
            o, _ = gdn_prefill(**x, form=form)
            first = o.float() if first is None else first
            agree = float((o.float() - first).abs().max() / first.abs().max())
            total = graph_us(lambda i: gdn_prefill(**x, form=form))
            prep = graph_us(lambda i: gdn_prefill(**x, form=form, prep_only=True))
            scan = total - prep
            print(f"{name:>24}  {form:>4}  {total:8.1f}  {prep:8.1f}  {scan:8.1f}  {scan / chunks:9.3f}  {agree:.1e}")
            del o
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
