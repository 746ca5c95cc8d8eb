"""The workspace refuses every way out: absolute paths, `..`, symlinks out, writes through symlinks."""

from __future__ import annotations

import os

import pytest

from qla_agent.errors import WorkspaceError
from qla_agent.tools.builtins.files import FileTools
from qla_agent.tools.workspace import Workspace


@pytest.fixture()
def layout(tmp_path):
    """tmp/ws (the workspace) beside tmp/outside/secret.txt, with symlinks in and out."""
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    (ws / "sub" / "a.txt").write_text("inside\n")
    (ws / "link_out").symlink_to(outside)
    (ws / "secret_link.txt").symlink_to(outside / "secret.txt")
    (ws / "dangling_out").symlink_to(outside / "new.txt")
    (ws / "link_in.txt").symlink_to(ws / "sub" / "a.txt")
    return Workspace(ws), outside


@pytest.mark.parametrize("path", [
    "/etc/passwd", "../outside/secret.txt", "sub/../../outside/secret.txt", "link_out/secret.txt",
    "secret_link.txt", "link_out", "~/x", "sub/../..",
], ids=["absolute", "dotdot", "dotdot-nested", "symlinked-dir", "symlinked-file", "symlink-itself", "home", "root-parent"])
def test_escapes_are_refused_naming_the_path(layout, path):
    ws, _ = layout
    with pytest.raises(WorkspaceError, match="outside the workspace") as info:
        ws.resolve(path)
    assert repr(path) in str(info.value)


def test_symlink_escape_message_says_symlink(layout):
    ws, _ = layout
    with pytest.raises(WorkspaceError, match="'secret_link.txt' is a symlink that points outside"):
        ws.resolve("secret_link.txt")


def test_paths_inside_are_allowed(layout):
    ws, _ = layout
    assert ws.resolve("sub/a.txt") == ws.root / "sub" / "a.txt"
    assert ws.resolve(str(ws.root / "sub")) == ws.root / "sub"
    assert ws.resolve("sub/../sub/a.txt") == ws.root / "sub" / "a.txt"
    assert ws.resolve("link_in.txt") == ws.root / "sub" / "a.txt"
    assert ws.resolve(".") == ws.root
    assert ws.resolve("new/deeper/file.txt") == ws.root / "new" / "deeper" / "file.txt"


def test_writes_never_leave(layout):
    ws, outside = layout
    files = FileTools(ws)
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        files.write_file("dangling_out", "x")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        files.write_file("link_out/evil.txt", "x")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        files.write_file("../outside/evil.txt", "x")
    with pytest.raises(WorkspaceError, match="'link_in.txt' is a symlink; refusing to write through it"):
        files.write_file("link_in.txt", "x")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "top secret\n"
    assert (ws.root / "sub" / "a.txt").read_text() == "inside\n"


def test_reads_and_searches_never_leave(layout):
    ws, _ = layout
    files = FileTools(ws)
    with pytest.raises(WorkspaceError):
        files.read_file("secret_link.txt")
    with pytest.raises(WorkspaceError):
        files.list_files("link_out")
    with pytest.raises(WorkspaceError):
        files.search_files("secret", path="..")
    assert files.search_files("secret") == "no match for 'secret' under '.'"
    assert files.search_files("inside") == "link_in.txt:1: inside\nsub/a.txt:1: inside"


def test_nul_byte_and_missing_root(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(WorkspaceError, match="NUL byte"):
        ws.resolve("a\x00b")
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkspaceError, match="is not a directory"):
        Workspace(tmp_path / "file")
