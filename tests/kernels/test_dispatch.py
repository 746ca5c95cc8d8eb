"""Remembered dispatch: a gdn_prefill call whose signature was checked and resolved to the fast backend
skips the checks and `supports` when the signature repeats (a new T included); the impl argument,
QLA_KERNEL_IMPL and bad inputs are still honoured on every call.

Meta tensors stand in for CUDA ones: dispatch's fast device type is set to meta and the TileLang kernels
are the signature-checking stand-ins of conftest.py (`fake_kernels`).
"""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from qla_agent import kernels
from qla_agent.kernels import checks, checks_norms, dispatch

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



# Every other public op takes the same remembered path (`dispatch.call`, keyed by `checks.call_signature`).
def _meta(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype)


def _slots(count: int, device: torch.device = META) -> torch.Tensor:
    return torch.empty(count, device=device, dtype=torch.int32)


@dataclass(frozen=True)
class Op:
    """A public op on meta tensors: its check (module, name, and how the public call's arguments x reach
    it), the arguments of a supported call of T rows, and rejected changes to them by id."""

    module: object
    check_name: str
    check: Callable[[dict], object]
    make: Callable[[int], dict]
    bad: dict[str, dict]


OPS = {
    "rms_norm": Op(
        checks_norms, "check_rms_norm", lambda x: checks_norms.check_rms_norm(x["x"], x["weight"], eps=x["eps"]),
        lambda t: dict(x=_meta(t, 64), weight=_meta(64), eps=1e-6),
        dict(weight_D=dict(weight=_meta(32)), eps_nan=dict(eps=float("nan")), eps_bool=dict(eps=True),
             int_x=dict(x=_meta(7, 64, dtype=torch.int32)), weight_on_cpu=dict(weight=torch.zeros(64))),
    ),
    "add_rms_norm": Op(
        checks_norms, "check_rms_norm",
        lambda x: checks_norms.check_rms_norm(x["x"], x["weight"], eps=x["eps"], residual=x["residual"]),
        lambda t: dict(x=_meta(t, 64), residual=_meta(t, 64), weight=_meta(64), eps=1e-6),
        dict(residual_D=dict(residual=_meta(7, 32)), residual_T=dict(residual=_meta(6, 64))),
    ),
    "gated_rms_norm": Op(
        checks_norms, "check_gated_rms_norm",
        lambda x: checks_norms.check_gated_rms_norm(x["x"], x["z"], x["weight"], eps=x["eps"]),
        lambda t: dict(x=_meta(t, 4, 64), z=_meta(t, 4, 64), weight=_meta(64), eps=1e-6),
        dict(z_D=dict(z=_meta(7, 4, 32)), eps_negative=dict(eps=-1.0)),
    ),
    "silu_mul": Op(
        checks_norms, "check_silu_mul", lambda x: checks_norms.check_silu_mul(x["gate"], x["up"]),
        lambda t: dict(gate=_meta(t, 64), up=_meta(t, 64)),
        dict(up_I=dict(up=_meta(7, 32)), up_not_a_tensor=dict(up=1.0)),
    ),
    "sigmoid_gate_mul": Op(
        checks_norms, "check_sigmoid_gate_mul", lambda x: checks_norms.check_sigmoid_gate_mul(x["x"], x["gate"]),
        lambda t: dict(x=_meta(t, 4, 64), gate=_meta(t, 4, 64)),
        dict(gate_heads=dict(gate=_meta(7, 2, 64))),
    ),
    "rms_norm_rope": Op(
        checks_norms, "check_rms_norm_rope",
        lambda x: checks_norms.check_rms_norm_rope(x["x"], x["weight"], x["cos"], x["sin"], eps=x["eps"]),
        lambda t: dict(x=_meta(t, 4, 64), weight=_meta(64), cos=_meta(t, 1, 32), sin=_meta(t, 1, 32), eps=1e-6),
        dict(cos_odd_R=dict(cos=_meta(7, 1, 3)), sin_R=dict(sin=_meta(7, 1, 16)), cos_T=dict(cos=_meta(6, 1, 32))),
    ),
    "causal_conv1d": Op(
        checks, "check_conv",
        lambda x: checks.check_conv(x["x"], x["weight"], conv_state=x["conv_state"], cu_seqlens=x.get("cu_seqlens")),
        lambda t: dict(x=_meta(1, t, 64), weight=_meta(64, 4), conv_state=_meta(1, 64, 3)),
        dict(state_N=dict(conv_state=_meta(2, 64, 3)), width_1=dict(weight=_meta(64, 1)),
             cu_on_cpu=dict(cu_seqlens=torch.tensor([0, 7]))),
    ),
    "causal_conv1d_update": Op(
        checks, "check_conv_update",
        lambda x: checks.check_conv_update(x["x"], x["weight"], x["conv_state"], x["slots"]),
        lambda t: dict(x=_meta(t, 64), weight=_meta(64, 4), conv_state=_meta(8, 64, 3), slots=_slots(t)),
        dict(slots_N=dict(slots=_slots(6)), float_slots=dict(slots=_meta(7)),
             slots_on_cpu=dict(slots=torch.arange(7, dtype=torch.int32))),
    ),
    "gdn_decode": Op(
        checks, "check_gdn_decode",
        lambda x: checks.check_gdn_decode(
            *(x[n] for n in ("q", "k", "v", "g", "beta", "state", "slots")), A_log=x.get("A_log"),
            dt_bias=x.get("dt_bias"),
        ),
        lambda t: dict(q=_meta(t, HK, D), k=_meta(t, HK, D), v=_meta(t, HV, D), g=_meta(t, HV), beta=_meta(t, HV),
                       state=_meta(8, HV, D, D, dtype=torch.float32), slots=_slots(t)),
        dict(state_Hv=dict(state=_meta(8, HK, D, D, dtype=torch.float32)), slots_N=dict(slots=_slots(6)),
             A_log_alone=dict(A_log=_meta(HV, dtype=torch.float32))),
    ),
}


def _shapes(result: object) -> list[torch.Size]:
    return [t.shape for t in (result if isinstance(result, tuple) else (result,))]


@pytest.mark.parametrize("name", OPS)
def test_every_op_checks_a_layout_once(name: str, meta_is_fast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call of a layout is checked and resolved; a repeat (new tensors) goes straight to the fast
    function; another T is checked again."""
    from qla_agent.kernels import tilelang as backend

    op = OPS[name]
    checked, supported = [], []
    check, supports = getattr(op.module, op.check_name), backend.supports
    monkeypatch.setattr(op.module, op.check_name, lambda *a, **kw: checked.append(1) or check(*a, **kw))
    monkeypatch.setattr(backend, "supports", lambda *a, **kw: supported.append(1) or supports(*a, **kw))
    public = getattr(kernels, name)
    first = public(**op.make(7))
    assert len(checked) == len(supported) == 1
    assert list(dispatch._routes.values()) == [getattr(backend, name)]
    assert _shapes(public(**op.make(7))) == _shapes(first)
    assert len(checked) == len(supported) == 1
    public(**op.make(3))
    assert len(checked) == len(supported) == 2


BAD_OPS = [pytest.param(name, change, id=f"{name}-{bad}") for name, op in OPS.items() for bad, change in op.bad.items()]


@pytest.mark.parametrize("name,change", BAD_OPS)
def test_every_op_fails_as_before_after_a_remembered_call(meta_is_fast: dict, name: str, change: dict) -> None:
    """A rejected call raises the op's own check's ValueError, though a good call of its layout was remembered."""
    op, public = OPS[name], getattr(kernels, name)
    public(**op.make(7))
    x = {**op.make(7), **change}
    with pytest.raises(ValueError) as direct:
        op.check(x)
    with pytest.raises(ValueError) as raised:
        public(**x)
    assert str(raised.value) == str(direct.value)


@pytest.mark.parametrize("name", OPS)
def test_every_op_reads_impl_and_environment_on_every_call(
    name: str, meta_is_fast: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = []
    monkeypatch.setitem(dispatch.REFERENCE_OPS, name, lambda **kw: ran.append(name))
    op, public = OPS[name], getattr(kernels, name)
    public(**op.make(7))
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    public(**op.make(7))
    assert ran == [name]
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"QLA_KERNEL_IMPL must be one of"):
        public(**op.make(7))
    monkeypatch.delenv(dispatch.ENV_VAR)
    with pytest.raises(ValueError, match=r"impl must be one of"):
        public(**op.make(7), impl="triton")
    public(**op.make(7), impl="reference")
    public(**op.make(7), impl="tilelang")
    public(**op.make(7))
    assert ran == [name] * 2


def test_a_refused_row_call_falls_back_every_time(meta_is_fast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp64 rows: the backend refuses, each call falls back and nothing is remembered; eps=True is refused
    though eps=1 (equal to it) was remembered."""
    ran = []
    monkeypatch.setitem(dispatch.REFERENCE_OPS, "rms_norm", lambda **kw: ran.append("reference"))
    x = dict(x=_meta(7, 64, dtype=torch.float64), weight=_meta(64, dtype=torch.float64), eps=1e-6)
    kernels.rms_norm(**x)
    kernels.rms_norm(**x)
    assert ran == ["reference"] * 2 and dispatch._routes == {}
    with pytest.raises(ValueError, match=r"impl='tilelang' cannot run rms_norm: dtypes \(x float64"):
        kernels.rms_norm(**x, impl="tilelang")
    kernels.rms_norm(**{**OPS["rms_norm"].make(7), "eps": 1})
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0"):
        kernels.rms_norm(**{**OPS["rms_norm"].make(7), "eps": True})


def test_call_signature_keys_layouts_and_values() -> None:
    x = _meta(7, 64)
    key = checks.call_signature(dict(x=x, eps=1e-6))
    assert key == checks.call_signature(dict(x=_meta(7, 64), eps=1e-6))
    others = [
        dict(x=_meta(8, 64), eps=1e-6), dict(x=_meta(64, 7).T, eps=1e-6), dict(x=x.float(), eps=1e-6),
        dict(x=torch.zeros(7, 64, dtype=torch.bfloat16), eps=1e-6), dict(x=x, eps=1e-5), dict(x=x, eps=1),
        dict(x=x, eps=True), dict(x=x, eps=None),
    ]
    keys = [checks.call_signature(change) for change in others]
    assert None not in keys and len({key, *keys}) == len(others) + 1
    # The checks read CPU slots' values, and an argument of another type may be anything.
    assert checks.call_signature(dict(x=x, slots=torch.arange(7))) is None
    assert checks.call_signature(dict(x=x, slots=_slots(7))) is not None
    assert checks.call_signature(dict(x=x, eps=[1e-6])) is None


def _cuda_inputs(name: str, seed: int) -> dict:
    """OPS[name]'s arguments for T = 5 on the GPU: random floats, distinct slots."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = {}
    for n, t in OPS[name].make(5).items():
        if not isinstance(t, torch.Tensor):
            x[n] = t
        elif t.is_floating_point():
            x[n] = torch.randn(t.shape, generator=gen, device="cuda").to(t.dtype)
        else:
            x[n] = torch.arange(t.shape[0], device="cuda", dtype=t.dtype)
    return x


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
def test_remembered_ops_on_cuda_run_the_launcher(name: str) -> None:
    """On the GPU: the first and a remembered call give the launcher's results bit for bit (states updated
    in place included), and a bad call after them still fails in the checks."""
    from qla_agent.kernels import tilelang as backend

    for seed in (0, 1):
        out_args, ref_args = _cuda_inputs(name, seed), _cuda_inputs(name, seed)
        out, ref = getattr(kernels, name)(**out_args), getattr(backend, name)(**ref_args)
        for o, r in zip(*(x if isinstance(x, tuple) else (x,) for x in (out, ref))):
            assert torch.equal(o, r)
        for n, t in out_args.items():
            assert not isinstance(t, torch.Tensor) or torch.equal(t, ref_args[n]), n
    assert any(fn is getattr(backend, name) for fn in dispatch._routes.values())
    bad, change = next(iter(OPS[name].bad.items()))
    on_cuda = {n: torch.zeros(t.shape, dtype=t.dtype, device="cuda") if isinstance(t, torch.Tensor) else t
               for n, t in change.items()}
    x = {**_cuda_inputs(name, 3), **on_cuda}
    with pytest.raises(ValueError) as direct:
        OPS[name].check(x)
    with pytest.raises(ValueError) as raised:
        getattr(kernels, name)(**x)
    assert str(raised.value) == str(direct.value), bad
