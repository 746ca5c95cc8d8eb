"""Time the short causal conv: our TileLang kernels vs the torch reference vs FLA's Triton conv.

Inputs as the runtime passes them: bf16 x sliced out of the fused input projection (strided rows),
bf16 weight [C, W=4] and conv state. Prefill: one sequence of T tokens with a state (memory-bound:
x read + y written once). Update: one token for each of N sequences on a pool, eager and as GRAPH_CALLS
calls replayed in one CUDA graph. FLA keeps W state columns instead of W-1; the bytes differ by one
column, which does not matter here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.kernels_decode import eager_us, graph_us

COPY_BYTES = 3.0e12
WIDTH = 4
# Projection row width beyond the conv channels (the z, b, a columns of the 0.8B model: 2048 + 32).
EXTRA_COLUMNS = 2080


@dataclass(frozen=True, slots=True)
class ConvShape:
    """Prefill of `tokens` tokens (update: `tokens` sequences, one token each) over `channels` channels."""

    op: str  # "prefill" | "update"
    tokens: int
    channels: int

    @property
    def name(self) -> str:
        return f"conv {self.op} {'T' if self.op == 'prefill' else 'N'}={self.tokens} C={self.channels}"


CONV_SHAPES = [
    *(ConvShape("prefill", t, c) for c in (6144, 8192) for t in (1024, 8192)),
    *(ConvShape("update", n, c) for c in (6144, 8192) for n in (1, 32)),
]


def conv_floor_us(shape: ConvShape) -> float:
    """x read + y written once (bf16), plus the state rows for updates, at the measured copy bandwidth."""
    moved = 2 * 2 * shape.tokens * shape.channels
    if shape.op == "update":
        moved += 2 * 2 * shape.tokens * shape.channels * (WIDTH - 1)
    return 1e6 * moved / COPY_BYTES


def conv_runners(shape: ConvShape, with_fla: bool) -> dict[str, Callable[[int], object]]:
    """name -> fn(i) for ours, the reference and FLA, on inputs made once for `shape`."""
    from qla_agent.kernels import reference_conv
    from qla_agent.kernels.tilelang import conv

    gen = torch.Generator(device="cuda").manual_seed(0)
    c, t = shape.channels, shape.tokens
    weight = (torch.randn(c, WIDTH, generator=gen, device="cuda") / 2).bfloat16()
    if shape.op == "prefill":
        x = torch.randn(1, t, c + EXTRA_COLUMNS, generator=gen, device="cuda").bfloat16()[..., :c]
        state = torch.randn(1, c, WIDTH - 1, generator=gen, device="cuda").bfloat16()
        out = {
            "ours": lambda i: conv.causal_conv1d(x, weight, conv_state=state),
            "reference": lambda i: reference_conv.causal_conv1d(x, weight, conv_state=state),
        }
    else:
        x = torch.randn(t, c + EXTRA_COLUMNS, generator=gen, device="cuda").bfloat16()[:, :c]
        pool = torch.randn(t, c, WIDTH - 1, generator=gen, device="cuda").bfloat16()
        slots = torch.arange(t, device="cuda")
        out = {
            "ours": lambda i: conv.causal_conv1d_update(x, weight, pool, slots),
            "reference": lambda i: reference_conv.causal_conv1d_update(x, weight, pool, slots),
        }
    if with_fla:
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
    return out


def time_conv(shape: ConvShape, with_fla: bool) -> dict:
    """One row: eager microseconds per implementation, and graph microseconds for updates."""
    row: dict = {"shape": shape.name, "floor_us": conv_floor_us(shape)}
    for name, fn in conv_runners(shape, with_fla).items():
        row[f"{name}_eager_us"] = eager_us(fn)
        if shape.op == "update":
            row[f"{name}_graph_us"] = graph_us(fn)
    return row


def format_conv_table(rows: list[dict], card: str) -> str:
    """Markdown table: microseconds per call (graph for updates), ratios, our % of the HBM floor."""
    def cell(value: float | None, fmt: str = ".1f") -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"card: {card} (conv, microseconds per call; updates: CUDA graph, eager in brackets)",
        "| shape | ours | reference | FLA | ref/ours | FLA/ours | floor | ours % floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = "graph" if "ours_graph_us" in r else "eager"

        def value(name: str) -> str:
            main = r.get(f"{name}_{kind}_us")
            eager = f" ({cell(r.get(f'{name}_eager_us'))})" if kind == "graph" else ""
            return cell(main) + eager

        mine, ref, fla = (r.get(f"{n}_{kind}_us") for n in ("ours", "reference", "fla"))
        lines.append(
            f"| {r['shape']} | {value('ours')} | {value('reference')} | {value('fla')} | "
            f"{cell(ref and mine and ref / mine, '.1f')} | {cell(fla and mine and fla / mine, '.2f')} | "
            f"{r['floor_us']:.1f} | {cell(mine and 100 * r['floor_us'] / mine, '.0f')}% |"
        )
    return "\n".join(lines)
