"""Execution of admitted jobs on this process's inference scheduler: ``LocalJobRunner``.

``JobQueue`` (jobs.py) decides what becomes a job and answers reads; a runner turns a stored, queued job into a
history entry. ``LocalJobRunner`` is the in-process one:

* each job is one stepped unit of scheduler work at ``Priority.JOB``, ordered by the audio it has left, so a
  short job overtakes a long one between segments and live dictation always cuts in;
* progress and an ETA are kept in memory (read through ``state()``), written to the store at most every
  ``persist_interval`` seconds and published as coalesced ``job_progress`` events to the room ``job:<id>``; the
  terminal status is published uncoalesced so it is never replaced;
* a watcher thread turns finished tickets into history entries (``TranscriptionService.record``), failures
  into ``failed`` with a message, and removes the uploaded file in every case;
* a queued job holds no decoded audio: its stored upload is decoded when its turn comes (and dropped when it
  ends), so a long queue costs disk, not memory;
* at start, jobs left queued or processing by a previous process are resubmitted (nothing is decoded up front).

Another runner (a queue of worker processes) implements the same ``JobRunner`` Protocol (jobs.py).

Threads: the progress callback runs on an inference thread, completion on the watcher thread, everything else on
request handlers; shared in-memory state is guarded by a real (unpatched) lock. Nothing here imports Flask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import concurrency
from ..core.audio import decode_audio
from ..core.engines.base import Engine
from ..core.errors import ApplianceError, Cancelled, InvalidInput, NotFound
from ..core.records import SAMPLE_RATE, TranscribeOptions, Transcript
from .dependencies import EventSink, InferenceQueue
from .job_store import Job, JobStore
from .jobs import RunState, estimate_eta, job_room, options_from_record, publish_final, remove_upload
from .scheduler import Priority, Ticket
from .transcription import TranscriptionService

log = logging.getLogger(__name__)

PERSIST_INTERVAL = 0.5  # seconds between progress writes to SQLite ("at most ~2x/second")
WATCH_INTERVAL = 0.1  # how often the watcher looks for finished tickets


@dataclass(eq=False)
class _Active:
    """In-memory state of a job this process is running or has queued."""

    job_id: str
    filename: str | None
    upload_path: Path | None
    options: TranscribeOptions
    audio_sha256: str
    duration: float
    ticket: Ticket[Any] | None = None  # None until it is submitted (at start-up: by the resume thread)
    progress: float = 0.0
    eta_seconds: float | None = None
    busy_seconds: float = 0.0  # inference time spent on it, for the ETA and the history entry
    step_started: float | None = None
    last_persist: float = 0.0
    marked_processing: bool = False
    cancel_requested: bool = False

    def remaining_audio(self) -> float:
        # A cancelled ticket goes to the front of the job queue so the scheduler drops it (and its audio) now.
        if self.cancel_requested:
            return 0.0
        return self.duration * (1.0 - self.progress)


class LocalJobRunner:
    """Runs jobs as stepped work on the shared inference scheduler of this process."""

    def __init__(self, store: JobStore, transcription: TranscriptionService, scheduler: InferenceQueue,
                 events: EventSink, jobs_dir: Path, *, persist_interval: float = PERSIST_INTERVAL) -> None:
        self.store = store
        self.transcription = transcription
        self.scheduler = scheduler
        self.events = events
        self.jobs_dir = jobs_dir
        self.persist_interval = persist_interval
        self._cond = concurrency.real_threading().Condition()
        self._active: dict[str, _Active] = {}
        self._started = False
        self._stopping = False
        self._threads: list[Any] = []

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Resume jobs a previous process left unfinished, then watch for finished work. Idempotent."""
        with self._cond:
            if self._started:
                return
            self._started = True
            self._stopping = False
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # Must run before any new job exists: it resets every 'processing' row to 'queued'.
        pending = self.store.unfinished()
        self._remove_orphans({Path(job.upload_path).name for job in pending if job.upload_path})
        resumed: list[tuple[Job, _Active]] = []
        for job in pending:
            active = self._resumable(job)
            if active is not None:
                resumed.append((job, active))
        self._threads.append(concurrency.start_os_thread(self._watch, name="job-watcher"))
        if resumed:
            log.info("resuming %d unfinished job(s)", len(resumed))
            self._threads.append(concurrency.start_os_thread(self._resume, args=(resumed,), name="job-resume"))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; queued jobs stay queued in the store and resume at the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        with self._cond:
            self._started = False

    # -- what JobQueue asks of a runner ------------------------------------------------------------------------
    def run(self, job: Job) -> None:
        """Queue an admitted job (its upload decodes when its turn comes); one that cannot be queued is failed
        and re-raised."""
        options = options_from_record(dict(job.options).get("transcribe", {}))
        active = _Active(job_id=job.id, filename=job.filename,
                         upload_path=Path(job.upload_path) if job.upload_path else None, options=options,
                         audio_sha256=str(dict(job.options).get("audio_sha256") or ""),
                         duration=float(job.duration or 0.0))
        with self._cond:
            self._active[job.id] = active
        try:
            self._enqueue(active)
        except ApplianceError as exc:
            with self._cond:
                self._active.pop(job.id, None)
            self._fail(active, f"the job could not be queued: {exc.message}")
            raise

    def cancel(self, job_id: str) -> None:
        """Stop a job this runner holds (queued: never runs; running: stops at its next segment)."""
        with self._cond:
            active = self._active.get(job_id)
            if active is None:
                return
            active.cancel_requested = True
            ticket = active.ticket
        if ticket is not None:
            ticket.cancel()

    def state(self, job_id: str) -> RunState | None:
        """Progress, ETA and queue position of a job this runner holds, else None."""
        with self._cond:
            active = self._active.get(job_id)
            if active is None:
                return None
            ticket, progress, eta = active.ticket, active.progress, active.eta_seconds
        position = self.scheduler.position(ticket) if ticket is not None else None
        return RunState(progress=progress, eta_seconds=eta, queue_position=position)

    def unfinished(self, settle: float = 0.0) -> int:
        """How many jobs this runner holds, after waiting up to ``settle`` s for finished ones to be stored."""
        with self._cond:
            # A job whose transcription is done is only being stored: wait for that rather than count it.
            self._cond.wait_for(lambda: not any(a.ticket is not None and a.ticket.done()
                                                for a in self._active.values()), settle)
            return len(self._active)

    def _enqueue(self, active: _Active) -> None:
        ticket = self.scheduler.submit_steps(self._steps(active), Priority.JOB, label=f"job:{active.job_id}",
                                             remaining=active.remaining_audio)
        with self._cond:
            active.ticket = ticket
            self._cond.notify_all()

    # -- running (inference thread) ----------------------------------------------------------------------------
    def _steps(self, active: _Active) -> Callable[[Engine], Generator[None, None, Transcript]]:
        def run(engine: Engine) -> Generator[None, None, Transcript]:
            self._mark_processing(active)
            # Decoded only now, and held only by this generator: queued jobs keep no audio in memory.
            audio = self._decode(active)
            active.duration = len(audio) / SAMPLE_RATE
            steps = self.transcription.steps(audio, active.options, lambda p: self._on_progress(active, p))(engine)
            del audio
            while True:
                active.step_started = time.monotonic()
                try:
                    next(steps)
                except StopIteration as stop:
                    return stop.value
                finally:
                    active.busy_seconds += time.monotonic() - active.step_started
                    active.step_started = None
                yield

        return run

    def _decode(self, active: _Active) -> np.ndarray:
        if active.upload_path is None or not active.upload_path.is_file():
            raise InvalidInput(f"the uploaded audio of this job is missing ({active.upload_path}); "
                               "the job cannot be run, upload the file again")
        return decode_audio(active.upload_path, tmp_dir=str(self.transcription.tmp_dir),
                            max_seconds=self.transcription.settings.max_audio_seconds)

    def _mark_processing(self, active: _Active) -> None:
        # A model switch restarts the generator: the job is already processing then.
        if active.marked_processing:
            return
        try:
            self.store.mark_processing(active.job_id)
        except ApplianceError as exc:  # cancelled or deleted between its turn coming and now
            raise Cancelled(f"job {active.job_id} no longer runs: {exc.message}") from None
        active.marked_processing = True
        self._publish(active, "processing")

    def _on_progress(self, active: _Active, fraction: float) -> None:
        now = time.monotonic()
        with self._cond:
            active.progress = max(active.progress, min(1.0, max(0.0, fraction)))
            busy = active.busy_seconds + (now - active.step_started if active.step_started else 0.0)
            active.eta_seconds = estimate_eta(busy, active.progress)
            persist = now - active.last_persist >= self.persist_interval or active.progress >= 1.0
            if persist:
                active.last_persist = now
            progress, eta = active.progress, active.eta_seconds
        if persist:
            try:
                still_running = self.store.progress(active.job_id, progress, eta)
            except NotFound:
                still_running = False
            if not still_running and active.ticket is not None:
                log.info("job %s was cancelled or removed; stopping it at its next segment", active.job_id)
                active.ticket.cancel()
        self._publish(active, "processing")

    # -- finishing (watcher thread) ----------------------------------------------------------------------------
    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                finished = [a for a in self._active.values() if a.ticket is not None and a.ticket.done()]
                if not finished:
                    self._cond.wait(WATCH_INTERVAL)
                    continue
            for active in finished:
                try:
                    self._finish(active)
                except Exception:  # one job's bookkeeping must not stop the watcher for the others
                    log.exception("finishing job %s failed", active.job_id)
                finally:
                    with self._cond:
                        self._active.pop(active.job_id, None)
                        self._cond.notify_all()

    def _finish(self, active: _Active) -> None:
        assert active.ticket is not None
        try:
            transcript = active.ticket.result(0)
        except Cancelled as exc:
            if active.cancel_requested:
                self._remove_upload(active)
            else:
                # Server shutdown: the stored job stays queued/processing and resumes at the next start.
                log.info("job %s stopped without finishing: %s", active.job_id, exc.message)
            return
        except ApplianceError as exc:
            self._fail(active, exc.message)
            return
        except Exception as exc:
            self._fail(active, f"transcription failed: {type(exc).__name__}: {exc}")
            return
        if active.cancel_requested:
            self._remove_upload(active)
            return
        try:
            # The owner as stored now: a deleted account's jobs may have been handed to another one meanwhile.
            owner_id = self.store.get(active.job_id).owner_id
            result = self.transcription.record(transcript, active.options, source="job", filename=active.filename,
                                               audio_sha256=active.audio_sha256,
                                               processing_seconds=active.busy_seconds, owner_id=owner_id,
                                               metadata={"job_id": active.job_id,
                                                         "language_probability": transcript.language_probability})
            if result.history_id is None:
                raise ApplianceError("the result could not be stored: there is no history store")
            job = self.store.complete(active.job_id, result.history_id)
        except ApplianceError as exc:
            self._fail(active, f"the result could not be stored: {exc.message}")
            return
        self._remove_upload(active)
        log.info("job %s completed: history entry %s", active.job_id, result.history_id)
        publish_final(self.events, job)

    def _fail(self, active: _Active, message: str) -> None:
        log.warning("job %s failed: %s", active.job_id, message)
        self._remove_upload(active)
        try:
            job = self.store.fail(active.job_id, message)
        except ApplianceError as exc:  # cancelled or deleted meanwhile: its owner's decision stands
            log.info("job %s not marked failed: %s", active.job_id, exc.message)
            return
        publish_final(self.events, job)

    def _remove_upload(self, active: _Active) -> None:
        remove_upload(active.upload_path, self.jobs_dir)

    def _publish(self, active: _Active, status: str) -> None:
        data = {"job_id": active.job_id, "status": status, "progress": round(active.progress, 4),
                "eta_seconds": active.eta_seconds}
        self.events.publish("job_progress", data, room=job_room(active.job_id), coalesce=active.job_id)

    # -- resuming after a restart ------------------------------------------------------------------------------
    def _remove_orphans(self, keep: set[str]) -> None:
        """Delete stored uploads no unfinished job refers to (a crash between completing and clean-up)."""
        for path in self.jobs_dir.iterdir():
            if path.is_file() and path.name not in keep:
                log.info("removing leftover job upload %s", path.name)
                path.unlink(missing_ok=True)

    def _resumable(self, job: Job) -> _Active | None:
        """In-memory state for a stored unfinished job; a job whose record cannot be used fails now."""
        stored = dict(job.options)
        path = Path(job.upload_path) if job.upload_path else None
        active = _Active(job_id=job.id, filename=job.filename, upload_path=path,
                         options=TranscribeOptions(), audio_sha256=str(stored.get("audio_sha256") or ""),
                         duration=float(job.duration or 0.0))
        try:
            active.options = options_from_record(stored.get("transcribe", {}))
        except InvalidInput as exc:
            self._fail(active, exc.message)
            return None
        with self._cond:
            self._active[job.id] = active
        return active

    def _resume(self, resumed: list[tuple[Job, _Active]]) -> None:
        for job, active in resumed:
            if active.cancel_requested or self._stopping:
                continue
            try:
                if active.upload_path is None or not active.upload_path.is_file():
                    raise InvalidInput(f"the uploaded audio of this job is missing ({active.upload_path}); "
                                       "the job cannot be resumed, upload the file again")
                self._enqueue(active)
                log.info("job %s resumed (%s)", job.id, job.filename)
            except ApplianceError as exc:
                with self._cond:
                    self._active.pop(job.id, None)
                self._fail(active, exc.message)
            except Exception as exc:
                log.exception("job %s could not be resumed", job.id)
                with self._cond:
                    self._active.pop(job.id, None)
                self._fail(active, f"the job could not be resumed: {type(exc).__name__}: {exc}")
