"""Random inputs for GDN kernel tests, and the comparison every kernel test uses."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class GdnShape:
    """Sizes of a test case; `id` is the pytest id."""

    B: int
    T: int
    Hk: int
    Hv: int
    K: int
    V: int

    @property
    def id(self) -> str:
        return f"B{self.B}-T{self.T}-Hk{self.Hk}-Hv{self.Hv}-K{self.K}-V{self.V}"


def gdn_inputs(
    shape: GdnShape, *, dtype: torch.dtype = torch.float64, seed: int = 0, with_state: bool = True,
    num_states: int | None = None, strong_decay: bool = False,
) -> dict[str, torch.Tensor]:
    """q, k, v, g, beta (and initial_state [num_states or B, Hv, K, V]) with unit-norm keys and g < 0 (fp64 draws).

    Unit-norm k keeps beta * |k|^2 <= 1, so the recurrence stays bounded over long T. strong_decay draws
    g down to -30 so in-chunk cumulative gates underflow exp() (the kernels must not produce NaN).
    """
    gen = torch.Generator().manual_seed(seed)
    s = shape

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, dtype=torch.float64)

    k = randn(s.B, s.T, s.Hk, s.K)
    k = k / k.norm(dim=-1, keepdim=True)
    # Per-head decay rates from 0.01 to 0.3 per token: weak enough that state carried across chunk
    # boundaries and from initial_state visibly matters (a mistake there must fail the tests).
    rate = torch.logspace(-2, -0.5, s.Hv, dtype=torch.float64)
    if strong_decay:
        rate = torch.full((s.Hv,), 30.0, dtype=torch.float64)
    inputs = {
        "q": randn(s.B, s.T, s.Hk, s.K),
        "k": k,
        "v": randn(s.B, s.T, s.Hv, s.V),
        "g": -rate * torch.rand(s.B, s.T, s.Hv, generator=gen, dtype=torch.float64),
        "beta": torch.rand(s.B, s.T, s.Hv, generator=gen, dtype=torch.float64),
    }
    if with_state:
        inputs["initial_state"] = randn(num_states or s.B, s.Hv, s.K, s.V)
    return {name: x.to(dtype) for name, x in inputs.items()}


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    """max |ref - out| / max |ref| in fp64 (the metric every kernel test bounds)."""
    ref, out = ref.double(), out.double()
    assert ref.shape == out.shape, (ref.shape, out.shape)
    assert torch.isfinite(out).all(), "out has NaN/inf"
    return float((ref - out).abs().max() / ref.abs().max().clamp_min(1e-30))
