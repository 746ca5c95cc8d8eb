"""Sessions on disk: one safetensors file per session, written atomically.

A file holds the live state, the token history and the checkpoints as tensors; everything else
(messages, tools, RNG, checkpoint positions, the model fingerprint) is JSON in the safetensors
header metadata. Writes go to a temp file in the same directory, are fsynced, renamed over the
old file and the directory is fsynced: a crash leaves either the old or the new file, never a mix.
The same bytes are the export format.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import struct
import threading
import uuid
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open
from torch import Tensor

from qla_agent.errors import SessionError, SessionNotFoundError
from qla_agent.runtime.checkpoints import Checkpoint, token_array
from qla_agent.runtime.sessions import CheckpointInfo, Session, SessionInfo, check_session_id
from qla_agent.runtime.state import KVCache, MemoryPolicy, SessionState

logger = logging.getLogger(__name__)

FORMAT = "qla-session/1"
SUFFIX = ".safetensors"
_TMP_MARK = ".tmp-"


def _cpu(t: Tensor) -> Tensor:
    """A compact CPU copy (safetensors wants contiguous tensors that own their storage)."""
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _policy_json(policy: MemoryPolicy) -> dict[str, Any]:
    return {"kind": policy.kind, "sink_tokens": policy.sink_tokens, "window_tokens": policy.window_tokens}


def pack(session: Session, *, fingerprint: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata that `unpack` turns back into `session`."""
    tensors = {f"state.{k}": _cpu(v) for k, v in session.state.tensors().items()}
    tensors["tokens"] = (
        torch.frombuffer(bytearray(session.tokens.tobytes()), dtype=torch.int32)
        if session.tokens else torch.empty(0, dtype=torch.int32)
    )
    checkpoints = []
    for k, cp in enumerate(session.checkpoints):
        for i, t in enumerate(cp.recurrent):
            tensors[f"ckpt.{k}.recurrent.{i}"] = _cpu(t)
        for i, t in enumerate(cp.conv):
            tensors[f"ckpt.{k}.conv.{i}"] = _cpu(t)
        for i, c in enumerate(cp.kv or ()):
            tensors[f"ckpt.{k}.kv.{i}.keys"] = _cpu(c.keys)
            tensors[f"ckpt.{k}.kv.{i}.values"] = _cpu(c.values)
        checkpoints.append({
            "n_tokens": cp.n_tokens,
            "n_messages": cp.n_messages,
            "digest": cp.digest.hex(),
            "kv_seen": None if cp.kv is None else [c.n_seen for c in cp.kv],
        })
    meta = {
        "id": session.id,
        "model_id": session.model_id,
        "fingerprint": fingerprint,
        "policy": _policy_json(session.policy),
        "n_tokens": len(session.tokens),
        "live_digest": session.live_digest().hex(),
        "messages": session.messages,
        "tools": session.tools,
        "template_kwargs": session.template_kwargs,
        "rng_seed": session.rng_seed,
        "rng_counter": session.rng_counter,
        "implicit": session.implicit,
        "created": session.created,
        "updated": session.updated,
        "checkpoints": checkpoints,
        "state_bytes": session.nbytes(),
    }
    header = {"format": FORMAT, "session": json.dumps(meta), "state": json.dumps(session.state.metadata())}
    return tensors, header


def _meta(header: dict[str, str] | None, *, source: str, fingerprint: str) -> dict[str, Any]:
    """The session JSON of a file's header, checked for format and model."""
    if not header or header.get("format") != FORMAT:
        raise SessionError(f"{source} is not a qla-agent session file (format {None if not header else header.get('format')!r})")
    try:
        meta = json.loads(header["session"])
    except (KeyError, json.JSONDecodeError) as e:
        raise SessionError(f"{source} has a corrupt session header: {e}") from e
    if meta.get("fingerprint") != fingerprint:
        raise SessionError(
            f"session {meta.get('id')!r} in {source} was saved for model {meta.get('model_id')!r} "
            f"(fingerprint {str(meta.get('fingerprint'))[:16]}), but this engine runs a different model "
            f"(fingerprint {fingerprint[:16]}); load it with the model that wrote it"
        )
    return meta


def info_from_meta(meta: dict[str, Any], *, location: str = "disk") -> SessionInfo:
    """SessionInfo of a session known only from its header."""
    return SessionInfo(
        id=meta["id"],
        model_id=meta["model_id"],
        policy=MemoryPolicy(**meta["policy"]),
        n_tokens=meta["n_tokens"],
        messages=tuple(meta["messages"]),
        tools=None if meta["tools"] is None else tuple(meta["tools"]),
        template_kwargs=meta["template_kwargs"],
        checkpoints=tuple(
            CheckpointInfo(c["n_tokens"], c["n_messages"], bytes.fromhex(c["digest"])) for c in meta["checkpoints"]
        ),
        live_digest=bytes.fromhex(meta["live_digest"]),
        state_bytes=meta["state_bytes"],
        location=location,
        busy=False,
        implicit=meta["implicit"],
        created=meta["created"],
        updated=meta["updated"],
    )


def _checkpoint(tensors: dict[str, Tensor], k: int, entry: dict[str, Any], policy: MemoryPolicy, n_gdn: int) -> Checkpoint:
    kv = None
    if entry["kv_seen"] is not None:
        kv = [
            KVCache.from_tensors(tensors[f"ckpt.{k}.kv.{i}.keys"], tensors[f"ckpt.{k}.kv.{i}.values"],
                                 policy=policy, n_seen=n)
            for i, n in enumerate(entry["kv_seen"])
        ]
    return Checkpoint(
        n_tokens=entry["n_tokens"],
        n_messages=entry["n_messages"],
        digest=bytes.fromhex(entry["digest"]),
        recurrent=[tensors[f"ckpt.{k}.recurrent.{i}"] for i in range(n_gdn)],
        conv=[tensors[f"ckpt.{k}.conv.{i}"] for i in range(n_gdn)],
        kv=kv,
    )


def _tokens(t: Tensor) -> array:
    out = token_array()
    out.frombytes(t.to(torch.int32).contiguous().numpy().tobytes())
    return out


def unpack(tensors: dict[str, Tensor], header: dict[str, str], *, fingerprint: str, source: str,
           device: torch.device | str) -> Session:
    """Inverse of `pack`; raises SessionError for another model's session or a corrupt file."""
    meta = _meta(header, source=source, fingerprint=fingerprint)
    try:
        policy = MemoryPolicy(**meta["policy"])
        state_meta = json.loads(header["state"])
        state = SessionState.from_tensors(
            {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}, state_meta
        )
        n_gdn = int(state_meta["n_recurrent"])
        checkpoints = [_checkpoint(tensors, k, e, policy, n_gdn) for k, e in enumerate(meta["checkpoints"])]
        session = Session(
            id=check_session_id(meta["id"]),
            model_id=meta["model_id"],
            policy=policy,
            state=state,
            tokens=_tokens(tensors["tokens"]),
            messages=meta["messages"],
            tools=meta["tools"],
            template_kwargs=meta["template_kwargs"],
            checkpoints=checkpoints,
            rng_seed=int(meta["rng_seed"]),
            rng_counter=int(meta["rng_counter"]),
            implicit=bool(meta["implicit"]),
            created=float(meta["created"]),
            updated=float(meta["updated"]),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise SessionError(f"{source} holds an incomplete or corrupt session: {e!r}") from e
    if session.state.n_tokens != len(session.tokens) or session.live_digest().hex() != meta["live_digest"]:
        raise SessionError(f"{source} is corrupt: its state and token history disagree")
    session.to(device)
    return session


def to_bytes(session: Session, *, fingerprint: str) -> bytes:
    """The session as one safetensors blob (the export format)."""
    tensors, header = pack(session, fingerprint=fingerprint)
    return safetensors.torch.save(tensors, metadata=header)


def header_of_bytes(data: bytes) -> dict[str, str] | None:
    """The `__metadata__` of a safetensors blob (None if it is not one)."""
    if len(data) < 8:
        return None
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        return None
    try:
        return json.loads(data[8 : 8 + size]).get("__metadata__")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def from_bytes(data: bytes, *, fingerprint: str, device: torch.device | str) -> Session:
    """Inverse of `to_bytes`."""
    header = header_of_bytes(data)
    _meta(header, source="the imported data", fingerprint=fingerprint)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:
        raise SessionError(f"the imported data is not a valid safetensors file: {e}") from e
    return unpack(tensors, header or {}, fingerprint=fingerprint, source="the imported data", device=device)


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(temp_path)` then make it `path` durably: fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)


class SessionStore:
    """A directory of session files for one model (identified by its fingerprint)."""

    def __init__(self, root: Path | str, *, fingerprint: str) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, session_id: str) -> Path:
        return self.root / f"{check_session_id(session_id)}{SUFFIX}"

    def save(self, session: Session) -> None:
        """Write the session atomically (replacing its previous file)."""
        self.write_packed(session.id, *pack(session, fingerprint=self.fingerprint))

    def write_packed(self, session_id: str, tensors: dict[str, Tensor], header: dict[str, str]) -> None:
        """Write what `pack` gave atomically as the session's file."""
        atomic_write(self.path(session_id), lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=header))

    def write_bytes(self, session_id: str, data: bytes) -> None:
        """Store an exported blob as the session's file (atomically)."""
        atomic_write(self.path(session_id), lambda tmp: tmp.write_bytes(data))

    def exists(self, session_id: str) -> bool:
        return self.path(session_id).is_file()

    def header(self, session_id: str) -> dict[str, str] | None:
        path = self.path(session_id)
        if not path.is_file():
            raise SessionNotFoundError(f"no session {session_id!r} in {self.root}")
        try:
            with safe_open(path, framework="pt") as f:
                return f.metadata()
        except Exception as e:
            raise SessionError(f"{path} is not a readable safetensors file: {e}") from e

    def read_info(self, session_id: str) -> SessionInfo:
        """SessionInfo from the file header alone (no tensors read)."""
        meta = _meta(self.header(session_id), source=str(self.path(session_id)), fingerprint=self.fingerprint)
        return info_from_meta(meta)

    def load(self, session_id: str, *, device: torch.device | str) -> Session:
        """Read a session file onto `device`."""
        header = self.header(session_id)
        path = self.path(session_id)
        _meta(header, source=str(path), fingerprint=self.fingerprint)
        try:
            tensors = safetensors.torch.load_file(path, device="cpu")
        except Exception as e:
            raise SessionError(f"{path} is not a readable safetensors file: {e}") from e
        return unpack(tensors, header or {}, fingerprint=self.fingerprint, source=str(path), device=device)

    def delete(self, session_id: str) -> None:
        self.path(session_id).unlink(missing_ok=True)
        _fsync_path(self.root, directory=True)

    def scan(self) -> list[SessionInfo]:
        """Every session of this model in the directory; removes temp files of interrupted writes."""
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") and _TMP_MARK in path.name:
                logger.info("removing %s, left by an interrupted save", path)
                path.unlink(missing_ok=True)
                continue
            if path.suffix != SUFFIX or not path.is_file():
                continue
            try:
                found.append(self.read_info(path.name.removesuffix(SUFFIX)))
            except SessionError as e:
                logger.warning("skipping %s: %s", path, e)
        return found


Done = Callable[[BaseException | None], None]


class SessionWriter:
    """Writes sessions on one background thread, in submission order.

    `submit` copies the session's tensors to CPU at once (so the session may change right after) and
    calls `done(None)` once the file is durable, `done(error)` if writing failed.
    """

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[str, dict[str, Tensor], dict[str, str], Done | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="qla-session-writer", daemon=True)
        self._thread.start()

    def submit(self, session: Session, done: Done | None = None) -> None:
        tensors, header = pack(session, fingerprint=self.store.fingerprint)
        self._queue.put((session.id, tensors, header, done))

    def save(self, session: Session) -> None:
        """Write now (after every earlier submission); raises what the write raised."""
        errors: list[BaseException] = []
        self.submit(session, lambda e: errors.append(e) if e is not None else None)
        self.wait()
        if errors:
            raise errors[0]

    def wait(self) -> None:
        """Block until every submitted write has finished."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            session_id, tensors, header, done = self._queue.get()
            error: BaseException | None = None
            try:
                self.store.write_packed(session_id, tensors, header)
            except Exception as e:
                logger.exception("saving session %s failed", session_id)
                error = e
            finally:
                self._queue.task_done()
            if done is not None:
                done(error)
