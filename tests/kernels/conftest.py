"""Fixtures of the kernel tests."""

import functools

import pytest

from tests.kernels.tilelang_fakes import SignatureCheck


@pytest.fixture
def fake_kernels(monkeypatch: pytest.MonkeyPatch) -> dict[str, SignatureCheck]:
    """Every TileLang program compiles to a SignatureCheck (on a pretend H100); returns them by module name."""
    from qla_agent.kernels.tilelang import build

    made: dict[str, SignatureCheck] = {}

    def compiled(program, config, arch):
        made[program.__module__.rsplit(".", 1)[-1]] = SignatureCheck(program(config))
        return made[program.__module__.rsplit(".", 1)[-1]]

    monkeypatch.setattr(build, "compiled", compiled)
    monkeypatch.setattr(build, "device_facts", lambda device: ("sm_90a", 132))
    return made


@functools.cache
def _compile_c(program, config):
    import tilelang

    return tilelang.compile(program(config), target="c")


@pytest.fixture
def c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's kernels compile for TileLang's C backend (CPU tensors)."""
    from qla_agent.kernels.tilelang import build

    monkeypatch.setattr(build, "compiled", lambda program, config, arch: _compile_c(program, config))
    monkeypatch.setattr(build, "device_facts", lambda device: ("c", 132))
