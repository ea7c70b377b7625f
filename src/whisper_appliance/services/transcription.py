"""The one file-transcription pipeline: spool -> decode -> cache -> schedule -> record.

Uploads (``POST /transcribe``), the OpenAI-compatible API and async jobs all go through
``TranscriptionService``, so caching, history, metrics and model checks behave the same everywhere.
Decoding runs off the event loop (``concurrency.wait_blocking``); inference runs on the scheduler's thread,
stepped segment by segment so live dictation and shorter jobs can cut in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..core import concurrency
from ..core.admission import AdmissionLimits
from ..core.audio import decode_audio
from ..core.config import Settings
from ..core.engines.base import Engine, ProgressCallback
from ..core.errors import Conflict, EmptyAudio, ModelUnavailable, PayloadTooLarge, disk_full, is_disk_full
from ..core.identity import Principal
from ..core.options import check_language_for_model
from ..core.records import LanguageDetection, Segment, TranscribeOptions, Transcript
from .database import utc_now
from .dependencies import InferenceQueue, ModelStatusSource
from .history import HistoryStore, make_options_key
from .metrics import Metrics
from .model_manager import ModelStatus
from .scheduler import Priority

log = logging.getLogger(__name__)

OPENAI_MODEL_ALIAS = "whisper-1"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class SpooledAudio:
    """An upload written to a private temporary file, with its hash computed on the way."""

    path: Path
    sha256: str
    size: int
    filename: str


@dataclass(frozen=True)
class TranscriptionResult:
    transcript: Transcript
    model: str
    engine: str
    processing_seconds: float
    timestamp: str
    history_id: int | None
    cached: bool = False
    audio_sha256: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, words: bool = True) -> dict[str, Any]:
        out = self.transcript.to_dict(words=words)
        out.update(model=self.model, engine=self.engine, processing_seconds=round(self.processing_seconds, 3),
                   timestamp=self.timestamp, history_id=self.history_id, cached=self.cached)
        return out


def spool_upload(stream: IO[bytes], directory: Path, filename: str, max_size: int) -> SpooledAudio:
    """Copy ``stream`` into a new temp file under ``directory``; over ``max_size`` -> 413, empty -> 400.

    The caller owns the file and must remove it (``TranscriptionService.spooled`` does).
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".audio", dir=directory)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_size:
                    raise PayloadTooLarge(f"the file is larger than the limit of {max_size} bytes (MAX_UPLOAD_SIZE)")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise EmptyAudio("the uploaded file is empty")
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full("the upload", exc) from exc
        raise
    return SpooledAudio(path=path, sha256=digest.hexdigest(), size=size, filename=filename)


class TranscriptionService:
    def __init__(self, settings: Settings, models: ModelStatusSource, scheduler: InferenceQueue,
                 history: HistoryStore | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.models = models
        self.scheduler = scheduler
        self.history = history
        self.metrics = metrics
        self.tmp_dir = Path(settings.data_dir) / "tmp"
        self.admission = AdmissionLimits(max_transcriptions=settings.max_concurrent_transcriptions,
                                         max_per_client=settings.max_concurrent_transcriptions_per_client,
                                         max_spooled_bytes=settings.max_spooled_upload_bytes)

    # -- uploads -----------------------------------------------------------------------------------------------
    def clean_tmp(self) -> int:
        """Remove what a previous process left in ``DATA_DIR/tmp`` (spooled uploads, decode and backup temp
        files: every one belongs to a request that ended with that process). Call before serving. Returns the
        count removed."""
        if not self.tmp_dir.is_dir():
            return 0
        removed = 0
        for path in self.tmp_dir.iterdir():
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
            elif path.is_dir():
                shutil.rmtree(path)
                removed += 1
        if removed:
            log.info("removed %d leftover temp file(s) from %s", removed, self.tmp_dir)
        return removed

    @contextmanager
    def spooled(self, stream: IO[bytes], filename: str) -> Iterator[SpooledAudio]:
        """Spool an upload and guarantee its temp file is gone afterwards, errors included."""
        audio = concurrency.wait_blocking(spool_upload, stream, self.tmp_dir, filename, self.settings.max_upload_size)
        try:
            yield audio
        finally:
            audio.path.unlink(missing_ok=True)

    def decode(self, path: Path) -> np.ndarray:
        return concurrency.wait_blocking(decode_audio, path, tmp_dir=str(self.tmp_dir),
                                         max_seconds=self.settings.max_audio_seconds)

    # -- model checks ------------------------------------------------------------------------------------------
    def ready_model(self) -> ModelStatus:
        """Status of the loaded model, or 503 with Retry-After when none can serve."""
        status = self.models.status()
        if status.state == "ready":
            return status
        if status.state == "loading":
            raise ModelUnavailable(f"model {status.name} is loading; try again shortly", retry_after=5)
        reason = status.error or "no model is loaded"
        raise ModelUnavailable(f"no model is ready: {reason}", retry_after=30)

    def check_requested_model(self, requested: str | None, *, allow_openai_alias: bool = False) -> ModelStatus:
        """The card keeps one model in memory: asking for another one is a 409 naming the loaded model."""
        status = self.ready_model()
        if requested and requested != status.name and not (allow_openai_alias and requested == OPENAI_MODEL_ALIAS):
            raise Conflict(f"model {requested!r} is not loaded; the loaded model is {status.name!r} "
                           f"(an admin can switch models with POST /api/models/load)", code="model_not_loaded")
        return status

    # -- transcription -----------------------------------------------------------------------------------------
    def steps(self, audio: np.ndarray, options: TranscribeOptions, progress: ProgressCallback | None = None,
              ) -> Callable[[Engine], Generator[None, None, Transcript]]:
        """A step factory for the scheduler: yields after each decoded segment, returns the Transcript."""

        def run(engine: Engine) -> Generator[None, None, Transcript]:
            check_language_for_model(options, engine.model_name)
            segments, info = engine.transcribe(audio, options)
            collected: list[Segment] = []
            for seg in segments:
                collected.append(seg)
                if progress is not None and info.duration > 0:
                    progress(min(1.0, seg.end / info.duration))
                yield
            if progress is not None:
                progress(1.0)
            return Transcript.from_segments(collected, info)

        return run

    def cached(self, sha256: str, options: TranscribeOptions, owner: Principal, *, source: str,
               filename: str | None, metadata: dict[str, Any] | None = None) -> TranscriptionResult | None:
        """The stored result for identical audio, model and options (never an edited one), as an entry of
        ``owner``'s: their own when they have one, else a new entry with the transcription copied into it, so no
        other owner's entry id, edit or metadata is ever handed out."""
        if not (self.settings.result_cache and self.history is not None and sha256):
            return None
        status = self.models.status()
        entry = self.history.find_cached(sha256, status.name or "", status.engine, make_options_key(options))
        if entry is None:
            return None
        if entry.owner_id != owner.user_id:
            entry = self.history.add(
                source=source, filename=filename, text=entry.text, language=entry.language, model=entry.model,
                engine=entry.engine, duration=entry.duration, processing_seconds=0.0, segments=entry.segments,
                audio_sha256=entry.audio_sha256, options_key=entry.options_key, owner_id=owner.user_id,
                metadata={"language_probability": entry.metadata.get("language_probability", 0.0), "cached": True,
                          **(metadata or {})})
            log.info("%s transcription: cached result copied into history entry %d", source, entry.id)
        return TranscriptionResult(transcript=entry.transcript(), model=entry.model or "", engine=entry.engine or "",
                                   processing_seconds=0.0, timestamp=entry.created_at, history_id=entry.id,
                                   cached=True, audio_sha256=sha256)

    def transcribe_file(self, spooled: SpooledAudio, options: TranscribeOptions, *, source: str, owner: Principal,
                        requested_model: str | None = None, allow_openai_alias: bool = False,
                        metadata: dict[str, Any] | None = None) -> TranscriptionResult:
        """Synchronous transcription of an uploaded file (interactive priority), recorded in ``owner``'s history."""
        status = self.check_requested_model(requested_model, allow_openai_alias=allow_openai_alias)
        check_language_for_model(options, status.name or "")
        hit = concurrency.wait_blocking(self.cached, spooled.sha256, options, owner, source=source,
                                        filename=spooled.filename, metadata=metadata)
        if hit is not None:
            return hit
        audio = self.decode(spooled.path)
        started = time.monotonic()
        ticket = self.scheduler.submit_steps(self.steps(audio, options), Priority.INTERACTIVE,
                                             label=f"{source}:{spooled.filename}")
        transcript = self.scheduler.wait(ticket)
        elapsed = time.monotonic() - started
        return self.record(transcript, options, source=source, filename=spooled.filename,
                           audio_sha256=spooled.sha256, processing_seconds=elapsed, metadata=metadata,
                           owner_id=owner.user_id)

    def record(self, transcript: Transcript, options: TranscribeOptions | None, *, source: str,
               filename: str | None, audio_sha256: str | None, processing_seconds: float, owner_id: int | None,
               metadata: dict[str, Any] | None = None) -> TranscriptionResult:
        """Write the history entry (of ``owner_id``; None: the guests') and metrics for a finished transcription."""
        status = self.models.status()
        timestamp = utc_now()
        history_id = None
        # History has no column for it; kept in metadata so results rebuilt from history (cache, jobs) carry it.
        metadata = {"language_probability": round(transcript.language_probability, 4), **(metadata or {})}
        if self.history is not None:
            entry = self.history.add(
                source=source, filename=filename, text=transcript.text, language=transcript.language,
                model=status.name, engine=status.engine, duration=transcript.duration,
                processing_seconds=processing_seconds, segments=[s.to_dict(decoding=True) for s in transcript.segments],
                audio_sha256=audio_sha256, metadata=metadata,
                options_key=make_options_key(options) if options is not None else None, created_at=timestamp,
                owner_id=owner_id)
            history_id = entry.id
        if self.metrics is not None:
            self.metrics.observe_transcription(source, transcript.duration, processing_seconds)
        log.info("%s transcription: %.1f s audio in %.2f s (%s, %s)", source, transcript.duration,
                 processing_seconds, status.name, status.engine)
        return TranscriptionResult(transcript=transcript, model=status.name, engine=status.engine,
                                   processing_seconds=processing_seconds, timestamp=timestamp,
                                   history_id=history_id, cached=False, audio_sha256=audio_sha256 or "",
                                   metadata=metadata)

    def detect_language(self, spooled: SpooledAudio) -> LanguageDetection:
        self.ready_model()
        audio = self.decode(spooled.path)
        return self.scheduler.run(lambda engine: engine.detect_language(audio), Priority.INTERACTIVE,
                                  label="detect-language")
