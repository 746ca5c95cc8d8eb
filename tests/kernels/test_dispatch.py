"""Remembered dispatch: a gdn_prefill call whose signature was checked and resolved to the fast backend
skips the checks and `supports` when the signature repeats (a new T included); the impl argument,
QLA_KERNEL_IMPL and bad inputs are still honoured on every call.

Meta tensors stand in for CUDA ones: dispatch's fast device type is set to meta and the TileLang kernels
are the signature-checking stand-ins of conftest.py (`fake_kernels`).
"""

import pytest
import torch

from qla_agent import kernels
from qla_agent.kernels import checks, dispatch

pytest.importorskip("tilelang")

META = torch.device("meta")
HK, HV, D = 2, 4, 128


@pytest.fixture
def meta_is_fast(monkeypatch: pytest.MonkeyPatch, fake_kernels: dict) -> dict:
    """The TileLang backend takes meta tensors (as CUDA ones on an H100); no choice remembered yet."""
    from qla_agent.kernels import tilelang as backend

    monkeypatch.setattr(dispatch, "FAST_DEVICE_TYPE", "meta")
    monkeypatch.setattr(backend, "device_arch", lambda device: "sm_90a")
    monkeypatch.setattr(dispatch, "_routes", {})
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return fake_kernels


def _layer(seqlen: int, **changes: object) -> dict:
    """The runtime's layer call on meta tensors: q, k, v column slices of the conv output, raw gates a, b
    the halves of one projection, fp32 state and gate parameters."""
    u = torch.empty(1, seqlen, (2 * HK + HV) * D, device=META, dtype=torch.bfloat16)
    ba = torch.empty(1, seqlen, 2 * HV, device=META, dtype=torch.bfloat16)
    q, k, v = u.split([HK * D, HK * D, HV * D], dim=-1)
    x = dict(
        q=q.unflatten(-1, (HK, D)), k=k.unflatten(-1, (HK, D)), v=v.unflatten(-1, (HV, D)), g=ba[..., HV:],
        beta=ba[..., :HV], scale=D**-0.5, initial_state=torch.empty(1, HV, D, D, device=META),
        use_qk_l2norm=True, A_log=torch.empty(HV, device=META), dt_bias=torch.empty(HV, device=META),
    )
    x.update(changes)
    return x


def _signature(x: dict) -> tuple | None:
    return checks.prefill_signature(
        x["q"], x["k"], x["v"], x["g"], x["beta"], x.get("initial_state"), x.get("cu_seqlens"), x.get("A_log"),
        x.get("dt_bias"),
    )


def _refuse(name: str):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} ran for a remembered signature")

    return refuse


def test_a_new_length_reuses_the_checked_choice(meta_is_fast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from qla_agent.kernels import tilelang as backend

    o, ht = kernels.gdn_prefill(**_layer(70))
    assert o.shape == (1, 70, HV, D) and ht.shape == (1, HV, D, D)
    monkeypatch.setattr(checks, "check_gdn_prefill", _refuse("check_gdn_prefill"))
    monkeypatch.setattr(backend, "supports", _refuse("supports"))
    o, ht = kernels.gdn_prefill(**_layer(200))
    scan = meta_is_fast["chunk_scan"].calls[-1]
    assert o.shape == (1, 200, HV, D) and scan["seq_len"] == 200 and scan["o"].data_ptr() == o.data_ptr()


def _cpu_like(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape, dtype=x.dtype)


BAD = [
    pytest.param(lambda x: dict(k=_layer(71)["k"]), id="k_other_T"),
    pytest.param(lambda x: dict(v=_layer(71)["v"]), id="v_other_T"),
    pytest.param(lambda x: dict(g=x["g"][..., :2], beta=x["beta"][..., :2]), id="gates_Hk"),
    pytest.param(lambda x: dict(beta=x["beta"][..., :2]), id="beta_only"),
    pytest.param(lambda x: dict(q=x["q"][0], k=x["k"][0]), id="q_3d"),
    pytest.param(lambda x: {n: x[n][:, :0] for n in ("q", "k", "v", "g", "beta")}, id="T0"),
    pytest.param(lambda x: dict(initial_state=_cpu_like(x["initial_state"])), id="state_on_cpu"),
    pytest.param(lambda x: dict(initial_state=x["initial_state"][:, :2]), id="state_Hv"),
    pytest.param(lambda x: dict(A_log=torch.empty(HV, device=META, dtype=torch.int64)), id="int_A_log"),
    pytest.param(lambda x: dict(dt_bias=None), id="A_log_alone"),
    pytest.param(lambda x: dict(g="a"), id="g_not_a_tensor"),
    pytest.param(lambda x: dict(cu_seqlens=torch.tensor([0, 70])), id="cu_on_cpu"),
    pytest.param(lambda x: dict(cu_seqlens=torch.empty(3, device=META, dtype=torch.int32)), id="cu_two_seqs_one_state"),
]


@pytest.mark.parametrize("change", BAD)
def test_bad_inputs_fail_as_before_after_a_remembered_call(meta_is_fast: dict, change) -> None:
    """Every rejected call raises the checks' own ValueError, though a good call of its shape was remembered."""
    kernels.gdn_prefill(**_layer(70))
    x = _layer(70)
    x.update(change(x))
    with pytest.raises(ValueError) as direct:
        checks.check_gdn_prefill(
            x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["initial_state"],
            cu_seqlens=x.get("cu_seqlens"), A_log=x["A_log"], dt_bias=x["dt_bias"],
        )
    with pytest.raises(ValueError) as public:
        kernels.gdn_prefill(**x)
    assert str(public.value) == str(direct.value)


def test_impl_and_environment_are_read_on_every_call(meta_is_fast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = []
    monkeypatch.setitem(dispatch.REFERENCE_OPS, "gdn_prefill", lambda *a, **kw: ran.append("reference"))
    kernels.gdn_prefill(**_layer(70))
    scans = meta_is_fast["chunk_scan"].calls
    assert len(scans) == 1 and dispatch.remembered("gdn_prefill", "auto", _signature(_layer(9))) is not None
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    kernels.gdn_prefill(**_layer(70))
    assert ran == ["reference"] and len(scans) == 1
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"QLA_KERNEL_IMPL must be one of"):
        kernels.gdn_prefill(**_layer(70))
    monkeypatch.delenv(dispatch.ENV_VAR)
    with pytest.raises(ValueError, match=r"impl must be one of"):
        kernels.gdn_prefill(**_layer(70), impl="triton")
    kernels.gdn_prefill(**_layer(70), impl="reference")
    assert ran == ["reference"] * 2 and len(scans) == 1
    kernels.gdn_prefill(**_layer(70))
    assert len(scans) == 2


def test_fallbacks_are_not_remembered(meta_is_fast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call the backend refuses (fp32 q/k/v) falls back on every call, nothing is remembered for it."""
    ran = []
    monkeypatch.setitem(dispatch.REFERENCE_OPS, "gdn_prefill", lambda *a, **kw: ran.append("reference"))
    x = _layer(70)
    x.update({n: torch.empty(x[n].shape, device=META) for n in ("q", "k", "v")})
    kernels.gdn_prefill(**x)
    kernels.gdn_prefill(**x)
    assert ran == ["reference"] * 2 and dispatch._routes == {}
    with pytest.raises(ValueError, match=r"impl='tilelang' cannot run gdn_prefill: q/k/v dtypes"):
        kernels.gdn_prefill(**x, impl="tilelang")


def test_signature_leaves_out_the_length_only() -> None:
    x = _layer(70)
    key = _signature(x)
    assert key is not None and key == _signature(_layer(1)) == _signature(_layer(5000))
    others = [
        dict(initial_state=None), dict(A_log=None, dt_bias=None), dict(q=x["q"].float(), k=x["k"].float()),
        dict(initial_state=torch.empty(1, HV, D, D, device=META, dtype=torch.bfloat16)),
        dict(cu_seqlens=torch.empty(2, device=META, dtype=torch.int32)),
        dict(cu_seqlens=torch.empty(2, device=META, dtype=torch.int64)),
    ]
    keys = [_signature({**x, **change}) for change in others]
    assert None not in keys and len({key, *keys}) == len(others) + 1
    assert _signature({**x, "cu_seqlens": torch.tensor([0, 70])}) is None
    assert _signature({**x, "v": _layer(71)["v"]}) is None
    assert _signature({**x, "q": "q"}) is None


@pytest.mark.gpu
def test_remembered_calls_on_cuda_run_the_launcher() -> None:
    """On the GPU: the first call resolves, a call of another length is remembered; both give the launcher's
    results bit for bit, and a bad call after them still fails in the checks."""
    from qla_agent.kernels.tilelang.prefill import gdn_prefill as launcher
    from tests.kernels.gdn_inputs import GdnShape, gdn_inputs

    cuda = torch.device("cuda")
    for seqlen in (100, 37):
        x = gdn_inputs(GdnShape(B=1, T=seqlen, Hk=HK, Hv=HV, K=D, V=D), seed=seqlen)
        x = {n: t.to(cuda, torch.bfloat16 if n in ("q", "k", "v") else torch.float32) for n, t in x.items()}
        o, ht = kernels.gdn_prefill(**x, use_qk_l2norm=True)
        ref_o, ref_ht = launcher(**x, use_qk_l2norm=True)
        assert torch.equal(o, ref_o) and torch.equal(ht, ref_ht)
    assert dispatch.remembered("gdn_prefill", "auto", _signature(x)) is launcher
    with pytest.raises(ValueError, match=r"initial_state must have shape \[N, Hv, K, V\] = \[1, 4, 128, 128\]"):
        kernels.gdn_prefill(**{**x, "initial_state": x["initial_state"][:, :2]}, use_qk_l2norm=True)
