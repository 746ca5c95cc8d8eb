"""Time chunk_prep's designs side by side (one GPU, one process) and check they agree.

    source .device/setup.sh && python benchmarks/prep_variants.py [--designs grouped,per_head]
        [--layouts layer,compact] [--shapes 1x8192 ...]

Model-like inputs: bf16 q/k, raw bf16 gates with fp32 A_log / dt_bias, q/k L2 norm in the kernel; "layer"
reads q, k and the gates as the runtime passes them (column slices, strided rows), "compact" contiguous. Each
time is the median of triton's do_bench on the compiled kernel alone (no launcher work); every shape
here reads more than the 50 MB L2 holds. The agreement column is max |tmat - tmat_first| / max |tmat_first|
against the first design and layout listed (bf16 outputs: ~1e-2 is rounding; layouts agree exactly).
"""

import argparse

import torch

SHAPES = {"1x8192 16/16": (8192, 16, 16), "1x16384 16/32": (16384, 16, 32), "1x32768 16/64": (32768, 16, 64)}


def inputs(ntok: int, hk: int, hv: int, device: torch.device, layout: str) -> tuple:
    """chunk_prep's arguments: q, k [ntok, hk, 128] bf16, raw gates [ntok, hv] bf16, fp32 A_log / dt_bias,
    outputs, scalars. layout "layer": q, k column slices of a conv output [ntok, (2 hk + hv) 128] and
    the gates halves of a [ntok, 2 hv] projection (the runtime's call); "compact": contiguous tensors."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device)

    u, ba = randn(ntok, (2 * hk + hv) * 128).bfloat16(), randn(ntok, 2 * hv).bfloat16()
    q, k = (u[:, i * hk * 128 : (i + 1) * hk * 128].unflatten(-1, (hk, 128)) for i in range(2))
    beta, g = ba.chunk(2, dim=-1)
    if layout == "compact":
        q, k, g, beta = (x.contiguous() for x in (q, k, g, beta))
    a_log, dt_bias = randn(hv) - 3, randn(hv)
    cu = torch.zeros(2, dtype=torch.int32, device=device)
    chunks = -(-ntok // 64)
    tmat = torch.empty(chunks, hv, 64, 64, dtype=torch.bfloat16, device=device)
    vecs = torch.empty(chunks, hv, 4, 64, dtype=torch.float32, device=device)
    strides = (q.stride(0) // 8, k.stride(0) // 8, g.stride(0), beta.stride(0))
    return q, k, g, beta, a_log, dt_bias, cu, tmat, torch.empty_like(tmat), vecs, ntok, *strides


def main() -> None:
    import triton.testing

    from qla_agent.kernels.tilelang import build, chunk_prep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", default=",".join(chunk_prep.DESIGNS))
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--layouts", default="layer,compact")
    args = parser.parse_args()
    device = torch.device("cuda")
    arch = build.device_arch(device)
    print(f"{torch.cuda.get_device_name(device)}; chunk_prep, us per call (median)")
    for name in args.shapes:
        ntok, hk, hv = SHAPES[name]
        first = None
        for layout in args.layouts.split(","):
            x = inputs(ntok, hk, hv, device, layout)
            for design in args.designs.split(","):
                cfg = chunk_prep.PrepConfig(
                    key_heads=hk, value_heads=hv, dtype="bfloat16", gate_dtype="bfloat16", param_dtype="float32",
                    raw_gates=True, l2norm=True, varlen=False, scale=128**-0.5, design=design,
                )
                kernel = build.compiled(chunk_prep.program, cfg, arch)
                ms = triton.testing.do_bench(lambda: kernel(*x), warmup=25, rep=200)
                tmat = x[7].float()
                first = tmat.clone() if first is None else first
                agree = float((tmat - first).abs().max() / first.abs().max())
                print(f"{name:>14}  {layout:>7}  {design:>9}  {ms * 1e3:8.1f} us  tmat vs first {agree:.1e}")

if __name__ == "__main__":
    main()
