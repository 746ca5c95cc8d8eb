"""GPU: the public entry points on the TileLang path capture in a CUDA graph and replay on new inputs.

Capture fails on any host sync (a .tolist() or .item() of a device tensor is illegal while the stream
captures), and replaying with new values in the same buffers -- new sequence lengths, new slots --
must give the reference's results, so nothing was baked in at capture time.
"""

from collections.abc import Callable

import pytest
import torch

from qla_agent import kernels
from qla_agent.kernels import reference
from tests.kernels.decode_inputs import DecodeCase, as_fp64, decode_inputs
from tests.kernels.gdn_inputs import GdnShape, gdn_inputs, rel_err

pytestmark = pytest.mark.gpu


def _capture(fn: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Warm fn up on a side stream (compiles, caches placeholders), then capture one call."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


def _replay_on(graph: torch.cuda.CUDAGraph, static: dict, fresh: dict, *outputs: torch.Tensor) -> None:
    """Copy fresh values into the captured buffers, NaN the outputs (unwritten elements fail), replay."""
    for name, tensor in static.items():
        tensor.copy_(fresh[name])
    for out in outputs:
        out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()


def _prefill_inputs(lens: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    shape = GdnShape(B=1, T=sum(lens), Hk=2, Hv=4, K=128, V=128)
    x = gdn_inputs(shape, seed=seed, num_states=len(lens))
    out = {n: t.to("cuda", torch.bfloat16 if n in ("q", "k", "v") else torch.float32) for n, t in x.items()}
    out["cu_seqlens"] = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return out


def test_varlen_prefill_replays_in_cuda_graph() -> None:
    static = _prefill_inputs((1, 63, 64, 65, 300), seed=1)
    names = ("q", "k", "v", "g", "beta")

    def call() -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.gdn_prefill(
            *(static[n] for n in names), initial_state=static["initial_state"], cu_seqlens=static["cu_seqlens"],
            use_qk_l2norm=True, impl="tilelang",
        )

    graph, (o, ht) = _capture(call)
    # Same total and count, other lengths: the kernels must read the new offsets on the device.
    fresh = _prefill_inputs((200, 5, 129, 1, 158), seed=2)
    _replay_on(graph, static, fresh, o, ht)
    ref = {n: t.double() if t.is_floating_point() else t for n, t in fresh.items()}
    ref_o, ref_ht = reference.gdn_prefill(
        *(ref[n] for n in names), initial_state=ref["initial_state"], cu_seqlens=fresh["cu_seqlens"],
        use_qk_l2norm=True,
    )
    assert rel_err(ref_o, o) < 1e-2
    assert rel_err(ref_ht, ht) < 1e-2


def _layer_buffers(tokens: int, hk: int, hv: int, seed: int) -> dict[str, torch.Tensor]:
    """The GDN layer's prefill buffers: conv output u [T, (2Hk+Hv)*128], gate projection ba [T, 2Hv]
    (b then a), state."""
    gen = torch.Generator().manual_seed(seed)
    conv_dim = (2 * hk + hv) * 128
    return {
        "u": torch.randn(tokens, conv_dim, generator=gen).to("cuda", torch.bfloat16),
        "ba": torch.randn(tokens, 2 * hv, generator=gen).to("cuda", torch.bfloat16),
        "state": (torch.randn(hv, 128, 128, generator=gen) / 12).to("cuda"),
        "A_log": torch.rand(hv, generator=gen).to("cuda"),
        "dt_bias": torch.randn(hv, generator=gen).to("cuda"),
    }


def _layer_append(x: dict[str, torch.Tensor], hk: int, hv: int, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefill call of qla_agent/runtime/layers/gdn.py: q/k/v and raw gates a/b are column slices
    (read in place by the TileLang kernels), state in and out."""
    q, k, v = x["u"].split([hk * 128, hk * 128, hv * 128], dim=-1)
    b, a = x["ba"].chunk(2, dim=-1)
    return kernels.gdn_prefill(
        q.unflatten(-1, (hk, 128))[None], k.unflatten(-1, (hk, 128))[None], v.unflatten(-1, (hv, 128))[None],
        a[None], b[None], scale=128**-0.5, initial_state=x["state"][None], output_final_state=True,
        use_qk_l2norm=True, A_log=x["A_log"], dt_bias=x["dt_bias"], impl=impl,
    )


@pytest.mark.parametrize("tokens", [16, 100, 256])
def test_layer_append_replays_in_cuda_graph(tokens: int) -> None:
    """The runtime layer's append (issue 7's call) captures; a replay reads the buffers' new values."""
    hk = hv = 16
    static = _layer_buffers(tokens, hk, hv, seed=7)
    graph, (o, ht) = _capture(lambda: _layer_append(static, hk, hv, "tilelang"))
    fresh = _layer_buffers(tokens, hk, hv, seed=8)
    _replay_on(graph, static, fresh, o, ht)
    ref_o, ref_ht = _layer_append({n: t.double() for n, t in fresh.items()}, hk, hv, "reference")
    assert rel_err(ref_o, o) < 1e-2
    assert rel_err(ref_ht, ht) < 1e-2


def test_varlen_conv_replays_in_cuda_graph() -> None:
    from qla_agent.kernels import reference_conv

    gen = torch.Generator().manual_seed(6)

    def inputs(lens: tuple[int, ...]) -> dict[str, torch.Tensor]:
        return {
            "x": torch.randn(1, sum(lens), 1024, generator=gen).to("cuda", torch.bfloat16),
            "conv_state": torch.randn(len(lens), 1024, 3, generator=gen).to("cuda", torch.bfloat16),
            "cu_seqlens": torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda"),
        }

    weight = torch.randn(1024, 4, generator=gen).to("cuda", torch.bfloat16)
    static = inputs((1, 70, 2, 100))
    graph, (y, final) = _capture(lambda: kernels.causal_conv1d(
        static["x"], weight, conv_state=static["conv_state"], cu_seqlens=static["cu_seqlens"], impl="tilelang"
    ))
    fresh = inputs((90, 1, 3, 79))
    for name, tensor in static.items():
        tensor.copy_(fresh[name])
    y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref_y, ref_final = reference_conv.causal_conv1d(
        fresh["x"].double(), weight.double(), conv_state=fresh["conv_state"].double(), cu_seqlens=fresh["cu_seqlens"]
    )
    assert rel_err(ref_y, y) < 8e-3
    assert torch.equal(ref_final.to(final.dtype), final)


def test_decode_replays_in_cuda_graph() -> None:
    case = DecodeCase(N=6, S=10, Hk=2, Hv=4, raw_gates=True, l2norm=True, dtype=torch.bfloat16)
    static = decode_inputs(case, seed=3, device="cuda")
    names = ("q", "k", "v", "g", "beta", "state", "slots")

    def call() -> torch.Tensor:
        return kernels.gdn_decode(
            *(static[n] for n in names), use_qk_l2norm=True, A_log=static["A_log"], dt_bias=static["dt_bias"],
            impl="tilelang",
        )

    graph, o = _capture(call)
    fresh = decode_inputs(case, seed=4, device="cuda")
    for name, tensor in static.items():
        tensor.copy_(fresh[name])
    ref = as_fp64(fresh)
    ref_o = reference.gdn_decode(
        *(ref[n] for n in names), use_qk_l2norm=True, A_log=ref["A_log"], dt_bias=ref["dt_bias"]
    )
    o.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(ref_o, o) < 8e-3
    assert rel_err(ref["state"], static["state"]) < 1e-5


def test_gdn_layer_decode_step_replays_in_cuda_graph() -> None:
    """Conv update on a fused projection, then decode on slices of its output: the layer's decode step."""
    hk, hv, n, pool_rows = 2, 4, 3, 7
    channels = (2 * hk + hv) * 128
    gen = torch.Generator().manual_seed(5)

    def fresh() -> dict[str, torch.Tensor]:
        return {
            "proj": torch.randn(n, channels + 2 * hv, generator=gen).to("cuda", torch.bfloat16),
            "conv_pool": torch.randn(pool_rows, channels, 3, generator=gen).to("cuda", torch.bfloat16),
            "state_pool": (torch.randn(pool_rows, hv, 128, 128, generator=gen) / 12).to("cuda"),
            "slots": torch.randperm(pool_rows, generator=gen)[:n].to("cuda"),
        }

    weight = (torch.randn(channels, 4, generator=gen) / 2).to("cuda", torch.bfloat16)
    A_log, dt_bias = torch.randn(hv, generator=gen).to("cuda"), torch.randn(hv, generator=gen).to("cuda")

    def step(x: dict[str, torch.Tensor], impl: str) -> torch.Tensor:
        u = kernels.causal_conv1d_update(x["proj"][:, :channels], weight, x["conv_pool"], x["slots"], impl=impl)
        q, k = u[:, : hk * 128].unflatten(1, (hk, 128)), u[:, hk * 128 : 2 * hk * 128].unflatten(1, (hk, 128))
        v = u[:, 2 * hk * 128 :].unflatten(1, (hv, 128))
        a, b = x["proj"][:, channels : channels + hv], x["proj"][:, channels + hv :]
        return kernels.gdn_decode(
            q, k, v, a, b, x["state_pool"], x["slots"], use_qk_l2norm=True, A_log=A_log, dt_bias=dt_bias, impl=impl
        )

    static = fresh()
    graph, o = _capture(lambda: step(static, "tilelang"))
    new = fresh()
    ref_inputs = {name: t.clone() for name, t in new.items()}
    for name, tensor in static.items():
        tensor.copy_(new[name])
    ref_o = step(ref_inputs, "reference")
    o.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(ref_o, o) < 2e-2
    assert torch.equal(ref_inputs["conv_pool"], static["conv_pool"])
    # Both paths round the conv output to bf16; a value on a rounding boundary may differ by one ulp.
    assert rel_err(ref_inputs["state_pool"], static["state_pool"]) < 1e-2
