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
* ``start_wsgi_listener`` runs a small extra WSGI app (the HTTP->HTTPS redirect) in the right way for the mode,
* ``eventlet_server_options`` gives eventlet's WSGI server its connection limits: a socket timeout, a keep-alive
  timeout, a deliberate green-thread pool and a per-IP connection cap (``ConnectionCounter``).

With ``ASYNC_MODE=threading`` all of this is plain ``threading``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading as _threading_at_import
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ConnectionLimits:
    """How the eventlet WSGI server treats client connections (Settings: SOCKET_TIMEOUT, KEEPALIVE_TIMEOUT,
    MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP)."""

    socket_timeout: float = 60.0   # a read or write that makes no progress for this long closes the connection
    keepalive_timeout: float = 30.0  # an idle keep-alive (or never-used) connection waits this long for a request
    max_connections: int = 1000    # green threads serving connections at once; more wait in the listen backlog
    max_per_ip: int = 128          # connections one address may hold; more are closed at once


class ConnectionCounter:
    """Open connections per key (an IP address), refusing more than ``limit`` at once. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = real_threading().Lock()
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        with self._lock:
            count = self._open.get(key, 0)
            if count >= self.limit:
                return False
            self._open[key] = count + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            count = self._open.get(key, 0) - 1
            if count > 0:
                self._open[key] = count
            else:
                self._open.pop(key, None)

    def count(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


def _limited_protocol(counter: ConnectionCounter) -> type:
    """eventlet's HttpProtocol, serving a connection only while its address holds fewer than the cap."""
    wsgi = importlib.import_module("eventlet.wsgi")
    greenio = importlib.import_module("eventlet.greenio")
    refused_at: dict[str, float] = {}

    class LimitedHttpProtocol(wsgi.HttpProtocol):
        def __init__(self, conn_state: list[Any], server: Any) -> None:
            address = conn_state[0]
            ip = str(address[0]) if isinstance(address, tuple) and address else str(address)
            if not counter.acquire(ip):
                now = time.monotonic()
                if now - refused_at.get(ip, -60.0) >= 60.0:  # once a minute per address, not once per connection
                    refused_at[ip] = now
                    log.warning("connection from %s refused: it already holds %d (MAX_CONNECTIONS_PER_IP)",
                                ip, counter.limit)
                greenio.shutdown_safe(conn_state[1])
                conn_state[1].close()
                return
            try:
                super().__init__(conn_state, server)
            finally:
                counter.release(ip)

    return LimitedHttpProtocol


def eventlet_server_options(limits: ConnectionLimits) -> dict[str, Any]:
    """Keyword arguments for ``eventlet.wsgi.server`` (and Flask-SocketIO's ``run``) that apply ``limits``.

    A Socket.IO WebSocket stays open past the socket timeout because Engine.IO pings it every 25 s.
    """
    return {
        "socket_timeout": limits.socket_timeout,
        "keepalive": limits.keepalive_timeout,
        "max_size": limits.max_connections,
        "protocol": _limited_protocol(ConnectionCounter(limits.max_per_ip)),
    }


def start_wsgi_listener(app: Callable[..., Any], host: str, port: int, *, name: str,
                        limits: ConnectionLimits | None = None) -> Any:
    """Serve ``app`` on plain HTTP in the background; returns an object with ``close()``."""
    if _eventlet_active:
        eventlet = importlib.import_module("eventlet")
        wsgi = importlib.import_module("eventlet.wsgi")
        sock = eventlet.listen((host, port))
        green = eventlet.spawn(wsgi.server, sock, app, log_output=False,
                               **eventlet_server_options(limits or ConnectionLimits()))

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
