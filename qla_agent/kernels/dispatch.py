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
"""

import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from qla_agent.kernels import reference, reference_conv, reference_norms

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

# Backend name -> imported module, or the reason it could not be imported.
_loaded: dict[str, ModuleType | str] = {}
_logged: set[tuple[str, str]] = set()


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
    if device.type != "cuda":
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


def resolve(op: str, impl: str, arguments: dict[str, Any]) -> Callable[..., Any]:
    """The function that runs `op` on `arguments` (the call's arguments by name, without impl)."""
    chosen = requested_impl(impl)
    if chosen == "reference":
        return REFERENCE_OPS[op]
    device = next(a.device for a in arguments.values() if isinstance(a, torch.Tensor))
    reason, fn = _why_not("tilelang", op, arguments, device)
    if fn is not None:
        return fn
    if chosen == "tilelang":
        raise ValueError(f"impl='tilelang' cannot run {op}: {reason}; pass impl='auto' to fall back to the reference")
    _log_fallback(op, reason, on_cuda=device.type == "cuda")
    return REFERENCE_OPS[op]
