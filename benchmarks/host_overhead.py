"""Host (CPU) time of one GDN prefill call, stage by stage, with the kernels replaced by no-ops.

    python benchmarks/host_overhead.py [--tokens 16 256] [--value-heads 16 32] [--device cpu|meta]
        [--repeats 2000]

Runs anywhere (no GPU): the inputs are CPU (or meta) tensors shaped as the runtime's GDN layer
passes them (qla_agent/runtime/layers/gdn.py: q/k/v column slices of the conv output, raw gates a/b
the halves of the [T, 2 Hv] projection, fp32 A_log/dt_bias, fp32 initial state, final state out, L2
norm; "layer views", read in place) or compact ("contiguous") or in layouts the kernels cannot read
("copied views": the launcher copies q, k, v, a and b, as it did for every call before strided rows),
the device is declared an H100 (sm_90a, 132 SMs) and every compiled kernel is a no-op callable, so
what is timed is the Python path alone. Stages:

  checks      checks.check_gdn_prefill (the validation of a call whose signature is new)
  signature   checks.prefill_signature (what a repeated signature pays instead: T compared, the
              rest of the key built)
  dispatch    dispatch.remembered (the fast function chosen for that signature, looked up)
  launcher    tilelang.prefill.gdn_prefill with no-op kernels (configs, kernel lookup, views,
              copies of strided inputs, allocations)
  public      qla_agent.kernels.gdn_prefill itself, dispatching to the TileLang backend (what one
              layer pays before the GPU sees a kernel, plus the kernel calls below)
  tilelang    one kernel call: TileLang's JITKernel wrapper (tvm_ffi adapter) around an FFI entry
              that does nothing, vs that FFI entry called directly (build.entry); 15 arguments as
              chunk_scan's. Skipped without nvcc (the stand-in kernel is compiled for sm_90a).

Each number is the best of 5 rounds of `--repeats` calls, in microseconds per call. CPU allocations
are kept off mmap (glibc mallopt), as the CUDA caching allocator makes no system call either; the
launcher's copies ("copied views") are real CPU copies, so those rows grow with T where on a GPU each
copy is one launch (~4 us of host time on the H100 machine).
"""

import argparse
import contextlib
import ctypes
import ctypes.util
import shutil
import sys
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from qla_agent.kernels import checks, dispatch  # noqa: E402

KEY_HEADS = 16
HEAD_DIM = 128


def keep_allocations_off_mmap() -> None:
    """Serve CPU allocations up to 32 MB from the heap and never trim it (glibc only; else a no-op)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 1 << 30)


def per_call_us(fn: Callable[[], object], repeats: int) -> float:
    """Best of 5 rounds of `repeats` calls, microseconds per call."""
    fn()
    return 1e6 * min(timeit.repeat(fn, number=repeats, repeat=5)) / repeats


def layer_inputs(tokens: int, value_heads: int, device: torch.device, *, row_pad: int = 0) -> dict:
    """gdn_prefill arguments exactly as the runtime's GDN prefill builds them: q, k, v column slices of
    the conv output u [T, conv_dim], raw gates a, b the two halves of the [T, 2 Hv] projection.

    row_pad > 0 widens u's rows by that many elements and puts q, k, v after them, and stores the gates
    column-major: layouts the kernels cannot read in place, so the launcher copies all five (what every
    call paid before the kernels took strided rows).
    """
    hk, hv, d = KEY_HEADS, value_heads, HEAD_DIM
    conv_dim = (2 * hk + hv) * d
    u = torch.zeros(tokens, row_pad + conv_dim, dtype=torch.bfloat16, device=device)[:, row_pad:]
    ba = torch.zeros(tokens, 2 * hv, dtype=torch.bfloat16, device=device)
    if row_pad:
        ba = torch.zeros(2 * hv, tokens, dtype=torch.bfloat16, device=device).T
    q, k, v = u.split([hk * d, hk * d, hv * d], dim=-1)
    b, a = ba.chunk(2, dim=-1)
    return dict(
        q=q.unflatten(-1, (hk, d))[None], k=k.unflatten(-1, (hk, d))[None], v=v.unflatten(-1, (hv, d))[None],
        g=a[None], beta=b[None], scale=d**-0.5,
        initial_state=torch.zeros(1, hv, d, d, device=device), output_final_state=True, cu_seqlens=None,
        use_qk_l2norm=True, A_log=torch.zeros(hv, device=device), dt_bias=torch.ones(hv, device=device),
    )


def contiguous_inputs(x: dict) -> dict:
    """The same call with every tensor compact (what benchmarks/kernels.py passes)."""
    return {n: t.contiguous() if isinstance(t, torch.Tensor) else t for n, t in x.items()}


def _no_op(*args: object) -> None:
    return None


@contextlib.contextmanager
def pretend_h100(device: torch.device) -> Iterator[None]:
    """Patches that make dispatch and the TileLang backend take `device`'s (CPU/meta) tensors as CUDA
    ones: no-op kernels on an H100."""
    from qla_agent.kernels import tilelang as backend
    from qla_agent.kernels.tilelang import build

    with (
        mock.patch.object(build, "compiled", lambda program, config, arch: _no_op),
        mock.patch.object(build, "device_facts", lambda device: ("sm_90a", 132)),
        mock.patch.object(backend, "device_arch", lambda device: "sm_90a"),
        mock.patch.object(dispatch, "FAST_DEVICE_TYPE", device.type),
        mock.patch.dict(dispatch._routes, clear=True),
    ):
        yield


def stage_times(x: dict, repeats: int) -> dict[str, float]:
    """Microseconds per call of each Python stage for inputs x (under pretend_h100)."""
    from qla_agent import kernels
    from qla_agent.kernels.tilelang import prefill

    tensors = [x[n] for n in ("q", "k", "v", "g", "beta")]
    optional = [x[n] for n in ("initial_state", "cu_seqlens", "A_log", "dt_bias")]

    def check() -> object:
        return checks.check_gdn_prefill(
            *tensors, initial_state=x["initial_state"], cu_seqlens=x["cu_seqlens"], A_log=x["A_log"],
            dt_bias=x["dt_bias"],
        )

    signature = checks.prefill_signature(*tensors, *optional)
    kernels.gdn_prefill(**x)
    assert dispatch.remembered("gdn_prefill", "auto", signature) is prefill.gdn_prefill
    return {
        "checks": per_call_us(check, repeats),
        "signature": per_call_us(lambda: checks.prefill_signature(*tensors, *optional), repeats),
        "dispatch": per_call_us(lambda: dispatch.remembered("gdn_prefill", "auto", signature), repeats),
        "launcher": per_call_us(lambda: prefill.gdn_prefill(**x), repeats),
        "public": per_call_us(lambda: kernels.gdn_prefill(**x), repeats),
    }


def _stand_in_program():
    """A kernel with chunk_scan's parameter kinds (10 tensors with a dynamic token dim, 7 int scalars)."""
    import tilelang.language as T

    n = T.dynamic("n")
    f32 = "float32"

    @T.prim_func
    def main(
        q: T.Tensor((n, 16, 128), f32), k: T.Tensor((n, 16, 128), f32), v: T.Tensor((n, 16, 128), f32),
        t: T.Tensor((n, 16, 64), f32), p: T.Tensor((n, 16, 64), f32), w: T.Tensor((n, 16, 4), f32),
        h0: T.Tensor((1, 16, 128, 128), f32), cu: T.Tensor((2,), "int32"), o: T.Tensor((n, 16, 128), f32),
        ht: T.Tensor((1, 16, 128, 128), f32), seq_len: T.int32, n_seqs: T.int32, parts: T.int32,
        part_chunks: T.int32, q_stride8: T.int32, k_stride8: T.int32, v_stride8: T.int32,
    ):
        with T.Kernel(1, threads=32):
            o[0, 0, 0] = q[0, 0, 0]

    return main


def tilelang_call_times(repeats: int) -> dict[str, float] | None:
    """One kernel call through TileLang's wrapper vs the FFI entry directly (an FFI no-op executes)."""
    if shutil.which("nvcc") is None:
        return None
    import tilelang
    import tvm_ffi

    from qla_agent.kernels.tilelang import build

    kernel = tilelang.compile(_stand_in_program(), target={"kind": "cuda", "arch": "sm_90a"})
    args = [torch.zeros(s) for s in ((16, 16, 128),) * 3 + ((16, 16, 64),) * 2 + ((16, 16, 4), (1, 16, 128, 128))]
    args += [torch.zeros(2, dtype=torch.int32), torch.zeros(16, 16, 128), torch.zeros(1, 16, 128, 128), 16, 1]
    args += [1, 1, 256, 256, 256]
    entry = build.entry(kernel)
    assert entry is not kernel, "build.entry must unwrap a tvm_ffi kernel"
    nop = tvm_ffi.get_global_func("testing.nop")
    # The executable runs on the GPU only; an FFI function that ignores its arguments stands in for it.
    kernel.adapter.executable = nop
    return {
        "JITKernel(*args)": per_call_us(lambda: kernel(*args), repeats),
        "entry(*args)": per_call_us(lambda: nop(*args), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=[16, 256])
    parser.add_argument("--value-heads", type=int, nargs="*", default=[16])
    parser.add_argument("--device", default="cpu", choices=("cpu", "meta"))
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_allocations_off_mmap()
    device = torch.device(args.device)
    print(f"host microseconds per call ({args.device} tensors, no-op kernels, best of 5 x {args.repeats})")
    stages = ("checks", "signature", "dispatch", "launcher", "public")
    print("| inputs | " + " | ".join(stages) + " |")
    print("|---" * (len(stages) + 1) + "|")
    with pretend_h100(device):
        for hv in args.value_heads:
            for tokens in args.tokens:
                strided = layer_inputs(tokens, hv, device)
                layouts = (
                    ("layer views", strided), ("contiguous", contiguous_inputs(strided)),
                    ("copied views", layer_inputs(tokens, hv, device, row_pad=4)),
                )
                for layout, x in layouts:
                    t = stage_times(x, args.repeats)
                    cells = " | ".join(f"{t[stage]:.1f}" for stage in stages)
                    print(f"| T={tokens} {KEY_HEADS}/{hv} {layout} | {cells} |")
    calls = tilelang_call_times(args.repeats)
    if calls is None:
        print("tilelang call: skipped (no nvcc)")
        return
    for name, value in calls.items():
        print(f"tilelang call, {name}: {value:.2f} us")


if __name__ == "__main__":
    main()
