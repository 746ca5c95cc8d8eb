"""Time chunk_prep's designs side by side (one GPU, one process) and check that they agree.

    source .device/setup.sh && python benchmarks/prep_designs.py [--designs chain,phased] [--shapes 1x8192 ...]

Inputs as benchmarks/kernels.py's prefill (bf16 q/k, fp32 g = logsigmoid(randn)/16 and beta, q/k L2 norm in
the kernel), through the launcher's own views (`prefill.token_rows`, `gate_rows`) and configs
(`prefill.prefill_configs`) with only `design` replaced: what `gdn_prefill(prep_only=True)` runs. Times
are device microseconds per call from CUDA-graph replays rotating through input sets of ~256 MB
(`harness.graph_us`). The agreement columns are max |x - x_first| / max |x_first| of tmat, pmat and vecs
against the first design listed (bf16 outputs: ~1e-2 is rounding).
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.harness import cell, graph_us, max_rel_dev  # noqa: E402
from benchmarks.kernels import BenchShape, input_sets  # noqa: E402

SHAPES = [
    BenchShape("1x8192 16/16", (8192,), 16, 16, False),
    BenchShape("1x16384 16/32", (16384,), 16, 32, False),
    BenchShape("1x32768 16/64", (32768,), 16, 64, False),
]
H100_SMS = 132


def prep_config(shape: BenchShape, design: str, arch: str = "sm_90a", sm_count: int = H100_SMS):
    """The launcher's PrepConfig for `shape` (benchmarks/kernels.py inputs) with `design`."""
    from qla_agent.kernels.tilelang import prefill

    prep, _ = prefill.prefill_configs(
        key_heads=shape.hk, value_heads=shape.hv, dtype=torch.bfloat16, gate_dtype=torch.float32,
        param_dtype=torch.float32, scale=128**-0.5, raw_gates=False, l2norm=True, varlen=len(shape.lens) > 1,
        has_h0=shape.h0, store_ht=True, num_seqs=len(shape.lens), arch=arch, sm_count=sm_count,
    )
    return dataclasses.replace(prep, design=design)


def prep_designs_configs() -> list:
    """Every PrepConfig this benchmark compiles (for benchmarks/precompile_tilelang.py)."""
    from qla_agent.kernels.tilelang import chunk_prep

    return [prep_config(s, d) for s in SHAPES for d in chunk_prep.DESIGNS]


def prep_runner(shape: BenchShape, design: str, sets: list[dict]):
    """fn(i): the design's kernel on input set i % len(sets), writing that set's own outputs."""
    from qla_agent.kernels.tilelang import build, chunk_prep, prefill

    device = sets[0]["q"].device
    kernel = build.entry(build.compiled(chunk_prep.program, prep_config(shape, design), build.device_arch(device)))
    ntok, chunks = sum(shape.lens), sum(-(-n // 64) for n in shape.lens)
    params = torch.zeros(shape.hv, device=device)
    calls = []
    for x in sets:
        (q, q8), (k, k8) = prefill.token_rows(x["q"]), prefill.token_rows(x["k"])
        (g, gs), (b, bs) = prefill.gate_rows(x["g"]), prefill.gate_rows(x["beta"])
        cu = x["cu_seqlens"] if x["cu_seqlens"] is not None else torch.zeros(2, dtype=torch.int32, device=device)
        tmat = torch.full((chunks, shape.hv, 64, 64), float("nan"), dtype=torch.bfloat16, device=device)
        out = (tmat, torch.full_like(tmat, float("nan")), torch.full((chunks, shape.hv, 4, 64), float("nan"),
               device=device))
        calls.append(((q, k, g, b, params, params, cu, *out, shape.lens[0], q8, k8, gs, bs), out))

    def run(i: int):
        args, out = calls[i % len(calls)]
        kernel(*args)
        return out

    return run


def main() -> None:
    from qla_agent.kernels.tilelang import chunk_prep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", default=",".join(chunk_prep.DESIGNS))
    parser.add_argument("--shapes", nargs="*", default=[s.name for s in SHAPES])
    args = parser.parse_args()
    device = torch.device("cuda")
    designs = args.designs.split(",")
    print(f"{torch.cuda.get_device_name(device)}; chunk_prep device us per call (CUDA graph)")
    print("| shape | design | us | tmat vs first | pmat vs first | vecs vs first |")
    print("|---|---|---|---|---|---|")
    for shape in (s for s in SHAPES if s.name in args.shapes):
        sets = input_sets(shape, device)
        first = None
        for design in designs:
            run = prep_runner(shape, design, sets)
            outs = [t.float() for t in run(0)]
            torch.cuda.synchronize()
            first = first or outs
            agree = [max_rel_dev(o, f) for o, f in zip(outs, first)]
            us = graph_us(run)
            print(f"| {shape.name} | {design} | {cell(us)} | " + " | ".join(f"{a:.1e}" for a in agree) + " |")


if __name__ == "__main__":
    main()
