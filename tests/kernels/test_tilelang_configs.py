"""The prefill's kernel configs: which scan layout and GEMM instruction a call gets, and the configs that
cannot be built (no GPU, no compiler: `prefill_configs` is a pure function of shapes and flags)."""

import dataclasses

import pytest
import torch

from qla_agent.kernels.tilelang import build, chunk_scan
from qla_agent.kernels.tilelang.prefill import prefill_configs, warmup_config


def _configs(arch: str = "sm_90a", num_seqs: int = 1, value_heads: int = 16, **overrides):
    return prefill_configs(
        key_heads=16, value_heads=value_heads, dtype=torch.bfloat16, gate_dtype=torch.bfloat16,
        param_dtype=torch.float32, scale=128**-0.5, raw_gates=True, l2norm=True, varlen=False, has_h0=True,
        store_ht=True, num_seqs=num_seqs, arch=arch, sm_count=132, **overrides,
    )


@pytest.mark.parametrize("arch", ["sm_80", "sm_86", "sm_89", "sm_90a"])
def test_many_heads_scan_on_value_rows_with_wgmma_on_hopper_only(arch: str) -> None:
    """The runtime's context-parallel 16/16 layer (8 partitions: 128 units) gets the value-rows scan, 64
    columns on 4 warps; wgmma (prep and scan, the warm-up too) only on sm_90a."""
    prep, scan = _configs(arch, parts=8)
    assert (scan.value_rows, scan.block_v, scan.threads, scan.split_k) == (True, 64, 128, False)
    assert prep.wgmma == scan.wgmma == (arch == "sm_90a")
    assert warmup_config(scan, has_h0=True).wgmma == scan.wgmma


def test_few_heads_scan_on_columns() -> None:
    """Too few sequences x heads for two CTAs each: the column layout (16 columns on 8 warps with the
    second K tile for the fewest, else 32 columns on 4 warps), never wgmma."""
    _, fewest = _configs(value_heads=16, num_seqs=1)
    assert (fewest.value_rows, fewest.wgmma, fewest.block_v, fewest.threads, fewest.split_k) == (
        False, False, 16, 256, True
    )
    _, few = _configs(value_heads=32, num_seqs=1)
    assert (few.value_rows, few.wgmma, few.block_v, few.threads) == (False, False, 32, 128)


def test_block_v_override_keeps_16_value_rows_per_warp() -> None:
    """A block_v override on the value-rows tile gives 2 x block_v threads (16 rows a warp) and keeps
    wgmma only for whole warpgroups."""
    _, wide = _configs(parts=8, block_v=128)
    assert (wide.block_v, wide.threads, wide.wgmma) == (128, 256, True)
    _, narrow = _configs(parts=8, block_v=32)
    assert (narrow.block_v, narrow.threads, narrow.wgmma) == (32, 64, False)


def test_overrides_select_the_portable_path_on_hopper() -> None:
    prep, scan = _configs(parts=8, prep_overrides=dict(wgmma=False), scan_overrides=dict(wgmma=False))
    assert not prep.wgmma and not scan.wgmma and scan.value_rows


def test_scan_configs_that_cannot_be_built_are_refused() -> None:
    _, scan = _configs(parts=8)
    with pytest.raises(ValueError, match="block_v must be 64, got 32"):
        dataclasses.replace(scan, block_v=32)
    with pytest.raises(ValueError, match="wgmma needs value_rows"):
        dataclasses.replace(scan, threads=64, block_v=32)
    with pytest.raises(ValueError, match="wgmma needs value_rows"):
        dataclasses.replace(scan, value_rows=False)
    with pytest.raises(ValueError, match="value_rows has no second K tile"):
        dataclasses.replace(scan, split_k=True)


def test_wgmma_configs_compile_only_for_sm_90a() -> None:
    _, scan = _configs(parts=8)
    with pytest.raises(ValueError, match="wgmma needs sm_90a, not sm_80"):
        build.compile_program(chunk_scan.program, scan, "sm_80")
