"""Real OS threads and blocking waits, whichever async mode the server runs in.

This is the only module that knows about eventlet. The server's sockets are eventlet green sockets (its WSGI
server and Socket.IO transport), but we deliberately do NOT monkey-patch the standard library: inference, ffmpeg
and downloads run on real OS threads, and a green thread that must wait for them hands the wait to
``eventlet.tpool`` so the event loop keeps serving. (Under monkey-patching ``threading`` would hand out green
threads and a CPU-heavy call would freeze every socket; keeping the standard library unpatched makes that
impossible by construction.) So:

* ``iterate_blocking(gen)`` does the same for each step of a generator (streamed exports),
* ``start_os_thread`` starts a real OS thread,
* ``real_threading`` is the unpatched module for locks/conditions shared with those threads,
* ``wait_blocking(fn)`` runs a call that blocks (on a lock, a subprocess, the disk) without stalling the event
  loop: ``eventlet.tpool`` when the server runs on eventlet, a plain call otherwise,
* ``wait_event(event)`` waits for a real ``threading.Event`` set by an OS thread (inference done, a model
  loaded). On the event loop it is a green wait that holds none of tpool's 20 threads: waiting for inference can
  take minutes, and 20 such waits would otherwise stall every other blocking call (history, login, decoding),
* ``use_eventlet()`` is called once by the server entry point when ``ASYNC_MODE=eventlet``,
* ``start_wsgi_listener`` runs a small extra WSGI app (the HTTP->HTTPS redirect) in the right way for the mode.

With ``ASYNC_MODE=threading`` all of this is plain ``threading``.
"""

from __future__ import annotations

import importlib
import sys
import threading as _threading_at_import
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

_eventlet_active = False


def use_eventlet() -> None:
    """Select eventlet for the server's event loop (no monkey-patching; see the module docstring)."""
    global _eventlet_active
    import warnings

    with warnings.catch_warnings():
        # eventlet announces its bug-fix-only status at import; docs/ARCHITECTURE.md explains why we keep it.
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("eventlet")
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
    """Call ``fn`` (which may block on a real lock/event) without blocking the event loop.

    Only the event loop's own thread (the main thread) hands the call to ``eventlet.tpool``; any other OS thread
    (inference, model loading, readers) may simply block, and must: eventlet's events cannot wake a waiter that
    lives on another thread's hub.
    """
    threading = real_threading()
    if _eventlet_active and threading.current_thread() is threading.main_thread():
        tpool = importlib.import_module("eventlet.tpool")
        return tpool.execute(fn, *args, **kwargs)
    return fn(*args, **kwargs)


_POLL_FIRST = 0.002
_POLL_MAX = 0.05


def wait_event(event: Any, timeout: float | None = None) -> bool:
    """``event.wait(timeout)`` for a real ``threading.Event`` that another OS thread sets; True once it is set.

    On the event loop's thread under eventlet this polls with green sleeps (2 ms, doubling up to 50 ms): eventlet
    cannot wake a green thread from another OS thread except through tpool, whose few threads must stay free for
    short blocking calls. A poll costs one check of a flag; the added latency is at most 50 ms.
    """
    threading = real_threading()
    if not (_eventlet_active and threading.current_thread() is threading.main_thread()):
        return bool(event.wait(timeout))
    import time

    eventlet = importlib.import_module("eventlet")
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = _POLL_FIRST
    while not event.is_set():
        pause = delay
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pause = min(pause, left)
        eventlet.sleep(pause)
        delay = min(delay * 2, _POLL_MAX)
    return True


def iterate_blocking(items: Iterator[T]) -> Iterator[T]:
    """``items`` with each ``next()`` run by ``wait_blocking``: a long generator that reads the database and
    formats (a history export) then never stalls the event loop between the chunks it yields."""
    end = object()
    try:
        while (item := wait_blocking(next, items, end)) is not end:
            yield item  # type: ignore[misc]
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def cooperative_sleep(seconds: float) -> None:
    """Sleep that yields to other green threads under eventlet."""
    if _eventlet_active:
        importlib.import_module("eventlet").sleep(seconds)
    else:
        import time

        time.sleep(seconds)


def start_wsgi_listener(app: Callable[..., Any], host: str, port: int, *, name: str) -> Any:
    """Serve ``app`` on plain HTTP in the background; returns an object with ``close()``."""
    if _eventlet_active:
        eventlet = importlib.import_module("eventlet")
        wsgi = importlib.import_module("eventlet.wsgi")
        sock = eventlet.listen((host, port))
        green = eventlet.spawn(wsgi.server, sock, app, log_output=False)

        class _Listener:
            def close(self) -> None:
                green.kill()
                sock.close()

        return _Listener()
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True)
    start_os_thread(server.serve_forever, name=name)

    class _Closer:
        def close(self) -> None:
            server.shutdown()
            server.server_close()

    return _Closer()
