"""Time the row kernels (RMSNorm, add + RMSNorm, RMSNorm + RoPE, gated RMSNorm, SiLU-mul, sigmoid-gate-mul): ours
vs the torch reference vs the memory floor, for the 0.8B and 4B model shapes at T tokens.

    source .device/setup.sh && python benchmarks/kernels_norms.py [--tokens 8192] [--json PATH]

Inputs as the runtime passes them (bf16): hidden states [T, D] (the residual add reads x and the
residual and writes y and the sum), the attention q-norm on q sliced out of [T, Hq, 2 * 256], the
attention q/k norm + RoPE (R = 64; q sliced out of q_proj's output, k compact; its reference is
the runtime's former norm then RoPE in torch ops), the GDN output norm on z sliced out of the input
projection, SiLU-mul on the halves of a fused [T, 2I] projection, the attention output gate on SDPA's output (the runtime's prefill call, in the layout SDPA
returns) and the gate columns of q_proj ([T, H, 2 * 256], per head [query | gate]); its reference is the
torch expression x * torch.sigmoid(gate) on the same views (two passes; the runtime's former form also
flattened both to [T, H * 256] first, a copy of the gate and of a head-major x). The floor is the bytes read and written once at COPY_BYTES. Times are medians of
triton's do_bench over input sets rotated so that repeated calls do not hit a warm L2: device time
from GRAPH_CALLS calls replayed in one CUDA graph, and eager (which adds our launcher's host time).

"ldgstg" times our kernels compiled with TileLang's LDG/STG lowering on top of the portable pass
configs: nvcc splits the plain kernels' 16-byte stores of a bf16 row into four 4-byte stores (the
loads stay 16-byte), and the lowering emits st.global.v4 instead; this column says whether
build.PORTABLE_PASS_CONFIGS should turn it on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    COPY_BYTES, ROTATE_BYTES, eager_us, graph_us, log_row, write_rows_and_print,
)

EPS = 1e-6
# Key/value heads of the attention layers whose output sigmoid_gate_mul gates (0.8B: 8 query heads, 2 kv heads).
KV_HEADS = 2
# Rotated dims of each attention head (0.8B / 4B: 64 of 256).
ROTARY_DIM = 64


@dataclass(frozen=True, slots=True)
class NormShape:
    """One call: `op` on `tokens` rows of `heads` x `dim` (row_width: the projection a slice comes from)."""

    op: str  # "rms_norm" | "add_rms_norm" | "q_norm" | "rms_norm_rope" | "gated_rms_norm" | "silu_mul" | ...
    tokens: int
    dim: int
    heads: int = 1
    row_width: int = 0

    @property
    def name(self) -> str:
        heads = f" H={self.heads}" if self.heads > 1 else ""
        return f"{self.op} T={self.tokens}{heads} D={self.dim}"

    @property
    def moved_bytes(self) -> int:
        """bf16 bytes read and written once: inputs + outputs (see the module docstring)."""
        tensors = {
            "rms_norm": 2, "add_rms_norm": 4, "q_norm": 2, "rms_norm_rope": 2, "gated_rms_norm": 3, "silu_mul": 3,
            "sigmoid_gate_mul": 3,
        }[self.op]
        return 2 * tensors * self.tokens * self.heads * self.dim


def norm_shapes(tokens: int) -> list[NormShape]:
    """The row ops of one prefill of the 0.8B (hidden 1024) and 4B (hidden 2560) models."""
    return [
        *(NormShape("rms_norm", tokens, d) for d in (1024, 2560)),
        *(NormShape("add_rms_norm", tokens, d) for d in (1024, 2560, 4096, 8192)),
        NormShape("q_norm", tokens, 256, heads=8),
        NormShape("q_norm", tokens, 256, heads=16),
        NormShape("rms_norm_rope", tokens, 256, heads=8, row_width=2 * 256),
        NormShape("rms_norm_rope", tokens, 256, heads=KV_HEADS),
        NormShape("gated_rms_norm", tokens, 128, heads=16, row_width=8224),
        NormShape("gated_rms_norm", tokens, 128, heads=32, row_width=12352),
        *(NormShape("silu_mul", tokens, d) for d in (3584, 9216)),
        NormShape("sigmoid_gate_mul", tokens, 256, heads=8, row_width=8 * 2 * 256),
    ]


def _attention_output(tokens: int, heads: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """[tokens, heads, dim] bf16 as the runtime's prefill attention returns it (causal, KV_HEADS kv heads,
    q passed as q.transpose(0, 1)[None]): a view of SDPA's output in whatever layout SDPA chose."""
    q = torch.randn(tokens, heads, dim, generator=gen, device="cuda").bfloat16()
    keys, values = torch.randn(2, 1, KV_HEADS, tokens, dim, generator=gen, device="cuda").bfloat16()
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys, values, is_causal=True, scale=dim**-0.5, enable_gqa=True
    )
    return out[0].transpose(0, 1)


def _input_set(shape: NormShape, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One set of the call's bf16 inputs on the GPU, laid out as the runtime passes them."""
    t, h, d = shape.tokens, shape.heads, shape.dim

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device="cuda").bfloat16()

    if shape.op in ("rms_norm", "add_rms_norm"):
        return {"x": randn(t, d), "residual": randn(t, d), "weight": randn(d) / 8}
    if shape.op == "q_norm":
        return {"x": randn(t, h, 2 * d)[..., :d], "weight": randn(d) / 8}
    if shape.op == "rms_norm_rope":
        x = randn(t, h, shape.row_width)[..., :d] if shape.row_width else randn(t, h, d)
        return {"x": x, "weight": randn(d) / 8, "cos": randn(t, 1, ROTARY_DIM), "sin": randn(t, 1, ROTARY_DIM)}
    if shape.op == "gated_rms_norm":
        z = randn(t, shape.row_width)[:, -(h * d + 2 * h) : -2 * h].view(t, h, d)
        return {"x": randn(t, h, d), "z": z, "weight": 1 + randn(d) / 8}
    if shape.op == "sigmoid_gate_mul":
        return {"x": _attention_output(t, h, d, gen), "gate": randn(t, shape.row_width).view(t, h, 2 * d)[..., d:]}
    gate_up = randn(t, 2 * d)
    return {"gate": gate_up[:, :d], "up": gate_up[:, d:]}


def _call(module, shape: NormShape, x: dict[str, torch.Tensor]) -> object:
    """The op of `shape` from `module` (our TileLang launchers or reference_norms) on inputs x."""
    if shape.op == "add_rms_norm":
        return module.add_rms_norm(x["x"], x["residual"], x["weight"], eps=EPS)
    if shape.op in ("rms_norm", "q_norm"):
        return module.rms_norm(x["x"], x["weight"], eps=EPS)
    if shape.op == "rms_norm_rope":
        return module.rms_norm_rope(x["x"], x["weight"], x["cos"], x["sin"], eps=EPS)
    if shape.op == "gated_rms_norm":
        return module.gated_rms_norm(x["x"], x["z"], x["weight"], eps=EPS)
    if shape.op == "sigmoid_gate_mul":
        return module.sigmoid_gate_mul(x["x"], x["gate"])
    return module.silu_mul(x["gate"], x["up"])


def _ldgstg_compiled(program, config, arch: str):
    """build.compiled with TileLang's LDG/STG lowering added to the portable pass configs."""
    import tilelang

    from qla_agent.kernels.tilelang import build

    key = (program, config, arch)
    if key not in _LDGSTG_KERNELS:
        pass_configs = {**build.PORTABLE_PASS_CONFIGS, tilelang.PassConfigKey.TL_ENABLE_LOWER_LDGSTG: True}
        target = {"kind": "cuda", "arch": arch}
        _LDGSTG_KERNELS[key] = tilelang.compile(program(config), target=target, pass_configs=pass_configs)
    return _LDGSTG_KERNELS[key]


_LDGSTG_KERNELS: dict = {}


def _with_ldgstg(fn: Callable[[int], object]) -> Callable[[int], object]:
    """fn with our launchers compiling through `_ldgstg_compiled`."""
    from qla_agent.kernels.tilelang import build

    def call(i: int) -> object:
        plain, build.compiled = build.compiled, _ldgstg_compiled
        try:
            return fn(i)
        finally:
            build.compiled = plain

    return call


def norm_runners(shape: NormShape) -> dict[str, Callable[[int], object]]:
    """name -> fn(i) for ours, ours with LDG/STG lowering and the reference, rotating over input sets
    that together exceed the L2."""
    from qla_agent.kernels import reference_norms
    from qla_agent.kernels.tilelang import row_launch

    gen = torch.Generator(device="cuda").manual_seed(0)
    count = max(2, -(-ROTATE_BYTES // shape.moved_bytes))
    sets = [_input_set(shape, gen) for _ in range(count)]

    def ours(i: int) -> object:
        return _call(row_launch, shape, sets[i % count])

    return {
        "ours": ours,
        "ldgstg": _with_ldgstg(ours),
        "reference": lambda i: _call(reference_norms, shape, sets[i % count]),
    }


def time_norm(shape: NormShape) -> dict:
    """One row: graph (device) microseconds for every runner, eager microseconds for ours, the floor."""
    row: dict = {"shape": shape.name, "floor_us": 1e6 * shape.moved_bytes / COPY_BYTES}
    for name, fn in norm_runners(shape).items():
        row[f"{name}_graph_us"] = graph_us(fn)
        if name == "ours":
            row["ours_eager_us"] = eager_us(fn)
    return row


def format_norm_table(rows: list[dict], card: str) -> str:
    """Markdown table: device microseconds per call, the reference's slowdown, our share of the floor."""
    lines = [
        f"card: {card} (row kernels, bf16, microseconds per call in a CUDA graph; ours eager in brackets)",
        "| shape | ours | ldgstg | reference | ref/ours | floor | ours % floor | ldgstg % floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mine, ldgstg, ref = (r[f"{name}_graph_us"] for name in ("ours", "ldgstg", "reference"))
        floor = r["floor_us"]
        lines.append(
            f"| {r['shape']} | {mine:.1f} ({r['ours_eager_us']:.1f}) | {ldgstg:.1f} | {ref:.1f} | {ref / mine:.1f} | "
            f"{floor:.1f} | {100 * floor / mine:.0f}% | {100 * floor / ldgstg:.0f}% |"
        )
    return "\n".join(lines)


def precompile_configs() -> list:
    """(program, config) pairs for the GPU tests (tests/kernels/test_tilelang_norms.py), this benchmark
    and the runtime's 0.8B / 4B shapes, for benchmarks/precompile_tilelang.py."""
    from qla_agent.kernels.tilelang import norms

    bf16, f32 = torch.bfloat16, torch.float32
    pairs = []
    for dtype in (bf16, torch.float16):
        for dim in (256, 1024, 2560, 4096, 8192):
            for residual in (None, dtype, f32) if dim > 256 else (None,):
                config = norms.rms_norm_config(dim, 1, dtype, dtype, residual, zero_centered=True)
                pairs.append((norms.rms_norm_program, config))
        for heads in (1, 16, 32):
            for weight in (dtype, f32):
                config = norms.gated_rms_norm_config(128, heads, dtype, dtype, weight)
                pairs.append((norms.gated_rms_norm_program, config))
        for dim in (1024, 3584, 9216):
            pairs.append((norms.silu_mul_program, norms.silu_mul_config(dim, dtype)))
        # Attention gates: rows one stride apart (heads 1) or read per head (a head-major SDPA output).
        for dim in (128, 256):
            for heads in (1, 8):
                pairs.append((norms.sigmoid_gate_mul_program, norms.sigmoid_gate_mul_config(dim, heads, dtype)))
        # Attention q/k norm + RoPE: 0.8B (8 q / 2 kv heads) and 4B (16 / 4), weights in the dtype or fp32.
        for heads in (2, 4, 8, 16):
            for weight in (dtype, f32):
                config = norms.rms_norm_rope_config(256, ROTARY_DIM, heads, dtype, weight)
                pairs.append((norms.rms_norm_rope_program, config))
    pairs.append((norms.rms_norm_rope_program, norms.rms_norm_rope_config(128, 128, 1, f32, f32)))
    for weight in (bf16, f32):
        pairs.append((norms.rms_norm_program, norms.rms_norm_config(2048, 1, bf16, weight, None, zero_centered=False)))
    return list(dict.fromkeys(pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192])
    parser.add_argument("--json", help="write the rows here as well")
    args = parser.parse_args()
    rows = []
    for tokens in args.tokens:
        for shape in norm_shapes(tokens):
            rows.append(time_norm(shape))
            log_row(rows[-1])
    write_rows_and_print(rows, args.json, format_norm_table(rows, torch.cuda.get_device_name()))


if __name__ == "__main__":
    main()
