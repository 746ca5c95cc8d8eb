"""Stand-ins for compiled TileLang kernels, so launchers can be tested without a GPU.

`SignatureCheck` replaces a compiled kernel: it checks each call against the real prim_func
(parameter order, ranks, dtypes, constant dims, one consistent value per symbolic dim, and each
tensor's strides against the buffer's stride expressions with the call's scalars and dims
substituted, or contiguity for a compact buffer) and records it. The `fake_kernels` fixture
(conftest.py) installs it for every program, keyed by module name.
"""

import torch

TL_DTYPE = {
    torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32", torch.int32: "int32",
    torch.int64: "int64",
}


class SignatureCheck:
    """Stands in for a compiled kernel: validates each call against `prim_func` and records it."""

    def __init__(self, prim_func) -> None:
        self.prim_func = prim_func
        self.calls: list[dict] = []

    def __call__(self, *args: object) -> None:
        from tilelang import tvm

        params = list(self.prim_func.params)
        assert len(args) == len(params), f"{len(args)} arguments for {len(params)} parameters"
        values = {p: tvm.tirx.IntImm("int32", a) for p, a in zip(params, args) if isinstance(a, int)}
        for param, arg in zip(params, args):
            buffer = self.prim_func.buffer_map.get(param)
            if buffer is None:
                assert isinstance(arg, (int, float)), f"scalar {param.name} got {type(arg).__name__}"
                continue
            assert isinstance(arg, torch.Tensor), f"{buffer.name} got {type(arg).__name__}"
            assert TL_DTYPE[arg.dtype] == str(buffer.dtype), f"{buffer.name}: {arg.dtype} vs {buffer.dtype}"
            assert arg.dim() == len(buffer.shape), f"{buffer.name}: rank {arg.dim()} vs {len(buffer.shape)}"
            for dim, size in zip(buffer.shape, arg.shape):
                if isinstance(dim, tvm.tirx.IntImm):
                    assert int(dim) == size, f"{buffer.name}: dim {dim} vs {size}"
                else:
                    bound = int(values.setdefault(dim, tvm.tirx.IntImm("int32", size)))
                    assert bound == size, f"{buffer.name}: {dim}={size} vs {bound}"
        analyzer = tvm.arith.Analyzer()
        for param, arg in zip(params, args):
            buffer = self.prim_func.buffer_map.get(param)
            if buffer is None:
                continue
            if not buffer.strides:
                assert arg.is_contiguous(), f"{buffer.name} must be a contiguous tensor"
                continue
            for axis, (stride, size) in enumerate(zip(buffer.strides, arg.shape)):
                expected = int(analyzer.simplify(tvm.tirx.stmt_functor.substitute(stride, values)))
                # A dim of size 1 has no stride to agree on.
                assert size == 1 or arg.stride(axis) == expected, (
                    f"{buffer.name}: stride {axis} is {arg.stride(axis)}, the kernel reads {stride} = {expected}"
                )
        names = [self.prim_func.buffer_map[p].name if p in self.prim_func.buffer_map else p.name for p in params]
        self.calls.append(dict(zip(names, args)))
