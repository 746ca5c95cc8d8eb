"""What the kernel benchmarks (kernels.py, kernels_conv.py, kernels_decode.py, kernels_norms.py) share:
the measured copy ceiling, eager and CUDA-graph timing of fn(i) runners, table cells and row output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch

# Copy bandwidth measured on the H100 (../shared/device/README.md): the memory floors divide by it.
COPY_BYTES = 3.0e12
# Input sets rotate through about this many bytes so that repeated calls do not hit a warm L2.
ROTATE_BYTES = 256 << 20
GRAPH_CALLS = 16


def graph_us(fn: Callable[[int], object]) -> float | None:
    """Median microseconds per call when GRAPH_CALLS rotating calls replay as one CUDA graph."""
    import triton

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(GRAPH_CALLS):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for i in range(GRAPH_CALLS):
                fn(i)
    except RuntimeError:
        # A baseline that cannot be captured gets no graph time; ours must capture (the GPU tests say so).
        return None
    return 1e3 * triton.testing.do_bench(graph.replay, warmup=20, rep=200, return_mode="median") / GRAPH_CALLS


def eager_ms(fn: Callable[[int], object]) -> float:
    """Median milliseconds of one eager call fn(0), fn(1), ... (triton's do_bench, L2 flushed before each)."""
    import triton

    state = {"i": 0}

    def call() -> None:
        fn(state["i"])
        state["i"] += 1

    return triton.testing.do_bench(call, warmup=50, rep=200, return_mode="median")


def eager_us(fn: Callable[[int], object]) -> float:
    """`eager_ms` in microseconds."""
    return 1e3 * eager_ms(fn)


def max_rel_dev(mine: torch.Tensor, ref: torch.Tensor) -> float:
    """max|mine - ref| / max|ref| (both fp32)."""
    return float((mine - ref).abs().max() / ref.abs().max())


def cell(value: float | None, fmt: str = ".1f") -> str:
    """A table cell: `value` formatted, or "-" where it was not measured."""
    return "-" if value is None else format(value, fmt)


def selected(name: str, patterns: list[str] | None) -> bool:
    """Whether a shape name matches the --shapes substrings (all shapes when none are given)."""
    return not patterns or any(p in name for p in patterns)


def log_row(row: dict) -> None:
    """Print a measured row to stderr as JSON as soon as it is measured."""
    print(json.dumps(row), file=sys.stderr, flush=True)


def write_rows_and_print(rows: list[dict], json_path: str | None, table: str) -> None:
    """Write the rows to `json_path` (when given), then print the table."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    print(table)
