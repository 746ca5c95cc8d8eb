"""One real `qla-agent serve` process (embedded default model) shared by the agent tests."""

import pytest

from tests.agent.server_process import ServerProcess


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("agent-server"))
    proc.start()
    yield proc
    proc.stop()
