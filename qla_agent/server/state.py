"""What the routes of one app share, kept on `app.state.qla`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from qla_agent.server.convert import SamplingDefaults
from qla_agent.server.metrics import ServerMetrics
from qla_agent.server.settings import ServerSettings


@dataclass(slots=True)
class ServerState:
    """Settings, the engine, metrics and the count of chat requests in flight."""

    settings: ServerSettings
    engine: Any
    metrics: ServerMetrics
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    started: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0

    @property
    def served_names(self) -> tuple[str, ...]:
        """Names besides the engine's model id that requests may use for the model."""
        names = (self.settings.served_model_name, self.settings.model)
        return tuple(n for n in names if n)


def server_state(request: Request) -> ServerState:
    """The ServerState of the app serving `request`."""
    return request.app.state.qla
