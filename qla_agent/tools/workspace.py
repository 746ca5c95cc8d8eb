"""The workspace: the one directory file tools may touch. No path, `..` or symlink leaves it.

Every path a tool gets is resolved (symlinks followed, `..` collapsed) and must land inside the
resolved root; a path that would leave it is refused with a message naming the path. Writes also
refuse a final component that is a symlink, and open files with O_NOFOLLOW.
"""

from __future__ import annotations

import os
from pathlib import Path

from qla_agent.errors import WorkspaceError


class Workspace:
    """A root directory and the rules for paths inside it."""

    def __init__(self, root: str | Path, *, create: bool = True):
        root = Path(root).expanduser()
        if create and not root.exists():
            try:
                root.mkdir(parents=True)
            except OSError as e:
                raise WorkspaceError(f"cannot create workspace {str(root)!r}: {e.strerror or e}") from e
        if not root.is_dir():
            raise WorkspaceError(f"workspace {str(root)!r} is not a directory; create it or pick another")
        self.root = root.resolve()

    def resolve(self, path: str | os.PathLike[str], *, for_write: bool = False) -> Path:
        """The absolute path of `path` (relative to the root, or absolute inside it); refuses escapes."""
        text = os.fspath(path)
        if "\x00" in text:
            raise WorkspaceError(f"path {text!r} contains a NUL byte")
        raw = Path(text).expanduser() if text.startswith("~") else Path(text)
        candidate = raw if raw.is_absolute() else self.root / raw
        resolved = Path(os.path.realpath(candidate))
        if not self.contains(resolved):
            reason = "is a symlink that points" if _via_symlink(candidate) else "is"
            raise WorkspaceError(
                f"path {text!r} {reason} outside the workspace {str(self.root)!r} (resolves to {str(resolved)!r}); "
                "use a path inside the workspace"
            )
        if for_write and candidate.is_symlink():
            raise WorkspaceError(f"path {text!r} is a symlink; refusing to write through it")
        return resolved

    def contains(self, resolved: Path) -> bool:
        """Whether an already-resolved path is the root or lies under it."""
        return resolved == self.root or self.root in resolved.parents

    def relative(self, resolved: Path) -> str:
        """A resolved path as the model should write it: relative to the root, with `/`."""
        return resolved.relative_to(self.root).as_posix()


def _via_symlink(candidate: Path) -> bool:
    """Whether any existing component of `candidate` is a symlink (for a clearer refusal message)."""
    return any(part.is_symlink() for part in (candidate, *candidate.parents))
