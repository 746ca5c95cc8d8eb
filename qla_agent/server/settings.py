"""Server settings: one frozen record, read once from `QLA_*` environment variables and CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qla_agent.errors import QlaError

ENV_PREFIX = "QLA_"


class SettingsError(QlaError):
    """A setting has a value the server cannot use."""


def default_sessions_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where sessions persist unless told otherwise: $XDG_DATA_HOME/qla-agent/sessions."""
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "qla-agent" / "sessions"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything `qla-agent serve` can be told; defaults are the secure, laptop-friendly ones.

    `model` None means the embedded default model. Limits: `max_body_bytes` for JSON bodies,
    `max_import_bytes` for session files, `max_tokens` caps what one request may generate
    (`default_max_tokens` when the request names none), `max_sessions` live sessions,
    `max_concurrent_requests` chat requests in flight (beyond: 429). `threads`: torch intra-op
    threads (QLA_THREADS); None picks one per CPU core but one when the model runs on the CPU (see
    `run.cpu_threads`) and leaves torch's default on a GPU.
    """

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    sessions_dir: Path | None = None
    memory_policy: Literal["full", "bounded"] = "full"
    sink_tokens: int = 4
    window_tokens: int = 4096
    api_key: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_import_bytes: int = 8 * 1024 * 1024 * 1024
    max_tokens: int = 32768
    default_max_tokens: int = 4096
    max_sessions: int = 256
    max_concurrent_requests: int = 64
    cors_origins: tuple[str, ...] = ()
    served_model_name: str | None = None
    log_level: str = "info"
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_positive(self, "max_body_bytes", "max_import_bytes", "max_tokens",
                        "default_max_tokens", "max_sessions", "max_concurrent_requests",
                        "window_tokens")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port!r} is not a TCP port; use 1-65535 (0: any free port)")
        if self.threads is not None:
            _check_positive(self, "threads")
        if self.sink_tokens < 0:
            raise SettingsError(f"sink_tokens {self.sink_tokens} is negative; use 0 or more")
        if self.memory_policy not in ("full", "bounded"):
            raise SettingsError(f"memory_policy {self.memory_policy!r} is unknown; use 'full' or 'bounded'")
        if self.api_key is not None and not self.api_key.strip():
            raise SettingsError("api_key is empty; unset QLA_API_KEY or give a real key")
        if "*" in self.cors_origins and self.api_key is None:
            raise SettingsError("cors_origins '*' without an api_key lets any web page drive the "
                                "model; set an api_key or list the origins")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> ServerSettings:
        """Build settings from `QLA_<FIELD>` variables; keyword overrides (CLI flags, not None) win."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SettingsError(f"unknown server settings {unknown}")
        if values.get("sessions_dir") is None:
            values["sessions_dir"] = default_sessions_dir(environ)
        if isinstance(values.get("cors_origins"), list):
            values["cors_origins"] = tuple(values["cors_origins"])
        return cls(**values)


def _check_positive(settings: ServerSettings, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, int) or value <= 0:
            raise SettingsError(f"{name} {value!r} must be a positive integer")


def _parse(name: str, annotation: str, raw: str) -> Any:
    """Convert one environment string to the field's type (annotations are strings here)."""
    var = ENV_PREFIX + name.upper()
    if annotation.startswith("int"):
        try:
            return int(raw)
        except ValueError as e:
            raise SettingsError(f"{var}={raw!r} is not an integer") from e
    if annotation.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if annotation.startswith("Path"):
        return Path(raw).expanduser() if raw else None
    if annotation.startswith("str |") and raw == "":
        return None
    return raw
