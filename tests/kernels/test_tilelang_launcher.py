"""CPU check of the TileLang prefill launcher: every tensor it passes matches the kernel's signature.

The kernels cannot run without a GPU, so each compiled kernel is replaced by a stand-in that checks
the call against the real prim_func (parameter order, ranks, dtypes, constant dims, one consistent
value per symbolic dim, and strides: q, k, v, g and beta are strided [B, T, H(, 128)] buffers whose
batch and token strides come in as scalar arguments) and records it. Kernel numerics are tested on the
GPU. Also here: the runtime's layout (column slices of the conv output and of the gate projection) and
dense batches whose rows do not collapse reach the kernels without copies or views, layouts the kernels
cannot read are copied, one launch plan per call signature, and the FFI entry the launcher calls
instead of TileLang's Python wrapper.
"""

import shutil

import pytest
import torch

pytest.importorskip("tilelang")


def _inputs(lens: tuple[int, ...] | None, batch: int, seqlen: int, hk: int, hv: int, raw: bool) -> dict:
    total = sum(lens) if lens else seqlen
    rows = 1 if lens else batch
    x = dict(
        q=torch.randn(rows, total, hk, 128).bfloat16(), k=torch.randn(rows, total, hk, 128).bfloat16(),
        v=torch.randn(rows, total, hv, 128).bfloat16(),
        g=torch.randn(rows, total, hv), beta=torch.rand(rows, total, hv),
        initial_state=torch.randn(len(lens) if lens else batch, hv, 128, 128),
    )
    if lens:
        x["cu_seqlens"] = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    if raw:
        x["A_log"], x["dt_bias"] = torch.randn(hv), torch.randn(hv)
    return x


@pytest.mark.parametrize(
    "lens,batch,seqlen,hk,hv,raw",
    [(None, 2, 100, 2, 4, False), ((1, 64, 65, 300), 1, 0, 4, 4, True), (None, 1, 1, 1, 2, True)],
    ids=["dense-B2-T100-Hk2-Hv4", "varlen-1_64_65_300-Hk4-Hv4-raw", "dense-B1-T1-Hk1-Hv2-raw"],
)
def test_launcher_matches_kernel_signatures(fake_kernels, lens, batch, seqlen, hk, hv, raw) -> None:
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _inputs(lens, batch, seqlen, hk, hv, raw)
    o, ht = gdn_prefill(**x, use_qk_l2norm=True, prepped=False, fused=False)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    num_seqs = len(lens) if lens else batch
    chunks_needed = sum(-(-n // 64) for n in lens) if lens else batch * -(-seqlen // 64)
    for name in ("tpmat", "vecs"):
        assert prep[name].shape[0] >= chunks_needed and prep[name].data_ptr() == scan[name].data_ptr()
    assert scan["n_seqs"] == num_seqs and scan["o"].data_ptr() == o.data_ptr()
    assert o.shape == x["v"].shape and ht.shape == x["initial_state"].shape
    assert scan["ht"].data_ptr() == ht.data_ptr()


@pytest.mark.parametrize(
    "lens,batch,seqlen,hk,hv,raw",
    [(None, 2, 50, 2, 4, False), ((1, 63, 64), 1, 0, 4, 4, True), (None, 1, 1, 1, 2, True)],
    ids=["dense-B2-T50-Hk2-Hv4", "varlen-1_63_64-Hk4-Hv4-raw", "dense-B1-T1-Hk1-Hv2-raw"],
)
def test_short_calls_run_the_self_prepping_scan_alone(fake_kernels, lens, batch, seqlen, hk, hv, raw) -> None:
    """At most PREPPED_MAX_TOKENS tokens: one launch of the self-prepping scan, which gets the inputs and
    gate parameters as given and writes the call's outputs; no T / P / vector buffers."""
    from qla_agent.kernels.tilelang.prefill import PREPPED_MAX_TOKENS, gdn_prefill

    x = _inputs(lens, batch, seqlen, hk, hv, raw)
    assert x["q"].shape[0] * x["q"].shape[1] <= PREPPED_MAX_TOKENS
    o, ht = gdn_prefill(**x, use_qk_l2norm=True)
    assert "chunk_prep" not in fake_kernels
    (scan,) = fake_kernels["chunk_scan_prepped"].calls
    for name in ("q", "k", "v", "g", "beta", "A_log", "dt_bias") if raw else ("q", "k", "v", "g", "beta"):
        kernel_name = {"A_log": "a_log"}.get(name, name)
        assert scan[kernel_name].data_ptr() == x[name].data_ptr(), f"{name} was copied"
    assert scan["n_seqs"] == (len(lens) if lens else batch) and scan["seq_len"] == x["q"].shape[1]
    assert scan["h0"].data_ptr() == x["initial_state"].data_ptr()
    assert scan["o"].data_ptr() == o.data_ptr() and scan["ht"].data_ptr() == ht.data_ptr()
    assert o.shape == x["v"].shape and ht.shape == x["initial_state"].shape


@pytest.mark.parametrize(
    "lens,batch,seqlen,hk,hv,raw",
    [(None, 2, 100, 2, 4, False), ((1, 64, 65, 250), 1, 0, 4, 4, True), (None, 1, 384, 16, 32, True)],
    ids=["dense-B2-T100-Hk2-Hv4", "varlen-1_64_65_250-Hk4-Hv4-raw", "dense-B1-T384-Hk16-Hv32-raw"],
)
def test_longer_appends_run_the_fused_kernel_alone(fake_kernels, lens, batch, seqlen, hk, hv, raw) -> None:
    """Between PREPPED_MAX_TOKENS and FUSED_MAX_TOKENS tokens: one launch of the fused kernel, which gets the
    inputs as given, the T / P and vector buffers (enough chunks) and a grid of at least its scan CTAs
    (2 x Hv x N) and at most one CTA per SM unless those need more."""
    from qla_agent.kernels.tilelang.prefill import FUSED_MAX_TOKENS, PREPPED_MAX_TOKENS, gdn_prefill

    x = _inputs(lens, batch, seqlen, hk, hv, raw)
    assert PREPPED_MAX_TOKENS < x["q"].shape[0] * x["q"].shape[1] <= FUSED_MAX_TOKENS
    o, ht = gdn_prefill(**x, use_qk_l2norm=True)
    assert "chunk_prep" not in fake_kernels and "chunk_scan_prepped" not in fake_kernels
    (fused,) = fake_kernels["chunk_fused"].calls
    num_seqs = len(lens) if lens else batch
    chunks_needed = sum(-(-n // 64) for n in lens) if lens else batch * -(-seqlen // 64)
    assert fused["tpmat"].shape[0] >= chunks_needed and fused["vecs"].shape[0] == fused["tpmat"].shape[0]
    scan_ctas = 2 * hv * num_seqs
    assert fused["grid"] == max(scan_ctas, min(fused["tpmat"].shape[0] * hk, 132))
    for name in ("q", "k", "v", "g", "beta"):
        assert fused[name].data_ptr() == x[name].data_ptr(), f"{name} was copied"
    assert fused["n_seqs"] == num_seqs and fused["h0"].data_ptr() == x["initial_state"].data_ptr()
    assert fused["o"].data_ptr() == o.data_ptr() and fused["ht"].data_ptr() == ht.data_ptr()


def test_fused_kernel_only_where_its_grid_is_resident(fake_kernels) -> None:
    """The fused kernel's grid barrier needs its scan CTAs resident at once (one per SM, 132 on the
    pretend H100): a call with more takes the two kernels by default, and asking for it fails."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _inputs(None, 3, 100, 16, 32, True)  # 300 tokens, 2 x 32 x 3 = 192 scan CTAs
    gdn_prefill(**x, use_qk_l2norm=True)
    assert "chunk_fused" not in fake_kernels and len(fake_kernels["chunk_prep"].calls) == 1
    with pytest.raises(ValueError, match="resident at once"):
        gdn_prefill(**x, use_qk_l2norm=True, fused=True)
    with pytest.raises(ValueError, match="ask for one"):
        gdn_prefill(**x, use_qk_l2norm=True, fused=True, prepped=True)


def test_prepped_scan_takes_whole_sequences_and_has_no_prep_only(fake_kernels) -> None:
    """Asked for on a call context parallelism would split, the self-prepping scan runs each sequence whole
    (one CTA row per sequence, no warm-up); it has no first launch for prep_only to stop after."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _inputs(None, 2, 4100, 2, 4, raw=False)
    gdn_prefill(**x, use_qk_l2norm=True, prepped=True)
    assert "chunk_warmup" not in fake_kernels and "chunk_prep" not in fake_kernels
    assert fake_kernels["chunk_scan_prepped"].calls[-1]["n_seqs"] == 2
    with pytest.raises(ValueError, match="prep_only"):
        gdn_prefill(**x, use_qk_l2norm=True, prepped=True, prep_only=True)


def test_context_parallel_warms_up_then_scans_partitions(fake_kernels) -> None:
    """A long dense call with few heads: the warm-up writes one starting state per partition, the scan reads
    them as its initial states, runs B x parts CTAs per head slice and stores the B final states."""
    from qla_agent.kernels.tilelang.prefill import context_parts, gdn_prefill

    batch, seqlen, hv = 2, 4100, 4
    parts, part_chunks = context_parts(batch, seqlen, hv, sm_count=132)
    assert parts > 1 and (parts - 1) * part_chunks < -(-seqlen // 64) <= parts * part_chunks
    x = _inputs(None, batch, seqlen, 2, hv, raw=False)
    o, ht = gdn_prefill(**x, use_qk_l2norm=True)
    warm, scan = fake_kernels["chunk_warmup"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    assert warm["starts"].shape[0] == batch * parts and warm["starts"].data_ptr() == scan["h0"].data_ptr()
    assert warm["h0"].data_ptr() == x["initial_state"].data_ptr()
    assert warm["n_parts"] == scan["n_seqs"] == batch * parts
    assert warm["parts"] == scan["parts"] == parts and warm["part_chunks"] == scan["part_chunks"] == part_chunks
    assert scan["ht"].data_ptr() == ht.data_ptr() and ht.shape == x["initial_state"].shape
    assert scan["o"].data_ptr() == o.data_ptr()


@pytest.mark.parametrize("why", ["disabled", "no-l2norm", "varlen"])
def test_whole_sequences_without_context_parallelism(fake_kernels, why: str) -> None:
    """Switched off, without unit-norm keys (the warm-up's error bound needs them) or for varlen input,
    each sequence is one scan unit and no warm-up runs."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    lens = (2000, 2100) if why == "varlen" else None
    x = _inputs(lens, 2, 4100, 2, 4, raw=False)
    gdn_prefill(**x, use_qk_l2norm=why != "no-l2norm", context_parallel=why != "disabled")
    scan = fake_kernels["chunk_scan"].calls[-1]
    assert "chunk_warmup" not in fake_kernels
    assert scan["n_seqs"] == 2 and scan["parts"] == 1
    assert scan["h0"].data_ptr() == x["initial_state"].data_ptr()


def test_context_parts_fill_the_gpu_with_long_partitions() -> None:
    """Partitions double while the scan units stay within one per SM and each keeps MIN_PART_CHUNKS chunks."""
    from qla_agent.kernels.tilelang.prefill import MIN_PART_CHUNKS, context_parts

    assert context_parts(1, 8192, 16, 132) == (8, 16)
    assert context_parts(1, 16384, 32, 132) == (4, 64)
    assert context_parts(1, 32768, 64, 132) == (2, 256)
    assert context_parts(1, 32768, 8, 132) == (16, 32)
    assert context_parts(1, 65536, 64, 132) == (2, 512)
    assert context_parts(8, 2048, 16, 132) == (1, 32)
    assert context_parts(1, (2 * MIN_PART_CHUNKS - 1) * 64, 1, 132) == (1, 2 * MIN_PART_CHUNKS - 1)
    assert context_parts(1, 2 * MIN_PART_CHUNKS * 64, 1, 132) == (2, MIN_PART_CHUNKS)
    # A ragged tail never leaves an empty last partition.
    parts, part_chunks = context_parts(1, 65 * 64, 4, 132)
    assert (parts, part_chunks) == (4, 17) and 3 * part_chunks < 65


def _layer_views(seqlen: int, hk: int, hv: int, batch: int = 1) -> dict:
    """Inputs as the runtime's GDN prefill passes them (qla_agent/runtime/layers/gdn.py): q, k, v column
    slices of the conv output u [T, (2 Hk + Hv) 128], raw gates a, b the halves of the [T, 2 Hv] projection."""
    u = torch.randn(batch, seqlen, (2 * hk + hv) * 128).bfloat16()
    ba = torch.randn(batch, seqlen, 2 * hv).bfloat16()
    q, k, v = u.split([hk * 128, hk * 128, hv * 128], dim=-1)
    b, a = ba.chunk(2, dim=-1)
    return dict(
        q=q.unflatten(-1, (hk, 128)), k=k.unflatten(-1, (hk, 128)), v=v.unflatten(-1, (hv, 128)),
        g=a, beta=b, initial_state=torch.randn(batch, hv, 128, 128), A_log=torch.randn(hv), dt_bias=torch.randn(hv),
    )


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_runtime_layout_reaches_the_kernels_without_copies(fake_kernels, varlen: bool) -> None:
    """q, k, v and the raw gates go in as the caller's memory, with their token strides as arguments."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    hk, hv = 2, 4
    x = _layer_views(seqlen=600, hk=hk, hv=hv)  # past FUSED_MAX_TOKENS: the two kernels
    if varlen:
        x["cu_seqlens"] = torch.tensor([0, 5, 600], dtype=torch.int32)
        x["initial_state"] = torch.randn(2, hv, 128, 128)
    gdn_prefill(**x, use_qk_l2norm=True)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    read = (("q", prep), ("k", prep), ("g", prep), ("beta", prep), ("q", scan), ("k", scan), ("v", scan))
    for name, call in read:
        assert call[name].data_ptr() == x[name].data_ptr(), f"{name} was copied"
    conv_dim = (2 * hk + hv) * 128
    assert prep["q_token8"] == prep["k_token8"] == scan["v_token8"] == conv_dim // 8
    assert prep["g_token"] == prep["beta_token"] == 2 * hv
    # One batch row: its stride is never used, and passed as 0.
    assert prep["q_batch8"] == scan["v_batch8"] == prep["g_batch"] == 0


def _token_slice(x: dict, start: int, stop: int) -> dict:
    """x with q, k, v, g and beta cut to tokens start:stop of every batch row (rows that no longer collapse
    into one token stride)."""
    return {**x, **{n: x[n][:, start:stop] for n in ("q", "k", "v", "g", "beta")}}


def _padded_rows(seqlen: int) -> torch.Tensor:
    """q-like [1, T, 2, 128] whose token stride (2 x 128 + 4) is not a multiple of 8."""
    return torch.randn(seqlen, 2 * 128 + 4).bfloat16()[:, 4:].unflatten(-1, (2, 128))[None]


IN_PLACE = [
    pytest.param(lambda: _layer_views(9, 2, 4)["k"], id="conv_output_slice"),
    pytest.param(lambda: torch.randn(2, 9, 2, 128).bfloat16(), id="contiguous_B2"),
    pytest.param(lambda: _layer_views(9, 2, 4, batch=3)["v"], id="conv_output_slice_B3"),
    pytest.param(lambda: torch.randn(2, 12, 2, 128).bfloat16()[:, :9], id="batch_rows_do_not_collapse"),
    pytest.param(lambda: torch.randn(1, 2 * 128 + 4).bfloat16()[:, :256].view(1, 1, 2, 128), id="one_token"),
    pytest.param(lambda: torch.randn(3, 8, 2, 128).bfloat16()[:, 3:4], id="T1_B3"),
    pytest.param(lambda: torch.randn(9, 2 * 128 + 4).bfloat16()[None, :, :256].unflatten(-1, (2, 128))[:, :1],
                 id="T1_token_stride_not_multiple_of_8"),
    pytest.param(lambda: torch.randn(9, 264).bfloat16().as_strided((1, 9, 1, 128), (5, 264, 3, 1)),
                 id="B1_one_head_any_head_stride"),
]
COPIED = [
    pytest.param(lambda: _padded_rows(9), id="token_stride_not_multiple_of_8"),
    pytest.param(lambda: torch.randn(9, 3 * 128 + 8).bfloat16()[:, 4:260].unflatten(-1, (2, 128))[None],
                 id="start_not_16_byte_aligned"),
    pytest.param(lambda: torch.randn(1, 9, 2, 256).bfloat16()[..., :128], id="head_stride_256"),
    pytest.param(lambda: torch.randn(2, 9 * 260).bfloat16()[:, 4:9 * 256 + 4].view(2, 9, 2, 128),
                 id="batch_stride_not_multiple_of_8"),
    pytest.param(lambda: torch.randn(1, 9, 128, 2).bfloat16().transpose(2, 3), id="columns_strided"),
]


@pytest.mark.parametrize("make", IN_PLACE)
def test_readable_heads_are_read_in_place(make) -> None:
    from qla_agent.kernels.tilelang.prefill import _readable_heads

    x = make()
    assert _readable_heads(x) is x


@pytest.mark.parametrize("make", COPIED)
def test_other_head_layouts_are_copied(make) -> None:
    from qla_agent.kernels.tilelang.prefill import _readable_heads

    x = make()
    rows = _readable_heads(x)
    assert rows.data_ptr() != x.data_ptr() and rows.is_contiguous() and torch.equal(rows, x)


def test_gates_with_adjacent_heads_are_read_in_place_and_others_copied() -> None:
    from qla_agent.kernels.tilelang.prefill import _readable_gates

    ba = torch.randn(2, 7, 8)
    for gates in (ba[..., 4:], ba[:1, :, :4], ba[:, :1, 4:], ba[..., 3:4], ba[:, :5, :4], ba.transpose(1, 2)[..., :1]):
        assert _readable_gates(gates) is gates
    gates = ba.transpose(1, 2)[:, :4]
    copy = _readable_gates(gates)
    assert copy.data_ptr() != gates.data_ptr() and copy.is_contiguous() and torch.equal(copy, gates)


def _runtime_call_with(name: str, make) -> dict:
    """The runtime layout of T = 9 with one input replaced by make(that input)."""
    x = _layer_views(9, 2, 4)
    return {**x, name: make(x[name])}


STRIDE_CASES = [
    pytest.param(lambda: _layer_views(9, 2, 4), id="runtime_layout"),
    pytest.param(lambda: {n: t.contiguous() for n, t in _layer_views(70, 2, 4).items()}, id="contiguous"),
    pytest.param(lambda: _runtime_call_with("q", lambda q: _padded_rows(9)), id="q_copied"),
    pytest.param(lambda: _runtime_call_with("v", lambda v: torch.randn(1, 9, 4, 256).bfloat16()[..., 128:]),
                 id="v_head_stride_256"),
    pytest.param(lambda: _runtime_call_with("g", lambda g: g.transpose(1, 2).contiguous().transpose(1, 2)),
                 id="g_column_major"),
    pytest.param(lambda: _layer_views(1, 2, 4), id="one_token"),
    pytest.param(lambda: _layer_views(9, 2, 4, batch=3), id="B3"),
    pytest.param(lambda: _token_slice(_layer_views(9, 2, 4, batch=3), 2, 7), id="B3_rows_do_not_collapse"),
]


def _kernel_stride(x: torch.Tensor, dim: int, unit: int) -> int:
    """The stride argument the kernels get for x's dim: stride // unit, 0 for a dim of size 1."""
    return 0 if x.shape[dim] == 1 else x.stride(dim) // unit


@pytest.mark.parametrize("make", STRIDE_CASES)
def test_input_strides_are_the_tensors_strides_once_each_is_readable(make) -> None:
    """One pass over the five inputs reads them in place exactly when each one is readable, and then passes
    each one's batch and token strides (// 8 for q, k, v); otherwise the copies are readable in place."""
    from qla_agent.kernels.tilelang import prefill

    x = make()
    names = ("q", "k", "v", "g", "beta")
    inputs = [x[n] for n in names]
    readable = prefill.readable_inputs(*inputs)
    in_place = all(r is t for r, t in zip(readable, inputs))
    assert (prefill.input_strides(*inputs) is not None) == in_place
    prep, scan = prefill.input_strides(*readable)
    q, k, v, g, beta = readable
    heads = [_kernel_stride(t, dim, 8) for t in (q, k) for dim in (0, 1)]
    gates = [_kernel_stride(t, dim, 1) for t in (g, beta) for dim in (0, 1)]
    assert prep == (*heads, *gates)
    assert scan == (*heads, _kernel_stride(v, 0, 8), _kernel_stride(v, 1, 8))


def test_launcher_copies_what_the_kernels_cannot_read(fake_kernels) -> None:
    """A layout outside the kernels' reach reaches them as a compact copy with the same values."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _layer_views(seqlen=600, hk=2, hv=4)
    x["q"], x["g"] = _padded_rows(600), x["g"].transpose(1, 2).contiguous().transpose(1, 2)
    gdn_prefill(**x, use_qk_l2norm=True)
    prep = fake_kernels["chunk_prep"].calls[-1]
    assert prep["q"].data_ptr() != x["q"].data_ptr() and torch.equal(prep["q"], x["q"])
    assert prep["g"].data_ptr() != x["g"].data_ptr() and torch.equal(prep["g"], x["g"])
    assert prep["k"].data_ptr() == x["k"].data_ptr() and prep["q_token8"] == 2 * 128 // 8
    compact = {n: t.contiguous() for n, t in x.items()}
    gdn_prefill(**compact, use_qk_l2norm=True)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    assert prep["q"].data_ptr() == compact["q"].data_ptr() and scan["v"].data_ptr() == compact["v"].data_ptr()
    assert scan["h0"].data_ptr() == compact["initial_state"].data_ptr()


def test_dense_batch_rows_are_read_in_place(fake_kernels) -> None:
    """B > 1 with rows that do not collapse into one token stride (each batch row a slice of a longer
    one): every input goes in as the caller's memory with its own batch and token strides."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _token_slice(_layer_views(seqlen=300, hk=2, hv=4, batch=3), 10, 280)  # 810 tokens: two kernels
    o, _ = gdn_prefill(**x, use_qk_l2norm=True)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    for name, call in (("q", prep), ("k", prep), ("g", prep), ("beta", prep), ("v", scan)):
        assert call[name].data_ptr() == x[name].data_ptr(), f"{name} was copied"
    conv_dim = (2 * 2 + 4) * 128
    assert (scan["q_batch8"], scan["q_token8"]) == (300 * conv_dim // 8, conv_dim // 8)
    assert (prep["beta_batch"], prep["beta_token"]) == (300 * 2 * 4, 2 * 4)
    assert o.shape == (3, 270, 4, 128) and o.is_contiguous() and scan["o"].data_ptr() == o.data_ptr()


@pytest.mark.parametrize("seqlen", [600, 200, 70], ids=["two_kernels", "fused", "prepped"])
def test_runtime_call_makes_only_its_allocations_and_no_views(fake_kernels, seqlen: int) -> None:
    """The runtime layer's call (views read in place, state in and out): the launcher's only tensor
    operations are its allocations: T and P, the vectors, o and the final state (two kernels or the fused
    one), or o and the final state alone when the scan preps its own chunks (T <= PREPPED_MAX_TOKENS)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from qla_agent.kernels.tilelang.prefill import PREPPED_MAX_TOKENS, gdn_prefill

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    x = _layer_views(seqlen=seqlen, hk=2, hv=4)
    gdn_prefill(**x, use_qk_l2norm=True)
    with Ops() as ops:
        gdn_prefill(**x, use_qk_l2norm=True)
    buffers = 2 if seqlen > PREPPED_MAX_TOKENS else 0
    assert sorted(ops.names) == sorted(["new_empty.default"] * (1 + buffers) + ["empty_like.default"]), ops.names


def test_launch_plan_is_shared_by_one_signature(fake_kernels) -> None:
    """Kernels are looked up once per call signature: new lengths reuse them, new head counts do not;
    every call still gets its own outputs."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    o1, ht1 = gdn_prefill(**_layer_views(seqlen=200, hk=2, hv=4), use_qk_l2norm=True)
    first = fake_kernels["chunk_scan"]
    o2, ht2 = gdn_prefill(**_layer_views(seqlen=300, hk=2, hv=4), use_qk_l2norm=True)
    assert fake_kernels["chunk_scan"] is first and len(first.calls) == 2
    assert first.calls[1]["seq_len"] == 300 and first.calls[1]["tpmat"].shape[0] == 5
    assert o1.data_ptr() != o2.data_ptr() and ht1.data_ptr() != ht2.data_ptr()
    gdn_prefill(**_layer_views(seqlen=16, hk=2, hv=4), use_qk_l2norm=True)
    prepped = fake_kernels["chunk_scan"]
    gdn_prefill(**_layer_views(seqlen=100, hk=2, hv=4), use_qk_l2norm=True)
    assert fake_kernels["chunk_scan"] is prepped is not first and len(prepped.calls) == 2
    gdn_prefill(**_layer_views(seqlen=200, hk=2, hv=2), use_qk_l2norm=True)
    assert fake_kernels["chunk_scan"] is not first


def _first_element(heads: int):
    """A stand-in kernel for build.entry: copies one element, takes a tensor per kind and a scalar."""
    import tilelang.language as T

    n = T.dynamic("n")

    @T.prim_func
    def main(x: T.Tensor((n, heads), "float32"), y: T.Tensor((n, heads), "float32"), count: T.int32):
        with T.Kernel(1, threads=32):
            y[0, 0] = x[0, 0]

    return main


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_entry_is_the_compiled_kernels_checked_entry() -> None:
    """build.entry unwraps a tvm_ffi kernel to its FFI entry, which still checks every argument."""
    import tvm_ffi

    from qla_agent.kernels.tilelang import build

    kernel = build.compile_program(_first_element, 4, "sm_90a")
    entry = build.entry(kernel)
    assert isinstance(entry, tvm_ffi.Function)
    cpu = (torch.zeros(3, 4), torch.zeros(3, 4), 3)
    with pytest.raises(RuntimeError, match="device_type mismatch, expected cuda"):
        entry(*cpu)
    with pytest.raises(RuntimeError, match="num_args"):
        entry(*cpu[:2])
    stand_in = object()
    assert build.entry(stand_in) is stand_in


def test_parts_override_must_be_positive(fake_kernels) -> None:
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    with pytest.raises(ValueError, match="positive partition count"):
        gdn_prefill(**_inputs(None, 1, 4100, 2, 4, raw=False), use_qk_l2norm=True, parts=0)
