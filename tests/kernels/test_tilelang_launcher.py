"""CPU check of the TileLang prefill launcher: every tensor it passes matches the kernel's signature.

The kernels cannot run without a GPU, so each compiled kernel is replaced by a stand-in that checks
the call against the real prim_func (parameter order, ranks, dtypes, constant dims, and one
consistent value per symbolic dim) and records it. Kernel numerics are tested on the GPU. Also here:
strided inputs are copied and compact ones viewed, one launch plan per call signature, and the FFI
entry the launcher calls instead of TileLang's Python wrapper.
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
    assert prep["tmat"].shape[0] >= chunks_needed and prep["tmat"].data_ptr() == scan["tmat"].data_ptr()
    assert scan["n_seqs"] == num_seqs and scan["o"].data_ptr() == o.data_ptr()
    assert o.shape == x["v"].shape and ht.shape == x["initial_state"].shape
    assert scan["ht"].data_ptr() == ht.data_ptr()


def _layer_views(seqlen: int, hk: int, hv: int) -> dict:
    """Inputs as the runtime's GDN layer passes them: q/k/v and the raw gates are strided column slices."""
    u = torch.randn(1, seqlen, (2 * hk + hv) * 128).bfloat16()
    proj = torch.randn(1, seqlen, 2 * hv + 8).bfloat16()
    q, k, v = u.split([hk * 128, hk * 128, hv * 128], dim=-1)
    return dict(
        q=q.unflatten(-1, (hk, 128)), k=k.unflatten(-1, (hk, 128)), v=v.unflatten(-1, (hv, 128)),
        g=proj[..., :hv], beta=proj[..., hv : 2 * hv], initial_state=torch.randn(1, hv, 128, 128),
        A_log=torch.randn(hv), dt_bias=torch.randn(hv),
    )


def test_launcher_copies_only_strided_inputs(fake_kernels) -> None:
    """Strided views reach the kernels as compact copies with the same values; compact inputs as views."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill

    x = _layer_views(seqlen=70, hk=2, hv=4)
    gdn_prefill(**x, use_qk_l2norm=True)
    prep, scan = fake_kernels["chunk_prep"].calls[-1], fake_kernels["chunk_scan"].calls[-1]
    assert torch.equal(prep["q"], x["q"][0]) and torch.equal(scan["v"], x["v"][0])
    assert torch.equal(prep["g"], x["g"][0]) and torch.equal(prep["beta"], x["beta"][0])
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
