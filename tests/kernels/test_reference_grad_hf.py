"""Autograd through the chunked form vs the recurrence, and parity with transformers' Qwen3.5 GDN functions."""

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

from qla_agent.kernels import gdn_prefill
from qla_agent.kernels.reference import gdn_chunked, gdn_recurrent
from tests.kernels.gdn_inputs import GdnShape, gdn_inputs, rel_err


def _grads(fn, inputs: dict[str, torch.Tensor], seed: int, **options) -> dict[str, torch.Tensor]:
    """Gradients of a random linear function of (o, final_state) w.r.t. every input."""
    leaves = {name: x.clone().requires_grad_(True) for name, x in inputs.items()}
    o, s = fn(**leaves, **options)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
    loss.backward()
    return {name: x.grad for name, x in leaves.items()}


@pytest.mark.parametrize("shape", [GdnShape(1, 70, 1, 2, 8, 8), GdnShape(2, 33, 2, 4, 8, 16)], ids=lambda s: s.id)
@pytest.mark.parametrize("raw_gates", [False, True], ids=["gates", "raw_gates_l2norm"])
def test_chunked_gradients_match_recurrence(shape: GdnShape, raw_gates: bool) -> None:
    inputs = gdn_inputs(shape)
    options = {}
    if raw_gates:
        gen = torch.Generator().manual_seed(3)
        inputs["A_log"] = torch.randn(shape.Hv, generator=gen, dtype=torch.float64)
        inputs["dt_bias"] = torch.randn(shape.Hv, generator=gen, dtype=torch.float64)
        inputs["g"] = torch.randn(inputs["g"].shape, generator=gen, dtype=torch.float64)
        options["use_qk_l2norm"] = True
    ref = _grads(gdn_recurrent, inputs, seed=7, **options)
    out = _grads(gdn_chunked, inputs, seed=7, **options)
    assert ref.keys() == out.keys()
    for name in ref:
        assert rel_err(ref[name], out[name]) <= 1e-10, name


HF_SHAPES = [GdnShape(2, 63, 2, 4, 32, 16), GdnShape(1, 130, 1, 1, 16, 32), GdnShape(1, 1, 2, 2, 16, 16)]


@pytest.mark.parametrize("shape", HF_SHAPES, ids=lambda s: s.id)
@pytest.mark.parametrize("use_qk_l2norm", [False, True], ids=["no_l2norm", "l2norm"])
def test_matches_transformers_qwen3_5(shape: GdnShape, use_qk_l2norm: bool) -> None:
    inputs = gdn_inputs(shape, dtype=torch.float32, seed=5)
    state = inputs.pop("initial_state")
    q, k, v, g, beta = (inputs[n] for n in ("q", "k", "v", "g", "beta"))
    if use_qk_l2norm:
        # Un-normalised keys, so the l2norm inside both implementations matters.
        k = k * 2.5
    hf = dict(initial_state=state, output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm)
    ref_chunk_o, ref_chunk_s = torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, **hf)
    ref_rec_o, ref_rec_s = torch_recurrent_gated_delta_rule(q, k, v, g, beta, **hf)
    ours = dict(initial_state=state, use_qk_l2norm=use_qk_l2norm)
    out_prefill_o, out_prefill_s = gdn_prefill(q, k, v, g, beta, **ours)
    out_rec_o, out_rec_s = gdn_recurrent(q, k, v, g, beta, **ours)
    for ref_o, ref_s in ((ref_chunk_o, ref_chunk_s), (ref_rec_o, ref_rec_s)):
        for out_o, out_s in ((out_prefill_o, out_prefill_s), (out_rec_o, out_rec_s)):
            assert out_o.dtype == ref_o.dtype and out_s.shape == ref_s.shape
            assert rel_err(ref_o, out_o) <= 2e-5
            assert rel_err(ref_s, out_s) <= 2e-5
