"""Text-scanning helpers for incremental parsing: markers split across chunks, what follows a tag."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class Verdict(Enum):
    """Whether text at a position begins with one of some tags: yes, no, or unknown until more text arrives."""

    YES = "yes"
    NO = "no"
    WAIT = "wait"


def partial_suffix(buf: str, markers: Iterable[str]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of a marker (text to hold back)."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(buf)), best, -1):
            if buf.endswith(marker[:n]):
                best = n
                break
    return best


def find_first(buf: str, markers: Iterable[str], start: int = 0) -> tuple[int, str] | None:
    """The earliest (index, marker) of any marker in `buf[start:]`, or None."""
    best: tuple[int, str] | None = None
    for marker in markers:
        i = buf.find(marker, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, marker)
    return best


def starts_with_tag(buf: str, i: int, tags: tuple[str, ...], final: bool) -> Verdict:
    """Does `buf[i:]`, after whitespace, start with one of `tags`? End of output (final) counts as yes."""
    rest = buf[i:].lstrip()
    if not rest:
        return Verdict.YES if final else Verdict.WAIT
    if rest.startswith(tags):
        return Verdict.YES
    if not final and any(tag.startswith(rest) for tag in tags):
        return Verdict.WAIT
    return Verdict.NO
