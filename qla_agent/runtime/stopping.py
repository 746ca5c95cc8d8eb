"""Stop strings over streamed text: never emit a stop string, hold back what may be its start."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feeds text deltas and returns what is safe to emit; finds the earliest stop string.

    `stops` end the text before them; `keep` strings end it after them (they stay in the text).
    Text that ends with a proper prefix of either kind is held back until the next delta decides it;
    `flush` releases it when the completion ends without a stop.
    """

    __slots__ = ("_stops", "_keep", "_pending", "stopped")

    def __init__(self, stops: Sequence[str], keep: Sequence[str] = ()) -> None:
        if any(not s for s in (*stops, *keep)):
            raise ValueError(f"stop strings must be non-empty, got {list(stops)!r} and {list(keep)!r}")
        self._stops = tuple(stops)
        self._keep = tuple(keep)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add `text`; return the part that can be emitted now ("" once a stop string was found)."""
        if self.stopped:
            return ""
        if not self._stops and not self._keep:
            return text
        pending = self._pending + text
        end = self._stop_end(pending)
        if end is not None:
            self.stopped = True
            self._pending = ""
            return pending[:end]
        hold = self._held_length(pending)
        self._pending = pending[len(pending) - hold :]
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """Release held-back text at the end of a completion that did not stop on a string."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _stop_end(self, text: str) -> int | None:
        """Where the text ends if it holds a stop: before the earliest stop string, after a kept one."""
        hits = [(i, i) for i in (text.find(s) for s in self._stops) if i >= 0]
        hits += [(i, i + len(s)) for i, s in ((text.find(s), s) for s in self._keep) if i >= 0]
        return min(hits)[1] if hits else None

    def _held_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in (*self._stops, *self._keep):
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
