"""Compile the baselines' kernels for every prefill shape of benchmarks/kernels.py, one process per shape.

    source .device/setup.sh && python benchmarks/warm_baselines.py [--shapes 1x16384 ...]

FlashQLA compiles about five TileLang kernels (~1 min) per head configuration and CP path, and FLA
compiles its Triton autotuning candidates: done in turn inside the timing run that costs minutes of a
GPU lease. Run in parallel first, they land in TileLang's cache (TILELANG_CACHE_DIR) and Triton's
cache, which the timing run then reads. Nothing is timed here.
"""

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import selected  # noqa: E402
from benchmarks.kernels import SHAPES  # noqa: E402


def warm(name: str) -> str:
    """Run FLA and FlashQLA once on shape `name`; returns a line saying what ran."""
    import torch

    from benchmarks.kernels import make_inputs, runners

    shape = next(s for s in SHAPES if s.name == name)
    x = make_inputs(shape, torch.device("cuda"), seed=0)
    fns = runners(["fla", "flashqla"])
    for impl in ("fla", "flashqla"):
        if impl in fns:
            fns[impl](x)
    torch.cuda.synchronize()
    return f"warmed {name}: {', '.join(i for i in ('fla', 'flashqla') if i in fns)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", help="substrings of shape names (default: all)")
    args = parser.parse_args()
    names = [s.name for s in SHAPES if selected(s.name, args.shapes)]
    with ProcessPoolExecutor(len(names), mp_context=multiprocessing.get_context("spawn")) as pool:
        for line in pool.map(warm, names):
            print(line, flush=True)


if __name__ == "__main__":
    main()
