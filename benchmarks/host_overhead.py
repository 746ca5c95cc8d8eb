"""Host (CPU) time of one GDN prefill call, stage by stage, and of every public op of a 0.8B model's
layers, with the kernels replaced by no-ops.

    python benchmarks/host_overhead.py [--tokens 16 256] [--value-heads 16 32] [--device cpu|meta]
        [--repeats 2000] [--ops-only]

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
  launcher    tilelang.prefill.gdn_prefill with no-op kernels (configs, kernel lookup, the inputs'
              strides, copies of layouts the kernels cannot read, allocations)
  public      qla_agent.kernels.gdn_prefill itself, dispatching to the TileLang backend (what one
              layer pays before the GPU sees a kernel, plus the kernel calls below)
  tilelang    one kernel call: TileLang's JITKernel wrapper (tvm_ffi adapter) around an FFI entry
              that does nothing, vs that FFI entry called directly (build.entry); 19 arguments as
              chunk_scan's. Skipped without nvcc (the stand-in kernel is compiled for sm_90a).

ops         each public op of qla_agent.kernels as the runtime's layers call it for a 0.8B-shaped model
            (hidden 1024; GDN 16/16 heads of 128, conv_dim 6144; MLP intermediate 3584; attention 8 query
            and 2 key heads of 256 with RoPE on 64 dims), for T = 8192 prefill rows and one decode row,
            in the layouts the layers pass (views of the projections read in place), then summed per GDN
            layer, per attention layer and per model (18 GDN + 6 attention layers and the final norm).
            With --device cpu the decode ops' slots are CPU tensors, whose values the checks read on
            every call; --device meta times them as on CUDA.

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
    """Serve every CPU allocation from the heap and never trim it (glibc only; else a no-op): the 0.8B
    model's prefill outputs (up to 100 MB) would each be a fresh mmap otherwise."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_mmap_max, 0)
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


HIDDEN, INTERMEDIATE, CONV_WIDTH = 1024, 3584, 4
ATTENTION_HEADS, ATTENTION_KV_HEADS, ATTENTION_DIM, ROTARY_DIM = 8, 2, 256, 64
GDN_LAYERS, ATTENTION_LAYERS = 18, 6
GDN_LAYER_OPS = ("add_rms_norm", "causal_conv1d", "gdn_prefill", "gated_rms_norm", "add_rms_norm", "silu_and_mul")
ATTENTION_LAYER_OPS = (
    "add_rms_norm", "rms_norm_rope q", "rms_norm_rope k", "sigmoid_gate_mul", "add_rms_norm", "silu_and_mul",
)


def model_op_calls(tokens: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """Each public op called as the 0.8B model's layers call it on `tokens` rows (one row: a decode step,
    whose GDN ops are causal_conv1d_update and gdn_decode; the names of the prefill ones are kept so the
    layer sums read alike)."""
    from qla_agent import kernels

    bf16, hd, conv_dim = torch.bfloat16, HEAD_DIM, (3 * KEY_HEADS) * HEAD_DIM
    decode = tokens == 1

    def zeros(*shape: int, dtype: torch.dtype = bf16) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype, device=device)

    x, residual, norm_weight = zeros(tokens, HIDDEN), zeros(tokens, HIDDEN), zeros(HIDDEN)
    gate_up = zeros(tokens, 2 * INTERMEDIATE)
    # GDN: decode slices one projection [qkv | z | b | a], prefill runs one GEMM per group (compact outputs).
    projection = zeros(tokens, conv_dim + KEY_HEADS * hd + 2 * KEY_HEADS)
    qkv, z, _ = projection.split([conv_dim, KEY_HEADS * hd, 2 * KEY_HEADS], dim=-1)
    if not decode:
        qkv, z = qkv.contiguous(), z.contiguous()
    z = z.unflatten(-1, (KEY_HEADS, hd))
    conv_weight, o = zeros(conv_dim, CONV_WIDTH), zeros(tokens, KEY_HEADS, hd)
    # Attention: q | gate interleaved per head, then k, v, all one projection; SDPA's output [1, heads, T, d].
    attention = zeros(tokens, (2 * ATTENTION_HEADS + 2 * ATTENTION_KV_HEADS) * ATTENTION_DIM)
    q_gate, k, _ = attention.split([2 * ATTENTION_HEADS * ATTENTION_DIM, ATTENTION_KV_HEADS * ATTENTION_DIM,
                                    ATTENTION_KV_HEADS * ATTENTION_DIM], dim=-1)
    query, gate = q_gate.unflatten(-1, (ATTENTION_HEADS, 2 * ATTENTION_DIM)).chunk(2, dim=-1)
    k = k.unflatten(-1, (ATTENTION_KV_HEADS, ATTENTION_DIM))
    attended = zeros(1, ATTENTION_HEADS, tokens, ATTENTION_DIM)[0].transpose(0, 1)
    cos, sin, rope_weight = zeros(tokens, 1, ROTARY_DIM), zeros(tokens, 1, ROTARY_DIM), zeros(ATTENTION_DIM)
    calls = {
        "rms_norm": lambda: kernels.rms_norm(x, norm_weight, eps=1e-6),
        "add_rms_norm": lambda: kernels.add_rms_norm(x, residual, norm_weight, eps=1e-6),
        "gated_rms_norm": lambda: kernels.gated_rms_norm(o, z, zeros(hd), eps=1e-6),
        "silu_and_mul": lambda: kernels.silu_and_mul(gate_up),
        "rms_norm_rope q": lambda: kernels.rms_norm_rope(query, rope_weight, cos, sin, eps=1e-6),
        "rms_norm_rope k": lambda: kernels.rms_norm_rope(k, rope_weight, cos, sin, eps=1e-6),
        "sigmoid_gate_mul": lambda: kernels.sigmoid_gate_mul(attended, gate),
    }
    if decode:
        conv_pool, slots = zeros(1, conv_dim, CONV_WIDTH - 1), torch.arange(1, device=device)
        u = zeros(1, conv_dim)
        q_, k_, v_ = (t.unflatten(-1, (KEY_HEADS, hd)) for t in u.split([KEY_HEADS * hd] * 3, dim=-1))
        ba = projection[:, -2 * KEY_HEADS:]
        state = zeros(1, KEY_HEADS, hd, hd, dtype=torch.float32)
        gate_params = dict(A_log=zeros(KEY_HEADS, dtype=torch.float32), dt_bias=zeros(KEY_HEADS, dtype=torch.float32))
        calls["causal_conv1d"] = lambda: kernels.causal_conv1d_update(qkv, conv_weight, conv_pool, slots)
        calls["gdn_prefill"] = lambda: kernels.gdn_decode(
            q_, k_, v_, ba[:, KEY_HEADS:], ba[:, :KEY_HEADS], state, slots, scale=hd**-0.5, use_qk_l2norm=True,
            **gate_params,
        )
    else:
        conv_state = zeros(1, conv_dim, CONV_WIDTH - 1)
        gdn = layer_inputs(tokens, KEY_HEADS, device)
        calls["causal_conv1d"] = lambda: kernels.causal_conv1d(qkv[None], conv_weight, conv_state=conv_state)
        calls["gdn_prefill"] = lambda: kernels.gdn_prefill(**gdn)
    return calls


def model_op_times(tokens: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Microseconds per call of each public op (under pretend_h100), and the sums per layer and model."""
    times = {name: per_call_us(call, repeats) for name, call in model_op_calls(tokens, device).items()}
    gdn_layer = sum(times[name] for name in GDN_LAYER_OPS)
    attention_layer = sum(times[name] for name in ATTENTION_LAYER_OPS)
    times["GDN layer"], times["attention layer"] = gdn_layer, attention_layer
    times["model"] = GDN_LAYERS * gdn_layer + ATTENTION_LAYERS * attention_layer + times["add_rms_norm"]
    return times


def print_model_op_times(device: torch.device, repeats: int) -> None:
    print(f"\npublic ops of a 0.8B model, host microseconds per call ({device.type} tensors, no-op kernels)")
    prefill, decode = model_op_times(8192, device, repeats), model_op_times(1, device, repeats)
    print("| op | T=8192 | T=1 |")
    print("|---|---|---|")
    for name in prefill:
        label = {"causal_conv1d": "causal_conv1d (_update)", "gdn_prefill": "gdn_prefill (gdn_decode)"}.get(name, name)
        print(f"| {label} | {prefill[name]:.1f} | {decode[name]:.1f} |")


def _stand_in_program():
    """A kernel with chunk_scan's parameter kinds (9 tensors, q/k/v/o with dynamic batch and token dims,
    tpmat and the vectors with a dynamic chunk dim; 10 int scalars)."""
    import tilelang.language as T

    b, n, c = T.dynamic("b"), T.dynamic("n"), T.dynamic("c")
    f32 = "float32"

    @T.prim_func
    def main(
        q: T.Tensor((b, n, 16, 128), f32), k: T.Tensor((b, n, 16, 128), f32), v: T.Tensor((b, n, 16, 128), f32),
        tp: T.Tensor((c, 16, 2, 64, 64), f32), w: T.Tensor((c, 16, 4, 64), f32),
        h0: T.Tensor((1, 16, 128, 128), f32), cu: T.Tensor((2,), "int32"), o: T.Tensor((b, n, 16, 128), f32),
        ht: T.Tensor((1, 16, 128, 128), f32), seq_len: T.int32, n_seqs: T.int32, parts: T.int32,
        part_chunks: T.int32, q_batch8: T.int32, q_token8: T.int32, k_batch8: T.int32, k_token8: T.int32,
        v_batch8: T.int32, v_token8: T.int32,
    ):
        with T.Kernel(1, threads=32):
            o[0, 0, 0, 0] = q[0, 0, 0, 0]

    return main


def tilelang_call_times(repeats: int) -> dict[str, float] | None:
    """One kernel call through TileLang's wrapper vs the FFI entry directly (an FFI no-op executes)."""
    if shutil.which("nvcc") is None:
        return None
    import tilelang
    import tvm_ffi

    from qla_agent.kernels.tilelang import build

    kernel = tilelang.compile(_stand_in_program(), target={"kind": "cuda", "arch": "sm_90a"})
    args = [torch.zeros(s) for s in ((1, 16, 16, 128),) * 3 + ((1, 16, 2, 64, 64), (1, 16, 4, 64), (1, 16, 128, 128))]
    args += [torch.zeros(2, dtype=torch.int32), torch.zeros(1, 16, 16, 128), torch.zeros(1, 16, 128, 128), 16, 1]
    args += [1, 1, 0, 256, 0, 256, 0, 256]
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
    parser.add_argument("--ops-only", action="store_true", help="only the public ops of a 0.8B model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_allocations_off_mmap()
    device = torch.device(args.device)
    if args.ops_only:
        with pretend_h100(device):
            print_model_op_times(device, args.repeats)
        return
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
        print_model_op_times(device, args.repeats)
    calls = tilelang_call_times(args.repeats)
    if calls is None:
        print("tilelang call: skipped (no nvcc)")
        return
    for name, value in calls.items():
        print(f"tilelang call, {name}: {value:.2f} us")


if __name__ == "__main__":
    main()
