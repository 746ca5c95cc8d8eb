"""Time the GDN decode step: our TileLang kernel vs FLA's fused_recurrent, eager and in CUDA graphs.

Inputs as the runtime passes them: bf16 q/k/v, raw bf16 gates a, b with fp32 A_log and dt_bias
fused in, q/k L2-normalised inside, an fp32 state pool. Each call touches the state rows of B
sequences; consecutive calls move to other rows of a pool of ~256 MB, so every call reads its state
from HBM (as in a model, where the other layers evict L2 between two steps of one layer). "eager" is
one Python call per step (what a model without graphs pays); "graph" replays GRAPH_CALLS calls captured
in one CUDA graph and divides, i.e. device time plus amortised launch. FLA writes its final state to a
new tensor instead of updating a pool in place: the same bytes move.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.harness import COPY_BYTES, ROTATE_BYTES, cell, eager_us, graph_us, max_rel_dev

STATE_BYTES = 128 * 128 * 4
KEY_HEADS = 16


@dataclass(frozen=True, slots=True)
class DecodeShape:
    """B sequences, one token each, Hv value heads (Hk = 16 as in every Qwen3.5 size)."""

    batch: int
    value_heads: int

    @property
    def name(self) -> str:
        return f"decode B={self.batch} {KEY_HEADS}/{self.value_heads}"


DECODE_SHAPES = [DecodeShape(b, hv) for hv in (16, 32) for b in (1, 8, 32)]
BLOCK_V_VARIANTS = (16, 32, 64, 128)


def decode_floor_us(shape: DecodeShape) -> float:
    """State read + write at the measured copy bandwidth, in microseconds."""
    return 1e6 * 2 * shape.batch * shape.value_heads * STATE_BYTES / COPY_BYTES


def make_decode_inputs(shape: DecodeShape, device: torch.device) -> dict:
    """One token per sequence (fused-projection views, as the model passes them) and a large pool."""
    gen = torch.Generator(device=device).manual_seed(0)
    b, hv, hk = shape.batch, shape.value_heads, KEY_HEADS
    qkv = torch.randn(b, (2 * hk + hv) * 128, generator=gen, device=device).bfloat16()
    ab = torch.randn(b, 2 * hv, generator=gen, device=device).bfloat16()
    rows = max(2 * b, math.ceil(ROTATE_BYTES / (hv * STATE_BYTES)) // b * b)
    return {
        "q": qkv[:, : hk * 128].unflatten(1, (hk, 128)),
        "k": qkv[:, hk * 128 : 2 * hk * 128].unflatten(1, (hk, 128)),
        "v": qkv[:, 2 * hk * 128 :].unflatten(1, (hv, 128)),
        "a": ab[:, :hv], "b": ab[:, hv:],
        "A_log": torch.randn(hv, generator=gen, device=device),
        "dt_bias": torch.randn(hv, generator=gen, device=device),
        "pool": torch.randn(rows, hv, 128, 128, generator=gen, device=device) * 0.05,
        "slot_sets": [torch.arange(i, i + b, device=device) for i in range(0, rows, b)],
    }


def decode_runners(x: dict, block_v: int | None = None, with_fla: bool = True) -> dict[str, Callable[[int], object]]:
    """name -> fn(i) running call i (state rows rotate with i)."""
    from qla_agent.kernels.tilelang.decode import gdn_decode

    sets = x["slot_sets"]

    def ours(i: int) -> torch.Tensor:
        return gdn_decode(
            x["q"], x["k"], x["v"], x["a"], x["b"], x["pool"], sets[i % len(sets)], use_qk_l2norm=True,
            A_log=x["A_log"], dt_bias=x["dt_bias"], block_v=block_v,
        )

    out = {"ours": ours}
    if not with_fla:
        return out
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    batch = x["q"].shape[0]

    def fla(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = (i % len(sets)) * batch
        return fused_recurrent_gated_delta_rule(
            x["q"][:, None], x["k"][:, None], x["v"][:, None], g=x["a"][:, None], beta=x["b"][:, None],
            scale=128**-0.5, initial_state=x["pool"][start : start + batch], output_final_state=True,
            use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=x["A_log"], dt_bias=x["dt_bias"],
            use_beta_sigmoid_in_kernel=True,
        )

    out["fla"] = fla
    return out


def time_decode(shape: DecodeShape, with_fla: bool, variants: bool) -> dict:
    """One row: eager and graph microseconds for ours and FLA, variants' graph times, deviation from FLA."""
    x = make_decode_inputs(shape, torch.device("cuda"))
    fns = decode_runners(x, with_fla=with_fla)
    row: dict = {"shape": shape.name, "floor_us": decode_floor_us(shape)}
    if with_fla:
        saved = x["pool"][:shape.batch].clone()
        ref = fns["fla"](0)[0][:, 0].float()
        mine = fns["ours"](0).float()
        x["pool"][:shape.batch] = saved
        row["ours_vs_fla"] = max_rel_dev(mine, ref)
    for name, fn in fns.items():
        row[f"{name}_eager_us"] = eager_us(fn)
        row[f"{name}_graph_us"] = graph_us(fn)
    if variants:
        for bv in BLOCK_V_VARIANTS:
            row[f"ours_bv{bv}_graph_us"] = graph_us(decode_runners(x, block_v=bv, with_fla=False)["ours"])
    return row


def format_decode_table(rows: list[dict], card: str) -> str:
    """Markdown table: eager and graph microseconds, FLA/ours, our graph time as % of the HBM floor."""
    lines = [
        f"card: {card} (decode, microseconds per call)",
        "| shape | ours eager | ours graph | FLA eager | FLA graph | FLA/ours graph | floor | ours % floor "
        "| dev vs FLA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mine, fla = r["ours_graph_us"], r.get("fla_graph_us")
        lines.append(
            f"| {r['shape']} | {cell(r['ours_eager_us'])} | {cell(mine)} | {cell(r.get('fla_eager_us'))} | "
            f"{cell(fla)} | {cell(fla and mine and fla / mine, '.2f')} | {r['floor_us']:.1f} | "
            f"{cell(mine and 100 * r['floor_us'] / mine, '.0f')}% | {cell(r.get('ours_vs_fla'), '.1e')} |"
        )
    return "\n".join(lines)
