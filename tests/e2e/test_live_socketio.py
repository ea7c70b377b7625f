"""Live dictation end to end: python-socketio clients against the real server (tiny.en) over HTTPS.

Streams are sent at real-time pace in 250 ms chunks, as raw 16-bit PCM and as a WebM/Opus stream cut into the
byte pieces MediaRecorder gives (only the first piece carries the header). The client (``LiveClient``) is the
one of scripts/bench_live.py, so the benchmark's measuring code is exercised here too. Latencies are printed,
never asserted (run with -s to see them).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import socketio
import soundfile as sf

from whisper_appliance.core.audio import decode_audio
from whisper_appliance.core.records import SAMPLE_RATE
from whisper_appliance.core.wer import normalize, word_error_rate

from ..conftest import hallucinated_runs, reference_text
from .conftest import bench

# Live may be this much worse than offline on the same file and model. At real-time pace on a loaded 2-core
# machine tiny.en's passes fall at other times on every run and substitute a few other words ("renew" for
# "review"): CI measured 6-14 points over offline on the 80-word meeting. Hallucinated phrases are caught by the
# insertion check; the +2-point goal is measured over the corpus by eval-live (docs/PERFORMANCE.md).
WER_MARGIN = 0.15


@pytest.fixture
def client(server):
    c = bench.LiveClient(server.base_url, verify=str(server.cert_path))
    yield c
    c.disconnect()


@pytest.fixture(scope="module")
def offline(server):
    """Offline transcription of each file by the same server and model (POST /transcribe)."""
    http = server.session()
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            cache[name] = bench.transcribe_offline(http, server.base_url, bench.SPEECH_DIR / name, "tiny.en")
        return cache[name]

    return get


def ffmpeg_children(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in children:
        try:
            if p.name() == "ffmpeg" and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def live_history(server) -> list[dict]:
    params = {"source": "live", "limit": 100}
    # These tests' clients connect anonymously: their sessions go to the guests' shared history.
    r = server.session().get(server.url("/api/history"), params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def check_never_retracted(out) -> None:
    """Finals add up to the whole text, and every partial lies after the text committed before it."""
    assert out.stopped is not None
    assert " ".join(out.committed_text.split()) == " ".join(out.stopped["text"].split())
    committed_end = 0.0
    for e in out.events:
        if e.name == "transcription_result":
            assert e.payload["final"] is True and e.payload["text"].strip()
            words = e.payload["words"]  # the committed words with their stream times
            assert normalize("".join(w["word"] for w in words)) == normalize(e.payload["text"])
            assert words[0]["start"] == e.payload["start"] and words[-1]["end"] == e.payload["end"]
            assert e.payload["start"] >= committed_end - 0.5, "a commit went back over committed audio"
            committed_end = max(committed_end, e.payload["end"])
        elif e.name == "transcription_partial" and e.payload["text"]:
            # word times jitter a little between passes; a partial re-saying committed words would start earlier
            assert e.payload["start"] >= committed_end - 0.5, (e.payload, committed_end)


def print_latencies(label: str, out) -> None:
    s = out.summary()
    print(f"\n[live] {label}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in s.items()))


# ---------------------------------------------------------------------------------------------------------------
# Real speech, both formats


@pytest.mark.parametrize(("name", "chunking"), [
    ("synthetic_meeting.wav", "pcm16"), ("synthetic_meeting.wav", "webm"),
    ("jfk.mp3", "pcm16"), ("jfk.mp3", "webm"),
    ("jfk.mp3", "webm_bytes"),  # WebM cut at arbitrary byte boundaries, even inside the header and blocks
])
def test_stream_matches_offline_quality(server, client, offline, name, chunking):
    path = bench.SPEECH_DIR / name
    prepared = bench.prepare(path)
    fmt = "webm" if chunking.startswith("webm") else chunking
    out = client.run_stream(prepared.chunks[chunking], prepared.duration, fmt=fmt)
    print_latencies(f"{name} {chunking}", out)

    assert not out.errors, [e.payload for e in out.errors]
    check_never_retracted(out)
    started = out.named("recording_started")[0].payload
    assert started["format"] == fmt and started["model"] == "tiny.en"
    assert out.partials, "partial hypotheses are shown while speaking"
    assert all(e.payload["language"] == "en" for e in out.finals)
    assert abs(out.stopped["duration"] - prepared.duration) < 0.5

    ref = reference_text(path.stem)
    live_wer = word_error_rate(ref, out.stopped["text"])
    offline_wer = word_error_rate(ref, offline(name))
    print(f"[live] {name} {fmt}: WER live {live_wer:.3f} offline {offline_wer:.3f}")
    print(f"[live] live text: {out.stopped['text']}")
    print(f"[live] offline text: {offline(name)}")
    assert hallucinated_runs(offline(name), out.stopped["text"]) == ()
    assert live_wer <= offline_wer + WER_MARGIN

    entry = next(e for e in live_history(server) if e["id"] == out.stopped["history_id"])
    assert entry["source"] == "live" and normalize(entry["text"]) == normalize(out.stopped["text"])
    assert entry["model"] == "tiny.en"


# ---------------------------------------------------------------------------------------------------------------
# Silence


@pytest.mark.parametrize("kind", ["digital", "noise"])
def test_silence_gives_no_text(client, kind):
    rng = np.random.default_rng(7)
    seconds = 30
    audio = (np.zeros(seconds * SAMPLE_RATE, np.float32) if kind == "digital"
             else (0.003 * rng.standard_normal(seconds * SAMPLE_RATE)).astype(np.float32))
    # 1-second chunks sent 8 per second: faster than real time (the policy only counts samples) and under
    # LIVE_MAX_CHUNKS_PER_SECOND.
    chunks = bench.pcm_chunks(audio, 1.0)
    out = client.run_stream(chunks, float(seconds), fmt="pcm16", chunk_s=1.0, pace_s=0.125)
    assert not out.errors, [e.payload for e in out.errors]
    assert out.finals == [] and out.partials == []
    assert out.stopped["text"] == "" and out.stopped["history_id"] is None
    assert out.stopped["duration"] == pytest.approx(seconds, abs=0.01)


# ---------------------------------------------------------------------------------------------------------------
# Garbage, and the connection staying usable


def short_speech_chunks() -> tuple[list[bytes], float]:
    audio = decode_audio(bench.SPEECH_DIR / "goforward.wav")
    return bench.pcm_chunks(audio), audio.size / SAMPLE_RATE


def error_after(client, mark: int, timeout: float = 10):
    return client.wait_for(lambda e: e.name == "transcription_error", timeout, after=mark)


def test_garbage_webm_then_a_normal_session(client):
    client.start("webm")
    mark = client.mark()
    client.stream([np.random.default_rng(3).bytes(4000)], realtime=False)
    err = error_after(client, mark)
    assert err.payload["code"] == "decode_failed" and err.payload["message"]
    client.wait_for(lambda e: e.name == "recording_stopped", 15, after=mark)

    chunks, duration = short_speech_chunks()
    out = client.run_stream(chunks, duration, fmt="pcm16")
    assert not out.errors
    assert word_error_rate(reference_text("goforward"), out.stopped["text"]) <= 0.5, out.stopped["text"]


@pytest.mark.parametrize("payload, code", [
    ({"audio_data": "this is not base64!"}, "invalid_base64"),
    ({"audio_data": 12345}, "invalid_audio_data"),
    ({"audio_data": {"nested": "dict"}}, "invalid_audio_data"),
    ({"audio_data": [1, 2, 3]}, "invalid_audio_data"),
    ({"something": "else"}, "missing_audio"),
    ({"audio_data": b""}, "empty_chunk"),
])
def test_bad_chunks_in_a_session_are_errors_and_the_session_goes_on(client, payload, code):
    client.start("pcm16")
    mark = client.mark()
    client.emit("audio_chunk", payload)
    assert error_after(client, mark).payload["code"] == code
    chunks, duration = short_speech_chunks()
    client.stream(chunks)
    stopped = client.stop()
    assert "forward" in stopped.payload["text"].lower(), stopped.payload


def test_bad_start_recording_and_client_results_are_refused(server, client):
    for params, code in ((["not", "an", "object"], "invalid_request"), ({"format": "mp3"}, "invalid_format"),
                         ({"format": "pcm16", "sample_rate": "fast"}, "invalid_option"),
                         ({"language": "klingon"}, "invalid_language")):
        mark = client.mark()
        client.emit("start_recording", params)
        assert error_after(client, mark).payload["code"] == code

    before = len(live_history(server))
    mark = client.mark()
    client.emit("transcription_result", {"text": "injected by a client", "final": True})
    assert error_after(client, mark).payload["code"] == "not_allowed"
    time.sleep(0.5)
    items = live_history(server)
    assert len(items) == before and not any("injected" in i["text"] for i in items)

    # A second start while recording is refused; the first session goes on.
    client.start("pcm16")
    mark = client.mark()
    client.emit("start_recording", {"format": "pcm16"})
    assert error_after(client, mark).payload["code"] == "already_recording"
    chunks, duration = short_speech_chunks()
    client.stream(chunks)
    assert "forward" in client.stop().payload["text"].lower()


def test_stray_numbered_chunk_outside_a_session(client):
    mark = client.mark()
    client.emit("audio_chunk", {"audio_data": b"\x00\x01" * 100, "seq": 9})
    assert error_after(client, mark).payload["code"] == "not_recording"


def test_oversized_chunk_and_rate_limit_keep_the_connection(server, client):
    client.start("pcm16")
    mark = client.mark()
    client.emit("audio_chunk", {"audio_data": b"\x00" * (1024 * 1024 + 2)})
    assert error_after(client, mark).payload["code"] == "chunk_too_large"
    mark = client.mark()
    for i in range(30):  # LIVE_MAX_CHUNKS_PER_SECOND is 20 by default
        client.emit("audio_chunk", {"audio_data": b"\x00\x00" * 160, "seq": i})
    assert error_after(client, mark).payload["code"] == "rate_limited"
    time.sleep(1.1)
    stopped = client.stop()
    assert stopped.payload["text"] == ""
    assert client.connected


# ---------------------------------------------------------------------------------------------------------------
# Disconnects, legacy clients, auth, load


def live_entry(server, session_id: str, timeout: float = 30) -> list[dict]:
    """The live history entries of one session, once there is at least one."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in live_history(server) if (e.get("metadata") or {}).get("session_id") == session_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


@pytest.mark.parametrize("first, then", [("pcm16", "pcm16"), ("webm", "pcm16"), ("webm", "webm")])
def test_a_dropped_connection_resumes_the_same_session(server, offline, first, then):
    """The client drops mid-sentence and comes back on a new connection with the resume token: one session,
    one committed text, one history entry, whichever format each connection streams."""
    path = bench.SPEECH_DIR / "jfk.mp3"
    prepared = bench.prepare(path)
    audio = decode_audio(path)
    c1 = bench.LiveClient(server.base_url, verify=str(server.cert_path))
    started = c1.start(first)
    assert started["resumed"] is False and len(started["resume_token"]) >= 32
    half = int(6.0 / bench.CHUNK_S)  # drop in the middle of the second sentence
    c1.stream(prepared.chunks[first], stop_after=half)
    time.sleep(1.5)
    got = [e.payload for e in c1.events if e.name == "transcription_result"]
    received_until = got[-1]["end"] if got else 0.0
    c1.disconnect()

    c2 = bench.LiveClient(server.base_url, verify=str(server.cert_path))
    try:
        mark = c2.mark()
        resumed = c2.start(then, resume=started["resume_token"], received_until=received_until)
        assert resumed["resumed"] is True and resumed["session_id"] == started["session_id"]
        held = resumed["audio_seconds"]
        assert 5.5 <= held <= 6.5  # what the first connection sent (decoded, for webm)
        rest = audio[int(held * 16000):]
        if then == "pcm16":
            chunks = bench.pcm_chunks(rest)
        else:  # a new WebM stream, header first, as a new MediaRecorder would send
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "rest.wav"
                sf.write(wav, rest, 16000)
                chunks = bench.webm_chunks(bench.encode_webm(wav), rest.size / 16000)
        c2.stream(chunks)
        stopped = c2.stop().payload
        assert stopped["session_id"] == started["session_id"]
        later = [e.payload for e in c2.events[mark:] if e.name == "transcription_result"]
        assert all(p["end"] > received_until for p in later)  # nothing the client had was sent again
        text = " ".join(p["text"].strip() for p in got + later)
        assert " ".join(text.split()) == " ".join(stopped["text"].split())
        offline_wer = word_error_rate(reference_text("jfk"), offline("jfk.mp3"))
        live_wer = word_error_rate(reference_text("jfk"), stopped["text"])
        print(f"\n[live] resume {first}->{then}: WER {live_wer:.3f} (offline {offline_wer:.3f}): {stopped['text']}")
        assert live_wer <= offline_wer + 0.1
        entries = live_entry(server, started["session_id"])
        assert [e["id"] for e in entries] == [stopped["history_id"]]
    finally:
        c2.disconnect()


def test_a_resume_takes_over_from_a_connection_the_server_still_thinks_open(server):
    c1 = bench.LiveClient(server.base_url, verify=str(server.cert_path))
    c2 = bench.LiveClient(server.base_url, verify=str(server.cert_path))
    try:
        started = c1.start("pcm16")
        resumed = c2.start("pcm16", resume=started["resume_token"])
        assert resumed["resumed"] is True and resumed["session_id"] == started["session_id"]
        prepared = bench.prepare(bench.SPEECH_DIR / "goforward.wav")
        mark1 = c1.mark()
        c2.stream(prepared.chunks["pcm16"])
        stopped = c2.stop().payload
        assert "forward" in stopped["text"].lower()
        assert [e.name for e in c1.events[mark1:] if e.name.startswith(("transcription", "recording"))] == []
        mark1 = c1.mark()
        c1.emit("audio_chunk", {"audio_data": b"\0\0" * 1600, "seq": 1})
        assert error_after(c1, mark1).payload["code"] == "not_recording"  # it no longer owns the session
    finally:
        c1.disconnect()
        c2.disconnect()


def test_an_unknown_resume_token_starts_a_new_session(client):
    started = client.start("pcm16", resume="not-a-token-of-this-server")
    assert started["resumed"] is False and started["resume_token"] != "not-a-token-of-this-server"
    client.stop()


def test_disconnect_mid_session_frees_ffmpeg_and_saves_committed_text(server):
    c = bench.LiveClient(server.base_url, verify=str(server.cert_path))
    prepared = bench.prepare(bench.SPEECH_DIR / "synthetic_meeting.wav")
    c.start("webm")
    chunks = prepared.chunks["webm"]
    committed: list[str] = []
    assert ffmpeg_children(server.proc.pid), "the webm session runs an ffmpeg decoder"
    for i, chunk in enumerate(chunks):
        time.sleep(bench.CHUNK_S)
        c.emit("audio_chunk", {"audio_data": chunk, "seq": i})
        finals = [e for e in c.events if e.name == "transcription_result"]
        if finals and i * bench.CHUNK_S > 8:
            committed = [e.payload["text"] for e in finals]
            break
    assert committed, "something was committed before the disconnect"
    c.disconnect()

    deadline = time.monotonic() + 15
    while ffmpeg_children(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ffmpeg_children(server.proc.pid) == []

    text = " ".join(committed)
    deadline = time.monotonic() + 15
    found = None
    while found is None and time.monotonic() < deadline:
        found = next((e for e in live_history(server) if normalize(e["text"]).startswith(normalize(text))), None)
        time.sleep(0.3)
    assert found is not None, f"no live history entry starting with {text!r}"


def test_legacy_single_chunk_without_start(server, client):
    data = (bench.SPEECH_DIR / "jfk.mp3").read_bytes()
    mark = client.mark()
    client.emit("audio_chunk", {"audio_data": data})
    result = client.wait_for(lambda e: e.name in ("transcription_result", "transcription_error"), 120, after=mark)
    assert result.name == "transcription_result", result.payload
    assert result.payload["final"] is True and result.payload["language"] == "en"
    assert word_error_rate(reference_text("jfk"), result.payload["text"]) <= 0.1
    time.sleep(1.0)
    assert [e.name for e in client.events[mark:]] == ["transcription_result"]
    assert any(e["id"] == result.payload["history_id"] for e in live_history(server))


def test_legacy_base64_chunk(client):
    import base64

    data = base64.b64encode((bench.SPEECH_DIR / "goforward.wav").read_bytes()).decode()
    mark = client.mark()
    client.emit("audio_chunk", data)
    result = client.wait_for(lambda e: e.name in ("transcription_result", "transcription_error"), 120, after=mark)
    assert result.name == "transcription_result", result.payload
    assert "forward" in result.payload["text"].lower()


def test_require_auth_applies_to_socketio(start_server):
    srv = start_server(REQUIRE_AUTH="true")
    with pytest.raises(socketio.exceptions.ConnectionError):
        bench.LiveClient(srv.base_url, verify=str(srv.cert_path))
    with pytest.raises(socketio.exceptions.ConnectionError):
        bench.LiveClient(srv.base_url, verify=str(srv.cert_path), token="wrong-token")
    c = bench.LiveClient(srv.base_url, verify=str(srv.cert_path), token=srv.token)
    try:
        chunks, duration = short_speech_chunks()
        out = c.run_stream(chunks, duration, fmt="pcm16")
        assert "forward" in out.stopped["text"].lower()
    finally:
        c.disconnect()


def test_live_stream_progresses_while_a_long_file_is_transcribed(server, client):
    # ~2-minute uploads back to back (new audio each time, so the result cache cannot answer), for the whole stream
    job = bench.BackgroundUpload(server.session(), server.base_url, bench.long_recording(), "tiny.en", repeat=True)
    time.sleep(1.0)
    prepared = bench.prepare(bench.SPEECH_DIR / "jfk.mp3")
    out = client.run_stream(prepared.chunks["pcm16"], prepared.duration, fmt="pcm16")
    still_running = job.running
    job.stop()
    print_latencies(f"jfk pcm16 while long uploads run ({job.completed} done so far)", out)
    job.join()
    assert job.error is None and job.status == 200 and job.completed >= 1
    assert still_running, "the long transcription ran during the whole stream"
    assert not out.errors
    assert out.partials and out.finals
    check_never_retracted(out)
    assert word_error_rate(reference_text("jfk"), out.stopped["text"]) <= 0.2


def test_three_concurrent_streams(server):
    prepared = bench.prepare(bench.SPEECH_DIR / "jfk.mp3")
    rows = bench.run_concurrent(server.base_url, str(server.cert_path), None, [prepared], "pcm16", 3)
    assert len(rows) == 3
    for _, out in rows:
        print_latencies("jfk pcm16, one of 3 concurrent", out)
        assert not out.errors
        check_never_retracted(out)
        assert word_error_rate(reference_text("jfk"), out.stopped["text"]) <= 0.2
    assert len({out.stopped["session_id"] for _, out in rows}) == 3
