"""Time the short causal conv: our TileLang kernels vs the torch reference vs FLA's Triton conv.

    source .device/setup.sh && python benchmarks/kernels_conv.py
        [--shapes SUBSTRING ...] [--impls ours,reference,fla] [--json PATH]
    python benchmarks/kernels_conv.py --variants [--floor-tbps 4.8]   (our prefill at each CONV_VARIANTS tile)

Inputs as the runtime passes them: bf16 x [1, T, C] either sliced out of the fused input projection
("projection": rows of C + EXTRA_COLUMNS = 8224 elements for the 0.8B model) or its own contiguous
tensor ("contiguous"), bf16 weight [C, W=4] and conv state. Prefill: one sequence of T tokens with a
state (memory-bound: x read + y written once); T = 8192 is the model's prefill, T = 16..1024 the
appends of a chat turn. Update: one token for each of N sequences on a pool. Every row is timed eager
(one Python call per launch, triton's do_bench, L2 flushed before each call) and, ours and FLA's,
as GRAPH_CALLS calls replayed in one CUDA graph (device time plus amortised launch;
same inputs each call, so small shapes run from L2, as they do in the model straight after the
projection GEMM). FLA keeps W state columns instead of W-1; the bytes differ by one column, which does
not matter here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    COPY_BYTES, cell, eager_us, graph_us, log_row, selected, write_rows_and_print,
)

WIDTH = 4
# Projection row width beyond the conv channels (the z, b, a columns of the 0.8B model: 2048 + 32).
EXTRA_COLUMNS = 2080


@dataclass(frozen=True, slots=True)
class ConvShape:
    """Prefill of `tokens` tokens (update: `tokens` sequences, one token each) over `channels` channels,
    x a slice of the projection or contiguous."""

    op: str  # "prefill" | "update"
    tokens: int
    channels: int
    layout: str = "projection"  # | "contiguous"

    @property
    def name(self) -> str:
        count = "T" if self.op == "prefill" else "N"
        return f"conv {self.op} {count}={self.tokens} C={self.channels} {self.layout}"


CONV_SHAPES = [
    *(ConvShape("prefill", 8192, 6144, layout) for layout in ("projection", "contiguous")),
    *(ConvShape("prefill", t, 6144) for t in (16, 64, 256, 1024)),
    ConvShape("prefill", 8192, 8192),
    *(ConvShape("update", n, c) for c in (6144, 8192) for n in (1, 32)),
]


# Prefill tile overrides (ConvConfig fields) timed by --variants on VARIANT_SHAPES; "default" is ConvConfig's.
CONV_VARIANTS = {
    "measured": {"vector_bytes": 16, "block_t": 64, "min_blocks": 1, "split_silu": False},
    "split_v16": {"vector_bytes": 16, "block_t": 64, "min_blocks": 1},
    "default": {},
    "exact_div": {"fast_silu": False},
    "v8_3cta": {"min_blocks": 1},
    "v8_c128": {"block_c": 128, "block_t": 64},
    "v8_t64": {"block_t": 64, "min_blocks": 2},
    "v8_run16": {"run": 16, "block_t": 64, "min_blocks": 3},
    "v16_run4": {"vector_bytes": 16, "run": 4, "block_t": 32, "min_blocks": 2},
}
VARIANT_SHAPES = [ConvShape("prefill", 8192, 6144), ConvShape("prefill", 8192, 8192)]


def conv_bytes(shape: ConvShape) -> int:
    """Bytes a call must move (bf16): x read + y written, plus the state rows read and written for updates."""
    moved = 2 * 2 * shape.tokens * shape.channels
    if shape.op == "update":
        moved += 2 * 2 * shape.tokens * shape.channels * (WIDTH - 1)
    return moved


def conv_floor_us(shape: ConvShape) -> float:
    """`conv_bytes` at the measured copy bandwidth."""
    return 1e6 * conv_bytes(shape) / COPY_BYTES


def _x(shape: ConvShape, lead: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """bf16 x [*lead, C]: a slice of a wider projection, or contiguous."""
    c = shape.channels
    extra = EXTRA_COLUMNS if shape.layout == "projection" else 0
    return torch.randn(*lead, c + extra, generator=gen, device="cuda").bfloat16()[..., :c]


def conv_runners(shape: ConvShape, impls: tuple[str, ...]) -> dict[str, Callable[[int], object]]:
    """name -> fn(i) for the chosen implementations (ours, reference, fla), on inputs made once for `shape`."""
    from qla_agent.kernels import reference_conv
    from qla_agent.kernels.tilelang import conv

    gen = torch.Generator(device="cuda").manual_seed(0)
    c, t = shape.channels, shape.tokens
    weight = (torch.randn(c, WIDTH, generator=gen, device="cuda") / 2).bfloat16()
    out: dict[str, Callable[[int], object]] = {}
    if shape.op == "prefill":
        x = _x(shape, (1, t), gen)
        state = torch.randn(1, c, WIDTH - 1, generator=gen, device="cuda").bfloat16()
        out["ours"] = lambda i: conv.causal_conv1d(x, weight, conv_state=state)
        out["reference"] = lambda i: reference_conv.causal_conv1d(x, weight, conv_state=state)
    else:
        x = _x(shape, (t,), gen)
        pool = torch.randn(t, c, WIDTH - 1, generator=gen, device="cuda").bfloat16()
        slots = torch.arange(t, device="cuda")
        out["ours"] = lambda i: conv.causal_conv1d_update(x, weight, pool, slots)
        out["reference"] = lambda i: reference_conv.causal_conv1d_update(x, weight, pool, slots)
    if "fla" in impls:
        from fla.modules.causal_conv1d import causal_conv1d as fla_conv
        from fla.modules.causal_conv1d import causal_conv1d_update as fla_update

        if shape.op == "prefill":
            state4 = torch.randn(1, c, WIDTH, generator=gen, device="cuda").bfloat16()
            out["fla"] = lambda i: fla_conv(
                x, weight, initial_state=state4, output_final_state=True, activation="silu", backend="triton"
            )
        else:
            cache = torch.randn(t, c, WIDTH, generator=gen, device="cuda").bfloat16()
            out["fla"] = lambda i: fla_update(x, cache, weight=weight, activation="silu")
    return {name: fn for name, fn in out.items() if name in impls}


def time_conv(shape: ConvShape, impls: tuple[str, ...]) -> dict:
    """One row: eager and graph microseconds per implementation (None where a graph cannot capture it)."""
    row: dict = {"shape": shape.name, "floor_us": conv_floor_us(shape), "bytes": conv_bytes(shape)}
    for name, fn in conv_runners(shape, impls).items():
        row[f"{name}_eager_us"] = eager_us(fn)
        # The reference's temporaries (a [T, C, W] fp32 product at T = 8192 is 0.8 GB) would be kept
        # once per captured call: it is timed eager only.
        row[f"{name}_graph_us"] = None if name == "reference" else graph_us(fn)
    return row


def format_conv_table(rows: list[dict], card: str) -> str:
    """Markdown table: microseconds per call (CUDA graph, eager in brackets), ratios, our GB/s and % of
    the copy-bandwidth floor (from the graph time)."""
    def best(r: dict, name: str) -> float | None:
        graph = r.get(f"{name}_graph_us")
        return graph if graph is not None else r.get(f"{name}_eager_us")

    lines = [
        f"card: {card} (conv, microseconds per call: CUDA graph, eager in brackets; floor = bytes at "
        f"{COPY_BYTES / 1e12:.1f} TB/s)",
        "| shape | ours | reference | FLA | ref/ours | FLA/ours | floor | ours GB/s | ours % floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mine, ref, fla = (best(r, n) for n in ("ours", "reference", "fla"))
        times = {}
        for n in ("ours", "reference", "fla"):
            graph, eager = r.get(f"{n}_graph_us"), r.get(f"{n}_eager_us")
            times[n] = cell(eager) if graph is None else f"{cell(graph)} ({cell(eager)})"
        lines.append(
            f"| {r['shape']} | {times['ours']} | {times['reference']} | {times['fla']} | "
            f"{cell(ref and mine and ref / mine)} | {cell(fla and mine and fla / mine, '.2f')} | "
            f"{r['floor_us']:.1f} | {cell(mine and r['bytes'] / mine / 1e3, '.0f')} | "
            f"{cell(mine and 100 * r['floor_us'] / mine, '.0f')}% |"
        )
    return "\n".join(lines)


def time_variants(floor_tbps: float) -> None:
    """Print, per VARIANT_SHAPES shape and CONV_VARIANTS tile: CUDA-graph microseconds per call, GB/s, %
    of the floor at floor_tbps, and whether y and the final state equal the default tile's bit for bit."""
    from qla_agent.kernels.tilelang import conv

    print(f"card: {torch.cuda.get_device_name()} (conv prefill tiles; floor = bytes at {floor_tbps:.1f} TB/s)")
    print("| shape | variant | tiles | us | GB/s | % floor | same as default |")
    print("|---|---|---|---|---|---|---|")
    for shape in VARIANT_SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        c = shape.channels
        weight = (torch.randn(c, WIDTH, generator=gen, device="cuda") / 2).bfloat16()
        x = _x(shape, (1, shape.tokens), gen)
        state = torch.randn(1, c, WIDTH - 1, generator=gen, device="cuda").bfloat16()
        default = conv.causal_conv1d(x, weight, conv_state=state)
        floor = 1e6 * conv_bytes(shape) / (floor_tbps * 1e12)
        for name, tiles in CONV_VARIANTS.items():
            out = conv.causal_conv1d(x, weight, conv_state=state, tiles=tiles)
            same = all(torch.equal(a, b) for a, b in zip(out, default))
            us = graph_us(lambda i, tiles=tiles: conv.causal_conv1d(x, weight, conv_state=state, tiles=tiles))
            print(
                f"| {shape.name} | {name} | {tiles or 'ConvConfig defaults'} | {us:.1f} | "
                f"{conv_bytes(shape) / us / 1e3:.0f} | {100 * floor / us:.0f}% | {same} |", flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", help="substrings of shape names to run (default: all)")
    parser.add_argument("--impls", default="ours,reference,fla", help="comma-separated: ours, reference, fla")
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--variants", action="store_true", help="time our prefill at every CONV_VARIANTS tile")
    parser.add_argument("--floor-tbps", type=float, default=COPY_BYTES / 1e12, help="--variants floor bandwidth")
    args = parser.parse_args()
    if args.variants:
        time_variants(args.floor_tbps)
        return
    impls = tuple(args.impls.split(","))
    rows = []
    for shape in CONV_SHAPES:
        if selected(shape.name, args.shapes):
            rows.append(time_conv(shape, impls))
            log_row(rows[-1])
    write_rows_and_print(rows, args.json, format_conv_table(rows, torch.cuda.get_device_name()))


if __name__ == "__main__":
    main()
