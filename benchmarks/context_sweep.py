"""Sweep the context-parallel split and the scan tile of the GDN prefill on long single sequences.

    source .device/setup.sh && python benchmarks/context_sweep.py [--shapes 1x16384 ...] [--jobs 16]

For each shape of benchmarks/kernels.py with one sequence, times our prefill in a CUDA graph (device
time, microseconds) for partitions x block_v, after compiling every config on all cores. The table
shows where `prefill.context_parts` + `pick_scan_tile` (the "auto" column) stand against the best.
"""

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.harness import graph_us, selected  # noqa: E402
from benchmarks.kernels import SHAPES, input_sets, ours  # noqa: E402
from benchmarks.precompile_tilelang import H100_SMS, _compile, _shape_call  # noqa: E402
from qla_agent.kernels.tilelang import chunk_prep, chunk_scan  # noqa: E402
from qla_agent.kernels.tilelang.prefill import prefill_configs, warmup_config  # noqa: E402

PARTS = (1, 2, 4, 8, 16)
BLOCK_V = (16, 32, 64)


def sweep_configs(shapes: list, arch: str) -> list:
    """(program, config) pairs of every swept point."""
    common = dict(scale=128**-0.5, param_dtype=torch.float32, gate_dtype=torch.float32, arch=arch, sm_count=H100_SMS)
    pairs = []
    for s in shapes:
        for parts in PARTS:
            for bv in BLOCK_V:
                prep, scan = prefill_configs(**_shape_call(s), **common, parts=parts, block_v=bv)
                pairs += [(chunk_prep.program, prep), (chunk_scan.program, scan)]
                if parts > 1:
                    pairs.append((chunk_scan.program, warmup_config(scan, s.h0)))
    return list(dict.fromkeys(pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", help="substrings of shape names (default: every single sequence)")
    parser.add_argument("--jobs", type=int, default=16)
    args = parser.parse_args()
    shapes = [s for s in SHAPES if len(s.lens) == 1 and s.lens[0] >= 4096 and selected(s.name, args.shapes)]
    pairs = sweep_configs(shapes, "sm_90a")
    with ProcessPoolExecutor(args.jobs) as pool:
        failed = [r for r in pool.map(_compile, pairs, ["sm_90a"] * len(pairs)) if r.startswith("FAILED")]
    print(*failed, sep="\n")
    print(f"card: {torch.cuda.get_device_name()} (graph device time, us)")
    print("| shape | auto | " + " | ".join(f"P{p} bv{b}" for p in PARTS for b in BLOCK_V) + " |")
    print("|---" * (2 + len(PARTS) * len(BLOCK_V)) + "|")
    for s in shapes:
        sets = input_sets(s, torch.device("cuda"))
        cells = [graph_us(lambda i, fn=ours(): fn(sets[i % len(sets)]))]
        for parts in PARTS:
            for bv in BLOCK_V:
                fn = ours(parts=parts, block_v=bv)
                cells.append(graph_us(lambda i, fn=fn: fn(sets[i % len(sets)])))
        print(f"| {s.name} | " + " | ".join("-" if c is None else f"{c:.0f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
