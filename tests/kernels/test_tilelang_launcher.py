"""CPU check of the TileLang prefill launcher: every tensor it passes matches the kernel's signature.

The kernels cannot run without a GPU, so each compiled kernel is replaced by a stand-in that checks
the call against the real prim_func (parameter order, ranks, dtypes, constant dims, and one
consistent value per symbolic dim) and records it. Kernel numerics are tested on the GPU.
"""

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
