"""File tools confined to a workspace: list, read (line ranges), write (creates parents), search."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from qla_agent.errors import ToolError, WorkspaceError
from qla_agent.tools.registry import Tool
from qla_agent.tools.workspace import Workspace

_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}
_SNIFF = 8192


@dataclass(frozen=True, slots=True)
class FileLimits:
    """Size and count limits of the file tools."""

    max_read_bytes: int = 256_000
    max_write_bytes: int = 1_000_000
    max_entries: int = 500
    max_results: int = 100
    max_search_file_bytes: int = 2_000_000
    max_line_chars: int = 400


class FileTools:
    """The four file tools bound to one workspace and its limits."""

    def __init__(self, workspace: Workspace, limits: FileLimits = FileLimits()):
        self.ws = workspace
        self.limits = limits

    def list_files(self, path: str = ".", recursive: bool = False) -> str:
        """Entries of a directory, one per line: `name/` for folders, `name (N bytes)` for files."""
        root = self.ws.resolve(path)
        if not root.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        lines: list[str] = []
        for entry in _walk(root, recursive):
            if len(lines) >= self.limits.max_entries:
                lines.append(f"[stopped after {self.limits.max_entries} entries]")
                break
            rel = entry.relative_to(root).as_posix()
            if entry.is_symlink():
                lines.append(f"{rel}@ -> {os.readlink(entry)}")
            elif entry.is_dir():
                lines.append(f"{rel}/")
            else:
                lines.append(f"{rel} ({entry.stat().st_size} bytes)")
        return "\n".join(lines) if lines else f"{path!r} is empty"

    def read_file(self, path: str, start_line: int | None = None, end_line: int | None = None) -> str:
        """A text file, or lines start_line..end_line of it (1-based, inclusive), within the size limit."""
        file = self._existing_file(path)
        if start_line is not None and start_line < 1 or end_line is not None and end_line < (start_line or 1):
            raise ToolError(f"bad line range {start_line}..{end_line}: lines start at 1 and end >= start")
        first, last = start_line or 1, end_line
        out: list[str] = []
        size = 0
        for number, line in _lines(file):
            if last is not None and number > last:
                break
            if number < first:
                continue
            size += len(line.encode("utf-8"))
            if size > self.limits.max_read_bytes:
                out.append(f"\n[truncated at line {number}: the read limit is {self.limits.max_read_bytes} "
                           f"bytes; read on with start_line={number}]")
                break
            out.append(line)
        if not out and first > 1:
            raise ToolError(f"{path!r} has fewer than {first} lines")
        return "".join(out)

    def write_file(self, path: str, content: str, append: bool = False) -> str:
        """Write (or append) text to a file, creating missing folders inside the workspace."""
        data = content.encode("utf-8")
        if len(data) > self.limits.max_write_bytes:
            raise WorkspaceError(f"content for {path!r} is {len(data)} bytes; the write limit is "
                                 f"{self.limits.max_write_bytes}")
        target = self.ws.resolve(path, for_write=True)
        if target.is_dir():
            raise ToolError(f"{path!r} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Re-check after mkdir: a parent could have been swapped for a symlink meanwhile.
        target = self.ws.resolve(path, for_write=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return f"{'appended' if append else 'wrote'} {len(data)} bytes to {self.ws.relative(target)}"

    def search_files(self, pattern: str, path: str = ".", regex: bool = False, ignore_case: bool = False) -> str:
        """Lines matching a substring (or regex) in text files under a path: `file:line: text`."""
        root = self.ws.resolve(path)
        flags = re.IGNORECASE if ignore_case else 0
        try:
            matcher = re.compile(pattern if regex else re.escape(pattern), flags)
        except re.error as e:
            raise ToolError(f"bad regular expression {pattern!r}: {e}") from e
        hits: list[str] = []
        files = [root] if root.is_file() else (p for p in _walk(root, True) if p.is_file())
        for file in files:
            if not self._searchable(file):
                continue
            for number, line in _lines(file):
                if matcher.search(line[: self.limits.max_line_chars * 4]):
                    text = line.rstrip("\r\n")[: self.limits.max_line_chars]
                    hits.append(f"{self.ws.relative(file)}:{number}: {text}")
                    if len(hits) >= self.limits.max_results:
                        hits.append(f"[stopped after {self.limits.max_results} matches; narrow the search]")
                        return "\n".join(hits)
        return "\n".join(hits) if hits else f"no match for {pattern!r} under {path!r}"

    def _existing_file(self, path: str) -> Path:
        file = self.ws.resolve(path)
        if not file.exists():
            raise ToolError(f"{path!r} does not exist")
        if not file.is_file():
            raise ToolError(f"{path!r} is not a file")
        if _is_binary(file):
            raise ToolError(f"{path!r} is a binary file")
        return file

    def _searchable(self, file: Path) -> bool:
        if file.is_symlink() and not self.ws.contains(Path(os.path.realpath(file))):
            return False
        try:
            return file.stat().st_size <= self.limits.max_search_file_bytes and not _is_binary(file)
        except OSError:
            return False

    def tools(self) -> list[Tool]:
        """The four tools with their JSON schemas."""
        s, i, b = {"type": "string"}, {"type": "integer", "minimum": 1}, {"type": "boolean"}
        return [
            Tool("list_files", "List a directory of the workspace (recursive: the whole tree).",
                 _obj({"path": s, "recursive": b}), self.list_files),
            Tool("read_file", "Read a text file of the workspace, optionally only lines start_line..end_line.",
                 _obj({"path": s, "start_line": i, "end_line": i}, ["path"]), self.read_file),
            Tool("write_file", "Write text to a file of the workspace (creates folders; append to add at the end).",
                 _obj({"path": s, "content": s, "append": b}, ["path", "content"]), self.write_file),
            Tool("search_files", "Find lines containing a text (or a regex) in the workspace's files.",
                 _obj({"pattern": s, "path": s, "regex": b, "ignore_case": b}, ["pattern"]), self.search_files),
        ]


def _obj(props: dict, required: list[str] | None = None) -> dict:
    schema: dict = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _walk(root: Path, recursive: bool):
    """Entries under root, sorted, not following symlinked folders, skipping VCS and cache folders."""
    if not recursive:
        yield from sorted(root.iterdir())
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        base = Path(folder)
        for name in sorted(dirs + files):
            yield base / name


def _is_binary(file: Path) -> bool:
    with file.open("rb") as f:
        return b"\x00" in f.read(_SNIFF)


def _lines(file: Path):
    with file.open("r", encoding="utf-8", errors="replace", newline="") as f:
        yield from enumerate(f, start=1)
