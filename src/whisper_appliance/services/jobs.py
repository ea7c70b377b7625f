"""Asynchronous transcription jobs, admission side: ``JobQueue`` checks, stores, reads and cancels them.

``JobQueue`` owns what a job is between ``POST /api/jobs`` and its runner:

* the upload is decoded once when it is accepted (so non-audio is refused before the 202, and the duration is
  known for ordering), then only its compressed file is kept, under ``DATA_DIR/jobs/<job_id>.audio``, until the
  job ends (the runner decodes it again when the job's turn comes);
* identical audio with the same options completes at once from the result cache;
* the stored job is handed to a ``JobRunner`` (the Protocol below), which executes it and records its result:
  ``LocalJobRunner`` (job_runner.py) runs jobs on this process's inference scheduler; a runner that hands them
  to worker processes plugs in the same way;
* reads overlay the stored record with the runner's live progress and queue position; a cancel stops the runner's
  work and records the decision;
* every job has an owner (the submitting principal's account; none for a guest): reads, lists and cancels take the
  principal asking, and another owner's job is "not found", like a missing one (ids do not leak);
* around a database restore (``suspended``) no job may be unfinished and new submissions wait outside.

Nothing here imports Flask.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from ..core import concurrency
from ..core.audio import decode_audio
from ..core.errors import ApplianceError, Conflict, InvalidInput, NotFound, ServerBusy, disk_full, is_disk_full
from ..core.identity import SYSTEM, OwnerFilter, Principal
from ..core.options import check_language_for_model
from ..core.records import SAMPLE_RATE, TranscribeOptions
from .dependencies import EventSink
from .job_store import Job, JobStore
from .transcription import SpooledAudio, TranscriptionResult, TranscriptionService

log = logging.getLogger(__name__)

FINISHING_WAIT = 10.0  # how long a restore waits for jobs whose transcription is done to be stored
# Stored uploads are named <job_id>.audio whatever the client called them: ffmpeg then picks the demuxer from
# the content alone, and a name like "x.m3u8" cannot choose a playlist demuxer.
JOB_FILE_SUFFIX = ".audio"
_OPTION_FIELDS = frozenset(f.name for f in fields(TranscribeOptions))


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


@dataclass(frozen=True)
class RunState:
    """What a runner knows of a job it holds, beyond the stored record."""

    progress: float
    eta_seconds: float | None
    queue_position: int | None  # 0 = running now, 1 = next; None when unknown


class JobRunner(Protocol):
    """Executes admitted jobs and records their outcome in the job store (completed, failed)."""

    def start(self) -> None:
        """Take over the jobs the store lists as unfinished (a restart), then run what is handed over."""

    def stop(self) -> None:
        """Stop; unfinished jobs stay queued in the store for the next start."""

    def run(self, job: Job) -> None:
        """Queue a stored job; its stored upload is decoded when it runs. Raises ApplianceError when it cannot be
        queued."""

    def cancel(self, job_id: str) -> None:
        """Stop work on a job (the store records the cancel)."""

    def state(self, job_id: str) -> RunState | None:
        """Live progress of a job this runner holds."""

    def unfinished(self, settle: float = 0.0) -> int:
        """Jobs held, after waiting up to ``settle`` s for those already done to be stored."""


def jobs_dir(data_dir: Path) -> Path:
    """Where uploads of unfinished jobs are kept (named by job id)."""
    return Path(data_dir) / "jobs"


def remove_upload(path: Path | str | None, directory: Path) -> None:
    """Delete a job's stored upload, only if it lies inside the jobs ``directory``: a path read from the database
    (perhaps a restored one) never names a file elsewhere that would then be deleted."""
    if not path:
        return
    target = Path(path)
    try:
        inside = target.resolve().parent == Path(directory).resolve()
    except OSError:
        inside = False
    if not inside:
        log.warning("not deleting %s: a job upload outside %s", target, directory)
        return
    target.unlink(missing_ok=True)


def job_room(job_id: str) -> str:
    return f"job:{job_id}"


def job_view(job: Job, state: RunState | None = None, result: dict[str, Any] | None = None) -> JobView:
    """The client's view of a stored job, overlaid with a runner's live state."""
    stored = dict(job.options)
    progress, eta, position = job.progress, job.eta_seconds, None
    if state is not None and job.status == "processing":
        progress, eta = max(progress, state.progress), state.eta_seconds
    if state is not None and job.status == "queued" and state.queue_position is not None:
        position = max(state.queue_position, 1)
    return JobView(job_id=job.id, status=job.status, progress=progress, eta_seconds=eta, queue_position=position,
                   error={"code": "job_failed", "message": job.error} if job.status == "failed" else None,
                   filename=job.filename, duration=job.duration, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at, history_id=job.history_id,
                   output=str(stored.get("output") or "json"), cached=bool(stored.get("cached")), result=result)


def publish_final(events: EventSink, job: Job) -> None:
    """The terminal ``job_progress`` event, uncoalesced: a later progress event must never replace it."""
    events.publish("job_progress", job_view(job).event(), room=job_room(job.id), coalesce=None)


class JobQueue:
    def __init__(self, store: JobStore, transcription: TranscriptionService, runner: JobRunner, events: EventSink,
                 directory: Path) -> None:
        self.store = store
        self.transcription = transcription
        self.runner = runner
        self.events = events
        self.jobs_dir = directory
        self._cond = concurrency.real_threading().Condition()
        self._suspended = False
        self._submitting = 0  # submissions past the restore check and not yet handed to the runner

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Around a database restore: only when no job is unfinished, with new submissions refused meanwhile; then
        the runner is restarted on the (restored) database, resuming what that one has unfinished."""
        with self._cond:
            if self._suspended:
                raise Conflict("a restore is already in progress", code="restore_in_progress")
            unfinished = self.runner.unfinished(settle=FINISHING_WAIT) + self._submitting
            if unfinished:
                raise Conflict(f"{unfinished} transcription job(s) are queued or running; wait for them or "
                               "cancel them before restoring a backup", code="jobs_running")
            self._suspended = True
        try:
            yield
        finally:
            self.runner.stop()
            self.runner.start()
            with self._cond:
                self._suspended = False

    # -- submitting --------------------------------------------------------------------------------------------
    def submit(self, spooled: SpooledAudio, options: TranscribeOptions, *, owner: Principal, output: str = "json",
               requested_model: str | None = None) -> JobView:
        """Accept an upload as ``owner``'s job: 400/413/415 for bad audio and 409 for another model, before
        anything is stored. A cached result completes the job at once. Blocking work runs off the event loop."""
        return concurrency.wait_blocking(self._submit, spooled, options, owner, output, requested_model)

    def _submit(self, spooled: SpooledAudio, options: TranscribeOptions, owner: Principal, output: str,
                requested_model: str | None) -> JobView:
        with self._cond:
            if self._suspended:
                raise Conflict("a backup is being restored; submit the job again in a moment",
                               code="restore_in_progress")
            self._submitting += 1
        try:
            return self._admit(spooled, options, owner, output, requested_model)
        finally:
            with self._cond:
                self._submitting -= 1
                self._cond.notify_all()

    def _admit(self, spooled: SpooledAudio, options: TranscribeOptions, owner: Principal, output: str,
               requested_model: str | None) -> JobView:
        """Check, store and hand over one submission; counted in ``_submitting`` until the runner has it."""
        if requested_model:
            status = self.transcription.check_requested_model(requested_model)
        else:
            # A job may be queued while the model loads; it waits in the scheduler.
            status = self.transcription.models.status()
        if status.name:
            check_language_for_model(options, status.name)
        record = {"transcribe": asdict(options), "output": output, "audio_sha256": spooled.sha256,
                  "size_bytes": spooled.size}

        hit = self.transcription.cached(spooled.sha256, options, owner, source="job", filename=spooled.filename)
        if hit is not None and hit.history_id is not None:
            job = self.store.create(spooled.filename, None, {**record, "cached": True},
                                    duration=hit.transcript.duration, owner_id=owner.user_id)
            job = self.store.complete(job.id, hit.history_id)
            log.info("job %s: cached result from history entry %s", job.id, hit.history_id)
            publish_final(self.events, job)
            return job_view(job)

        self._check_queue(0.0)
        # Decoded to refuse bad audio before the 202 and to know its length; the samples are not kept: the
        # runner decodes the stored file again when the job's turn comes.
        duration = len(decode_audio(spooled.path, tmp_dir=str(self.transcription.tmp_dir),
                                    max_seconds=self.transcription.settings.max_audio_seconds)) / SAMPLE_RATE
        self._check_queue(duration)
        job_id = uuid.uuid4().hex
        path = self.jobs_dir / f"{job_id}{JOB_FILE_SUFFIX}"
        _keep_copy(spooled.path, path)
        try:
            job = self.store.create(spooled.filename, str(path), record, duration=duration,
                                    job_id=job_id, owner_id=owner.user_id)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.runner.run(job)
        log.info("job %s queued: %s, %.1f s of audio", job.id, job.filename, job.duration or 0.0)
        return self._view(job)

    def _check_queue(self, seconds: float) -> None:
        """503 job_queue_full when one more job of ``seconds`` would pass MAX_QUEUED_JOBS or
        MAX_QUEUED_AUDIO_SECONDS (checked before decoding with 0 s, and again once the duration is known)."""
        settings = self.transcription.settings
        count, queued = self.store.queued_load()
        if count >= settings.max_queued_jobs:
            raise ServerBusy(f"{count} jobs are already waiting, the limit (MAX_QUEUED_JOBS); try again later",
                             code="job_queue_full", retry_after=60)
        if queued + seconds > settings.max_queued_audio_seconds:
            raise ServerBusy(f"the job queue already holds {queued:.0f} s of audio; this upload's {seconds:.0f} s "
                             f"would pass the limit of {settings.max_queued_audio_seconds} s "
                             "(MAX_QUEUED_AUDIO_SECONDS); try again later", code="job_queue_full", retry_after=60)

    # -- reading and cancelling (request handlers) -------------------------------------------------------------
    def get(self, viewer: Principal, job_id: str, *, with_result: bool = True) -> JobView:
        return self._view(self._job(viewer, job_id), with_result=with_result)

    def list(self, viewer: Principal, status: str | None = None, limit: int = 50, offset: int = 0, *,
             owner: OwnerFilter | None = None) -> list[JobView]:
        return [self._view(job) for job in self.store.list(viewer, status, limit, offset, owner=owner)]

    def result(self, viewer: Principal, job_id: str) -> JobResult:
        """The finished transcription; 409 while the job is not completed."""
        return self._result(self._job(viewer, job_id))

    def _result(self, job: Job) -> JobResult:
        if job.status != "completed" or job.history_id is None:
            detail = f": {job.error}" if job.status == "failed" and job.error else ""
            raise ApplianceError(f"job {job.id} is {job.status}; it has no result{detail}",
                                 code="job_not_finished" if job.status in ("queued", "processing")
                                 else f"job_{job.status}", status=409)
        stored = dict(job.options)
        try:
            # The job is the viewer's (checked by _job): so is its result, unless it was handed over meanwhile.
            entry = self.transcription.history.get(SYSTEM, job.history_id)
        except NotFound:
            raise ApplianceError(f"the result of job {job.id} was deleted with its history entry {job.history_id}",
                                 code="result_deleted", status=410) from None
        options = options_from_record(stored.get("transcribe", {}))
        result = TranscriptionResult(transcript=entry.transcript(), model=entry.model or "",
                                     engine=entry.engine or "", processing_seconds=entry.processing_seconds or 0.0,
                                     timestamp=entry.created_at, history_id=entry.id,
                                     cached=bool(stored.get("cached")), audio_sha256=entry.audio_sha256 or "")
        return JobResult(job_id=job.id, result=result, output=str(stored.get("output") or "json"),
                         filename=job.filename, word_timestamps=options.word_timestamps)

    def cancel(self, viewer: Principal, job_id: str) -> tuple[JobView, bool]:
        """Cancel a queued or running job (its work stops at the next segment), or delete a finished one.

        Returns the job's final view and whether its record was deleted.
        """
        job = self._job(viewer, job_id)
        if job.finished:
            job = self.store.delete(job_id)
            remove_upload(job.upload_path, self.jobs_dir)
            log.info("job %s (%s) deleted", job_id, job.status)
            return job_view(job), True
        self.runner.cancel(job_id)
        job = self.store.cancel(job_id)
        # A running job decoded its file when it started: the file can go now.
        remove_upload(job.upload_path, self.jobs_dir)
        log.info("job %s cancelled", job_id)
        publish_final(self.events, job)
        return job_view(job), False

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, of every owner (for /api/status and /metrics)."""
        return self.store.counts()

    def cancel_unfinished_of(self, owner: int) -> int:
        """Cancel every queued or running job of one account (before it is deleted); returns how many."""
        ids = self.store.unfinished_of(owner)
        for job_id in ids:
            try:
                self.cancel(SYSTEM, job_id)
            except Conflict:  # it finished meanwhile
                pass
        return len(ids)

    # -- views -------------------------------------------------------------------------------------------------
    def _job(self, viewer: Principal, job_id: str) -> Job:
        """The job, or 404 when it does not exist or is not ``viewer``'s to see (the same answer)."""
        try:
            job = self.store.get(job_id)
        except NotFound:
            job = None
        if job is None or not viewer.sees(job.owner_id):
            raise NotFound(f"job {job_id} not found (a finished job is removed together with its history "
                           "entry)")
        return job

    def _view(self, job: Job, *, with_result: bool = False) -> JobView:
        result = None
        if with_result and job.status == "completed":
            try:
                finished = self._result(job)
                result = finished.result.to_dict(words=finished.word_timestamps)
            except ApplianceError as exc:  # deleted between the two reads: the view says so
                log.info("job %s result unavailable: %s", job.id, exc.message)
        return job_view(job, self.runner.state(job.id), result)


def _keep_copy(src: Path, dest: Path) -> None:
    """Keep the spooled upload as the job's file: a hard link (same disk, no copy) or else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        try:
            shutil.copyfile(src, dest)
        except OSError as exc:
            dest.unlink(missing_ok=True)  # a partial copy is no job file
            if is_disk_full(exc):
                raise disk_full("the job's file", exc) from exc
            raise
