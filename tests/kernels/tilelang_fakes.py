"""Stand-ins for compiled TileLang kernels, so launchers can be tested without a GPU.

`SignatureCheck` replaces a compiled kernel: it checks each call against the real prim_func
(parameter order, ranks, dtypes, constant dims, one consistent value per symbolic dim) and records
it. The `fake_kernels` fixture (conftest.py) installs it for every program, keyed by module name.
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
        params = list(self.prim_func.params)
        assert len(args) == len(params), f"{len(args)} arguments for {len(params)} parameters"
        bound: dict[str, int] = {}
        for param, arg in zip(params, args):
            buffer = self.prim_func.buffer_map.get(param)
            if buffer is None:
                assert isinstance(arg, int), f"scalar {param.name} got {type(arg).__name__}"
                continue
            assert isinstance(arg, torch.Tensor) and arg.is_contiguous(), f"{buffer.name} must be a contiguous tensor"
            assert TL_DTYPE[arg.dtype] == str(buffer.dtype), f"{buffer.name}: {arg.dtype} vs {buffer.dtype}"
            assert arg.dim() == len(buffer.shape), f"{buffer.name}: rank {arg.dim()} vs {len(buffer.shape)}"
            for dim, size in zip(buffer.shape, arg.shape):
                if hasattr(dim, "value"):
                    assert int(dim.value) == size, f"{buffer.name}: dim {dim} vs {size}"
                else:
                    assert bound.setdefault(str(dim), size) == size, f"{buffer.name}: {dim}={size} vs {bound[str(dim)]}"
        names = [self.prim_func.buffer_map[p].name if p in self.prim_func.buffer_map else p.name for p in params]
        self.calls.append(dict(zip(names, args)))
