"""Real OS threads and blocking waits, whichever async mode the server runs in.

This is the only module that knows about eventlet. Under ``eventlet.monkey_patch()`` the ``threading`` module
hands out green threads and green locks, which would run CPU-heavy inference on the event loop and freeze every
socket. So:

* ``start_os_thread`` always starts a real OS thread (eventlet's saved original ``threading``),
* ``real_threading`` gives the unpatched module for locks/conditions shared with those threads,
* ``wait_blocking(fn)`` runs a call that blocks on such a primitive without stalling the event loop
  (``eventlet.tpool`` when the loop is eventlet, a plain call otherwise),
* ``enable_eventlet()`` is called once by the server entry point before anything else is imported.

With ``ASYNC_MODE=threading`` nothing is patched and all of this is plain ``threading``.
"""

from __future__ import annotations

import importlib
import sys
import threading as _threading_at_import
from types import ModuleType
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_eventlet_active = False


def enable_eventlet() -> None:
    """Monkey-patch the standard library for eventlet. Must run before Flask/socket modules are imported."""
    global _eventlet_active
    import warnings

    with warnings.catch_warnings():
        # eventlet announces its bug-fix-only status at import; docs/ARCHITECTURE.md explains why we keep it.
        warnings.simplefilter("ignore", DeprecationWarning)
        import eventlet

    eventlet.monkey_patch()
    _eventlet_active = True


def eventlet_active() -> bool:
    return _eventlet_active


def real_threading() -> ModuleType:
    """The unpatched ``threading`` module (identical to ``threading`` when eventlet is not in use)."""
    if "eventlet" in sys.modules:
        patcher = importlib.import_module("eventlet.patcher")
        return patcher.original("threading")
    return _threading_at_import


def start_os_thread(target: Callable[..., Any], *, name: str, args: tuple = ()) -> Any:
    thread = real_threading().Thread(target=target, name=name, args=args, daemon=True)
    thread.start()
    return thread


def wait_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` (which may block on a real lock/event) without blocking the event loop."""
    if _eventlet_active:
        tpool = importlib.import_module("eventlet.tpool")
        return tpool.execute(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def cooperative_sleep(seconds: float) -> None:
    """Sleep that yields to other green threads under eventlet."""
    if _eventlet_active:
        importlib.import_module("eventlet").sleep(seconds)
    else:
        import time

        time.sleep(seconds)
