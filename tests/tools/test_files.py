"""The file tools inside a workspace: list, read with ranges, write with parents, search; size limits."""

from __future__ import annotations

import pytest

from qla_agent.errors import ToolError, WorkspaceError
from qla_agent.tools.builtins.files import FileLimits, FileTools
from qla_agent.tools.workspace import Workspace


@pytest.fixture()
def files(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (ws.root / "src").mkdir()
    (ws.root / "src" / "main.py").write_text("import os\n\ndef main():\n    return os.getcwd()\n")
    (ws.root / "notes.md").write_text("# Notes\nTODO: one\ntodo: two\n")
    (ws.root / "blob.bin").write_bytes(b"\x00\x01TODO")
    (ws.root / ".git").mkdir()
    (ws.root / ".git" / "HEAD").write_text("TODO in git\n")
    return FileTools(ws, FileLimits(max_read_bytes=40, max_write_bytes=16, max_entries=4, max_results=2))


def test_list(files):
    assert files.list_files() == ".git/\nblob.bin (6 bytes)\nnotes.md (28 bytes)\nsrc/"
    assert files.list_files("src") == "main.py (46 bytes)"
    assert files.list_files(".", recursive=True) == "blob.bin (6 bytes)\nnotes.md (28 bytes)\nsrc/\nsrc/main.py (46 bytes)"


def test_list_stops_at_the_entry_limit(files):
    for i in range(5):
        (files.ws.root / "src" / f"f{i}.txt").write_text("")
    assert files.list_files("src").splitlines()[-1] == "[stopped after 4 entries]"


def test_read_whole_and_ranges(files):
    assert files.read_file("notes.md") == "# Notes\nTODO: one\ntodo: two\n"
    assert files.read_file("src/main.py", start_line=3, end_line=4) == "def main():\n    return os.getcwd()\n"
    assert files.read_file("src/main.py", start_line=4) == "    return os.getcwd()\n"
    assert files.read_file("notes.md", end_line=1) == "# Notes\n"


def test_read_stops_at_the_size_limit(files):
    out = files.read_file("src/main.py")
    assert out.startswith("import os\n\ndef main():\n")
    assert out.endswith("[truncated at line 4: the read limit is 40 bytes; read on with start_line=4]")


@pytest.mark.parametrize(("path", "kwargs", "message"), [
    ("nope.txt", {}, "'nope.txt' does not exist"),
    ("src", {}, "'src' is not a file"),
    ("blob.bin", {}, "'blob.bin' is a binary file"),
    ("notes.md", {"start_line": 9}, "fewer than 9 lines"),
    ("notes.md", {"start_line": 3, "end_line": 2}, "bad line range 3..2"),
], ids=["missing", "directory", "binary", "past-end", "bad-range"])
def test_read_errors(files, path, kwargs, message):
    with pytest.raises(ToolError, match=message):
        files.read_file(path, **kwargs)


def test_write_creates_parents_and_appends(files):
    assert files.write_file("out/deep/a.txt", "hello") == "wrote 5 bytes to out/deep/a.txt"
    assert files.write_file("out/deep/a.txt", " you", append=True) == "appended 4 bytes to out/deep/a.txt"
    assert (files.ws.root / "out" / "deep" / "a.txt").read_text() == "hello you"
    assert files.write_file("out/deep/a.txt", "new") == "wrote 3 bytes to out/deep/a.txt"
    assert files.read_file("out/deep/a.txt") == "new"


def test_write_size_limit_counts_utf8_bytes(files):
    with pytest.raises(WorkspaceError, match="'big.txt' is 18 bytes; the write limit is 16"):
        files.write_file("big.txt", "é" * 9)
    assert not (files.ws.root / "big.txt").exists()
    with pytest.raises(ToolError, match="'src' is a directory"):
        files.write_file("src", "x")


def test_search_substring_regex_and_limits(files):
    assert files.search_files("getcwd") == "src/main.py:4:     return os.getcwd()"
    assert files.search_files("todo", ignore_case=True) == (
        "notes.md:2: TODO: one\nnotes.md:3: todo: two\n[stopped after 2 matches; narrow the search]")
    assert files.search_files(r"^def \w+", regex=True, path="src") == "src/main.py:3: def main():"
    assert files.search_files("zzz") == "no match for 'zzz' under '.'"
    with pytest.raises(ToolError, match="bad regular expression '\\('"):
        files.search_files("(", regex=True)


def test_tools_schemas_are_strict(files):
    tools = {t.name: t for t in files.tools()}
    assert set(tools) == {"list_files", "read_file", "write_file", "search_files"}
    assert tools["write_file"].parameters["required"] == ["path", "content"]
    assert all(t.parameters["additionalProperties"] is False for t in tools.values())
