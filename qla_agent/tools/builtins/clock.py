"""The current date and time, in the machine's zone or a named IANA zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qla_agent.errors import ToolError
from qla_agent.tools.registry import Tool


def current_datetime(timezone: str | None = None) -> str:
    """ISO 8601 time with offset, weekday and zone: `2026-08-21T14:03:05+02:00 (Friday, Europe/Paris)`."""
    if timezone:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ToolError(f"unknown time zone {timezone!r}; use an IANA name like 'Europe/Paris' or 'UTC'") from e
        now = datetime.now(zone)
        label = timezone
    else:
        now = datetime.now().astimezone()
        label = now.tzname() or "local"
    return f"{now.isoformat(timespec='seconds')} ({now.strftime('%A')}, {label})"


CLOCK = Tool(
    name="current_datetime",
    description="The current date and time (optionally in an IANA time zone such as 'America/New_York').",
    parameters={"type": "object", "properties": {"timezone": {"type": "string"}}, "additionalProperties": False},
    fn=current_datetime,
)
