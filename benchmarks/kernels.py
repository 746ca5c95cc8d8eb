"""Time the GDN prefill (ours vs FLA Triton vs FlashQLA), the conv and the decode step, in one run on one GPU.

    source .device/setup.sh && python benchmarks/kernels.py [--ops prefill,append,conv,decode] [--shapes NAME ...]
        [--impls ours,fla,flashqla] [--variants serial,rows,...] [--decode-variants] [--still-heads F] [--json PATH]

--shapes filters every section by substring ("decode", "conv update", "1x16384"). The decode section
(benchmarks/kernels_decode.py) times ours vs FLA's fused_recurrent, eager and in CUDA graphs
(--decode-variants adds every block_v); the conv section (benchmarks/kernels_conv.py) times ours vs the
torch reference vs FLA's Triton conv. The append section (short prefills after a history, the
runtime's exact layer call) separates host from device time: see `time_append`.

Inputs follow FlashQLA's benchmark: bf16 q/k/v, g = logsigmoid(randn)/16 (fp32), beta = sigmoid(randn),
q/k L2-normalised inside every kernel, fp32 initial state where the shape says so; --still-heads F gives
the first F of the value heads g = 0 (no decay: our context-parallel warm-up then walks back to the
sequence start for them, its worst case; variant "serial" switches context parallelism off). Each time is the
median of triton's do_bench over inputs rotated so that repeated calls do not hit a warm L2. The
roofline is max(FLOPs / 750 TFLOP/s, bytes / 3.0 TB/s) with the ceilings measured on the H100
(../shared/device/README.md); FLOPs are the chunked form's 163,840 per token and value head.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("FLA_FLASH_QLA", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    COPY_BYTES, ROTATE_BYTES, cell, eager_ms, graph_us, log_row, max_rel_dev, selected,
)

MATMUL_FLOPS = 750e12
FLOP_PER_TOKEN_HEAD = 163_840


@dataclass(frozen=True, slots=True)
class BenchShape:
    """Sequence lengths (more than one: packed varlen), key and value heads, with/without initial state."""

    name: str
    lens: tuple[int, ...]
    hk: int
    hv: int
    h0: bool


SHAPES = [
    BenchShape("1x4096 16/32", (4096,), 16, 32, False),
    BenchShape("1x16384 16/32", (16384,), 16, 32, False),
    BenchShape("1x65536 16/32", (65536,), 16, 32, False),
    BenchShape("1x16384 16/16", (16384,), 16, 16, False),
    BenchShape("1x32768 4/8", (32768,), 4, 8, False),
    BenchShape("1x32768 2/8", (32768,), 2, 8, False),
    BenchShape("1x32768 16/64", (32768,), 16, 64, False),
    BenchShape("8x2048 16/16 +h0", (2048,) * 8, 16, 16, True),
    BenchShape("8x2048 16/32 +h0", (2048,) * 8, 16, 32, True),
    BenchShape("1x1024 16/16 +h0", (1024,), 16, 16, True),
]


def make_inputs(shape: BenchShape, device: torch.device, seed: int, still_heads: float = 0.0) -> dict:
    """One input set for `shape` (B = 1; cu_seqlens when several sequences); the first `still_heads`
    fraction of the value heads never decay (g = 0)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    total = sum(shape.lens)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device)

    x = {
        "q": randn(1, total, shape.hk, 128).bfloat16(),
        "k": randn(1, total, shape.hk, 128).bfloat16(),
        "v": randn(1, total, shape.hv, 128).bfloat16(),
        "g": torch.nn.functional.logsigmoid(randn(1, total, shape.hv)) / 16,
        "beta": torch.sigmoid(randn(1, total, shape.hv)),
        "initial_state": randn(len(shape.lens), shape.hv, 128, 128) if shape.h0 else None,
        "cu_seqlens": None,
    }
    if len(shape.lens) > 1:
        offsets = [0]
        for n in shape.lens:
            offsets.append(offsets[-1] + n)
        x["cu_seqlens"] = torch.tensor(offsets, dtype=torch.int32, device=device)
    x["g"][..., : round(still_heads * shape.hv)] = 0.0
    return x


def input_sets(shape: BenchShape, device: torch.device, still_heads: float = 0.0) -> list[dict]:
    """Enough input sets that cycling through them streams ~256 MB (at most 16 sets)."""
    total = sum(shape.lens)
    per_set = total * (2 * shape.hk * 256 + shape.hv * 256 + 8 * shape.hv)
    per_set += shape.h0 * len(shape.lens) * shape.hv * 65536
    count = max(1, min(16, math.ceil(ROTATE_BYTES / per_set)))
    return [make_inputs(shape, device, seed, still_heads) for seed in range(count)]


VARIANT_SHAPES = ("1x16384 16/32", "1x16384 16/16", "1x32768 2/8", "1x32768 16/64", "8x2048 16/16 +h0")
# Named variants of our kernels (gdn_prefill keyword arguments), timed on VARIANT_SHAPES.
VARIANTS = {
    "bv16": dict(block_v=16),
    "bv32": dict(block_v=32),
    "bv64": dict(block_v=64),
    "prep": dict(prep_only=True),
    "serial": dict(context_parallel=False),
    # The scan tile by hand: "cols" the column layout at 64 columns (the default before value rows);
    # value rows at 32/64/128 columns on mma.sync, at 64/128 on wgmma (sm_90a).
    "cols": dict(block_v=64, scan_overrides=dict(value_rows=False, wgmma=False, threads=128, split_k=False)),
    "rows": dict(block_v=64, scan_overrides=dict(value_rows=True, threads=128, wgmma=False, split_k=False)),
    "rows32": dict(block_v=32, scan_overrides=dict(value_rows=True, threads=64, wgmma=False, split_k=False)),
    "rows128": dict(block_v=128, scan_overrides=dict(value_rows=True, threads=256, wgmma=False, split_k=False)),
    "rows_wg": dict(block_v=64, scan_overrides=dict(value_rows=True, threads=128, wgmma=True, split_k=False)),
    "rows128_wg": dict(block_v=128, scan_overrides=dict(value_rows=True, threads=256, wgmma=True, split_k=False)),
    # What sm_80-89 run (mma.sync in both kernels), on a Hopper card.
    "portable": dict(prep_overrides=dict(wgmma=False), scan_overrides=dict(wgmma=False)),
}


def ours(**overrides):
    """Our prefill as fn(inputs); overrides are extra gdn_prefill keyword arguments (a variant)."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    return lambda x: gdn_prefill(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["initial_state"],
        cu_seqlens=x["cu_seqlens"], use_qk_l2norm=True, **overrides,
    )


def runners(impls: list[str]) -> dict:
    """name -> fn(inputs) for the requested implementations ("ours", "fla", "flashqla")."""
    out = {"ours": ours()}
    if "fla" not in impls:
        return out
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk

    out["fla"] = lambda x: fla_chunk(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["initial_state"], output_final_state=True,
        cu_seqlens=None if x["cu_seqlens"] is None else x["cu_seqlens"].long(), use_qk_l2norm_in_kernel=True,
    )
    if "flashqla" in impls and torch.cuda.get_device_capability()[0] >= 9:
        import flash_qla

        out["flashqla"] = lambda x: flash_qla.chunk_gated_delta_rule(
            x["q"], x["k"], x["v"], x["g"], x["beta"], scale=128**-0.5, initial_state=x["initial_state"],
            output_final_state=True, cu_seqlens=None if x["cu_seqlens"] is None else x["cu_seqlens"].long(),
            use_qk_l2norm_in_kernel=True,
        )
    return out


@dataclass(frozen=True, slots=True)
class AppendShape:
    """One sequence appending `tokens` tokens to its recurrent state (16 key heads)."""

    tokens: int
    value_heads: int

    @property
    def name(self) -> str:
        return f"append {self.tokens} 16/{self.value_heads} +h0"


APPEND_SHAPES = [AppendShape(t, hv) for hv in (16, 32) for t in (16, 64, 256, 1024)]
# Issue 7: an append of T <= 256 tokens must take at most this long per call, eagerly.
APPEND_TARGET_US = 30.0
EAGER_CALLS = 200
EAGER_ROUNDS = 11


def append_input_sets(shape: AppendShape, device: torch.device) -> list[dict]:
    """Input sets of the runtime's layer call (qla_agent/runtime/layers/gdn.py): q/k/v column slices
    of the conv output, raw bf16 gates a/b sliced from the fused projection, fp32 A_log/dt_bias and
    state; as many sets as stream ~256 MB (at most 64), so eager calls rotating through them miss L2
    (graph replays clear L2 first: harness.graph_us)."""
    hk, hv, total = 16, shape.value_heads, shape.tokens
    conv_dim = (2 * hk + hv) * 128
    per_set = total * (conv_dim + conv_dim + hv * 128) * 2 + hv * 65536
    gen = torch.Generator(device=device).manual_seed(0)

    def make() -> dict:
        u = torch.randn(total, conv_dim, generator=gen, device=device).bfloat16()
        proj = torch.randn(total, conv_dim + hv * 128 + 2 * hv, generator=gen, device=device).bfloat16()
        q, k, v = u.split([hk * 128, hk * 128, hv * 128], dim=-1)
        return {
            "q": q.unflatten(-1, (hk, 128))[None], "k": k.unflatten(-1, (hk, 128))[None],
            "v": v.unflatten(-1, (hv, 128))[None], "a": proj[None, :, -hv:], "b": proj[None, :, -2 * hv : -hv],
            "A_log": torch.rand(hv, generator=gen, device=device) * 2,
            "dt_bias": torch.randn(hv, generator=gen, device=device),
            "initial_state": torch.randn(1, hv, 128, 128, generator=gen, device=device) * 0.05,
        }

    return [make() for _ in range(max(1, min(64, math.ceil(ROTATE_BYTES / per_set))))]


def append_runners(sets: list[dict], impls: list[str]) -> dict:
    """name -> fn(i) running call i on set i % len(sets). "ours" is the layer's public call; "ours_one",
    "ours_fused" and "ours_two" the launcher on the same inputs forced onto each of its paths whichever T is
    (the self-prepping scan, the fused kernel, the two kernels; it picks by PREPPED_MAX_TOKENS and
    FUSED_MAX_TOKENS); "ours_prep" the two-kernel path's first kernel alone; FLA and FlashQLA get compact
    q/k/v and the gates precomputed, as in the prefill section."""
    from qla_agent import kernels
    from qla_agent.kernels.tilelang.prefill import gdn_prefill as launcher

    compact = [{n: t.contiguous() for n, t in x.items()} for x in sets]
    for c in compact:
        c["g"], c["beta"] = kernels.gdn_gates(c["A_log"], c["dt_bias"], c["a"], c["b"])
        c["cu_seqlens"] = None

    def ours(i: int):
        x = sets[i % len(sets)]
        return kernels.gdn_prefill(
            x["q"], x["k"], x["v"], x["a"], x["b"], scale=128**-0.5, initial_state=x["initial_state"],
            output_final_state=True, use_qk_l2norm=True, A_log=x["A_log"], dt_bias=x["dt_bias"], impl="tilelang",
        )

    def launch(i: int, **path):
        x = sets[i % len(sets)]
        return launcher(
            x["q"], x["k"], x["v"], x["a"], x["b"], initial_state=x["initial_state"], use_qk_l2norm=True,
            A_log=x["A_log"], dt_bias=x["dt_bias"], **path,
        )

    out = {
        "ours": ours, "ours_one": lambda i: launch(i, prepped=True), "ours_fused": lambda i: launch(i, fused=True),
        "ours_two": lambda i: launch(i, prepped=False, fused=False),
        "ours_prep": lambda i: launch(i, prep_only=True),
    }
    for name, fn in runners(impls).items():
        if name != "ours":
            out[name] = lambda i, fn=fn: fn(compact[i % len(compact)])
    return out


def eager_append_us(fn, calls: int = EAGER_CALLS) -> float:
    """Microseconds per call of `calls` back-to-back eager calls (wall clock, one sync at the end):
    host and device overlap, so this is max(host, device) per call, the median of EAGER_ROUNDS rounds
    after two rounds of warm-up (with one, the first shape measured ran 1.5-2x slow: NOTES, session 7)."""
    for _ in range(2):
        for i in range(calls):
            fn(i)
        torch.cuda.synchronize()
    rounds = []
    for _ in range(EAGER_ROUNDS):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - start) / calls)
    return 1e6 * statistics.median(rounds)


def time_append(shape: AppendShape, impls: list[str]) -> dict:
    """Eager and graph microseconds per call for each runner, and our deviation from FLA."""
    sets = append_input_sets(shape, torch.device("cuda"))
    fns = append_runners(sets, impls)
    row: dict = {"shape": shape.name, "sets": len(sets)}
    if "fla" in fns:
        ref, mine = fns["fla"](0)[0].float(), fns["ours"](0)[0].float()
        row["ours_vs_fla"] = max_rel_dev(mine, ref)
    for name, fn in fns.items():
        if name != "ours_prep":
            row[f"{name}_eager_us"] = eager_append_us(fn)
        row[f"{name}_graph_us"] = graph_us(fn)
    return row


def format_append_table(rows: list[dict], card: str) -> str:
    """Markdown table: eager (host and device overlapped) and graph (device) microseconds per call."""
    lines = [
        f"card: {card} (appends, microseconds per call; target ours eager <= {APPEND_TARGET_US:.0f} at T <= 256)",
        "| shape | ours eager | ours graph | self-prepping eager | self-prepping graph | fused eager | fused graph "
        "| two kernels eager | two kernels graph | prep graph | FLA eager | FLA graph | FQ eager | FQ graph "
        "| dev vs FLA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        names = ("ours_eager_us", "ours_graph_us", "ours_one_eager_us", "ours_one_graph_us", "ours_fused_eager_us",
                 "ours_fused_graph_us", "ours_two_eager_us", "ours_two_graph_us", "ours_prep_graph_us", "fla_eager_us",
                 "fla_graph_us", "flashqla_eager_us", "flashqla_graph_us")
        cells = " | ".join(cell(r.get(n)) for n in names)
        lines.append(f"| {r['shape']} | {cells} | {cell(r.get('ours_vs_fla'), '.1e')} |")
    return "\n".join(lines)


def roofline_ms(shape: BenchShape) -> float:
    """max(compute, memory) floor in ms for one forward call."""
    token_heads = sum(shape.lens) * shape.hv
    flops = token_heads * FLOP_PER_TOKEN_HEAD
    bytes_moved = token_heads * (520 + 512 * shape.hk / shape.hv) + len(shape.lens) * shape.hv * 65536 * (1 + shape.h0)
    return 1e3 * max(flops / MATMUL_FLOPS, bytes_moved / COPY_BYTES)


def time_shape(shape: BenchShape, fns: dict, variants: list[str], still_heads: float = 0.0) -> dict:
    """Median ms per implementation, and our max relative deviation from FLA on the first input set."""
    sets = input_sets(shape, torch.device("cuda"), still_heads)
    row = {"shape": shape.name, "roofline_ms": roofline_ms(shape)}
    if "fla" in fns:
        ref = fns["fla"](sets[0])[0].float()
        mine = fns["ours"](sets[0])[0].float()
        row["ours_vs_fla"] = max_rel_dev(mine, ref)
    if shape.name in VARIANT_SHAPES:
        fns = {**fns, **{f"ours_{name}": ours(**VARIANTS[name]) for name in variants}}
    for name, fn in fns.items():
        row[name] = eager_ms(lambda i, fn=fn: fn(sets[i % len(sets)]))
    return row


def format_table(rows: list[dict], card: str) -> str:
    """Markdown table: times, speedups over FLA and FlashQLA, and our % of the roofline."""
    lines = [
        f"card: {card}",
        "| shape | ours ms | FLA ms | FlashQLA ms | FLA/ours | FQ/ours | ours % roof | max|ours-FLA|/max|FLA| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fla, fq, mine = r.get("fla"), r.get("flashqla"), r["ours"]
        lines.append(
            f"| {r['shape']} | {mine:.3f} | {cell(fla, '.3f')} | {cell(fq, '.3f')} | "
            f"{cell(fla and fla / mine, '.2f')} | {cell(fq and fq / mine, '.2f')} | "
            f"{100 * r['roofline_ms'] / mine:.0f}% | {cell(r.get('ours_vs_fla'), '.1e')} |"
        )
    return "\n".join(lines)


def _record(args: argparse.Namespace, results: dict, row: dict) -> None:
    """Print a measured row to stderr and rewrite the JSON file, so a run cut short keeps its rows."""
    log_row(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": torch.cuda.get_device_name(), **results}, f)


def run_prefill(args: argparse.Namespace, results: dict) -> list[dict]:
    """Prefill rows for the selected shapes, recorded as they are measured."""
    shapes = [s for s in SHAPES if selected(s.name, args.shapes)]
    fns = runners(args.impls.split(","))
    variants = [v for v in args.variants.split(",") if v]
    rows = results.setdefault("prefill", [])
    for shape in shapes:
        rows.append(time_shape(shape, fns, variants, args.still_heads))
        _record(args, results, rows[-1])
    for r in rows:
        extra = {k: round(v, 4) for k, v in r.items() if k.startswith("ours_") and k != "ours_vs_fla"}
        if extra:
            print(f"variants {r['shape']}: {extra}")
    return rows


def run_section(args: argparse.Namespace, results: dict, op: str) -> list[dict]:
    """Append, decode or conv rows for the selected shapes, recorded as they are measured."""
    from benchmarks.kernels_conv import CONV_SHAPES, time_conv
    from benchmarks.kernels_decode import DECODE_SHAPES, time_decode

    with_fla = "fla" in args.impls
    if op == "append":
        shapes, measure = APPEND_SHAPES, lambda s: time_append(s, args.impls.split(","))
    elif op == "decode":
        shapes, measure = DECODE_SHAPES, lambda s: time_decode(s, with_fla=with_fla, variants=args.decode_variants)
    else:
        impls = ("ours", "reference", "fla") if with_fla else ("ours", "reference")
        shapes, measure = CONV_SHAPES, lambda s: time_conv(s, impls)
    rows = results.setdefault(op, [])
    for shape in shapes:
        if selected(shape.name, args.shapes):
            rows.append(measure(shape))
            _record(args, results, rows[-1])
    for r in rows:
        extra = {k: v and round(v, 2) for k, v in r.items() if k.startswith("ours_bv")}
        if extra:
            print(f"variants {r['shape']}: {extra}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ops", default="prefill,append,decode,conv", help="comma-separated: prefill, append, decode, conv"
    )
    parser.add_argument("--shapes", nargs="*", help="substrings of shape names to run (default: all)")
    parser.add_argument("--impls", default="ours,fla,flashqla", help="comma-separated: ours, fla, flashqla")
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--variants", default="", help=f"comma-separated names from {sorted(VARIANTS)}")
    parser.add_argument("--decode-variants", action="store_true", help="time the decode kernel at every block_v")
    parser.add_argument(
        "--still-heads", type=float, default=0.0, help="fraction of value heads with g = 0 in the prefill inputs"
    )
    args = parser.parse_args()
    ops = args.ops.split(",")
    card = torch.cuda.get_device_name()
    results: dict[str, list[dict]] = {}
    if "prefill" in ops:
        run_prefill(args, results)
    for op in ("append", "conv", "decode"):
        if op in ops:
            run_section(args, results, op)
    from benchmarks.kernels_conv import format_conv_table
    from benchmarks.kernels_decode import format_decode_table

    tables = (
        ("prefill", format_table), ("append", format_append_table), ("conv", format_conv_table),
        ("decode", format_decode_table),
    )
    for op, fmt in tables:
        if results.get(op):
            print(fmt(results[op], card))


if __name__ == "__main__":
    main()
