"""The asynchronous job runner: queued transcriptions with progress, on top of ``JobStore`` and the scheduler.

``JobQueue`` owns what happens to a job between ``POST /api/jobs`` and its history entry:

* the upload is decoded once when it is accepted (so non-audio is refused before the 202, and the duration is
  known for ordering) and kept under ``DATA_DIR/jobs/<job_id><ext>`` until the job ends;
* each job is one stepped unit of scheduler work at ``Priority.JOB``, ordered by the audio it has left, so a
  short job overtakes a long one between segments and live dictation always cuts in;
* progress and an ETA are kept in memory (read by ``GET /api/jobs/<id>``), written to the store at most every
  ``persist_interval`` seconds and published as coalesced ``job_progress`` events to the room ``job:<id>``; the
  terminal status is published uncoalesced so it is never replaced;
* a watcher thread turns finished tickets into history entries (``TranscriptionService.record``), failures
  into ``failed`` with a message, and removes the uploaded file in every case;
* at start, jobs left queued or processing by a previous process are decoded again and resubmitted.

Threads: the progress callback runs on the inference thread, completion on the watcher thread, everything
else on request handlers; shared in-memory state is guarded by a real (unpatched) lock. Nothing here imports
Flask.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..core import concurrency
from ..core.audio import decode_audio
from ..core.engines.base import Engine
from ..core.errors import ApplianceError, Cancelled, Conflict, InvalidInput, NotFound
from ..core.options import check_language_for_model
from ..core.records import SAMPLE_RATE, TranscribeOptions, Transcript
from .job_store import Job, JobStore
from .scheduler import InferenceScheduler, Priority, Ticket
from .transcription import SpooledAudio, TranscriptionResult, TranscriptionService

log = logging.getLogger(__name__)

PERSIST_INTERVAL = 0.5  # seconds between progress writes to SQLite ("at most ~2x/second")
WATCH_INTERVAL = 0.1  # how often the watcher looks for finished tickets
FINISHING_WAIT = 10.0  # how long a restore waits for jobs whose transcription is done to be stored
_EXTENSION = re.compile(r"\.[a-z0-9]{1,8}")
_OPTION_FIELDS = frozenset(f.name for f in fields(TranscribeOptions))


def upload_extension(filename: str | None) -> str:
    """The stored file's extension: the upload's own when it is short and plain, else ``.audio``.

    Only the extension is taken from the client (ffmpeg does not need it, people reading the folder do);
    the rest of the stored name is the job id.
    """
    suffix = Path(filename or "").suffix.lower()
    return suffix if _EXTENSION.fullmatch(suffix) else ".audio"


def estimate_eta(busy_seconds: float, progress: float) -> float | None:
    """Seconds left, extrapolating processing time spent so far over the fraction done; None when too early."""
    if progress >= 1.0:
        return 0.0
    if progress < 0.01 or busy_seconds <= 0:
        return None
    return round(busy_seconds * (1.0 - progress) / progress, 1)


def options_from_record(stored: Any) -> TranscribeOptions:
    """Rebuild decoding options saved with a job (``asdict`` of ``TranscribeOptions``)."""
    if not isinstance(stored, dict) or set(stored) - _OPTION_FIELDS:
        raise InvalidInput(f"the job's stored options are not valid decoding options: {stored!r}")
    return TranscribeOptions(**stored)


@dataclass(frozen=True)
class JobView:
    """A job as clients see it: the stored record overlaid with live progress and queue position."""

    job_id: str
    status: str
    progress: float
    eta_seconds: float | None
    queue_position: int | None
    error: dict[str, str] | None
    filename: str | None
    duration: float | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    history_id: int | None
    output: str
    cached: bool
    result: dict[str, Any] | None = None

    @property
    def links(self) -> dict[str, str]:
        return {"self": f"/api/jobs/{self.job_id}", "result": f"/api/jobs/{self.job_id}/result"}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "result"}
        out["progress"] = round(self.progress, 4)
        out["links"] = self.links
        if self.result is not None:  # GET /api/jobs/<id> of a completed job; lists leave it out
            out["result"] = self.result
        return out

    def event(self) -> dict[str, Any]:
        """The ``job_progress`` Socket.IO payload."""
        out: dict[str, Any] = {"job_id": self.job_id, "status": self.status, "progress": round(self.progress, 4),
                               "eta_seconds": self.eta_seconds}
        if self.status == "queued":
            out["queue_position"] = self.queue_position
        if self.error is not None:
            out["error"] = self.error
        if self.history_id is not None:
            out["history_id"] = self.history_id
        return out


@dataclass(frozen=True)
class JobResult:
    """A finished job's transcription, as stored in its history entry."""

    job_id: str
    result: TranscriptionResult
    output: str  # the default format chosen at submission
    filename: str | None
    word_timestamps: bool


@dataclass(eq=False)
class _Active:
    """In-memory state of a job this process is running or has queued."""

    job_id: str
    filename: str | None
    upload_path: Path | None
    options: TranscribeOptions
    audio_sha256: str
    duration: float
    ticket: Ticket[Any] | None = None  # None while its audio is still being decoded at start-up
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


class JobQueue:
    def __init__(self, settings: Any, job_store: JobStore, transcription: TranscriptionService,
                 scheduler: InferenceScheduler, events: Any, *, persist_interval: float = PERSIST_INTERVAL) -> None:
        self.settings = settings
        self.store = job_store
        self.transcription = transcription
        self.scheduler = scheduler
        self.events = events
        self.persist_interval = persist_interval
        self.jobs_dir = Path(settings.data_dir) / "jobs"
        threading = concurrency.real_threading()
        self._cond = threading.Condition()
        self._active: dict[str, _Active] = {}
        self._started = False
        self._stopping = False
        self._suspended = False
        self._submitting = 0  # submissions past the restore check and not yet registered in _active
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

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Around a database restore: only when no job is unfinished, with new submissions refused meanwhile; then
        the queue is reloaded from the (restored) database, resuming what that one has unfinished."""
        with self._cond:
            if self._suspended:
                raise Conflict("a restore is already in progress", code="restore_in_progress")
            # A job whose transcription is done is only being stored: wait for that rather than refuse.
            self._cond.wait_for(lambda: not any(a.ticket is not None and a.ticket.done()
                                                for a in self._active.values()), FINISHING_WAIT)
            unfinished = len(self._active) + self._submitting
            if unfinished:
                raise Conflict(f"{unfinished} transcription job(s) are queued or running; wait for them or "
                               "cancel them before restoring a backup", code="jobs_running")
            self._suspended = True
        try:
            yield
        finally:
            self.stop()
            self.start()
            with self._cond:
                self._suspended = False

    # -- submitting --------------------------------------------------------------------------------------------
    def submit(self, spooled: SpooledAudio, options: TranscribeOptions, *, output: str = "json",
               requested_model: str | None = None) -> JobView:
        """Accept an upload as a job: 400/413/415 for bad audio and 409 for another model, before anything
        is stored. A cached result completes the job at once. Blocking work runs off the event loop."""
        return concurrency.wait_blocking(self._submit, spooled, options, output, requested_model)

    def _submit(self, spooled: SpooledAudio, options: TranscribeOptions, output: str,
                requested_model: str | None) -> JobView:
        with self._cond:
            if self._suspended:
                raise Conflict("a backup is being restored; submit the job again in a moment",
                               code="restore_in_progress")
            self._submitting += 1
        try:
            return self._admit(spooled, options, output, requested_model)
        finally:
            with self._cond:
                self._submitting -= 1
                self._cond.notify_all()

    def _admit(self, spooled: SpooledAudio, options: TranscribeOptions, output: str,
               requested_model: str | None) -> JobView:
        """Check, store and queue one submission; counted in ``_submitting`` until it is registered."""
        if requested_model:
            status = self.transcription.check_requested_model(requested_model)
        else:
            # A job may be queued while the model loads; it waits in the scheduler.
            status = self.transcription.models.status()
        if status.name:
            check_language_for_model(options, status.name)
        record = {"transcribe": asdict(options), "output": output, "audio_sha256": spooled.sha256,
                  "size_bytes": spooled.size}

        hit = self.transcription.cached(spooled.sha256, options)
        if hit is not None and hit.history_id is not None:
            job = self.store.create(spooled.filename, None, {**record, "cached": True},
                                    duration=hit.transcript.duration)
            job = self.store.complete(job.id, hit.history_id)
            log.info("job %s: cached result from history entry %s", job.id, hit.history_id)
            view = self._view(job)
            self._publish_final(view)
            return view

        audio = decode_audio(spooled.path, tmp_dir=str(self.transcription.tmp_dir))
        duration = len(audio) / SAMPLE_RATE
        job_id = uuid.uuid4().hex
        path = self.jobs_dir / f"{job_id}{upload_extension(spooled.filename)}"
        _keep_copy(spooled.path, path)
        try:
            job = self.store.create(spooled.filename, str(path), record, duration=duration, job_id=job_id)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        active = _Active(job_id=job.id, filename=job.filename, upload_path=path, options=options,
                         audio_sha256=spooled.sha256, duration=duration)
        with self._cond:
            self._active[job.id] = active
        try:
            self._enqueue(active, audio)
        except ApplianceError as exc:
            self._fail(active, f"the job could not be queued: {exc.message}")
            raise
        log.info("job %s queued: %s, %.1f s of audio", job.id, job.filename, duration)
        return self._view(job)

    def _enqueue(self, active: _Active, audio: np.ndarray) -> None:
        ticket = self.scheduler.submit_steps(self._steps(active, audio), Priority.JOB, label=f"job:{active.job_id}",
                                             remaining=active.remaining_audio)
        with self._cond:
            active.ticket = ticket
            self._cond.notify_all()

    # -- running (inference thread) ----------------------------------------------------------------------------
    def _steps(self, active: _Active, audio: np.ndarray) -> Callable[[Engine], Generator[None, None, Transcript]]:
        inner = self.transcription.steps(audio, active.options, lambda p: self._on_progress(active, p))

        def run(engine: Engine) -> Generator[None, None, Transcript]:
            self._mark_processing(active)
            steps = inner(engine)
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
            result = self.transcription.record(transcript, active.options, source="job", filename=active.filename,
                                               audio_sha256=active.audio_sha256,
                                               processing_seconds=active.busy_seconds,
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
        self._publish_final(self._view(job))

    def _fail(self, active: _Active, message: str) -> None:
        log.warning("job %s failed: %s", active.job_id, message)
        self._remove_upload(active)
        try:
            job = self.store.fail(active.job_id, message)
        except ApplianceError as exc:  # cancelled or deleted meanwhile: its owner's decision stands
            log.info("job %s not marked failed: %s", active.job_id, exc.message)
            return
        self._publish_final(self._view(job))

    @staticmethod
    def _remove_upload(active: _Active) -> None:
        if active.upload_path is not None:
            active.upload_path.unlink(missing_ok=True)

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
                audio = decode_audio(active.upload_path, tmp_dir=str(self.transcription.tmp_dir))
                active.duration = len(audio) / SAMPLE_RATE
                self._enqueue(active, audio)
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

    # -- reading and cancelling (request handlers) -------------------------------------------------------------
    def get(self, job_id: str, *, with_result: bool = True) -> JobView:
        return self._view(self._job(job_id), with_result=with_result)

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> list[JobView]:
        return [self._view(job, with_result=False) for job in self.store.list(status, limit, offset)]

    def result(self, job_id: str) -> JobResult:
        """The finished transcription; 409 while the job is not completed."""
        job = self._job(job_id)
        if job.status != "completed" or job.history_id is None:
            detail = f": {job.error}" if job.status == "failed" and job.error else ""
            raise ApplianceError(f"job {job_id} is {job.status}; it has no result{detail}",
                                 code="job_not_finished" if job.status in ("queued", "processing")
                                 else f"job_{job.status}", status=409)
        stored = dict(job.options)
        try:
            entry = self.transcription.history.get(job.history_id)
        except NotFound:
            raise ApplianceError(f"the result of job {job_id} was deleted with its history entry {job.history_id}",
                                 code="result_deleted", status=410) from None
        options = options_from_record(stored.get("transcribe", {}))
        result = TranscriptionResult(transcript=entry.transcript(), model=entry.model or "",
                                     engine=entry.engine or "", processing_seconds=entry.processing_seconds or 0.0,
                                     timestamp=entry.created_at, history_id=entry.id,
                                     cached=bool(stored.get("cached")), audio_sha256=entry.audio_sha256 or "")
        return JobResult(job_id=job.id, result=result, output=str(stored.get("output") or "json"),
                         filename=job.filename, word_timestamps=options.word_timestamps)

    def cancel(self, job_id: str) -> tuple[JobView, bool]:
        """Cancel a queued or running job (its work stops at the next segment), or delete a finished one.

        Returns the job's final view and whether its record was deleted.
        """
        job = self._job(job_id)
        if job.finished:
            job = self.store.delete(job_id)
            if job.upload_path:
                Path(job.upload_path).unlink(missing_ok=True)
            log.info("job %s (%s) deleted", job_id, job.status)
            return self._view(job, with_result=False), True
        with self._cond:
            active = self._active.get(job_id)
            if active is not None:
                active.cancel_requested = True
                ticket = active.ticket
            else:
                ticket = None
        job = self.store.cancel(job_id)
        if ticket is not None:
            ticket.cancel()
        # The audio of a running job is already in memory: its file can go now.
        if job.upload_path:
            Path(job.upload_path).unlink(missing_ok=True)
        log.info("job %s cancelled", job_id)
        view = self._view(job, with_result=False)
        self._publish_final(view)
        return view, False

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (for /api/status and /metrics)."""
        return self.store.counts()

    # -- views and events --------------------------------------------------------------------------------------
    def _job(self, job_id: str) -> Job:
        try:
            return self.store.get(job_id)
        except NotFound:
            raise NotFound(f"job {job_id} not found (a finished job is removed together with its history "
                           "entry)") from None

    def _view(self, job: Job, *, with_result: bool = False) -> JobView:
        stored = dict(job.options)
        with self._cond:
            active = self._active.get(job.id)
            ticket = active.ticket if active is not None else None
            progress, eta = job.progress, job.eta_seconds
            if active is not None and job.status == "processing":
                progress, eta = max(progress, active.progress), active.eta_seconds
        position = None
        if job.status == "queued" and ticket is not None:
            position = self.scheduler.position(ticket)
            position = max(position, 1) if position is not None else None
        result = None
        if with_result and job.status == "completed":
            try:
                finished = self.result(job.id)
                result = finished.result.to_dict(words=finished.word_timestamps)
            except ApplianceError as exc:  # deleted between the two reads: the view says so
                log.info("job %s result unavailable: %s", job.id, exc.message)
        return JobView(job_id=job.id, status=job.status, progress=progress, eta_seconds=eta,
                       queue_position=position,
                       error={"code": "job_failed", "message": job.error} if job.status == "failed" else None,
                       filename=job.filename, duration=job.duration, created_at=job.created_at,
                       started_at=job.started_at, finished_at=job.finished_at, history_id=job.history_id,
                       output=str(stored.get("output") or "json"), cached=bool(stored.get("cached")),
                       result=result)

    def _publish(self, active: _Active, status: str) -> None:
        data = {"job_id": active.job_id, "status": status, "progress": round(active.progress, 4),
                "eta_seconds": active.eta_seconds}
        self.events.publish("job_progress", data, room=job_room(active.job_id), coalesce=active.job_id)

    def _publish_final(self, view: JobView) -> None:
        # Uncoalesced: a later progress event must never replace the terminal status.
        self.events.publish("job_progress", view.event(), room=job_room(view.job_id), coalesce=None)


def job_room(job_id: str) -> str:
    return f"job:{job_id}"


def _keep_copy(src: Path, dest: Path) -> None:
    """Keep the spooled upload as the job's file: a hard link (same disk, no copy) or else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
