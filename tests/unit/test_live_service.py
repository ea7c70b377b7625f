"""LiveSessions / LiveSession with a fake scheduler, engine and VAD (no model): parsing, limits, the session
loop, garbage handling, legacy path selection and cleanup.

The fake engine "hears" words encoded in the audio: each word is a 0.4 s tone whose amplitude encodes the word's
number, so every pass over the same audio yields the same words at the same times, as a real model mostly does.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from whisper_appliance.core.config import Settings
from whisper_appliance.core.engines.base import Engine
from whisper_appliance.core.errors import (
    AudioDecodeError,
    Conflict,
    InvalidInput,
    ModelUnavailable,
    PayloadTooLarge,
    RateLimited,
)
from whisper_appliance.core.identity import GUEST, Principal
from whisper_appliance.core.records import LanguageDetection, Segment, TranscribeOptions, TranscriptionInfo, Word
from whisper_appliance.core.streaming import StreamingConfig, StreamingPolicy
from whisper_appliance.core.vad import VoiceActivityDetector
from whisper_appliance.services.live import (
    ChunkRateLimiter,
    LiveParams,
    LiveSessions,
    PcmStream,
    parse_chunk,
    parse_live_params,
)
from whisper_appliance.services.scheduler import Priority
from whisper_appliance.services.transcription import TranscriptionService

from .fakes import FakeModels, InlineScheduler

SR = 16_000
WORD_S = 0.4
GAP_S = 0.1


# ---------------------------------------------------------------------------------------------------------------
# Fakes


def tone(index: int, seconds: float = WORD_S) -> np.ndarray:
    amplitude = 0.02 * (index + 2)
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def speech(words: list[int], *, lead_silence: float = 0.3, tail_silence: float = 1.0) -> np.ndarray:
    parts = [np.zeros(int(lead_silence * SR), np.float32)]
    for w in words:
        parts += [tone(w), np.zeros(int(GAP_S * SR), np.float32)]
    parts.append(np.zeros(int(tail_silence * SR), np.float32))
    return np.concatenate(parts)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class EnergyVad(VoiceActivityDetector):
    """Speech = a loud frame."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._pending, samples])
        n = audio.size // self.frame_samples
        self._pending = audio[n * self.frame_samples:]
        frames = audio[:n * self.frame_samples].reshape(n, self.frame_samples)
        return (np.sqrt((frames ** 2).mean(axis=1)) > 0.01).astype(np.float32)


class ToneEngine(Engine):
    """Reads the words back from the tone amplitudes (times relative to the audio it is given)."""

    engine_name = "fake"

    def __init__(self) -> None:
        super().__init__("tiny.en", "cpu", "int8")
        self.calls: list[TranscribeOptions] = []

    def transcribe(self, audio, options):
        self.calls.append(options)
        frame = 160  # 10 ms
        n = audio.size // frame
        loud = np.sqrt((audio[:n * frame].reshape(n, frame) ** 2).mean(axis=1)) > 0.01 if n else np.zeros(0, bool)
        words: list[Word] = []
        i = 0
        while i < n:
            if not loud[i]:
                i += 1
                continue
            j = i
            while j < n and loud[j]:
                j += 1
            if j - i >= 20:  # a whole word is 40 frames; half a word still being spoken is not heard yet
                block = audio[i * frame:j * frame]
                index = int(round(np.sqrt(2 * (block ** 2).mean()) / 0.02)) - 2
                words.append(Word(i * frame / SR, j * frame / SR, f" w{index}", 0.9))
            i = j
        segs = []
        if words:
            segs = [Segment(0, words[0].start, words[-1].end, "".join(w.word for w in words), avg_logprob=-0.2,
                            no_speech_prob=0.01, words=tuple(words))]
        return iter(segs), TranscriptionInfo("en", 0.99, audio.size / SR)

    def detect_language(self, audio):
        return LanguageDetection("en", 0.99)

    def close(self) -> None:
        pass


@dataclass
class Added:
    id: int


class FakeHistory:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, **values):
        self.entries.append(values)
        return Added(len(self.entries))


class FakeSource:
    """An audio front end whose decoder can be told to fail, as ffmpeg does on garbage."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []
        self.error: str | None = None
        self.closed = False

    def feed(self, data: bytes) -> None:
        if self.closed:
            raise AudioDecodeError("closed")
        self.fed.append(data)
        if data.startswith(b"GARBAGE"):
            self.error = "EBML header parsing failed"

    def read(self) -> np.ndarray:
        return np.zeros(0, np.float32)

    def close(self, timeout: float = 2.0) -> None:
        self.closed = True


class Recorder:
    """Collects emitted events; ``sleep`` plays the client, feeding queued chunks and stopping at the end."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, payload: dict[str, Any]) -> None:
        self.events.append((name, payload))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [p for n, p in self.events if n == name]


@pytest.fixture
def env(tmp_path):
    settings = Settings(data_dir=tmp_path, live_max_sessions=2, live_max_chunks_per_second=5,
                        live_max_session_seconds=3600)
    return make_env(settings)


def make_env(settings: Settings, *, source_factory=None, clock=time.monotonic):
    engine = ToneEngine()
    scheduler = InlineScheduler(engine)
    models = FakeModels(name="tiny.en", engine_name="faster-whisper")
    history = FakeHistory()
    transcription = TranscriptionService(settings, models, scheduler, history)  # type: ignore[arg-type]
    kwargs = {}
    if source_factory is not None:
        kwargs["source_factory"] = source_factory

    def policy(params: LiveParams) -> StreamingPolicy:
        return StreamingPolicy(StreamingConfig(language=params.language), vad=EnergyVad())

    live = LiveSessions(settings, models, scheduler, transcription, policy_factory=policy, clock=clock, **kwargs)

    class Env:
        pass

    e = Env()
    e.settings, e.engine, e.scheduler, e.models, e.history, e.live = settings, engine, scheduler, models, history, live
    return e


def stream(live: LiveSessions, sid: str, audio: np.ndarray, *, chunk_s: float = 0.25,
           stop: bool = True) -> Recorder:
    """Run a session's loop in this thread: each idle ``sleep`` delivers the next chunk, then stop_recording."""
    session = live.get(sid)
    assert session is not None
    step = int(chunk_s * SR)
    chunks = [pcm16(audio[i:i + step]) for i in range(0, audio.size, step)]
    rec = Recorder()

    def sleep(_seconds: float) -> None:
        if chunks:
            session.feed(chunks.pop(0))
        elif stop and not session.stopping:
            live.stop(sid)

    session.run(rec, sleep)
    return rec


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def test_parse_live_params_defaults_and_values():
    assert parse_live_params(None) == LiveParams(language=None, task="transcribe", format="webm", sample_rate=16000)
    p = parse_live_params({"language": "EN", "format": "pcm16", "sample_rate": 48000})
    assert (p.language, p.format, p.sample_rate) == ("en", "pcm16", 48000)
    assert parse_live_params({"language": "auto"}).language is None
    # sample_rate only means something for raw PCM
    assert parse_live_params({"format": "webm", "sample_rate": 8000}).sample_rate == 16000


@pytest.mark.parametrize("data, code", [
    ({"format": "mp3"}, "invalid_format"),
    ({"language": "xx"}, "invalid_language"),
    ({"task": "summarise"}, "invalid_option"),
    ({"format": "pcm16", "sample_rate": "fast"}, "invalid_option"),
    ({"format": "pcm16", "sample_rate": 100}, "invalid_option"),
    ({"format": "pcm16", "sample_rate": True}, "invalid_option"),
    ("webm", "invalid_request"),
    ([1, 2], "invalid_request"),
])
def test_parse_live_params_rejects(data, code):
    with pytest.raises(InvalidInput) as info:
        parse_live_params(data)
    assert info.value.code == code


def test_parse_chunk_accepts_binary_base64_and_data_urls():
    assert parse_chunk({"audio_data": b"\x01\x02", "seq": 3}, 100).data == b"\x01\x02"
    assert parse_chunk({"audio_data": b"\x01\x02", "seq": 3}, 100).seq == 3
    assert parse_chunk({"audio_data": "AQI="}, 100).data == b"\x01\x02"
    assert parse_chunk({"audio_data": "data:audio/webm;codecs=opus;base64,AQI="}, 100).data == b"\x01\x02"
    assert parse_chunk(bytearray(b"\x05"), 100).data == b"\x05"
    assert parse_chunk({"audio_data": b"x", "language": "en"}, 100).legacy_options == {"language": "en"}


@pytest.mark.parametrize("message, code", [
    ({"audio_data": "not base64!!"}, "invalid_base64"),
    ({"audio_data": 12}, "invalid_audio_data"),
    ({"audio_data": {"nested": b"x"}}, "invalid_audio_data"),
    ({"audio_data": [1, 2, 3]}, "invalid_audio_data"),
    ({}, "missing_audio"),
    ({"audio_data": None}, "missing_audio"),
    ({"audio_data": b""}, "empty_chunk"),
    ({"audio_data": b"x", "seq": "one"}, "invalid_request"),
    (None, "invalid_audio_data"),
    (42, "invalid_audio_data"),
])
def test_parse_chunk_rejects_garbage(message, code):
    with pytest.raises(InvalidInput) as info:
        parse_chunk(message, 100)
    assert info.value.code == code


def test_parse_chunk_size_limit_binary_and_base64():
    with pytest.raises(PayloadTooLarge) as info:
        parse_chunk({"audio_data": b"x" * 101}, 100)
    assert info.value.code == "chunk_too_large"
    with pytest.raises(PayloadTooLarge):
        parse_chunk({"audio_data": "QUFB" * 200}, 100)
    assert len(parse_chunk({"audio_data": b"x" * 100}, 100).data) == 100


def test_rate_limiter_sliding_window():
    now = [0.0]
    limiter = ChunkRateLimiter(3, clock=lambda: now[0])
    assert [limiter.admit("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.admit("b")  # per connection
    now[0] = 0.99
    assert not limiter.admit("a")
    now[0] = 1.0
    assert limiter.admit("a")
    limiter.forget("a")
    assert all(limiter.admit("a") for _ in range(3))


def test_admit_chunk_rate_limited_keeps_working(env):
    admitted = 0
    with pytest.raises(RateLimited) as info:
        for _ in range(10):
            env.live.admit_chunk("sid", {"audio_data": b"\x00\x00"})
            admitted += 1
    assert info.value.code == "rate_limited"
    assert admitted == env.settings.live_max_chunks_per_second


# ---------------------------------------------------------------------------------------------------------------
# PCM front end


def test_pcm_stream_split_at_odd_bytes_matches_whole():
    audio = speech([1, 2], tail_silence=0.1)
    data = pcm16(audio)
    whole = PcmStream(16000)
    whole.feed(data)
    split = PcmStream(16000)
    for i in range(0, len(data), 333):  # odd-sized pieces: samples split across chunks
        split.feed(data[i:i + 333])
    a, b = whole.read(), split.read()
    assert a.size == audio.size and np.array_equal(a, b)


def test_pcm_stream_resamples_continuously():
    rate = 48000
    t = np.arange(rate) / rate
    sine = (0.5 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2").tobytes()
    s = PcmStream(rate)
    for i in range(0, len(sine), 4800 * 2 + 1):
        s.feed(sine[i:i + 4800 * 2 + 1])
    s.close()
    out = s.read()
    assert abs(out.size - SR) <= 64
    # No clicks at the old chunk edges: the resampled sine stays smooth (max step of a 300 Hz sine at 16 kHz).
    middle = out[200:-200]
    assert np.max(np.abs(np.diff(middle))) < 0.5 * 2 * np.pi * 300 / SR * 1.1


# ---------------------------------------------------------------------------------------------------------------
# Sessions


def test_open_limits_and_conflicts(env):
    live = env.live
    s1 = live.open("a", {"format": "pcm16"}, GUEST)
    with pytest.raises(Conflict) as info:
        live.open("a", {"format": "pcm16"}, GUEST)
    assert info.value.code == "already_recording"
    live.open("b", {"format": "pcm16"}, GUEST)
    with pytest.raises(RateLimited) as info:
        live.open("c", {"format": "pcm16"}, GUEST)
    assert info.value.code == "too_many_sessions"
    assert live.count() == 2
    live.close("a")
    assert live.count() == 1
    assert s1.source._closed  # type: ignore[attr-defined]
    live.open("c", {"format": "pcm16"}, GUEST)
    assert live.count() == 2


def test_open_refuses_when_no_model_or_wrong_language(env):
    env.models.state = "loading"
    with pytest.raises(ModelUnavailable):
        env.live.open("a", {"format": "pcm16"}, GUEST)
    env.models.state = "ready"
    with pytest.raises(InvalidInput) as info:
        env.live.open("a", {"format": "pcm16", "language": "de"}, GUEST)  # tiny.en is English-only
    assert info.value.code == "invalid_language"
    assert env.live.count() == 0


def test_session_streams_partials_and_finals_then_saves(env):
    live = env.live
    session = live.open("sid", {"format": "pcm16"}, GUEST)
    words = [3, 1, 4, 1, 5, 9, 2, 6]
    rec = stream(live, "sid", speech(words))

    finals = rec.named("transcription_result")
    stopped = rec.named("recording_stopped")
    assert len(stopped) == 1 and rec.events[-1][0] == "recording_stopped"
    expected = " ".join(f"w{w}" for w in words)
    assert stopped[0]["text"] == expected
    # Committed text is never repeated or retracted: the finals add up to the whole text.
    assert " ".join(f["text"] for f in finals) == expected
    assert all(f["final"] is True and f["session_id"] == session.id and f["language"] == "en" for f in finals)
    assert rec.named("transcription_partial"), "partials are shown while the speaker talks"
    assert not rec.named("transcription_error")
    assert stopped[0]["history_id"] == 1
    entry = env.history.entries[0]
    assert entry["source"] == "live" and entry["text"] == expected and entry["options_key"] is None
    assert [w["word"].strip() for s in entry["segments"] for w in s["words"]] == expected.split()
    assert set(env.scheduler.priorities) == {Priority.LIVE}
    assert live.count() == 0 and live.get("sid") is None
    assert session.source._closed  # type: ignore[attr-defined]


def test_silence_emits_nothing_and_saves_nothing(env):
    live = env.live
    live.open("sid", {"format": "pcm16"}, GUEST)
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(5 * SR, np.float32), (0.002 * rng.standard_normal(5 * SR)).astype(np.float32)])
    rec = stream(live, "sid", audio, chunk_s=1.0)
    assert not rec.named("transcription_result") and not rec.named("transcription_error")
    assert all(p["text"] == "" for p in rec.named("transcription_partial"))
    assert rec.named("recording_stopped")[0] == {"session_id": rec.named("recording_stopped")[0]["session_id"],
                                                 "text": "", "duration": 10.0, "history_id": None}
    assert env.scheduler.priorities == [] and env.history.entries == []


def test_feed_after_stop_is_refused(env):
    session = env.live.open("sid", {"format": "pcm16"}, GUEST)
    env.live.stop("sid")
    with pytest.raises(InvalidInput) as info:
        session.feed(b"\x00\x00")
    assert info.value.code == "not_recording"
    with pytest.raises(InvalidInput):
        env.live.stop("sid")


def test_disconnect_mid_session_frees_audio_and_saves_committed_text(tmp_path):
    env = make_env(Settings(data_dir=tmp_path, live_resume_seconds=0))  # no grace period: saved at once
    live = env.live
    session = live.open("sid", {"format": "pcm16"}, GUEST)
    rec = Recorder()
    loop = threading.Thread(target=session.run, args=(rec, lambda s: time.sleep(0.001)))
    loop.start()
    audio = speech([7, 8], tail_silence=2.0)
    session.feed(pcm16(audio))  # two words and a pause: committed once the loop has heard the pause
    deadline = time.monotonic() + 10
    while not rec.named("transcription_result") and time.monotonic() < deadline:
        time.sleep(0.01)
    session.feed(pcm16(tone(5)))  # a word still being spoken when the client goes away
    summary = live.close("sid")
    loop.join(5)
    assert not loop.is_alive()
    assert summary is not None and summary.text == "w7 w8" and summary.reason == "disconnected"
    assert session.source._closed  # type: ignore[attr-defined]
    assert env.history.entries[0]["text"] == "w7 w8" and env.history.entries[0]["source"] == "live"
    assert not rec.named("recording_stopped")  # nobody is listening any more
    assert live.count() == 0


# -- resuming after a dropped connection ----------------------------------------------------------------------


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def running_session(live: LiveSessions, sid: str, params: dict, principal: Principal = GUEST):
    """A session with its loop on a thread (as the web layer runs it), and what it emitted."""
    rec = Recorder()
    session = live.open(sid, params, principal, rec)
    loop = threading.Thread(target=session.run, args=(rec, lambda s: time.sleep(0.002)), daemon=True)
    loop.start()
    return session, rec, loop


def test_a_dropped_connection_detaches_the_session_and_a_resume_goes_on_with_it(env):
    live = env.live
    session, first, loop = running_session(live, "sid1", {"format": "pcm16"})
    assert first.events == [] and session.started_payload()["resume_token"] == session.resume_token
    session.feed(pcm16(speech([7, 8], tail_silence=2.0)))
    wait_for(lambda: first.named("transcription_result"))
    session.feed(pcm16(tone(5)))  # a word still being spoken when the connection drops
    assert live.close("sid1") is None  # detached, not ended
    assert live.count() == 1 and session.detached_since is not None and loop.is_alive()
    assert not env.history.entries

    second = Recorder()
    resumed = live.open("sid2", {"format": "pcm16", "resume": session.resume_token, "received_until": 0.0}, GUEST,
                        second)
    assert resumed is session and session.resumed and live.get("sid2") is session and live.get("sid1") is None
    payload = session.started_payload()
    assert payload["resumed"] is True and payload["session_id"] == session.id
    assert payload["audio_seconds"] == pytest.approx(speech([7, 8], tail_silence=2.0).size / SR + WORD_S, abs=0.01)
    session.replay(0.0)  # the client missed everything: the committed result comes again
    assert [p["text"] for p in second.named("transcription_result")] == ["w7 w8"]
    session.feed(pcm16(np.concatenate([np.zeros(int(GAP_S * SR), np.float32), speech([6], lead_silence=0.0)])))
    wait_for(lambda: len(second.named("transcription_result")) >= 2)
    live.stop("sid2")
    loop.join(10)
    assert not loop.is_alive()
    assert [p["text"] for p in second.named("transcription_result")][1:] == ["w5 w6"]
    assert len(env.history.entries) == 1 and env.history.entries[0]["text"] == "w7 w8 w5 w6"
    stopped = second.named("recording_stopped")
    assert stopped and stopped[0]["session_id"] == session.id and not first.named("recording_stopped")
    assert live.count() == 0


def test_a_resume_replays_only_the_results_the_client_did_not_get(env):
    live = env.live
    session, first, loop = running_session(live, "sid1", {"format": "pcm16"})
    session.feed(pcm16(speech([7, 8], tail_silence=2.0)))
    wait_for(lambda: first.named("transcription_result"))
    got = first.named("transcription_result")[-1]["end"]
    live.close("sid1")
    second = Recorder()
    live.open("sid2", {"format": "pcm16", "resume": session.resume_token, "received_until": got}, GUEST, second)
    session.replay(got)
    assert second.named("transcription_result") == []
    live.stop("sid2")
    loop.join(10)


def test_a_resume_takes_over_a_session_whose_old_connection_the_server_still_thinks_open(env):
    live = env.live
    session, first, loop = running_session(live, "sid1", {"format": "pcm16"})
    second = Recorder()
    assert live.open("sid2", {"format": "pcm16", "resume": session.resume_token}, GUEST, second) is session
    assert live.get("sid1") is None and live.count() == 1
    session.feed(pcm16(speech([3], tail_silence=2.0)))
    wait_for(lambda: second.named("transcription_result"))
    assert first.named("transcription_result") == []  # the old connection hears nothing more
    live.close("sid1")  # its disconnect, noticed late, no longer concerns the session
    assert live.get("sid2") is session
    live.stop("sid2")
    loop.join(10)
    assert len(env.history.entries) == 1


def test_only_the_account_that_opened_a_session_can_resume_it(tmp_path):
    env = make_env(Settings(data_dir=tmp_path, live_max_sessions=8))
    live = env.live
    alice = Principal(user_id=1, username="alice", role="user", scopes=frozenset({"transcribe"}))
    bob = Principal(user_id=2, username="bob", role="user", scopes=frozenset({"transcribe"}))
    session, _, loop = running_session(live, "sid1", {"format": "pcm16"}, alice)
    live.close("sid1")
    params = {"format": "pcm16", "resume": session.resume_token}
    stolen = live.open("sid2", params, bob, Recorder())
    assert stolen is not session and not stolen.resumed  # bob gets a session of his own
    assert live.open("sid3", params, GUEST, Recorder()) is not session
    assert live.open("sid4", params, alice, Recorder()) is session
    live.close("sid2")  # their loops never ran
    live.close("sid3")
    live.stop("sid4")
    loop.join(10)
    assert live.count() == 0


def test_a_resume_may_change_the_audio_format(env):
    live = env.live
    session, first, loop = running_session(live, "sid1", {"format": "pcm16"})
    session.feed(pcm16(speech([4], tail_silence=2.0)))
    wait_for(lambda: first.named("transcription_result"))
    live.close("sid1")
    second = Recorder()
    live.open("sid2", {"format": "pcm16", "sample_rate": 48000, "resume": session.resume_token}, GUEST, second)
    assert session.started_payload()["sample_rate"] == 48000
    audio48 = np.repeat(speech([9], lead_silence=0.1, tail_silence=2.0), 3)  # the same tones at 48 kHz
    session.feed(pcm16(audio48))
    wait_for(lambda: second.named("transcription_result"))
    live.stop("sid2")
    loop.join(10)
    assert env.history.entries[0]["text"] == "w4 w9"


def test_an_unresumed_session_is_finished_and_saved_after_the_grace_period(tmp_path):
    now = [1000.0]
    env = make_env(Settings(data_dir=tmp_path, live_resume_seconds=30), clock=lambda: now[0])
    live = env.live
    session, first, loop = running_session(live, "sid1", {"format": "pcm16"})
    session.feed(pcm16(speech([7, 8], tail_silence=2.0)))
    wait_for(lambda: first.named("transcription_result"))
    session.feed(pcm16(speech([2], lead_silence=0.0, tail_silence=0.0)))  # not yet committed at the drop
    live.close("sid1")
    time.sleep(0.2)
    assert loop.is_alive() and not env.history.entries
    now[0] += 31
    loop.join(10)
    assert not loop.is_alive() and live.count() == 0
    # Finished as a stopped session is: its last utterance was decoded too, and one entry was saved.
    assert [e["text"] for e in env.history.entries] == ["w7 w8 w2"]
    assert session.summary is not None and session.summary.reason == "disconnected"
    fresh = live.open("sid2", {"format": "pcm16", "resume": session.resume_token}, GUEST, Recorder())
    assert fresh is not session and not fresh.resumed and fresh.started_payload()["resumed"] is False


def test_detached_sessions_count_against_the_session_limit(tmp_path):
    now = [0.0]
    live = make_env(Settings(data_dir=tmp_path, live_max_sessions=2), clock=lambda: now[0]).live
    _, _, first = running_session(live, "sid1", {"format": "pcm16"})
    _, _, second = running_session(live, "sid2", {"format": "pcm16"})
    live.close("sid1")
    with pytest.raises(RateLimited):
        live.open("sid3", {"format": "pcm16"}, GUEST)
    live.stop("sid2")
    now[0] += 60  # the detached one's grace period ends
    first.join(10)
    second.join(10)
    assert live.count() == 0


@pytest.mark.parametrize("resume", [123, "", "x" * 101])
def test_a_bad_resume_token_is_refused(resume):
    with pytest.raises(InvalidInput):
        parse_live_params({"format": "pcm16", "resume": resume})
    with pytest.raises(InvalidInput):
        parse_live_params({"format": "pcm16", "received_until": "soon"})


def test_a_scheduler_lane_is_reserved_while_a_session_is_open(env):
    assert env.scheduler.reserve() is False
    env.live.open("sid", {"format": "pcm16"}, GUEST)
    assert env.scheduler.reserve() is True
    wakes = env.scheduler.wakes
    env.live.close("sid")
    assert env.scheduler.reserve() is False
    assert env.scheduler.wakes > wakes  # the lanes are told the reservation ended


def test_close_of_a_session_whose_loop_never_ran(env):
    session = env.live.open("sid", {"format": "pcm16"}, GUEST)
    summary = env.live.close("sid")
    assert summary is not None and summary.text == "" and summary.history_id is None
    assert session.source._closed  # type: ignore[attr-defined]
    assert env.live.close("sid") is None
    assert env.live.count() == 0


def test_decoder_failure_ends_session_and_connection_can_start_again(tmp_path):
    e = make_env(Settings(data_dir=tmp_path), source_factory=lambda params: FakeSource())
    session = e.live.open("sid", {"format": "webm"}, GUEST)
    session.feed(b"GARBAGE bytes that are not webm")
    rec = Recorder()
    session.run(rec, lambda s: None)
    errors = rec.named("transcription_error")
    assert errors and errors[0]["code"] == "decode_failed" and "EBML" in errors[0]["message"]
    assert rec.events[-1][0] == "recording_stopped"
    assert session.source.closed and e.live.count() == 0
    again = e.live.open("sid", {"format": "webm"}, GUEST)
    assert again.id != session.id


def test_failed_passes_are_reported_then_end_the_session(env):
    live = env.live
    live.open("sid", {"format": "pcm16"}, GUEST)
    env.scheduler.fail = ModelUnavailable("model is loading")
    session = live.get("sid")
    session.feed(pcm16(speech([1, 2, 3], tail_silence=2.0)))
    rec = Recorder()
    session.run(rec, lambda s: None)
    codes = [p["code"] for p in rec.named("transcription_error")]
    assert codes == ["model_unavailable"] * 3
    assert rec.events[-1][0] == "recording_stopped" and live.count() == 0


def test_an_internal_failure_reaches_the_client_without_its_exception_text(env, caplog):
    live = env.live
    live.open("sid", {"format": "pcm16"}, GUEST)
    env.scheduler.fail = RuntimeError("engine blew up reading /srv/secret/models/x.bin")
    session = live.get("sid")
    session.feed(pcm16(speech([1, 2], tail_silence=2.0)))
    rec = Recorder()
    with caplog.at_level("ERROR", logger="whisper_appliance.services.live"):
        session.run(rec, lambda s: None)
    errors = rec.named("transcription_error")
    assert [p["code"] for p in errors] == ["internal_error"]
    message = errors[0]["message"]
    assert "blew up" not in message and "/srv" not in message and "x.bin" not in message
    reference = message.split("error id ")[1].split(")")[0]
    # The same id is logged next to the details, so an operator can find them.
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)
    assert rec.events[-1][0] == "recording_stopped" and live.count() == 0


def test_a_history_failure_at_the_end_is_reported_without_its_exception_text(env):
    live = env.live
    live.open("sid", {"format": "pcm16"}, GUEST)

    def broken(**values):
        raise OSError("database at /srv/secret/appliance.db is gone")

    env.history.add = broken
    rec = stream(live, "sid", speech([1, 2, 3], tail_silence=1.0))
    errors = rec.named("transcription_error")
    assert [p["code"] for p in errors] == ["history_failed"]
    assert "/srv" not in errors[0]["message"] and "gone" not in errors[0]["message"]
    assert "error id" in errors[0]["message"]


def test_session_limit_stops_with_a_final_flush(tmp_path):
    e = make_env(Settings(data_dir=tmp_path, live_max_session_seconds=2))
    e.live.open("sid", {"format": "pcm16"}, GUEST)
    rec = stream(e.live, "sid", speech([1, 2, 3, 4, 5, 6], tail_silence=0.0), stop=False)
    errors = rec.named("transcription_error")
    assert [p["code"] for p in errors] == ["session_limit"]
    stopped = rec.named("recording_stopped")[0]
    assert 2.0 <= stopped["duration"] < 3.0
    # Words heard before the limit were flushed as final text, not lost.
    assert stopped["text"].startswith("w1 w2")
    assert " ".join(p["text"] for p in rec.named("transcription_result")) == stopped["text"]


# ---------------------------------------------------------------------------------------------------------------
# Legacy whole-recording chunk


def test_legacy_selection(env):
    chunk = parse_chunk({"audio_data": b"RIFF...."}, 1000)
    numbered = parse_chunk({"audio_data": b"\x00\x00", "seq": 5}, 1000)
    assert env.live.is_legacy("sid", chunk)
    assert not env.live.is_legacy("sid", numbered)  # a stray streaming chunk, not a recording
    env.live.open("sid", {"format": "pcm16"}, GUEST)
    assert not env.live.is_legacy("sid", chunk)


def test_legacy_recording_is_transcribed_and_saved(env):
    buf = io.BytesIO()
    sf.write(buf, speech([4, 2]), SR, format="WAV", subtype="PCM_16")
    chunk = env.live.admit_chunk("sid", {"audio_data": buf.getvalue()})
    result = env.live.transcribe_recording(chunk, GUEST)
    assert result.transcript.text == "w4 w2"
    assert result.history_id == 1 and env.history.entries[0]["source"] == "live"
    assert env.scheduler.priorities == [Priority.INTERACTIVE]


def test_legacy_garbage_is_a_decode_error(env):
    chunk = env.live.admit_chunk("sid", {"audio_data": np.random.default_rng(1).bytes(4000)})
    with pytest.raises((AudioDecodeError, InvalidInput)):
        env.live.transcribe_recording(chunk, GUEST)
    assert env.history.entries == []


def test_loop_started_after_a_close_does_nothing(env):
    session = env.live.open("sid", {"format": "pcm16"}, GUEST)
    env.live.close("sid")
    rec = Recorder()
    summary = session.run(rec, lambda s: None)
    assert summary.reason == "disconnected" and rec.events == []
    assert env.history.entries == [] and env.scheduler.priorities == []


# ---------------------------------------------------------------------------------------------------------------
# Session slots: finishing sessions, per-client cap, idle timeout, legacy recordings


def test_a_stopped_session_holds_its_slot_until_it_has_finished(tmp_path):
    live = make_env(Settings(data_dir=tmp_path, live_max_sessions=1)).live
    first = live.open("sid1", {"format": "pcm16"}, GUEST)
    live.stop("sid1")  # its loop has not flushed yet: ffmpeg/worker still there
    with pytest.raises(RateLimited) as info:
        live.open("sid2", {"format": "pcm16"}, GUEST)
    assert info.value.code == "too_many_sessions"
    first.run(Recorder(), lambda s: None)
    assert live.open("sid2", {"format": "pcm16"}, GUEST) is not None


def test_start_stop_loops_cannot_exceed_the_session_limit(tmp_path):
    live = make_env(Settings(data_dir=tmp_path, live_max_sessions=3)).live
    opened = 0
    for i in range(10):
        try:
            live.open(f"sid{i}", {"format": "pcm16"}, GUEST)
        except RateLimited:
            continue
        opened += 1
        live.stop(f"sid{i}")
    assert opened == 3


def test_per_client_session_cap(tmp_path):
    live = make_env(Settings(data_dir=tmp_path, live_max_sessions=10, live_max_sessions_per_client=2)).live
    live.open("a", {"format": "pcm16"}, GUEST, client="ip:10.0.0.1")
    live.open("b", {"format": "pcm16"}, GUEST, client="ip:10.0.0.1")
    with pytest.raises(RateLimited) as info:
        live.open("c", {"format": "pcm16"}, GUEST, client="ip:10.0.0.1")
    assert info.value.code == "too_many_client_sessions"
    live.open("d", {"format": "pcm16"}, GUEST, client="ip:10.0.0.2")
    user = Principal(user_id=7, username="u", role="user")
    live.open("e", {"format": "pcm16"}, user)
    live.open("f", {"format": "pcm16"}, user)
    with pytest.raises(RateLimited):
        live.open("g", {"format": "pcm16"}, user)


def test_a_reconnecting_client_is_not_refused_while_its_old_session_finishes(tmp_path):
    """The browser's reconnect: the old connection's session is still finishing when the new one starts."""
    live = make_env(Settings(data_dir=tmp_path, live_max_sessions=10, live_resume_seconds=30)).live
    assert Settings().live_max_sessions_per_client >= 8
    old = live.open("old", {"format": "pcm16"}, GUEST, client="ip:1", emit=Recorder())
    live.stop("old")  # finishing
    fresh = live.open("new", {"format": "pcm16"}, GUEST, client="ip:1", emit=Recorder())
    assert fresh is not old
    fresh.running = True  # its loop runs (as under the web layer), so close detaches it
    live.close("new")  # dropped again: detached, waits for its resume
    resumed = live.open("newer", {"format": "pcm16", "resume": fresh.resume_token}, GUEST, Recorder(),
                        client="ip:1")
    assert resumed is fresh and resumed.resumed


def test_a_resume_takes_no_new_slot(tmp_path):
    live = make_env(Settings(data_dir=tmp_path, live_max_sessions=1, live_resume_seconds=30)).live
    session = live.open("old", {"format": "pcm16"}, GUEST, Recorder())
    session.running = True  # its loop runs (as under the web layer), so close detaches it
    live.close("old")
    resumed = live.open("new", {"format": "pcm16", "resume": session.resume_token}, GUEST, Recorder())
    assert resumed is session


def test_a_session_without_audio_is_stopped_after_the_idle_timeout(tmp_path):
    now = [0.0]
    e = make_env(Settings(data_dir=tmp_path, live_idle_timeout=5), clock=lambda: now[0])
    session = e.live.open("sid", {"format": "pcm16"}, GUEST)
    session.feed(pcm16(speech([1, 2], tail_silence=1.0)))
    rec = Recorder()

    def sleep(_seconds: float) -> None:
        now[0] += 1.0

    summary = session.run(rec, sleep)
    assert [p["code"] for p in rec.named("transcription_error")] == ["idle_timeout"]
    assert rec.events[-1][0] == "recording_stopped" and summary.reason == "idle"
    assert summary.text == "w1 w2" and e.live.count() == 0
    assert 5.0 <= now[0] < 7.0


def test_a_legacy_recording_counts_as_a_session(tmp_path):
    e = make_env(Settings(data_dir=tmp_path, live_max_sessions=1))
    buf = io.BytesIO()
    sf.write(buf, speech([4, 2]), SR, format="WAV", subtype="PCM_16")
    chunk = e.live.admit_chunk("x", {"audio_data": buf.getvalue()})
    e.live.open("sid", {"format": "pcm16"}, GUEST)
    with pytest.raises(RateLimited):
        e.live.transcribe_recording(chunk, GUEST)
    e.live.close("sid")
    assert e.live.transcribe_recording(chunk, GUEST).transcript.text == "w4 w2"
    assert e.live.open("sid2", {"format": "pcm16"}, GUEST) is not None  # the recording's slot was released
