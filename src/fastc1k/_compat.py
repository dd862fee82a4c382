"""Picks the engine: the C extension (fastc1k._core) or the pure one (fastc1k._core_py).

FASTC1K_ENGINE=c|python forces one. Without it, C is used when it is built and the pure
engine otherwise, with a one-line warning. Asking for C when it is not built is an
error, never a silent fallback.
"""
from __future__ import annotations

import os
import sys
from types import ModuleType

__all__ = ["load_engine", "c_available", "EngineError", "ENGINES", "resolve_backend", "say_backend_fallback"]

ENGINES = ("c", "python")
_warned = False
_said_fallback = False


class EngineError(RuntimeError):
    pass


def _import_c() -> tuple[ModuleType | None, str]:
    try:
        from . import _core
    except ImportError as exc:
        return None, f"{exc}"
    if not getattr(_core, "ENGINE_READY", False):
        return None, "fastc1k._core is a placeholder build"
    return _core, ""


def c_available() -> bool:
    return _import_c()[0] is not None


def load_engine(name: str | None = None) -> ModuleType:
    """The engine module for `name` ("c", "python"), FASTC1K_ENGINE, or the best built one."""
    global _warned
    requested = name or os.environ.get("FASTC1K_ENGINE") or None
    if requested is not None:
        requested = requested.strip().lower()
        if requested in ("py", "pure"):
            requested = "python"
        if requested not in ENGINES:
            raise EngineError(f"engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "python":
        from . import _core_py
        return _core_py
    mod, why = _import_c()
    if mod is not None:
        return mod
    if requested == "c":
        raise EngineError(f"the C engine was requested but is not built ({why}); "
                          "reinstall without FASTC1K_NO_EXTENSIONS, or use --engine python")
    if not _warned:
        _warned = True
        print(f"fastc1k: C engine not available ({why}); using the pure-Python engine", file=sys.stderr)
    from . import _core_py
    return _core_py


def say_backend_fallback(why: str) -> None:
    """The one line (per process) of a server asked for io_uring that serves with epoll."""
    global _said_fallback
    if not _said_fallback:
        _said_fallback = True
        print(f"fastc1k: io_uring unavailable ({why}); serving with epoll", file=sys.stderr, flush=True)


def resolve_backend(engine: ModuleType, config):
    """`config`, or (io_uring asked for, not available to `engine` here) the same with
    backend="epoll", after one line on stderr. Never an error: epoll always works."""
    if config.backend != "io_uring":
        return config
    probe = getattr(engine, "uring_unavailable", None)
    why = probe() if probe is not None else f"the {engine.ENGINE_NAME} engine has no io_uring backend"
    if not why:
        return config
    say_backend_fallback(why)
    return config.replace(backend="epoll")
