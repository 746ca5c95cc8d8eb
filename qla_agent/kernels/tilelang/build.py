"""Compile TileLang prim_funcs for a CUDA architecture, cached by a frozen kernel config.

Every kernel module describes one specialisation with a frozen dataclass (model-shape constants,
dtypes, feature flags and tile sizes; never a sequence length) and a `program(config)` factory that
returns the prim_func. `compiled(program, config)` compiles once per (config, arch) and caches.

The portable path (mma.sync + cp.async, what sm_80/86/89 run) is also what the H100 runs: the pass
configs below switch off WGMMA, TMA lowering and automatic warp specialisation on sm_90a.
"""

import functools
import re
import logging
from collections.abc import Callable
from typing import Any

import tilelang
import torch
from tilelang import tvm
from tilelang.jit.adapter import TVMFFIKernelAdapter

logger = logging.getLogger(__name__)

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90a")
# Key and value head width every kernel is built for (all released Qwen hybrids).
HEAD_DIM = 128
# Kernels read rows in 16-byte vectors; row strides reach them as stride // ROW_ALIGN (elements), so the
# compiler can prove every row start 16-byte aligned and keep the vector loads.
VECTOR_BYTES = 16
ROW_ALIGN = 8
TORCH_TO_TL = {
    torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
    torch.int32: "int32", torch.int64: "int64",
}

PORTABLE_PASS_CONFIGS = {
    tilelang.PassConfigKey.TL_DISABLE_WGMMA: True,
    tilelang.PassConfigKey.TL_DISABLE_TMA_LOWER: True,
    tilelang.PassConfigKey.TL_DISABLE_WARP_SPECIALIZED: True,
}


@functools.cache
def device_arch(device: torch.device) -> str | None:
    """The TileLang arch string for a CUDA device ("sm_80" ... "sm_90a"), or None when unsupported; cached
    (`supports` asks on every call, and torch.cuda.get_device_capability costs microseconds)."""
    major, minor = torch.cuda.get_device_capability(device)
    if major == 9 and minor == 0:
        return "sm_90a"
    if major == 8:
        return f"sm_{major}{minor}"
    return None


@functools.cache
def device_facts(device: torch.device) -> tuple[str | None, int]:
    """(TileLang arch or None, number of SMs) of a CUDA device; cached, no sync."""
    return device_arch(device), torch.cuda.get_device_properties(device).multi_processor_count


_placeholders: dict[tuple, torch.Tensor] = {}


def placeholder(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached zero tensor for a kernel argument the specialisation never reads."""
    key = (shape, dtype, device)
    if key not in _placeholders:
        _placeholders[key] = torch.zeros(shape, dtype=dtype, device=device)
    return _placeholders[key]


def flat_view(x: torch.Tensor, inner_dims: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(1-D view from x's first to its last element, strides of the leading dims).

    The last `inner_dims` dims must be compact (they are copied to a contiguous tensor first if not);
    the leading dims may have any strides, so a slice of a fused projection is passed without a copy.
    A kernel reads element (i, j, ..., inner offset) at i * stride_i + j * stride_j + offset.
    (Plain tuple arithmetic: this runs for every tensor of every decode step.)
    """
    shape, strides = x.shape, x.stride()
    lead = len(shape) - inner_dims
    expected = 1
    for size, stride in zip(reversed(shape[lead:]), reversed(strides[lead:])):
        if size != 1 and stride != expected:
            x = x.contiguous()
            shape, strides = x.shape, x.stride()
            break
        expected *= size
    length = 1
    for size, stride in zip(shape, strides):
        length += (size - 1) * stride
    return x.as_strided((length,), (1,)), strides[:lead]


# A config with `wgmma` set keeps the portable path's TMA and warp-specialisation switches, not its GEMMs.
HOPPER_PASS_CONFIGS = {**PORTABLE_PASS_CONFIGS, tilelang.PassConfigKey.TL_DISABLE_WGMMA: False}


def compile_program(program: Callable[[Any], Any], config: Any, arch: str) -> Any:
    """Compile `program(config)` for `arch` (uncached; used by the compile tests)."""
    target = {"kind": "cuda", "arch": arch}
    wgmma = getattr(config, "wgmma", False)
    if wgmma and arch != "sm_90a":
        raise ValueError(f"{type(config).__name__}.wgmma needs sm_90a, not {arch}")
    logger.info("compiling %s for %s: %s", program.__name__, arch, config)
    pass_configs = HOPPER_PASS_CONFIGS if wgmma else PORTABLE_PASS_CONFIGS
    return tilelang.compile(program(config), target=target, pass_configs=pass_configs)


@functools.cache
def compiled(program: Callable[[Any], Any], config: Any, arch: str) -> Any:
    """The compiled kernel for (program, config, arch); compiled on first use, then cached."""
    return compile_program(program, config, arch)


def entry(kernel: Any) -> Callable[..., Any]:
    """The compiled kernel's FFI entry function, to call with all its arguments (torch tensors, ints).

    Calling a JITKernel goes through TileLang's tvm_ffi adapter, which per call re-checks the argument
    count, walks the parameters looking for outputs to allocate and finds the device, all in Python
    (~3 us on the CPU machine), before it calls this same function. Our kernels allocate no outputs
    (every buffer is passed), so the entry is called directly; it still checks every argument's
    dtype, shape, strides and device in C, and takes the stream from torch (CUDA graphs capture it).
    Anything else (another backend, kernels with outputs, test stand-ins) is returned as it is.
    """
    adapter = getattr(kernel, "adapter", None)
    if not isinstance(adapter, TVMFFIKernelAdapter) or adapter.result_idx:
        return kernel
    module = adapter.get_exportable_executable()
    if isinstance(module, tvm.runtime.Executable):
        module = module.jit()
    return module.main


_launchers: dict[tuple, Callable[..., Any]] = {}


def launcher(program: Callable[[Any], Any], config: Any, arch: str) -> Callable[..., Any]:
    """`entry` of `compiled(program, config, arch)`, cached: what a launcher calls on every launch.

    Keyed by the compile function too, so kernels a test swaps in never meet entries built with others.
    """
    key = (compiled, program, config, arch)
    fn = _launchers.get(key)
    if fn is None:
        fn = _launchers[key] = entry(compiled(program, config, arch))
    return fn


# Shared memory one block may use, per arch (bytes): the opt-in maximum of each family.
SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90a": 227 * 1024}


def launch_smem_bytes(kernel: Any) -> int:
    """Dynamic shared memory the compiled kernel launches with, read from its host launcher source."""
    host = kernel.get_host_source()
    launch = host[: host.index("_kernel_packed == NULL")]
    values = re.findall(r"v_int64\) = \(\(int64_t\)(\d+)\);", launch)
    return int(values[-1])
