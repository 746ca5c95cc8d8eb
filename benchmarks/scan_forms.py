"""Time the GDN prefill in both forms of what chunk_prep hands chunk_scan ("t": T; "wy": Wk and U0) in one process.

    source .device/setup.sh && python benchmarks/scan_forms.py [--forms t,wy] [--shapes "1x8192 16/16" ...]
    TILELANG_CACHE_DIR=.tlcache python benchmarks/scan_forms.py --precompile sm_90a   # on the CPU machine

Model-like inputs as the runtime passes them: q, k, v column slices of one bf16 conv output, raw bf16
gates the halves of one [T, 2 Hv] projection, fp32 A_log / dt_bias, q/k L2 norm in the kernel; the
append shape also starts from a state. Per form: the whole call and chunk_prep alone (prep_only), device
microseconds per call from CUDA-graph replays (benchmarks.kernels_decode.graph_us); "scan" is their
difference, and "per chunk" divides it by the chunk count (one CTA walks every chunk of its sequence).
The last column is max |o - o_first| / max |o_first| against the first form listed (bf16: ~1e-2 is rounding).
--precompile compiles (no GPU needed) every prefill kernel these timings and the GPU tests of
tests/kernels/test_tilelang_prefill.py ask for, in both forms, into TILELANG_CACHE_DIR.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

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


def wanted_configs(arch: str, sm_count: int = 132) -> list:
    """(program, config) pairs of both forms for the SHAPES and the prefill GPU tests on `arch`."""
    from qla_agent.kernels.tilelang import chunk_prep, chunk_scan
    from qla_agent.kernels.tilelang.prefill import prefill_configs
    from tests.kernels.test_tilelang_prefill import CASES, LAYOUT_CASES, PREP_CASES, PrefillCase, _shape

    f32, bf16 = torch.float32, torch.bfloat16
    calls = [
        dict(key_heads=hk, value_heads=hv, dtype=bf16, gate_dtype=bf16, raw_gates=True, l2norm=True, varlen=False,
             has_h0=h0, store_ht=True, num_seqs=1)
        for ntok, hk, hv, h0 in SHAPES.values()
    ]
    extra = [PrefillCase(_shape(1, 300, 2, 4), l2norm=True), PrefillCase(_shape(1, 100, 2, 2), l2norm=True)]
    for c in [*CASES, *LAYOUT_CASES, *extra]:
        calls.append(dict(
            key_heads=c.shape.Hk, value_heads=c.shape.Hv, dtype=c.dtype, gate_dtype=c.gate_dtype,
            raw_gates=c.raw_gates, l2norm=c.l2norm, varlen=c.lens is not None, has_h0=c.h0, store_ht=c.store_ht,
            num_seqs=len(c.lens) if c.lens else c.shape.B,
        ))
    pairs = []
    for call in calls:
        for form in chunk_prep.FORMS:
            prep, scan = prefill_configs(**call, scale=128**-0.5, param_dtype=f32, arch=arch, sm_count=sm_count,
                                         form=form)
            pairs += [(chunk_prep.program, prep), (chunk_scan.program, scan)]
    pairs += [
        (chunk_prep.program, chunk_prep.PrepConfig(
            key_heads=c.hk, value_heads=c.hv, dtype="bfloat16", gate_dtype="float32", param_dtype="float32",
            raw_gates=c.raw_gates, l2norm=c.l2norm, varlen=len(c.lens) > 1, scale=128**-0.5, design=design,
            form=form,
        ))
        for c in PREP_CASES
        for design, form in (("grouped", "t"), ("per_head", "t"), ("grouped", "wy"))
    ]
    return list(dict.fromkeys(pairs))


def precompile(arch: str) -> None:
    """Compile wanted_configs(arch) into TILELANG_CACHE_DIR, one process per core."""
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.precompile_tilelang import _compile

    pairs = wanted_configs(arch)
    print(f"{len(pairs)} kernels to compile for {arch}")
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for done in pool.map(_compile, pairs, [arch] * len(pairs)):
            print(done[:160])


def main() -> None:
    from benchmarks.kernels_decode import graph_us
    from qla_agent.kernels.tilelang import chunk_prep
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", default=",".join(chunk_prep.FORMS))
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--precompile", metavar="ARCH", help="compile the kernels for ARCH (no GPU) and exit")
    args = parser.parse_args()
    if args.precompile:
        precompile(args.precompile)
        return
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
