"""Live dictation sessions: one per Socket.IO connection, from audio chunks to committed text in history.

``LiveSessions`` owns every open session (keyed by the connection's sid), the per-connection chunk rate
limit and the session limits from Settings. A ``LiveSession`` holds

* the audio front end: one ``StreamDecoder`` (an ffmpeg process) for ``webm`` chunks, or a ``PcmStream`` for
  raw 16-bit PCM (resampled to 16 kHz as a continuous stream, so chunk edges do not click);
* the ``StreamingPolicy`` (core/streaming.py), which decides which passes to run and what is partial or final;
* ``run(emit, sleep)``, the session's loop. The web layer starts it as a background task on the event loop and
  ``emit`` sends to that one client; passes go through the shared ``InferenceScheduler`` at ``Priority.LIVE``
  (one in flight per session, so sessions interleave fairly and go before file work), and the wait for a
  pass never blocks the event loop (``scheduler.wait`` hands it to a real thread).

Events the loop emits (the Socket.IO protocol's server side):
``transcription_partial {session_id, text, start, end}``, ``transcription_result {session_id, text, start, end,
words: [{word, start, end}], final: true, language}``, ``transcription_error {code, message}`` and, once,
``recording_stopped {session_id, text, duration, history_id}``. Committed text is saved to history (source
``live``, owned by the principal that opened the session) when a session ends; only the server writes those
entries.

A dropped connection does not end a session at once: it is *detached* for ``LIVE_RESUME_SECONDS`` (counted
against LIVE_MAX_SESSIONS), the audio it had received is still decoded, and a client that sends
``start_recording {resume: <resume_token from recording_started>, received_until, format, ...}`` on its new
connection, as the same principal, goes on with the same session: ``recording_started`` says ``resumed: true``
and ``audio_seconds`` (the client sends its audio from there), then the committed results after
``received_until`` are sent again. One session, one committed text, one history entry, in either format.
Unresumed, the session then finishes its last utterance and is saved, as a stopped one is
(``LIVE_RESUME_SECONDS=0``: saved at the disconnect).

``transcribe_recording`` is the seed's legacy path: one chunk holding a whole recording, transcribed at once.
Nothing here imports Flask or Socket.IO.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ..core import concurrency
from ..core.audio import StreamDecoder, decode_audio, pcm16_to_float32
from ..core.config import Settings
from ..core.errors import (
    ApplianceError,
    AudioDecodeError,
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    RateLimited,
    error_reference,
    internal_error,
)
from ..core.identity import Principal
from ..core.options import check_language_for_model, parse_language, parse_options
from ..core.records import SAMPLE_RATE, TASKS, Segment, TranscribeOptions, Transcript, TranscriptionInfo
from ..core.streaming import PassRequest, StreamEvent, StreamingConfig, StreamingPolicy, run_pass
from .dependencies import EventSink, InferenceQueue, ModelStatusSource
from .scheduler import Priority
from .transcription import TranscriptionResult, TranscriptionService

log = logging.getLogger(__name__)

AUDIO_FORMATS = ("webm", "pcm16")
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
POLL_INTERVAL = 0.05          # seconds between looks at the decoder output while no pass is due
RETRY_AFTER_FAILURE = 1.0     # seconds to wait before retrying a pass that failed
MAX_PASS_FAILURES = 3         # consecutive failed passes that end a session
CLOSE_WAIT = 10.0             # seconds ``close`` waits for a running loop to save and end
MAX_TOKEN_LENGTH = 100        # a resume token is 32 URL-safe characters
_DATA_URL = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)

Emit = Callable[[str, dict[str, Any]], None]
Sleep = Callable[[float], None]


# ---------------------------------------------------------------------------------------------------------------
# Pure parsing of client messages


@dataclass(frozen=True)
class LiveParams:
    """What a client asked for in ``start_recording``."""

    language: str | None = None       # None: detect on the first utterance
    task: str = "transcribe"
    format: str = "webm"
    sample_rate: int = SAMPLE_RATE    # pcm16 only
    resume: str | None = None         # the resume token of a session whose connection dropped
    received_until: float = 0.0       # ... and the end of the last transcription_result the client got from it


def parse_live_params(data: Any) -> LiveParams:
    """``start_recording``'s payload -> LiveParams; 400-style ``InvalidInput`` for anything we do not accept."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("start_recording expects an object such as {\"format\": \"webm\"}",
                           code="invalid_request")
    language = parse_language(data.get("language"))
    task = str(data.get("task") or "transcribe").strip().lower()
    if task not in TASKS:
        raise InvalidInput(f"task must be one of {', '.join(TASKS)}, got {data.get('task')!r}", code="invalid_option")
    fmt = str(data.get("format") or "webm").strip().lower()
    if fmt not in AUDIO_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(AUDIO_FORMATS)}, got {data.get('format')!r}",
                           code="invalid_format")
    rate = data.get("sample_rate")
    if rate is None or fmt != "pcm16":
        sample_rate = SAMPLE_RATE
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or int(rate) != rate:
        raise InvalidInput(f"sample_rate must be a whole number of Hz, got {rate!r}", code="invalid_option")
    else:
        sample_rate = int(rate)
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidInput(f"sample_rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, "
                           f"got {sample_rate}", code="invalid_option")
    resume = data.get("resume")
    if resume is not None and (not isinstance(resume, str) or not 0 < len(resume) <= MAX_TOKEN_LENGTH):
        raise InvalidInput("resume must be the resume_token of recording_started", code="invalid_request")
    received = data.get("received_until", 0.0)
    if isinstance(received, bool) or not isinstance(received, (int, float)) or not 0 <= received < 1e7:
        raise InvalidInput(f"received_until must be a number of seconds, got {received!r}", code="invalid_request")
    return LiveParams(language=language, task=task, format=fmt, sample_rate=sample_rate, resume=resume or None,
                      received_until=float(received))


@dataclass(frozen=True)
class Chunk:
    data: bytes
    seq: int | None = None
    legacy_options: dict[str, Any] = field(default_factory=dict)  # language/task sent with a legacy chunk


def parse_chunk(message: Any, max_size: int) -> Chunk:
    """An ``audio_chunk`` message -> its bytes: binary (preferred) or base64 text, under ``audio_data``.

    A bare binary or text payload is accepted too (some clients send the audio itself). Raises InvalidInput
    with a code that says what was wrong, or PayloadTooLarge over ``max_size`` bytes.
    """
    seq = None
    options: dict[str, Any] = {}
    if isinstance(message, dict):
        if "audio_data" not in message or message["audio_data"] is None:
            raise InvalidInput("audio_chunk needs audio_data (binary, or base64 text)", code="missing_audio")
        payload = message["audio_data"]
        raw_seq = message.get("seq")
        if raw_seq is not None:
            if isinstance(raw_seq, bool) or not isinstance(raw_seq, int):
                raise InvalidInput(f"seq must be a whole number, got {raw_seq!r}", code="invalid_request")
            seq = raw_seq
        options = {k: message[k] for k in ("language", "task") if message.get(k) is not None}
    else:
        payload = message
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = _decode_base64(payload, max_size)
    else:
        raise InvalidInput(f"audio_data must be binary or base64 text, not {type(payload).__name__}",
                           code="invalid_audio_data")
    if not data:
        raise InvalidInput("the audio chunk is empty", code="empty_chunk")
    if len(data) > max_size:
        raise PayloadTooLarge(f"the audio chunk has {len(data)} bytes; the limit is {max_size} "
                              "(LIVE_MAX_CHUNK_SIZE)", code="chunk_too_large")
    return Chunk(data=data, seq=seq, legacy_options=options)


def _decode_base64(text: str, max_size: int) -> bytes:
    text = _DATA_URL.sub("", text.strip(), count=1)
    # Base64 is 4/3 of the data: refuse oversized text before decoding it.
    if len(text) > max_size * 4 // 3 + 8:
        raise PayloadTooLarge(f"the audio chunk is larger than {max_size} bytes (LIVE_MAX_CHUNK_SIZE)",
                              code="chunk_too_large")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("audio_data text is not valid base64", code="invalid_base64") from None


class ChunkRateLimiter:
    """At most ``limit`` chunks in any one-second window, per connection."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._times: dict[str, deque[float]] = {}
        self._lock = concurrency.real_threading().Lock()

    def admit(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            times = self._times.setdefault(key, deque())
            while times and now - times[0] >= 1.0:
                times.popleft()
            if len(times) >= self.limit:
                return False
            times.append(now)
            return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._times.pop(key, None)


# ---------------------------------------------------------------------------------------------------------------
# Audio front ends


class AudioSource(Protocol):
    """Bytes in, 16 kHz float32 out; ``read`` never blocks."""

    def feed(self, data: bytes) -> None: ...

    def read(self) -> np.ndarray: ...

    @property
    def error(self) -> str | None: ...

    def close(self, timeout: float = 2.0) -> None: ...


class PcmStream:
    """Little-endian 16-bit mono PCM chunks -> 16 kHz float32, split anywhere (an odd byte waits for the next).

    Other rates go through one streaming soxr resampler per session, so chunk boundaries leave no filter edges.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._carry = b""
        self._lock = concurrency.real_threading().Lock()
        self._ready: list[np.ndarray] = []
        self._resampler = None
        if sample_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self.error: str | None = None
        self._closed = False

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                raise AudioDecodeError("the PCM stream is closed")
            data = self._carry + data
            usable = len(data) - len(data) % 2
            self._carry = data[usable:]
            if usable:
                self._ready.append(self._convert(data[:usable], last=False))

    def _convert(self, data: bytes, *, last: bool) -> np.ndarray:
        audio = pcm16_to_float32(data, SAMPLE_RATE)  # the conversion only: resampling is ours, stateful
        if self._resampler is not None:
            audio = np.clip(self._resampler.resample_chunk(audio, last=last), -1.0, 1.0).astype(np.float32)
        return audio

    def read(self) -> np.ndarray:
        with self._lock:
            ready, self._ready = self._ready, []
        if not ready:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(ready)

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._resampler is not None:  # the resampler's delayed tail
                self._ready.append(self._convert(b"", last=True))


# ---------------------------------------------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True)
class LiveSummary:
    """How a session ended: its whole committed text and where it was saved."""

    session_id: str
    text: str
    duration: float                   # seconds of audio received
    history_id: int | None
    language: str | None
    passes: int
    reason: str                       # stopped | disconnected | limit | idle | error

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "text": self.text, "duration": round(self.duration, 3),
                "history_id": self.history_id}


class LiveSession:
    """One client's dictation: audio front end, streaming policy and the loop that runs its passes.

    A session outlives its connection for ``LIVE_RESUME_SECONDS``: ``detach`` when the connection drops (the audio
    received so far is still decoded), ``resume`` from the next connection with the ``resume_token``, which goes
    on with the same policy, text and history entry, in either audio format (a new stream is a new decoder).
    """

    def __init__(self, owner: LiveSessions, sid: str, params: LiveParams, model: str,
                 policy: StreamingPolicy, source: AudioSource, principal: Principal, client: str = "") -> None:
        self.id = uuid.uuid4().hex
        self.client = client        # whom LIVE_MAX_SESSIONS_PER_CLIENT counts this session against
        self.resume_token = secrets.token_urlsafe(24)
        self.sid = sid
        self.principal = principal  # whose history the session is saved to
        self.params = params
        self.model = model
        self.policy = policy
        self.source = source
        self.started_at = time.monotonic()
        self._owner = owner
        threading = concurrency.real_threading()
        self._done = threading.Event()
        # The loop and the web layer's handlers both touch the audio source and the policy (a resume swaps the
        # source and drains the old one): never held across a wait, so it never blocks the event loop.
        self._lock = threading.Lock()
        self._emit: Emit | None = None
        self.detached_since: float | None = None
        self.resumed = False
        self._stop_requested = False
        self._flush = True
        self._notify = True
        self._save = True
        self._reason = "stopped"
        self.running = False
        self.summary: LiveSummary | None = None
        self._segments: list[Segment] = []
        self._compute_seconds = 0.0
        self._failures = 0
        self._language: str | None = params.language
        self.chunks = 0
        self.bytes = 0
        self.last_audio_at = owner.now()  # LIVE_IDLE_TIMEOUT counts from here

    # -- called by the web layer -------------------------------------------------------------------------------
    def started_payload(self) -> dict[str, Any]:
        payload = {"session_id": self.id, "format": self.params.format, "model": self.model,
                   "language": self.params.language or "auto", "sample_rate": self.params.sample_rate,
                   "resume_token": self.resume_token, "resumed": self.resumed}
        if self.resumed:
            payload["audio_seconds"] = round(self.policy.audio_seconds, 3)  # send the audio from here on
        return payload

    @property
    def language(self) -> str | None:
        """The stream's language: asked for, detected by the policy, or what the last pass reported."""
        return self.policy.language or self._language

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def feed(self, data: bytes) -> None:
        """Queue one chunk of the stream (never blocks). A dead decoder raises AudioDecodeError."""
        if self._stop_requested:
            raise InvalidInput("this session is stopping; start a new one", code="not_recording")
        try:
            with self._lock:
                self.source.feed(data)
        except AudioDecodeError as exc:  # the same code as when the loop finds the decoder dead first
            raise AudioDecodeError(exc.message, code="decode_failed") from exc
        self.chunks += 1
        self.bytes += len(data)
        self.last_audio_at = self._owner.now()

    def attach(self, sid: str, emit: Emit) -> None:
        """Events go to connection ``sid`` from now on."""
        self.sid = sid
        self._emit = emit
        self.detached_since = None

    def detach(self, now: float) -> None:
        """The connection dropped: events go nowhere until a resume; the audio received so far is decoded."""
        self._emit = None
        self.detached_since = now
        try:
            self.source.close(timeout=0.5)  # ffmpeg decodes what it has (the loop reads it); a PCM stream ends
        except Exception:
            log.exception("closing the decoder of live session %s failed", self.id)

    def resume(self, sid: str, params: LiveParams, source: AudioSource, emit: Emit) -> None:
        """Go on from connection ``sid`` with a new audio stream (its format may differ from the old one's)."""
        old = self.source
        old.close(timeout=2.0)  # a connection taken over before the server noticed the drop is still open
        with self._lock:
            rest = old.read()
            if rest.size:
                self.policy.push_audio(rest)
            self.source = source
            self.params = replace(self.params, format=params.format, sample_rate=params.sample_rate)
            self.resumed = True
        self.last_audio_at = self._owner.now()
        self.attach(sid, emit)
        log.info("live session %s resumed on %s (%s) at %.2f s of audio", self.id, sid[:8], params.format,
                 self.policy.audio_seconds)

    def replay(self, received_until: float) -> None:
        """Send the committed results the client did not get (those ending after ``received_until``)."""
        for segment in list(self._segments):
            if segment.end > received_until + 1e-3:
                self._out("transcription_result", self._result_payload(segment.text.strip(), segment.start,
                                                                       segment.end, segment.words))

    def request_stop(self, *, flush: bool = True, notify: bool = True, save: bool = True,
                     reason: str = "stopped") -> None:
        """Ask the loop to end: ``flush`` decodes what is left as final text; ``notify`` emits to the client."""
        if self._stop_requested:
            # A disconnect after a stop still must not flush or emit to a client that is gone.
            self._flush = self._flush and flush
            self._notify = self._notify and notify
            return
        self._stop_requested = True
        self._flush, self._notify, self._save, self._reason = flush, notify, save, reason

    def wait_done(self, timeout: float | None) -> bool:
        if self._done.is_set():
            return True
        return bool(concurrency.wait_blocking(self._done.wait, timeout))

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self, emit: Emit, sleep: Sleep) -> LiveSummary:
        """Pull audio, run due passes, emit their events; on stop flush, save and emit ``recording_stopped``."""
        if self.summary is not None:  # closed (client gone) before the task got to run
            return self.summary
        if self._emit is None and self.detached_since is None:
            self._emit = emit
        self.running = True
        try:
            while not self._stop_requested:
                with self._lock:
                    problem = self._pull_audio()
                    request = self.policy.next_pass() if problem is None else None
                if problem is not None:
                    self._emit_error(problem)
                    break
                if request is None:
                    sleep(POLL_INTERVAL)
                elif not self._run(request):
                    sleep(RETRY_AFTER_FAILURE)
            self._flush_rest()
        except Exception:  # the session ends, but its committed text is still saved below
            ref = error_reference()
            log.exception("live session %s failed (error id %s)", self.id, ref)
            self._reason = "error"
            self._emit_error(internal_error(ref, what="the live session failed"))
        finally:
            self._finish()
        assert self.summary is not None
        return self.summary

    def finish_now(self) -> LiveSummary:
        """End a session whose loop never ran (or has ended): close the audio and save, emitting nothing."""
        self._notify = False
        if self.summary is None:
            self._finish()
        assert self.summary is not None
        return self.summary

    def _pull_audio(self) -> ApplianceError | None:
        """Move decoded audio into the policy; the error that must stop the session (decoder died, limit), if any."""
        audio = self.source.read()
        if audio.size:
            self.policy.push_audio(audio)
        # A detached session's stream was cut where the connection dropped: ffmpeg's complaint about the
        # truncated last cluster is no decoding failure.
        error = self.source.error if self.detached_since is None else None
        if error:
            self.request_stop(flush=True, reason="error")
            return AudioDecodeError(f"the audio stream could not be decoded: {error}", code="decode_failed")
        settings = self._owner.settings
        now = self._owner.now()
        if self.detached_since is not None and now - self.detached_since >= settings.live_resume_seconds:
            log.info("live session %s was not resumed within %d s (LIVE_RESUME_SECONDS)", self.id,
                     settings.live_resume_seconds)
            self.request_stop(flush=True, notify=False, reason="disconnected")
            return None
        idle = settings.live_idle_timeout
        if self.detached_since is None and idle > 0 and now - self.last_audio_at >= idle:
            log.info("live session %s received no audio for %d s (LIVE_IDLE_TIMEOUT)", self.id, idle)
            self.request_stop(flush=True, reason="idle")
            return ApplianceError(f"no audio arrived for {idle} s (LIVE_IDLE_TIMEOUT); the live session was "
                                  "stopped", code="idle_timeout", status=408)
        elapsed = max(self.policy.audio_seconds, time.monotonic() - self.started_at)
        if elapsed >= settings.live_max_session_seconds:
            self.request_stop(flush=True, reason="limit")
            return ApplianceError(f"the live session reached its limit of {settings.live_max_session_seconds} s "
                                  "(LIVE_MAX_SESSION_SECONDS) and was stopped", code="session_limit", status=413)
        return None

    def _run(self, request: PassRequest) -> bool:
        """One pass through the scheduler; True when it ran (its events emitted), False when it failed."""
        options = self.policy.options_for(request)
        started = time.monotonic()
        try:
            ticket = self._owner.scheduler.submit(lambda engine: run_pass(engine, request, options),
                                                  Priority.LIVE, label=f"live:{self.id[:8]}")
            result = self._owner.scheduler.wait(ticket)
        except ApplianceError as exc:
            self._failures += 1
            log.warning("live pass of session %s failed (%d in a row): %s", self.id, self._failures, exc)
            self._emit_error(exc)
            if self._failures >= MAX_PASS_FAILURES:
                self.request_stop(flush=False, reason="error")
            return False
        self._failures = 0
        # Wall time, queue included: when the shared scheduler is busy, the policy widens its step
        # instead of letting this session's lag grow.
        elapsed = time.monotonic() - started
        self._compute_seconds += result.elapsed
        if result.language:
            self._language = self.policy.language or result.language
        with self._lock:
            events = self.policy.apply(request, result, elapsed)
        log.debug("live %s: %s pass over %.2f s of audio: %.2f s (%.2f s in the engine), lag %.2f s", self.id[:8],
                  "final" if request.final else "trim" if request.trim else "partial", request.audio.size / SAMPLE_RATE,
                  elapsed, result.elapsed, self.policy.lag_seconds)
        for event in events:
            self._emit_event(event)
        return True

    def _out(self, name: str, payload: dict[str, Any]) -> None:
        emit = self._emit
        if self._notify and emit is not None:
            emit(name, payload)

    def _result_payload(self, text: str, start: float, end: float, words: tuple) -> dict[str, Any]:
        event = StreamEvent("final", text, start, end, words)
        return {"session_id": self.id, **event.to_dict(words=True), "final": True, "language": self.language}

    def _emit_event(self, event: StreamEvent) -> None:
        if event.kind == "final":
            self._segments.append(Segment(id=len(self._segments), start=event.start, end=event.end,
                                          text=" " + event.text.strip(), words=event.words))
            self._out("transcription_result", self._result_payload(event.text, event.start, event.end, event.words))
        else:
            self._out("transcription_partial", {"session_id": self.id, **event.to_dict()})

    def _emit_error(self, err: ApplianceError) -> None:
        self._out("transcription_error", {"code": err.code, "message": err.message, "session_id": self.id})

    def _flush_rest(self) -> None:
        """After a stop: decode what ffmpeg still holds and run the final passes (unless told not to)."""
        if not self._flush:
            return
        self.source.close()  # ffmpeg decodes what it still holds; its wait runs off the event loop
        with self._lock:
            audio = self.source.read()
            if audio.size:
                self.policy.push_audio(audio)
        while self._flush:
            with self._lock:
                request = self.policy.finish()
            if request is None:
                return
            if not self._run(request):
                if self._failures >= MAX_PASS_FAILURES or not self._flush:
                    return

    def _finish(self) -> None:
        """Always: release the decoder, save the committed text, leave the registry, tell the client."""
        if self.summary is not None:
            return
        try:
            self.source.close()
        except Exception:
            log.exception("closing the audio decoder of live session %s failed", self.id)
        history_id = None
        text = self.policy.committed_text
        if self._save and text:
            try:
                history_id = self._owner.save(self, text)
            except Exception as exc:
                ref = error_reference()
                log.exception("saving live session %s to history failed (error id %s)", self.id, ref)
                self._emit_error(exc if isinstance(exc, ApplianceError) else
                                 internal_error(ref, what="the transcript could not be saved", code="history_failed"))
        self.summary = LiveSummary(session_id=self.id, text=text, duration=self.policy.audio_seconds,
                                   history_id=history_id, language=self.language,
                                   passes=self.policy.passes,
                                   reason=self._reason if self._notify else "disconnected")
        self._owner._ended(self)
        self.running = False
        self._done.set()
        log.info("live session %s ended (%s): %.1f s audio, %d passes, %d chars", self.id, self.summary.reason,
                 self.summary.duration, self.summary.passes, len(text))
        self._out("recording_stopped", self.summary.to_dict())

    def transcript(self, text: str) -> Transcript:
        language = self.language or ""
        info = TranscriptionInfo(language=language, language_probability=0.0, duration=self.policy.audio_seconds)
        return Transcript(text=text, language=info.language, language_probability=0.0, duration=info.duration,
                          segments=tuple(self._segments))

    @property
    def compute_seconds(self) -> float:
        return self._compute_seconds


def client_key(principal: Principal, address: str | None) -> str:
    """Whom per-client session limits count against: the account when authenticated, else the IP address."""
    if principal.user_id is not None:
        return f"user:{principal.user_id}"
    return f"ip:{address or 'unknown'}"


PolicyFactory = Callable[[LiveParams], StreamingPolicy]
SourceFactory = Callable[[LiveParams], AudioSource]


def default_policy(params: LiveParams) -> StreamingPolicy:
    return StreamingPolicy(StreamingConfig(language=params.language, task=params.task))  # type: ignore[arg-type]


def default_source(params: LiveParams) -> AudioSource:
    if params.format == "webm":
        return StreamDecoder("webm")
    return PcmStream(params.sample_rate)


class LiveSessions:
    """Every open live session, keyed by connection sid, and the limits that apply to them."""

    def __init__(self, settings: Settings, models: ModelStatusSource, scheduler: InferenceQueue,
                 transcription: TranscriptionService, events: EventSink | None = None, *,
                 policy_factory: PolicyFactory = default_policy, source_factory: SourceFactory = default_source,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.models = models
        self.scheduler = scheduler
        self.transcription = transcription
        self.events = events
        self._policy_factory = policy_factory
        self._source_factory = source_factory
        self._lock = concurrency.real_threading().Lock()
        self._active: dict[str, LiveSession] = {}      # sid -> the session receiving audio
        self._finishing: set[LiveSession] = set()      # stopped, still flushing/saving
        self._detached: dict[str, LiveSession] = {}    # resume token -> a session whose connection dropped
        # Slots taken by something other than a registered session: a start still creating its decoder (sid ->
        # client) and legacy whole-recording transcriptions in progress (one client entry each).
        self._starting: dict[str, str] = {}
        self._recordings: list[str] = []
        self._clock = clock
        self.rate = ChunkRateLimiter(settings.live_max_chunks_per_second, clock)
        # While anyone dictates, uploads and jobs leave a lane of the scheduler to the live passes.
        scheduler.reserve_lane_while(lambda: self.count() > 0)

    # -- registry ----------------------------------------------------------------------------------------------
    def open(self, sid: str, params: LiveParams | dict[str, Any] | None, principal: Principal,
             emit: Emit | None = None, *, client: str | None = None) -> LiveSession:
        """Start ``principal``'s session for connection ``sid``, or resume the one ``params.resume`` names (if it
        is ``principal``'s; ``session.resumed`` says which): 409 when ``sid`` already records, 429 beyond
        LIVE_MAX_SESSIONS or LIVE_MAX_SESSIONS_PER_CLIENT (``client``: see ``client_key``; by default the
        principal). A resume token that is unknown, expired or someone else's starts a new session; a resume
        takes no new slot. ``emit`` sends to ``sid`` (a resumed session's loop is running)."""
        client = client if client is not None else client_key(principal, None)
        if not isinstance(params, LiveParams):
            params = parse_live_params(params)
        if params.resume:
            resumed = self._resume(sid, params, principal, emit)
            if resumed is not None:
                return resumed
            log.info("live session resume refused on %s: unknown or expired token; starting a new one", sid[:8])
        status = self.transcription.ready_model()
        check_language_for_model(TranscribeOptions(language=params.language, task=params.task),  # type: ignore[arg-type]
                                 status.name)
        with self._lock:
            if sid in self._active:
                raise Conflict("a recording is already running on this connection; send stop_recording first",
                               code="already_recording")
            self._check_slot_locked(client)
            # Reserve the slot before the slow part (starting ffmpeg), so two starts cannot both pass the check.
            self._active[sid] = None  # type: ignore[assignment]
            self._starting[sid] = client
        try:
            policy = self._policy_factory(params)
            source = self._source_factory(params)
        except BaseException:
            with self._lock:
                self._active.pop(sid, None)
                self._starting.pop(sid, None)
            raise
        session = LiveSession(self, sid, params, status.name, policy, source, principal, client)
        if emit is not None:
            session.attach(sid, emit)
        with self._lock:
            self._active[sid] = session
            self._starting.pop(sid, None)
        log.info("live session %s started (%s, language %s, model %s)", session.id, params.format,
                 params.language or "auto", status.name)
        self._publish_count()
        return session

    def _resume(self, sid: str, params: LiveParams, principal: Principal,
                emit: Emit | None) -> LiveSession | None:
        """The session ``params.resume`` names, now receiving from ``sid``; None when there is none to resume
        (or it is another account's: the token alone is not enough)."""
        token = params.resume or ""
        with self._lock:
            if sid in self._active:
                raise Conflict("a recording is already running on this connection; send stop_recording first",
                               code="already_recording")
            session = self._detached.get(token)
            if session is None:
                # The old connection may be dead without the server knowing yet (it learns at the ping timeout):
                # the token's holder takes its session over.
                session = next((s for s in self._active.values()
                                if s is not None and secrets.compare_digest(s.resume_token, token)), None)
            if session is None or session.stopping or session.principal.user_id != principal.user_id:
                return None
            if self._detached.pop(token, None) is None:
                del self._active[session.sid]
            self._active[sid] = session
        try:
            source = self._source_factory(params)
        except BaseException:
            with self._lock:  # no new stream: the session waits for another resume, or its time runs out
                del self._active[sid]
                self._detached[token] = session
            raise
        session.resume(sid, params, source, emit or (lambda name, data: None))
        return session

    def _check_slot_locked(self, client: str) -> None:
        """429 unless one more session fits. Every session counts until its decoder and loop are gone:
        receiving, stopped but still flushing and saving, detached, starting, or a legacy recording."""
        sessions = ([s for s in self._active.values() if s is not None] + list(self._finishing)
                    + list(self._detached.values()))
        unique = {id(s): s for s in sessions}.values()
        clients = [s.client for s in unique] + list(self._starting.values()) + self._recordings
        if len(clients) >= self.settings.live_max_sessions:
            raise RateLimited(f"the server already runs {len(clients)} live sessions "
                              "(LIVE_MAX_SESSIONS); try again later", code="too_many_sessions")
        mine = clients.count(client)
        if mine >= self.settings.live_max_sessions_per_client:
            raise RateLimited(f"this client already runs {mine} live sessions "
                              "(LIVE_MAX_SESSIONS_PER_CLIENT); stop one or try again later",
                              code="too_many_client_sessions")

    def get(self, sid: str) -> LiveSession | None:
        with self._lock:
            return self._active.get(sid)

    def stop(self, sid: str) -> LiveSession:
        """``stop_recording``: the session flushes, saves and emits ``recording_stopped`` from its loop."""
        with self._lock:
            session = self._active.pop(sid, None)
            if session is not None:
                self._finishing.add(session)
        if session is None:
            raise InvalidInput("no recording is running on this connection", code="not_recording")
        session.request_stop(flush=True, notify=True)
        return session

    def close(self, sid: str, *, save: bool = True, timeout: float = CLOSE_WAIT) -> LiveSummary | None:
        """The connection is gone: free the decoder now, save the committed text, emit nothing.

        Returns the summary once the session has ended (None when none was open, or its loop is still busy
        after ``timeout``; it then saves by itself).
        """
        self.rate.forget(sid)
        with self._lock:
            session = self._active.pop(sid, None)
            finishing = [s for s in self._finishing if s.sid == sid]
            if (session is not None and save and self.settings.live_resume_seconds > 0 and not session.stopping
                    and session.summary is None):
                # It waits LIVE_RESUME_SECONDS for the client to come back with its resume token.
                self._detached[session.resume_token] = session
                detached, session = session, None
            else:
                detached = None
        if detached is not None:
            detached.detach(self.now())
            log.info("live session %s detached from %s; it can be resumed for %d s", detached.id, sid[:8],
                     self.settings.live_resume_seconds)
            if not detached.running:  # its loop never started: nothing would end it
                self._detached.pop(detached.resume_token, None)
                return detached.finish_now()
        sessions = ([session] if session is not None else []) + finishing
        summary = None
        for s in sessions:
            with self._lock:
                self._finishing.add(s)
            s.request_stop(flush=False, notify=False, save=save, reason="disconnected")
            if not s.running:
                summary = s.finish_now()
                continue
            # The loop may be waiting for a pass; killing ffmpeg now frees it at once, whatever the pass does.
            try:
                s.source.close(timeout=0.5)
            except Exception:
                log.exception("closing the decoder of live session %s failed", s.id)
            if s.wait_done(timeout):
                summary = s.summary
        return summary

    def now(self) -> float:
        """The clock resume grace periods are measured with."""
        return self._clock()

    def count(self) -> int:
        with self._lock:
            return (sum(1 for s in self._active.values() if s is not None) + len(self._finishing)
                    + len(self._detached))

    def _ended(self, session: LiveSession) -> None:
        with self._lock:
            if self._active.get(session.sid) is session:
                del self._active[session.sid]
            self._finishing.discard(session)
            if self._detached.get(session.resume_token) is session:
                del self._detached[session.resume_token]
        self._publish_count()

    def _publish_count(self) -> None:
        self.scheduler.wake()  # the lane reservation may have ended
        if self.events is not None:
            self.events.publish("live_sessions", {"count": self.count()}, coalesce="live_sessions")

    # -- chunks ------------------------------------------------------------------------------------------------
    def admit_chunk(self, sid: str, message: Any) -> Chunk:
        """Rate limit, then parse; raises RateLimited / InvalidInput / PayloadTooLarge (the chunk is dropped)."""
        if not self.rate.admit(sid):
            raise RateLimited(f"more than {self.rate.limit} audio chunks per second "
                              "(LIVE_MAX_CHUNKS_PER_SECOND); this chunk was dropped", code="rate_limited")
        return parse_chunk(message, self.settings.live_max_chunk_size)

    def is_legacy(self, sid: str, chunk: Chunk) -> bool:
        """A chunk outside a session is the seed page's whole-recording message, unless it is numbered
        (``seq``), which only streaming clients send: then it is a stray chunk after a stop."""
        return self.get(sid) is None and chunk.seq is None

    def save(self, session: LiveSession, text: str) -> int | None:
        transcript = session.transcript(text)
        result = concurrency.wait_blocking(
            self.transcription.record, transcript, None, source="live", filename=None, audio_sha256=None,
            processing_seconds=session.compute_seconds, owner_id=session.principal.user_id,
            metadata={"live": True, "format": session.params.format, "passes": session.policy.passes,
                      "session_id": session.id})
        return result.history_id

    # -- the legacy whole-recording path -----------------------------------------------------------------------
    def transcribe_recording(self, chunk: Chunk, principal: Principal, *,
                             client: str | None = None) -> TranscriptionResult:
        """One message holding a whole recording (webm, wav, ...): decode, transcribe now, save as ``live`` in
        ``principal``'s history. It holds a session slot while it runs (429 as ``open``)."""
        options = parse_options(chunk.legacy_options, TranscribeOptions(beam_size=5))
        status = self.transcription.ready_model()
        check_language_for_model(options, status.name)
        client = client if client is not None else client_key(principal, None)
        with self._lock:
            self._check_slot_locked(client)
            self._recordings.append(client)
        try:
            return self._transcribe_recording(chunk, principal, options)
        finally:
            with self._lock:
                self._recordings.remove(client)

    def _transcribe_recording(self, chunk: Chunk, principal: Principal,
                              options: TranscribeOptions) -> TranscriptionResult:
        tmp_dir = str(self.transcription.tmp_dir)
        self.transcription.tmp_dir.mkdir(parents=True, exist_ok=True)
        audio = concurrency.wait_blocking(decode_audio, chunk.data, tmp_dir=tmp_dir,
                                          max_seconds=self.transcription.settings.max_audio_seconds)
        started = time.monotonic()
        ticket = self.scheduler.submit_steps(self.transcription.steps(audio, options), Priority.INTERACTIVE,
                                             label="live:recording")
        transcript = self.scheduler.wait(ticket)
        return self.transcription.record(transcript, options, source="live", filename=None, audio_sha256=None,
                                         processing_seconds=time.monotonic() - started, owner_id=principal.user_id,
                                         metadata={"live": True, "legacy": True, "size_bytes": len(chunk.data)})
