"""Fixtures: one tiny model per test session, and a live server with a fresh sessions dir."""

import pytest
import torch

from qla_agent.server.settings import ServerSettings
from tests.server.live import TinyModel, live_server, load_tiny, make_engine


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Server tests run uvicorn, the engine's threads and clients in one process on 2 cores: a second
    intra-op thread only oversubscribes the CPU (spinning OpenMP workers slow everything down)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModel:
    return load_tiny(tmp_path_factory.mktemp("server-model"))


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """A shared server for tests that do not depend on each other's sessions."""
    sessions = tmp_path_factory.mktemp("sessions")
    settings = ServerSettings(sessions_dir=sessions, max_tokens=1000, default_max_tokens=8, max_body_bytes=64 * 1024)
    with live_server(settings, make_engine(tiny, sessions)) as live:
        yield live
