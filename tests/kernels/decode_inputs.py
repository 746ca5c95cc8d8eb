"""Random inputs for GDN decode tests: rows sliced out of fused projections, as the runtime passes them."""

from dataclasses import dataclass

import torch

D = 128


@dataclass(frozen=True, slots=True)
class DecodeCase:
    """One decode test case: N tokens on a pool of S rows; `fused` slices q/k/v and the gates out of
    wider rows (strided views, as the model's projections give them)."""

    N: int
    S: int
    Hk: int
    Hv: int
    raw_gates: bool = False
    l2norm: bool = False
    slot_dtype: torch.dtype = torch.int64
    block_v: int | None = None
    fused: bool = True
    dtype: torch.dtype = torch.float32

    @property
    def id(self) -> str:
        parts = [f"N{self.N}-S{self.S}-Hk{self.Hk}-Hv{self.Hv}"]
        parts += [name for name, on in (("raw", self.raw_gates), ("l2", self.l2norm), ("fused", self.fused)) if on]
        parts += [str(self.slot_dtype).removeprefix("torch."), str(self.dtype).removeprefix("torch.")]
        return "-".join(parts + ([f"bv{self.block_v}"] if self.block_v else []))


def decode_inputs(case: DecodeCase, *, seed: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """q, k [N,Hk,D]; v [N,Hv,D] in case.dtype; g, beta [N,Hv] fp32 (raw a, b with A_log, dt_bias [Hv]
    when raw_gates); state [S,Hv,D,D] fp32; slots [N] distinct random rows. All on `device`."""
    gen = torch.Generator().manual_seed(seed)
    n, hk, hv = case.N, case.Hk, case.Hv
    pad = 3 if case.fused else 0
    width = hk * D + hv * D
    # q and v share rows (as in the model's conv output); k and beta get rows of other widths, so
    # a kernel that mixes up the row strides fails.
    qv = torch.randn(n, width + pad, generator=gen)
    # Without the in-kernel L2 norm, keys of norm ~1 keep the state bounded (beta |k|^2 <= ~1).
    keys = torch.randn(n, hk * D + 2 * pad, generator=gen) * (3.0 if case.l2norm else D**-0.5)
    if case.raw_gates:
        g, beta = torch.randn(n, hv + pad, generator=gen), torch.randn(n, hv + 2 * pad, generator=gen)
    else:
        g = -torch.rand(n, hv + pad, generator=gen) * torch.logspace(-2, -0.5, hv + pad)
        beta = torch.rand(n, hv + 2 * pad, generator=gen)
    qv, keys = qv.to(device, case.dtype), keys.to(device, case.dtype)
    g, beta = g.to(device), beta.to(device)
    x = {
        "q": qv[:, : hk * D].unflatten(1, (hk, D)),
        "k": keys[:, : hk * D].unflatten(1, (hk, D)),
        "v": qv[:, hk * D : width].unflatten(1, (hv, D)),
        "g": g[:, :hv],
        "beta": beta[:, pad : pad + hv],
    }
    if not case.fused:
        x = {name: t.contiguous() for name, t in x.items()}
    if case.raw_gates:
        x["A_log"] = torch.randn(hv, generator=gen).to(device)
        x["dt_bias"] = torch.randn(hv, generator=gen).to(device)
    x["state"] = (torch.randn(case.S, hv, D, D, generator=gen) / D**0.5).to(device)
    x["slots"] = torch.randperm(case.S, generator=gen)[:n].to(device, case.slot_dtype)
    return x


def as_fp64(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in fp64 (a copy), others as they are: the reference's inputs."""
    return {name: t.double() if t.is_floating_point() else t for name, t in x.items()}
