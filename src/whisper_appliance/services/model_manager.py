"""ModelManager: the one Whisper model kept in memory, its loading, switching and state.

States: ``unloaded`` -> ``loading`` -> ``ready`` | ``error``. Loads run on a real OS thread. A switch is
graceful: it stops handing out the engine, waits for the calls in flight to finish, closes the old engine
and collects it *before* the new one loads (only one model in memory), then wakes the callers that waited.
A failed load leaves ``error`` with its message; the previous model is not kept behind the caller's back.

Locks and events come from ``concurrency.real_threading()`` because under eventlet the ``threading`` module is
green; blocking waits go through ``concurrency.wait_blocking`` so they never stall the event loop.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from ..core import concurrency
from ..core.catalog import ENGINES
from ..core.config import Settings
from ..core.engines.base import Engine
from ..core.errors import ApplianceError, InvalidInput, ModelUnavailable, hide_paths
from ..core.model_store import ModelStore, check_name

log = logging.getLogger(__name__)

State = Literal["unloaded", "loading", "ready", "error"]


class EngineFactory(Protocol):
    def __call__(self, engine: str, model_name: str, path: Path, *, device: str, compute_type: str,
                 cpu_threads: int, workers: int) -> Engine: ...


@dataclass(frozen=True)
class ModelStatus:
    name: str | None
    engine: str
    device: str
    compute_type: str
    state: State
    load_seconds: float | None = None
    source: str | None = None  # "models_dir" | "bundled" | "download": where the weights came from
    path: str | None = None  # the weights' location on disk
    error: str | None = None
    generation: int = 0  # +1 on every successful load
    progress: float | None = None  # download/load fraction while loading

    def to_dict(self) -> dict[str, Any]:
        """What clients see: no filesystem locations (not ``path``, none in ``error``)."""
        out = asdict(self)
        del out["path"]
        out["error"] = hide_paths(self.error)
        if self.load_seconds is not None:
            out["load_seconds"] = round(self.load_seconds, 3)
        if self.progress is not None:
            out["progress"] = round(self.progress, 4)
        return out


def release_freed_memory() -> None:
    """Hand memory freed by a closed model back to the OS.

    glibc keeps freed blocks in its arenas, so without this RSS after a switch is the old and the new model
    together (measured: base -> tiny.en -> base 392 MB RSS; 185 MB with the trim). No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available (not glibc); freed memory stays with the allocator")


def _default_factory(engine: str, model_name: str, path: Path, *, device: str, compute_type: str,
                     cpu_threads: int, workers: int) -> Engine:
    from ..core.engines import create_engine

    return create_engine(engine, model_name, path, device=device, compute_type=compute_type,
                         cpu_threads=cpu_threads, workers=workers)


class _LoadTicket:
    """One load request: the caller of ``load(wait=True)`` waits on ``done`` for its own outcome."""

    def __init__(self, name: str, engine: str) -> None:
        self.name = name
        self.engine = engine
        self.done = concurrency.real_threading().Event()
        self.status: ModelStatus | None = None


class ModelManager:
    """Owns the one loaded engine. Safe to call from any thread (OS or green)."""

    def __init__(self, settings: Settings, store: ModelStore | None = None,
                 engine_factory: EngineFactory | None = None) -> None:
        threading = concurrency.real_threading()
        self.settings = settings
        self.store = store if store is not None else ModelStore(settings)
        self._factory = engine_factory or _default_factory
        self._cond = threading.Condition()
        self._switch_lock = threading.Lock()  # one load/unload at a time, in request order
        self._cancel = threading.Event()
        self._listeners: list[Callable[[ModelStatus], None]] = []
        self._engine: Engine | None = None
        self._in_flight = 0
        self._pending_loads = 0
        self._status = ModelStatus(name=None, engine=settings.whisper_engine, device=settings.device,
                                   compute_type=settings.compute_type, state="unloaded")

    # -- observers ----------------------------------------------------------------------------------------------
    def status(self) -> ModelStatus:
        with self._cond:
            return self._status

    @property
    def generation(self) -> int:
        return self.status().generation

    @property
    def parallel_calls(self) -> int:
        """How many calls the loaded engine takes at once (1 while none is loaded)."""
        with self._cond:
            return self._engine.parallel_calls if self._engine is not None else 1

    def add_listener(self, fn: Callable[[ModelStatus], None]) -> None:
        """``fn(status)`` runs on every state or progress change, on the thread that made the change."""
        with self._cond:
            self._listeners.append(fn)

    def _set(self, **changes: Any) -> ModelStatus:
        with self._cond:
            self._status = status = replace(self._status, **changes)
            listeners = list(self._listeners)
            self._cond.notify_all()
        for fn in listeners:
            try:
                fn(status)
            except Exception:
                # A broken listener must not break loading; it is logged, not hidden.
                log.exception("model status listener %r failed", fn)
        return status

    # -- loading ---------------------------------------------------------------------------------------------------
    def load(self, name: str | None = None, engine: str | None = None, *, wait: bool = True) -> ModelStatus:
        """Load (or switch to) ``name`` with ``engine``; defaults come from the settings.

        Loading the model that is already ready does nothing. With ``wait`` the call returns when this load
        is ready or failed; without it, it returns the ``loading`` status at once. Do not call it with
        ``wait=True`` from inside ``use()``: the switch waits for that very call to finish.
        """
        name = name or self.settings.whisper_model
        engine = engine or self.settings.whisper_engine
        check_name(name)
        if engine not in ENGINES:
            raise InvalidInput(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        with self._cond:
            current = self._status
            if (self._pending_loads == 0 and current.state == "ready" and current.name == name
                    and current.engine == engine):
                return current
            self._pending_loads += 1
            self._cancel.clear()
        # From here on use() waits: the state is "loading" until this switch (and any queued after it) ends.
        status = self._set(state="loading", name=name, engine=engine, error=None, progress=None,
                           load_seconds=None, source=None, path=None,
                           device=self.settings.device, compute_type=self.settings.compute_type)
        ticket = _LoadTicket(name, engine)
        concurrency.start_os_thread(self._run_load, name=f"model-load-{name}", args=(ticket,))
        if not wait:
            return status
        concurrency.wait_event(ticket.done)
        assert ticket.status is not None
        return ticket.status

    def _run_load(self, ticket: _LoadTicket) -> None:
        try:
            with self._switch_lock:
                self._set(state="loading", name=ticket.name, engine=ticket.engine, error=None, progress=None,
                          load_seconds=None, source=None, path=None)
                self._release_current()
                ticket.status = self._load_new(ticket.name, ticket.engine)
        except BaseException as exc:  # never leave a waiter hanging, whatever happened
            log.exception("model load thread failed")
            ticket.status = self._set(state="error", error=f"{type(exc).__name__}: {exc}", progress=None)
        finally:
            with self._cond:
                self._pending_loads -= 1
            ticket.done.set()

    def _release_current(self) -> None:
        """Wait for in-flight calls, then close and forget the engine so its memory is freed before a load."""
        with self._cond:
            while self._in_flight > 0:
                self._cond.wait()
            old, self._engine = self._engine, None
        if old is not None:
            log.info("releasing model %s (%s)", old.model_name, old.engine_name)
            try:
                old.close()
            finally:
                del old
                gc.collect()
                release_freed_memory()

    def _load_new(self, name: str, engine: str) -> ModelStatus:
        started = time.monotonic()
        last_reported = [-1.0]

        def on_download(done: int, total: int | None) -> None:
            if total:
                fraction = done / total
                if fraction - last_reported[0] >= 0.01 or fraction >= 1.0:
                    last_reported[0] = fraction
                    self._set(progress=fraction)

        try:
            resolved = self.store.resolve(name, engine, progress=on_download, cancel=self._cancel)
            self._set(source=resolved.source, path=str(resolved.path), progress=None)
            loaded = self._factory(engine, name, resolved.path, device=self.settings.device,
                                   compute_type=self.settings.compute_type, cpu_threads=self.settings.cpu_threads,
                                   workers=self.settings.inference_workers)
        except Exception as exc:
            message = exc.message if isinstance(exc, ApplianceError) else f"{type(exc).__name__}: {exc}"
            log.error("loading model %s (%s) failed: %s", name, engine, message,
                      exc_info=not isinstance(exc, ApplianceError))
            return self._set(state="error", error=message, progress=None)
        seconds = time.monotonic() - started
        release_freed_memory()  # loading leaves large temporary buffers behind
        with self._cond:
            self._engine = loaded
            generation = self._status.generation + 1
        log.info("model %s (%s, %s, %s) ready in %.2f s", name, engine, loaded.device, loaded.compute_type, seconds)
        return self._set(state="ready", device=loaded.device, compute_type=loaded.compute_type,
                         load_seconds=seconds, generation=generation, error=None, progress=None)

    def cancel_download(self) -> bool:
        """Ask a running load to stop its download. True when a load was in progress."""
        with self._cond:
            if self._pending_loads == 0:
                return False
            self._cancel.set()
            return True

    def unload(self) -> None:
        """Release the model (after in-flight calls finish); state becomes ``unloaded``."""
        def run() -> None:
            with self._switch_lock:
                self._release_current()
                self._set(state="unloaded", error=None, progress=None, load_seconds=None)

        concurrency.wait_blocking(run)

    # -- using -------------------------------------------------------------------------------------------------------
    def _acquire(self, timeout: float | None) -> Engine:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._status.state == "loading":
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ModelUnavailable(f"model {self._status.name} is still loading", retry_after=10)
                self._cond.wait(remaining)
            status = self._status
            if status.state != "ready" or self._engine is None:
                if status.state == "error":
                    raise ModelUnavailable(f"model {status.name} ({status.engine}) failed to load: {status.error}",
                                           retry_after=30)
                raise ModelUnavailable("no model is loaded", retry_after=30)
            self._in_flight += 1
            return self._engine

    def _release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    @contextmanager
    def use(self, timeout: float | None = None) -> Iterator[Engine]:
        """The ready engine, for the duration of the block. Waits while a model loads (up to ``timeout``);
        raises ``ModelUnavailable`` (503 + Retry-After) when none is ready. A switch waits for the block."""
        engine = concurrency.wait_blocking(self._acquire, timeout)
        try:
            yield engine
        finally:
            self._release()
