"""CPU check of the TileLang prefill launcher: every tensor it passes matches the kernel's signature.

The kernels cannot run without a GPU, so each compiled kernel is replaced by a stand-in that checks
the call against the real prim_func (parameter order, ranks, dtypes, constant dims, one consistent
value per symbolic dim, and strides: q, k, v, g and beta are strided buffers whose token strides
come in as scalar arguments) and records it. Kernel numerics are tested on the GPU. Also here: the
runtime's layout (column slices of the conv output and of the gate projection) reaches the kernels
without copies, layouts the kernels cannot read are copied, one launch plan per call signature, and
the FFI entry the launcher calls instead of TileLang's Python wrapper.
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
    o, ht = gdn_prefill(**x, use_qk_l2norm=True)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    num_seqs = len(lens) if lens else batch
    chunks_needed = sum(-(-n // 64) for n in lens) if lens else batch * -(-seqlen // 64)
    for name in ("tmat", "pmat", "vecs"):
        assert prep[name].shape[0] >= chunks_needed and prep[name].data_ptr() == scan[name].data_ptr()
    assert scan["n_seqs"] == num_seqs and scan["o"].data_ptr() == o.data_ptr()
    assert o.shape == x["v"].shape and ht.shape == x["initial_state"].shape
    assert scan["ht"].data_ptr() == ht.data_ptr()


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
    x = _layer_views(seqlen=70, hk=hk, hv=hv)
    if varlen:
        x["cu_seqlens"] = torch.tensor([0, 5, 70], dtype=torch.int32)
        x["initial_state"] = torch.randn(2, hv, 128, 128)
    gdn_prefill(**x, use_qk_l2norm=True)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    read = (("q", prep), ("k", prep), ("g", prep), ("beta", prep), ("q", scan), ("k", scan), ("v", scan))
    for name, call in read:
        assert call[name].data_ptr() == x[name].data_ptr(), f"{name} was copied"
    conv_dim = (2 * hk + hv) * 128
    assert prep["q_stride8"] == prep["k_stride8"] == scan["v_stride8"] == conv_dim // 8
    assert prep["g_stride"] == prep["beta_stride"] == 2 * hv


def _padded_rows(seqlen: int) -> torch.Tensor:
    """q-like [1, T, 2, 128] whose token stride (2 x 128 + 4) is not a multiple of 8."""
    return torch.randn(seqlen, 2 * 128 + 4).bfloat16()[:, 4:].unflatten(-1, (2, 128))[None]


IN_PLACE = [
    pytest.param(lambda: _layer_views(9, 2, 4)["k"], 8 * 128, id="conv_output_slice"),
    pytest.param(lambda: torch.randn(2, 9, 2, 128).bfloat16(), 2 * 128, id="contiguous_B2"),
    pytest.param(lambda: _layer_views(9, 2, 4, batch=3)["v"], 8 * 128, id="conv_output_slice_B3"),
    pytest.param(lambda: torch.randn(1, 2 * 128 + 4).bfloat16()[:, :256].view(1, 1, 2, 128), None, id="one_token"),
    pytest.param(lambda: torch.randn(3, 8, 2, 128).bfloat16()[:, 3:4], 8 * 2 * 128, id="T1_B3"),
]
COPIED = [
    pytest.param(lambda: _padded_rows(9), id="token_stride_not_multiple_of_8"),
    pytest.param(lambda: torch.randn(9, 3 * 128 + 8).bfloat16()[:, 4:260].unflatten(-1, (2, 128))[None],
                 id="start_not_16_byte_aligned"),
    pytest.param(lambda: torch.randn(1, 9, 2, 256).bfloat16()[..., :128], id="head_stride_256"),
    pytest.param(lambda: torch.randn(2, 12, 2, 128).bfloat16()[:, :9], id="batch_and_tokens_do_not_collapse"),
    pytest.param(lambda: torch.randn(1, 9, 128, 2).bfloat16().transpose(2, 3), id="columns_strided"),
]


@pytest.mark.parametrize("make,stride", IN_PLACE)
def test_token_rows_views_readable_layouts(make, stride: int | None) -> None:
    from qla_agent.kernels.tilelang.prefill import token_rows

    x = make()
    rows, stride8 = token_rows(x)
    assert rows.data_ptr() == x.data_ptr() and rows.shape == (x.shape[0] * x.shape[1], *x.shape[2:])
    assert torch.equal(rows.unflatten(0, x.shape[:2]), x)
    if stride is not None:
        assert stride8 * 8 == rows.stride(0) == stride


@pytest.mark.parametrize("make", COPIED)
def test_token_rows_copies_other_layouts(make) -> None:
    from qla_agent.kernels.tilelang.prefill import token_rows

    x = make()
    rows, stride8 = token_rows(x)
    assert rows.data_ptr() != x.data_ptr() and rows.is_contiguous() and stride8 * 8 == rows.stride(0)
    assert torch.equal(rows.view(x.shape), x)


def test_gate_rows_views_column_slices_and_copies_the_rest() -> None:
    from qla_agent.kernels.tilelang.prefill import gate_rows

    ba = torch.randn(2, 7, 8)
    for gates, stride in ((ba[..., 4:], 8), (ba[:1, :, :4], 8), (ba[:, :1, 4:], 7 * 8), (ba[..., 3:4], 8)):
        rows, token = gate_rows(gates)
        assert rows.data_ptr() == gates.data_ptr() and token == rows.stride(0) == stride
        assert torch.equal(rows.unflatten(0, gates.shape[:2]), gates)
    for gates in (ba.transpose(1, 2)[:, :4], ba[:, :5, :4]):
        rows, token = gate_rows(gates)
        assert rows.data_ptr() != gates.data_ptr() and rows.is_contiguous() and token == rows.stride(0)
        assert torch.equal(rows.view(gates.shape), gates)


def _runtime_call_with(name: str, make) -> dict:
    """The runtime layout of T = 9 with one input replaced by make(that input)."""
    x = _layer_views(9, 2, 4)
    return {**x, name: make(x[name])}


ROW_CASES = [
    pytest.param(lambda: _layer_views(9, 2, 4), True, id="runtime_layout"),
    pytest.param(lambda: {n: t.contiguous() for n, t in _layer_views(70, 2, 4).items()}, True, id="contiguous"),
    pytest.param(lambda: _runtime_call_with("q", lambda q: _padded_rows(9)), False, id="q_copied"),
    pytest.param(lambda: _runtime_call_with("v", lambda v: torch.randn(1, 9, 4, 256).bfloat16()[..., 128:]), False,
                 id="v_head_stride_256"),
    pytest.param(lambda: _runtime_call_with("g", lambda g: g.transpose(1, 2).contiguous().transpose(1, 2)), False,
                 id="g_column_major"),
    pytest.param(lambda: _layer_views(1, 2, 4), False, id="one_token"),
    pytest.param(lambda: _layer_views(9, 2, 4, batch=3), False, id="B3"),
]


@pytest.mark.parametrize("make,one_pass", ROW_CASES)
def test_input_rows_are_token_rows_and_gate_rows(make, one_pass: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass for the runtime's call (B = 1, all readable in place), else tensor by tensor: the same rows
    (values, strides, in place or copied) and token strides either way."""
    from qla_agent.kernels.tilelang import prefill

    x = make()
    expected = [prefill.token_rows(x[n]) for n in ("q", "k", "v")] + [prefill.gate_rows(x[n]) for n in ("g", "beta")]
    if one_pass:
        monkeypatch.setattr(prefill, "token_rows", None)
        monkeypatch.setattr(prefill, "gate_rows", None)
    rows, strides = prefill.input_rows(x["q"], x["k"], x["v"], x["g"], x["beta"])
    for name, row, stride, (want, want_stride) in zip(("q", "k", "v", "g", "beta"), rows, strides, expected):
        assert stride == want_stride and row.shape == want.shape and row.stride() == want.stride(), name
        assert (row.data_ptr() == x[name].data_ptr()) == (want.data_ptr() == x[name].data_ptr()), name
        assert torch.equal(row, want), name


def test_launcher_copies_what_the_kernels_cannot_read(fake_kernels) -> None:
    """A layout outside the kernels' reach reaches them as a compact copy with the same values."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _layer_views(seqlen=70, hk=2, hv=4)
    x["q"], x["g"] = _padded_rows(70), x["g"].transpose(1, 2).contiguous().transpose(1, 2)
    gdn_prefill(**x, use_qk_l2norm=True)
    prep = fake_kernels["chunk_prep"].calls[-1]
    assert prep["q"].data_ptr() != x["q"].data_ptr() and torch.equal(prep["q"], x["q"][0])
    assert prep["g"].data_ptr() != x["g"].data_ptr() and torch.equal(prep["g"], x["g"][0])
    assert prep["k"].data_ptr() == x["k"].data_ptr() and prep["q_stride8"] == 2 * 128 // 8
    compact = {n: t.contiguous() for n, t in x.items()}
    gdn_prefill(**compact, use_qk_l2norm=True)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    assert prep["q"].data_ptr() == compact["q"].data_ptr() and scan["v"].data_ptr() == compact["v"].data_ptr()
    assert scan["h0"].data_ptr() == compact["initial_state"].data_ptr()


def test_launch_plan_is_shared_by_one_signature(fake_kernels) -> None:
    """Kernels are looked up once per call signature: new lengths reuse them, new head counts do not;
    every call still gets its own outputs."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    o1, ht1 = gdn_prefill(**_layer_views(seqlen=16, hk=2, hv=4), use_qk_l2norm=True)
    first = fake_kernels["chunk_scan"]
    o2, ht2 = gdn_prefill(**_layer_views(seqlen=200, hk=2, hv=4), use_qk_l2norm=True)
    assert fake_kernels["chunk_scan"] is first and len(first.calls) == 2
    assert first.calls[1]["seq_len"] == 200 and first.calls[1]["tmat"].shape[0] == 4
    assert o1.data_ptr() != o2.data_ptr() and ht1.data_ptr() != ht2.data_ptr()
    gdn_prefill(**_layer_views(seqlen=16, hk=2, hv=2), use_qk_l2norm=True)
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
