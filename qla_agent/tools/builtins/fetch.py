"""`fetch_url`: an HTTP(S) GET with a timeout and a size cap. Off unless enabled."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from qla_agent.errors import ToolError
from qla_agent.tools.registry import Tool


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Limits of fetch_url."""

    timeout_s: float = 20.0
    max_bytes: int = 200_000
    max_redirects: int = 5


class FetchTool:
    """GETs a URL and returns status, content type and the (capped) text of the body."""

    def __init__(self, limits: FetchLimits = FetchLimits()):
        self.limits = limits

    def fetch_url(self, url: str) -> str:
        """GET `url` (http or https only)."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise ToolError(f"URL {url!r} is not http(s)")
        body = bytearray()
        truncated = False
        try:
            with httpx.Client(timeout=self.limits.timeout_s, follow_redirects=True,
                              max_redirects=self.limits.max_redirects) as client:
                with client.stream("GET", url) as response:
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > self.limits.max_bytes:
                            truncated = True
                            break
                    status, ctype = response.status_code, response.headers.get("content-type", "")
                    encoding = response.encoding or "utf-8"
        except httpx.HTTPError as e:
            raise ToolError(f"fetching {url!r} failed: {type(e).__name__}: {e}") from e
        text = bytes(body[: self.limits.max_bytes]).decode(encoding, errors="replace")
        note = f"\n[truncated at {self.limits.max_bytes} bytes]" if truncated else ""
        return f"status: {status}\ncontent-type: {ctype}\n\n{text}{note}"

    def tool(self) -> Tool:
        return Tool(
            name="fetch_url",
            description=f"GET a web page or file over http(s); returns at most {self.limits.max_bytes} bytes.",
            parameters={"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"],
                        "additionalProperties": False},
            fn=self.fetch_url,
        )
