"""Find a model folder (a path or a repo id in the local Hugging Face cache) and its safetensors files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from safetensors import safe_open

from qla_agent.errors import CheckpointError

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _snapshot(repo_dir: Path, repo_id: str, revision: str) -> Path:
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        snap = repo_dir / "snapshots" / commit
        if snap.is_dir():
            return snap
        raise CheckpointError(f"{ref} points at snapshot {commit}, which is not in {repo_dir / 'snapshots'}")
    direct = repo_dir / "snapshots" / revision
    if direct.is_dir():
        return direct
    snaps = sorted((p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not snaps:
        raise CheckpointError(f"{repo_id} has no snapshot in {repo_dir}; download it again")
    if len(snaps) > 1:
        logger.warning("%s has no refs/%s; using the newest of %d snapshots, %s", repo_id, revision, len(snaps), snaps[-1].name)
    return snaps[-1]


def resolve_model_dir(path_or_repo_id: str | os.PathLike[str], *, revision: str = "main") -> Path:
    """A local model folder, or the cached snapshot of repo id 'Org/Name' (never downloads)."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or text.startswith((".", "~")) or path.exists():
        raise CheckpointError(f"no model folder at {text!r}; pass a folder path or a cached repo id 'Org/Name'")
    cache = hf_cache_dir()
    repo_dir = cache / f"models--{parts[0]}--{parts[1]}"
    if not repo_dir.is_dir():
        raise CheckpointError(
            f"{text!r} is neither a folder nor in the local Hugging Face cache ({cache}); download it "
            f"first (e.g. `hf download {text}`) or pass the folder path"
        )
    return _snapshot(repo_dir, text, revision)


def tensor_files(model_dir: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the safetensors file holding it (sharded via the index, or single)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"cannot read the weight_map of {index}: {e!r}") from e
        files = {name: model_dir / file for name, file in weight_map.items()}
        missing = sorted({p.name for p in files.values() if not p.is_file()})
        if missing:
            raise CheckpointError(
                f"{model_dir} lacks shard file(s) {missing} named in {INDEX_FILE}; the download is incomplete"
            )
        return files
    single = model_dir / SINGLE_FILE
    candidates = [single] if single.is_file() else sorted(model_dir.glob("*.safetensors"))
    if not candidates:
        other = sorted(p.name for p in model_dir.glob("*.bin"))
        hint = f" (found {other}: only safetensors are supported)" if other else ""
        raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}{hint}")
    files: dict[str, Path] = {}
    for file in candidates:
        try:
            with safe_open(str(file), framework="pt") as f:
                files.update((name, file) for name in f.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read {file}: {e}") from e
    return files
