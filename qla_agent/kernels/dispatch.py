"""Choose the implementation of a kernel call: a fast backend (TileLang, CUDA) or the torch reference.

A fast backend is a module listed in FAST_BACKENDS that exposes, for each op it implements, a
function with the public signature minus `impl` (gdn_prefill, gdn_decode, causal_conv1d,
causal_conv1d_update, rms_norm, rms_norm_rope, add_rms_norm, gated_rms_norm, silu_mul, sigmoid_gate_mul), plus

    def supports(op: str, **arguments) -> str | None

which gets the op name and the call's (already validated) arguments by name and returns None when it
can run them, else a short reason ("K=96 is not a power of two"). The backend module is imported
lazily, only when CUDA tensors arrive, because importing tilelang is slow.

impl="reference" always takes the reference; impl="auto" takes the fast backend when it supports the
call and otherwise falls back to the reference, logging the reason once; impl="tilelang" raises
ValueError with the reason instead of falling back. The environment variable QLA_KERNEL_IMPL
overrides: "reference" forces the reference everywhere (debugging), "tilelang" makes "auto" strict.

A call's choice can be remembered by a signature: a key that decides both the op's checks and
`supports` (`checks.call_signature`, or gdn_prefill's `checks.prefill_signature`, which leaves T out).
`resolve(..., signature=)` keeps a fast function it chose under (op, impl, QLA_KERNEL_IMPL as set,
signature), and `remembered` returns it for a later call with the same key, which then skips the
checks, the backend import test and `supports`. Falling back is never remembered (each such call is
resolved, and logged once, as before). `call` is the whole path, for the public entry points (gdn_prefill
takes it by hand, building its argument dict only for a new signature).
"""

import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from qla_agent.kernels import reference, reference_conv, reference_norms
from qla_agent.kernels.checks import call_signature

logger = logging.getLogger(__name__)

IMPLS = ("auto", "tilelang", "reference")
ENV_VAR = "QLA_KERNEL_IMPL"
FAST_BACKENDS: dict[str, str] = {"tilelang": "qla_agent.kernels.tilelang"}

REFERENCE_OPS: dict[str, Callable[..., Any]] = {
    "gdn_prefill": reference.gdn_prefill,
    "gdn_decode": reference.gdn_decode,
    "causal_conv1d": reference_conv.causal_conv1d,
    "causal_conv1d_update": reference_conv.causal_conv1d_update,
    "rms_norm": reference_norms.rms_norm,
    "rms_norm_rope": reference_norms.rms_norm_rope,
    "add_rms_norm": reference_norms.add_rms_norm,
    "gated_rms_norm": reference_norms.gated_rms_norm,
    "silu_mul": reference_norms.silu_mul,
    "sigmoid_gate_mul": reference_norms.sigmoid_gate_mul,
}

# The device type the fast backends run on.
FAST_DEVICE_TYPE = "cuda"
# Remembered choices kept at most: one per op, layout and impl, and per T for all but gdn_prefill (~10 per
# new prompt length in the runtime); when full they are all dropped and each op resolves once again.
MAX_ROUTES = 1024

# QLA_KERNEL_IMPL as stored, read for every remembered choice: os.environ.get raises and catches a
# KeyError inside when the variable is unset (0.7 us on the CPU machine), os.environ's own store (a
# dict keyed by encoded names, which every write through os.environ updates) answers in 0.05 us.
_ENV_STORE: dict | None = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENV_STORE is not None else None

# Backend name -> imported module, or the reason it could not be imported.
_loaded: dict[str, ModuleType | str] = {}
_logged: set[tuple[str, str]] = set()
# (op, impl, QLA_KERNEL_IMPL as stored, signature) -> the fast function resolve chose.
_routes: dict[tuple, Callable[..., Any]] = {}


def load_backend(name: str) -> ModuleType | str:
    """Import a fast backend once; return the module, or why it is unavailable."""
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(FAST_BACKENDS[name])
        # A broken toolchain can fail the import in several ways; auto must still fall back.
        except (ImportError, OSError, RuntimeError) as e:
            _loaded[name] = f"backend {name!r} cannot be imported ({e})"
    return _loaded[name]


def requested_impl(impl: str) -> str:
    """The effective impl after QLA_KERNEL_IMPL; raises ValueError on unknown values."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env and env not in IMPLS:
        raise ValueError(f"{ENV_VAR} must be one of {IMPLS} (or unset), got {env!r}")
    if env == "reference":
        return "reference"
    if env == "tilelang" and impl == "auto":
        return "tilelang"
    return impl


def _why_not(
    name: str, op: str, arguments: dict[str, Any], device: torch.device
) -> tuple[str | None, Callable[..., Any] | None]:
    """(None, fast function) if backend `name` can run this call, else (reason, None)."""
    if device.type != FAST_DEVICE_TYPE:
        return f"inputs are on {device.type}, {name} kernels need CUDA", None
    backend = load_backend(name)
    if isinstance(backend, str):
        return backend, None
    fn = getattr(backend, op, None)
    if fn is None or not hasattr(backend, "supports"):
        return f"backend {name!r} does not implement {op}", None
    reason = backend.supports(op, **arguments)
    return (reason, None) if reason else (None, fn)


def _log_fallback(op: str, reason: str, on_cuda: bool) -> None:
    if (op, reason) in _logged:
        return
    _logged.add((op, reason))
    level = logging.INFO if on_cuda else logging.DEBUG
    logger.log(level, "%s: using the torch reference (%s)", op, reason)


def _stored_setting() -> object:
    """QLA_KERNEL_IMPL as os.environ stores it now (None when unset), for keys only."""
    return os.environ.get(ENV_VAR) if _ENV_STORE is None else _ENV_STORE.get(_ENV_KEY)


def remembered(op: str, impl: str, signature: tuple | None) -> Callable[..., Any] | None:
    """The fast function `resolve` chose for an earlier call of `op` with this signature, impl and
    QLA_KERNEL_IMPL setting (read on every call); None when there is none or no signature."""
    if signature is None:
        return None
    return _routes.get((op, impl, _stored_setting(), signature))


def resolve(
    op: str, impl: str, arguments: dict[str, Any], *, signature: tuple | None = None
) -> Callable[..., Any]:
    """The function that runs `op` on `arguments` (the call's arguments by name, without impl, already
    checked); a fast choice is remembered under `signature` when given (see `remembered`)."""
    stored = _stored_setting()
    chosen = requested_impl(impl)
    if chosen == "reference":
        return REFERENCE_OPS[op]
    device = next(a.device for a in arguments.values() if isinstance(a, torch.Tensor))
    reason, fn = _why_not("tilelang", op, arguments, device)
    if fn is not None:
        if signature is not None:
            if len(_routes) >= MAX_ROUTES:
                _routes.clear()
            _routes[op, impl, stored, signature] = fn
        return fn
    if chosen == "tilelang":
        raise ValueError(f"impl='tilelang' cannot run {op}: {reason}; pass impl='auto' to fall back to the reference")
    _log_fallback(op, reason, on_cuda=device.type == FAST_DEVICE_TYPE)
    return REFERENCE_OPS[op]


def call(
    op: str, impl: str, arguments: dict[str, Any], check: Callable[[], object], *, signature: tuple | None = None
) -> Any:
    """Run `op` on `arguments` (the call's arguments by name, without impl): the fast function remembered
    for the call's signature (`checks.call_signature(arguments)` unless given), else `check()` (the op's
    validation, raising its ValueError) and `resolve`."""
    key = call_signature(arguments) if signature is None else signature
    fn = remembered(op, impl, key)
    if fn is None:
        check()
        fn = resolve(op, impl, arguments, signature=key)
    return fn(**arguments)
