"""Every TileLang kernel compiles for sm_80, sm_86, sm_89 and sm_90a on a machine without a GPU.

Needs nvcc (skipped without it). A TileLang cache hit counts: the cache key is the kernel source,
target and TileLang build, so a hit means this exact kernel compiled for this arch before.
"""

import dataclasses
import shutil

import pytest
import torch

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")

ARCHS = [
    pytest.param("sm_80"),
    pytest.param("sm_86", marks=pytest.mark.slow),
    pytest.param("sm_89", marks=pytest.mark.slow),
    pytest.param("sm_90a"),
]


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_kernels_compile(arch: str) -> None:
    """The prefill kernels (every feature on: varlen, raw gates, l2norm, states; the context-parallel
    warm-up of a dense call) build for `arch`, the scan in both layouts: value rows for many heads x
    sequences (wgmma on sm_90a, mma.sync elsewhere), columns for few; and the two one-launch kernels (the
    self-prepping scan, the fused prep + grid barrier + scan)."""
    from qla_agent.kernels.tilelang import build, chunk_prep, chunk_scan
    from qla_agent.kernels.tilelang.prefill import prefill_configs, warmup_config

    kernels = []
    for num_seqs in (64, 1):
        prep_cfg, scan_cfg = prefill_configs(
            key_heads=2, value_heads=4, dtype=torch.bfloat16, gate_dtype=torch.bfloat16, param_dtype=torch.float32,
            scale=128**-0.5, raw_gates=True, l2norm=True, varlen=True, has_h0=True, store_ht=True,
            num_seqs=num_seqs, arch=arch, sm_count=132,
        )
        assert scan_cfg.value_rows == (num_seqs == 64) and scan_cfg.wgmma == (num_seqs == 64 and arch == "sm_90a")
        warmup_cfg = warmup_config(dataclasses.replace(scan_cfg, varlen=False), has_h0=True)
        kernels += [(chunk_prep.program, prep_cfg), (chunk_scan.program, scan_cfg), (chunk_scan.program, warmup_cfg)]
        if num_seqs == 1:  # the one-launch kernels of short calls (value rows, wgmma on sm_90a)
            for one_launch in (dict(prepped=True), dict(fused=True)):
                kernels.append((chunk_scan.program, prefill_configs(
                    key_heads=2, value_heads=4, dtype=torch.bfloat16, gate_dtype=torch.bfloat16,
                    param_dtype=torch.float32, scale=128**-0.5, raw_gates=True, l2norm=True, varlen=True, has_h0=True,
                    store_ht=True, num_seqs=num_seqs, arch=arch, sm_count=132, **one_launch,
                )[1]))
    for program, config in dict.fromkeys(kernels):
        kernel = build.compiled(program, config, arch)
        mma = "wgmma_rs" if getattr(config, "wgmma", False) else "mma_sync"
        assert mma in kernel.get_kernel_source(), f"{program.__module__} uses no {mma} on {arch}: {config}"
        assert build.launch_smem_bytes(kernel) <= build.SMEM_LIMIT[arch], (
            f"{program.__module__} needs {build.launch_smem_bytes(kernel)} B of shared memory on {arch}"
        )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block_v", [16, 128])
def test_decode_kernel_compiles(arch: str, block_v: int) -> None:
    """The decode kernel (raw gates, l2norm, grouped heads, int64 slots) builds for `arch`; 16 and 128
    columns are the smallest and largest tiles (the 128-column slice stages 64 KB of state)."""
    from qla_agent.kernels.tilelang import build, decode

    config = decode.decode_config(
        key_heads=16, value_heads=32, dtype=torch.bfloat16, gate_dtype=torch.bfloat16, param_dtype=torch.float32,
        slot_dtype=torch.int64, raw_gates=True, l2norm=True, scale=128**-0.5, block_v=block_v,
    )
    kernel = build.compiled(decode.program, config, arch)
    source = kernel.get_kernel_source()
    assert f"__launch_bounds__({max(32, block_v)}" in source
    smem = build.launch_smem_bytes(kernel)
    assert 128 * block_v * 4 <= smem <= build.SMEM_LIMIT[arch], f"decode stages {smem} B of shared memory on {arch}"


@pytest.mark.parametrize("arch", ARCHS)
def test_conv_kernels_compile(arch: str) -> None:
    """The conv prefill (packed sequences with states) and update (with slots) build for `arch` at the
    0.8B model's width."""
    from qla_agent.kernels.tilelang import build, conv

    prefill = conv.ConvConfig(
        channels=6144, width=4, dtype="bfloat16", weight_dtype="bfloat16", state_dtype="bfloat16", has_state=True,
        varlen=True,
    )
    update = conv.ConvUpdateConfig(
        channels=6144, width=4, dtype="bfloat16", weight_dtype="bfloat16", state_dtype="bfloat16",
        slot_dtype="int64", has_slots=True,
    )
    for program, config in ((conv.conv_program, prefill), (conv.update_program, update)):
        kernel = build.compiled(program, config, arch)
        assert f"__launch_bounds__({config.block_c}" in kernel.get_kernel_source()
    assert build.launch_smem_bytes(build.compiled(conv.conv_program, prefill, arch)) <= build.SMEM_LIMIT[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_kernels_compile(arch: str) -> None:
    """add_rms_norm (hidden 1024), the q-norm (8 heads of 256), the gated norm (16 heads of 128) and
    silu_mul (3584) build for `arch`, and every global load and store of a row is a 16-byte vector."""
    from qla_agent.kernels.tilelang import build, norms

    bf16, f32 = torch.bfloat16, torch.float32
    kernels = [
        (norms.rms_norm_program, norms.rms_norm_config(1024, 1, bf16, bf16, bf16, zero_centered=True), "x", "s"),
        (norms.rms_norm_program, norms.rms_norm_config(256, 8, bf16, bf16, None, zero_centered=True), "x", "y"),
        (norms.gated_rms_norm_program, norms.gated_rms_norm_config(128, 16, bf16, bf16, f32), "z", "y"),
        (norms.silu_mul_program, norms.silu_mul_config(3584, bf16), "up", "out"),
    ]
    for program, config, operand, output in kernels:
        source = build.compiled(program, config, arch).get_kernel_source()
        threads = config.threads if program is norms.silu_mul_program else config.block.threads
        assert f"__launch_bounds__({threads}" in source
        assert f"*(uint4*)({operand} + " in source, f"{program.__name__} reads {operand} without 16-byte vectors"
        assert f"*(uint4*)({output} + " in source, f"{program.__name__} writes {output} without 16-byte vectors"
