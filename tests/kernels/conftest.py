"""Fixtures of the kernel tests."""

import functools

import pytest

from tests.kernels.tilelang_fakes import SignatureCheck


@pytest.fixture
def fake_kernels(monkeypatch: pytest.MonkeyPatch) -> dict[str, SignatureCheck]:
    """Every TileLang program compiles to a SignatureCheck (on a pretend H100); returns the latest one of
    each kernel module by the module's name ("norms", "conv", "chunk_prep", ...) and of each kernel by
    its own name ("chunk_warmup", ...)."""
    from qla_agent.kernels.tilelang import build

    made: dict[str, SignatureCheck] = {}

    def compiled(program, config, arch):
        prim_func = program(config)
        check = SignatureCheck(prim_func)
        made[program.__module__.rsplit(".", 1)[-1]] = made[str(prim_func.attrs["global_symbol"])] = check
        return check

    monkeypatch.setattr(build, "compiled", compiled)
    monkeypatch.setattr(build, "device_facts", lambda device: ("sm_90a", 132))
    return made


@functools.cache
def _compile_c(program, config, vectorize: bool):
    import dataclasses

    import tilelang

    if getattr(config, "fast_silu", False):
        # The C backend has no fast reciprocal: the CPU runs the conv with the exact division.
        config = dataclasses.replace(config, fast_silu=False)
    pass_configs = None if vectorize else {tilelang.PassConfigKey.TIR_DISABLE_VECTORIZE: True}
    return tilelang.compile(program(config), target="c", pass_configs=pass_configs)


def _route_to_c(monkeypatch: pytest.MonkeyPatch, vectorize: bool) -> None:
    from qla_agent.kernels.tilelang import build

    monkeypatch.setattr(build, "compiled", lambda program, config, arch: _compile_c(program, config, vectorize))
    monkeypatch.setattr(build, "device_facts", lambda device: ("c", 132))


@pytest.fixture
def c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's kernels compile for TileLang's C backend (CPU tensors)."""
    _route_to_c(monkeypatch, vectorize=True)


@pytest.fixture
def c_kernels_scalar(monkeypatch: pytest.MonkeyPatch) -> None:
    """As c_kernels with vectorisation off (the C backend has no vector exp)."""
    _route_to_c(monkeypatch, vectorize=False)
