"""Compile every TileLang kernel the GPU tests and benchmarks will ask for, into TILELANG_CACHE_DIR.

    TILELANG_CACHE_DIR=.tlcache python benchmarks/precompile_tilelang.py [--arch sm_90a] [--jobs 2]

Runs on a machine without a GPU (nvcc is enough). The cache keys depend only on the kernel source,
the target and the TileLang build, so carrying the folder to the GPU machine (same TileLang bundle)
skips compilation there. The configs come from the same `prefill_configs` the launcher uses.
"""

import argparse
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.kernels import SHAPES, VARIANT_SHAPES, VARIANTS  # noqa: E402
from benchmarks.kernels_conv import CONV_SHAPES  # noqa: E402
from benchmarks.kernels_decode import BLOCK_V_VARIANTS, DECODE_SHAPES, KEY_HEADS  # noqa: E402
from benchmarks.kernels_norms import precompile_configs as norm_configs  # noqa: E402
from qla_agent.kernels.tilelang import build, chunk_prep, chunk_scan, conv, decode  # noqa: E402
from qla_agent.kernels.tilelang.prefill import (  # noqa: E402
    FUSED_MAX_TOKENS, PREPPED_MAX_TOKENS, context_parts, prefill_configs, takes_fused, takes_prepped, warmup_config,
)
from tests.kernels.test_tilelang_decode import CASES as DECODE_CASES  # noqa: E402
from tests.kernels.test_tilelang_prefill import (  # noqa: E402
    CASES, CP_CASES, LAYOUT_CASES, PREP_CASES, VALUE_ROW_VARIANTS,
)

logger = logging.getLogger(__name__)
H100_SMS = 132


def _shape_call(s) -> dict:
    """prefill_configs arguments (but the gate dtype) of benchmarks/kernels.py's prefill for shape `s`."""
    return dict(key_heads=s.hk, value_heads=s.hv, dtype=torch.bfloat16, raw_gates=False, l2norm=True,
                varlen=len(s.lens) > 1, has_h0=s.h0, store_ht=True, num_seqs=len(s.lens))


def _scan_pairs(call: dict, seqlen: int, common: dict, context_parallel: bool = True, **overrides) -> list:
    """(program, config) pairs of one prefill call of `seqlen` tokens per sequence: prep and scan, and for
    a call the launcher splits (`context_parts`) also its split scan and warm-up; overrides are
    prefill_configs' tile arguments (block_v, scan_overrides)."""
    configs = {"gate_dtype": torch.float32, **call, **common, **overrides}
    tokens = seqlen * (1 if call["varlen"] else call["num_seqs"])
    if takes_prepped(tokens, 1, bool(overrides)):  # the launcher's one-launch paths
        return [(chunk_scan.program, prefill_configs(**configs, prepped=True)[1])]
    if takes_fused(tokens, 1, bool(overrides), call["value_heads"], call["num_seqs"], common["sm_count"]):
        return [(chunk_scan.program, prefill_configs(**configs, fused=True)[1])]
    prep, scan = prefill_configs(**configs)
    pairs = [(chunk_prep.program, prep), (chunk_scan.program, scan)]
    if context_parallel and not call["varlen"] and call["l2norm"]:
        parts, _ = context_parts(call["num_seqs"], seqlen, call["value_heads"], common["sm_count"])
        if parts > 1:
            split = prefill_configs(**configs, parts=parts)[1]
            pairs += [(chunk_scan.program, split), (chunk_scan.program, warmup_config(split, call["has_h0"]))]
    return pairs


def _case_call(c) -> tuple[dict, int]:
    """(prefill_configs arguments but the shared ones, tokens per sequence) of a prefill test case."""
    return dict(
        key_heads=c.shape.Hk, value_heads=c.shape.Hv, dtype=c.dtype, gate_dtype=c.gate_dtype, raw_gates=c.raw_gates,
        l2norm=c.l2norm, varlen=c.lens is not None, has_h0=c.h0, store_ht=c.store_ht,
        num_seqs=len(c.lens) if c.lens else c.shape.B,
    ), c.shape.T


def wanted_configs(arch: str, variants: tuple[str, ...] = ()) -> list:
    """(program, config) pairs for the test cases and benchmark shapes on `arch`."""
    common = dict(scale=128**-0.5, param_dtype=torch.float32, arch=arch, sm_count=H100_SMS)
    # (prefill_configs arguments, tokens per sequence)
    calls = [_case_call(c) for c in (*CASES, *CP_CASES, *LAYOUT_CASES)]
    calls.append((dict(key_heads=2, value_heads=4, dtype=torch.bfloat16, raw_gates=False, l2norm=True, varlen=False,
                       has_h0=True, store_ht=True, num_seqs=1), 300))
    calls.append((dict(key_heads=2, value_heads=2, dtype=torch.bfloat16, raw_gates=False, l2norm=True, varlen=False,
                       has_h0=True, store_ht=True, num_seqs=1), 100))
    # The runtime's GDN layer (qla_agent/runtime/layers/gdn.py): raw bf16 gates, l2norm, state in and out,
    # for the 0.8B/2B (16/16) and 4B/9B (16/32) head layouts, on the e2e benchmark's 8192-token prompt and
    # on appends (the benchmarks' append shapes: the self-prepping scan, the fused kernel, two kernels).
    calls += [
        (dict(key_heads=16, value_heads=hv, dtype=torch.bfloat16, gate_dtype=torch.bfloat16, raw_gates=True,
              l2norm=True, varlen=False, has_h0=True, store_ht=True, num_seqs=1), tokens)
        for hv in (16, 32) for tokens in (8192, 1024, PREPPED_MAX_TOKENS, FUSED_MAX_TOKENS)
    ]
    calls += [(_shape_call(s), s.lens[0]) for s in SHAPES]
    pairs = []
    for call, seqlen in calls:
        pairs += _scan_pairs(call, seqlen, common)
    # test_value_rows_scan_matches_reference: the test cases' calls at each value-rows tile width.
    for call, seqlen in (_case_call(c) for c in (*CASES, *CP_CASES)):
        for block_v, wgmma in VALUE_ROW_VARIANTS:
            if wgmma and arch != "sm_90a":
                continue
            rows = dict(value_rows=True, threads=2 * block_v, split_k=False, wgmma=wgmma)
            pairs += _scan_pairs(call, seqlen, common, block_v=block_v, scan_overrides=rows)
    # test_prepped_scan_matches_reference and test_fused_prefill_matches_reference: the one-launch kernels
    # on every case, on mma.sync and wgmma.
    for call, _ in (_case_call(c) for c in (*CASES, *CP_CASES)):
        for wgmma in (False, True) if arch == "sm_90a" else (False,):
            configs = {"gate_dtype": torch.float32, **call, **common, "scan_overrides": dict(wgmma=wgmma)}
            pairs.append((chunk_scan.program, prefill_configs(**configs, prepped=True)[1]))
            pairs.append((chunk_scan.program, prefill_configs(**configs, fused=True)[1]))
    # test_chunk_prep_matches_definitions builds its configs directly (fp32 gates, no scan).
    pairs += [
        (chunk_prep.program, chunk_prep.PrepConfig(
            key_heads=c.hk, value_heads=c.hv, dtype="bfloat16", gate_dtype="float32", param_dtype="float32",
            raw_gates=c.raw_gates, l2norm=c.l2norm, varlen=len(c.lens) > 1, scale=128**-0.5,
        ))
        for c in PREP_CASES
    ]
    for s in SHAPES:
        if s.name in VARIANT_SHAPES:
            for name in variants:
                kwargs = {k: v for k, v in VARIANTS[name].items() if k != "prep_only"}
                pairs += _scan_pairs(_shape_call(s), s.lens[0], common, **kwargs)
    return list(dict.fromkeys(pairs))


def _decode_config(hk: int, hv: int, dtype: torch.dtype, gates: torch.dtype, slots: torch.dtype, raw: bool, l2: bool,
                   block_v: int) -> tuple:
    config = decode.decode_config(
        key_heads=hk, value_heads=hv, dtype=dtype, gate_dtype=gates, param_dtype=torch.float32, slot_dtype=slots,
        raw_gates=raw, l2norm=l2, scale=128**-0.5, block_v=block_v,
    )
    return decode.program, config


def step_configs() -> list:
    """(program, config) pairs of the decode and conv kernels for the GPU tests, benchmarks and runtime."""
    bf16, f32, i64, i32 = torch.bfloat16, torch.float32, torch.int64, torch.int32
    pick = decode.pick_block_v
    pairs = [
        _decode_config(
            c.Hk, c.Hv, c.dtype, f32, c.slot_dtype, c.raw_gates, c.l2norm, c.block_v or pick(c.N * c.Hv, H100_SMS)
        )
        for c in DECODE_CASES
    ]
    # The after-prefill, dispatch and graph tests (the runtime's layers are among the benchmark shapes).
    pairs += [_decode_config(2, 4, bf16, gates, i64, True, True, 16) for gates in (f32, bf16)]
    for s in DECODE_SHAPES:
        for bv in {pick(s.batch * s.value_heads, H100_SMS), *BLOCK_V_VARIANTS}:
            pairs.append(_decode_config(KEY_HEADS, s.value_heads, bf16, bf16, i64, True, True, bv))
    names = {bf16: "bfloat16"}
    for channels in {300, 1024, *(s.channels for s in CONV_SHAPES)}:
        for has_state in (True, False):
            for varlen in (False, True):
                pairs.append((conv.conv_program, conv.ConvConfig(
                    channels=channels, width=4, dtype=names[bf16], weight_dtype=names[bf16],
                    state_dtype=names[bf16], has_state=has_state, varlen=varlen,
                )))
        for slot_dtype, has_slots in ((i64, True), (i32, True), (i32, False)):
            pairs.append((conv.update_program, conv.ConvUpdateConfig(
                channels=channels, width=4, dtype=names[bf16], weight_dtype=names[bf16], state_dtype=names[bf16],
                slot_dtype=build.TORCH_TO_TL[slot_dtype], has_slots=has_slots,
            )))
    # The prefill tiles benchmarks/kernels_conv.py --variants times and the GPU tests check (bf16, a state).
    from benchmarks.kernels_conv import CONV_VARIANTS, VARIANT_SHAPES
    for shape in VARIANT_SHAPES:
        for tiles in CONV_VARIANTS.values():
            for varlen in (False, True):
                pairs.append((conv.conv_program, conv.ConvConfig(
                    channels=shape.channels, width=4, dtype=names[bf16], weight_dtype=names[bf16],
                    state_dtype=names[bf16], has_state=True, varlen=varlen, **tiles,
                )))
    return pairs


def _compile(pair: tuple, arch: str) -> str:
    program, config = pair
    try:
        build.compile_program(program, config, arch)
    except Exception as e:  # report every failing config, keep compiling the rest
        return f"FAILED {program.__module__}: {config}: {type(e).__name__}: {str(e)[-300:]}"
    return f"{program.__module__}: {config}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90a", choices=build.ARCHS)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--variants", default="", help="comma-separated variant names, as for benchmarks/kernels.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    pairs = wanted_configs(args.arch, tuple(v for v in args.variants.split(",") if v))
    pairs = list(dict.fromkeys(pairs + step_configs() + norm_configs()))
    logger.info("%d kernels to compile for %s", len(pairs), args.arch)
    with ProcessPoolExecutor(args.jobs) as pool:
        for done in pool.map(_compile, pairs, [args.arch] * len(pairs)):
            logger.info("done %s", done)


if __name__ == "__main__":
    main()
