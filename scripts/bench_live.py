"""Live dictation benchmark: real-time streams over Socket.IO against a real server, with latency figures.

    python scripts/bench_live.py                      # starts its own server (tiny.en) on a free port
    python scripts/bench_live.py --url https://host:5001 --cert ssl/cert.pem [--token TOKEN]
    python scripts/bench_live.py --streams 1,3 --formats pcm16,webm --files jfk.mp3,synthetic_meeting.wav

For each number of concurrent streams and each format it streams the speech files at real-time pace (250 ms
chunks: ``pcm16`` raw 16-bit PCM; ``webm`` a WebM/Opus stream cut as MediaRecorder cuts it, after the Opus block
encoded 50 ms before each chunk is sent; ``webm_bytes`` the same stream in equal byte shares, cut anywhere) and
prints, per run:

* time to first partial (first partial shown - when its first word's audio was sent),
* partial latency (partial shown - when the audio of its newest word was sent), p50/p95,
* commit latency per committed word (transcription_result received - when that word's audio was sent, from
  the result's word times), p50/p95, with the p50 of the last word of each commit (the most favourable view),
  and the p50 of each quarter of a stream, for commits and partials (a growing lag shows there),
* wall/audio (the session's wall time over its audio length: about 1.0 when the server keeps up) and the flush
  time after stop_recording,
* WER of the live text and of the offline transcription (POST /transcribe, same model) against the reference.

Then the same single stream again while a ~2-minute file is transcribed (POST /transcribe in a thread), to show
what a long job costs live latency. Goals on 2 cores with tiny.en: commit p50 <= 1.5 s, partials within 1.0 s,
3 concurrent streams in real time with no growing lag, and with a long job running at most 2x idle latency.

``LiveClient`` and the chunking helpers are also used by tests/e2e/test_live_socketio.py.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import requests
import socketio

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from whisper_appliance.core.audio import decode_audio  # noqa: E402
from whisper_appliance.core.records import SAMPLE_RATE  # noqa: E402
from whisper_appliance.core.wer import word_error_rate  # noqa: E402

SPEECH_DIR = (ROOT / ".." / "shared" / "speech").resolve()
CHUNK_S = 0.25


# ---------------------------------------------------------------------------------------------------------------
# Audio to chunks


def pcm16_bytes(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def pcm_chunks(audio: np.ndarray, chunk_s: float = CHUNK_S) -> list[bytes]:
    """16 kHz float32 -> little-endian int16 chunks of ``chunk_s`` seconds."""
    step = int(round(chunk_s * SAMPLE_RATE))
    return [pcm16_bytes(audio[i:i + step]) for i in range(0, audio.size, step)]


def encode_webm(path: Path | str, *, bitrate: str = "32k") -> bytes:
    """A file as the WebM/Opus stream a browser records (written to a pipe: no seekable index, like MediaRecorder)."""
    args = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-c:a", "libopus",
            "-b:a", bitrate, "-f", "webm", "-cluster_time_limit", "250", "pipe:1"]
    return subprocess.run(args, check=True, capture_output=True, timeout=120).stdout


# What a MediaRecorder chunk holds: the audio encoded up to this long before it is handed out. Measured in
# Debian's Chromium 156 (fake microphone, start(250)): every chunk decodes to 0.051-0.053 s less audio than the
# time since start.
MEDIARECORDER_LAG_S = 0.05


def webm_chunks(data: bytes, duration: float, chunk_s: float = CHUNK_S) -> list[bytes]:
    """Cut a WebM stream as MediaRecorder.start(timeslice) does: chunk i ends after the last Opus block that ends
    ``MEDIARECORDER_LAG_S`` before (i + 1) * ``chunk_s``. Only the first chunk has the header."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "packet=pts_time,duration_time,pos,size",
                            "-of", "csv=p=0", "-"], input=data, check=True, capture_output=True, timeout=120)
    blocks = []  # (end time, end byte) per Opus block
    for line in probe.stdout.decode().split():
        pts, duration_s, size, pos = line.split(",")[:4]
        blocks.append((float(pts) + float(duration_s), int(pos) + int(size)))
    n = max(1, math.ceil(duration / chunk_s))
    cuts, b = [], 0
    for i in range(1, n):
        while b < len(blocks) and blocks[b][0] <= i * chunk_s - MEDIARECORDER_LAG_S:
            b += 1
        cuts.append(blocks[b - 1][1] if b else 0)
    bounds = [0, *cuts, len(data)]
    return [data[lo:hi] for lo, hi in zip(bounds, bounds[1:], strict=False)]


def byte_chunks(data: bytes, duration: float, chunk_s: float = CHUNK_S) -> list[bytes]:
    """Cut a stream into equal shares of its bytes, one per ``chunk_s`` of audio: cuts fall anywhere, even inside
    a block or the header (the protocol must cope; the audio arrives later than with ``webm_chunks``)."""
    n = max(1, math.ceil(duration / chunk_s))
    size = math.ceil(len(data) / n)
    return [data[i:i + size] for i in range(0, len(data), size)]


# ---------------------------------------------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class Received:
    at: float
    name: str
    payload: Any


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _quarters(values: list[float]) -> list[float | None]:
    """p50 of each quarter of a stream's figures, in stream order: a growing lag shows as a rising series."""
    bounds = [round(len(values) * k / 4) for k in range(5)]
    return [_pct(values[lo:hi], 50) for lo, hi in zip(bounds, bounds[1:], strict=False)]


@dataclass
class Outcome:
    """What one streamed session produced, with the send time of every chunk."""

    chunk_s: float
    duration: float
    sent: list[float]                      # wall time chunk i was sent (it holds audio [i, i+1) * chunk_s)
    events: list[Received]
    started_at: float

    def named(self, name: str) -> list[Received]:
        return [e for e in self.events if e.name == name]

    @property
    def finals(self) -> list[Received]:
        return self.named("transcription_result")

    @property
    def partials(self) -> list[Received]:
        return [e for e in self.named("transcription_partial") if e.payload.get("text")]

    @property
    def errors(self) -> list[Received]:
        return self.named("transcription_error")

    @property
    def stopped(self) -> dict[str, Any] | None:
        s = self.named("recording_stopped")
        return s[-1].payload if s else None

    @property
    def committed_text(self) -> str:
        return " ".join(e.payload["text"].strip() for e in self.finals if e.payload["text"].strip())

    def sent_time(self, t: float) -> float:
        """Wall time at which the audio at stream time ``t`` had been sent."""
        i = min(max(math.ceil(t / self.chunk_s - 1e-9) - 1, 0), len(self.sent) - 1)
        return self.sent[i]

    def commit_latencies(self) -> list[float]:
        """Per committed word, as the issue defines it: commit received - when that word's audio was sent."""
        return [e.at - self.sent_time(float(w["end"])) for e in self.finals for w in e.payload.get("words") or []]

    def commit_event_latencies(self) -> list[float]:
        """Per commit: received - when the audio of its LAST word was sent (the most favourable view)."""
        return [e.at - self.sent_time(float(e.payload["end"])) for e in self.finals]

    def partial_latencies(self) -> list[float]:
        return [e.at - self.sent_time(float(e.payload["end"])) for e in self.partials]

    def first_partial(self) -> float | None:
        p = self.partials
        return p[0].at - self.sent_time(float(p[0].payload["start"])) if p else None

    def flush_seconds(self) -> float | None:
        s = self.named("recording_stopped")
        return s[-1].at - self.sent[-1] if s and self.sent else None

    def wall_over_audio(self) -> float | None:
        s = self.named("recording_stopped")
        return (s[-1].at - self.started_at) / self.duration if s and self.duration else None

    def summary(self) -> dict[str, Any]:
        commits = self.commit_latencies()
        return {
            "first_partial_s": self.first_partial(),
            "partial_p50_s": _pct(self.partial_latencies(), 50), "partial_p95_s": _pct(self.partial_latencies(), 95),
            "commit_p50_s": _pct(commits, 50), "commit_p95_s": _pct(commits, 95),
            "commit_last_word_p50_s": _pct(self.commit_event_latencies(), 50),
            "commit_p50_by_quarter_s": _quarters(commits),
            "partial_p50_by_quarter_s": _quarters(self.partial_latencies()),
            "wall_over_audio": self.wall_over_audio(), "flush_s": self.flush_seconds(),
            "finals": len(self.finals), "partials": len(self.partials), "errors": len(self.errors),
        }


class SocketClient:
    """A python-socketio client for threaded code: ``socketio.AsyncClient`` on its own event-loop thread.

    Why not the threaded ``socketio.Client``: over wss:// it reads and writes one TLS socket from two threads
    (websocket-client's read loop and write loop), which Python's ssl module does not support: 7 of 50 short
    sessions dropped a few milliseconds after connecting, the server having done nothing wrong (python-engineio
    issue #461). The asyncio client does all its I/O on one thread (0 of 150 dropped). Every server event is
    recorded with its arrival time in ``events``.
    """

    def __init__(self, url: str, *, verify: str | bool = True, token: str | None = None,
                 transports: list[str] | None = None, timeout: float = 15) -> None:
        self._cond = threading.Condition()
        self.events: list[Received] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="socketio-client", daemon=True)
        self._thread.start()
        try:
            self._call(self._connect(url, verify, token, transports, timeout), timeout + 5)
        except BaseException:
            self._close_loop()
            raise

    async def _connect(self, url: str, verify: str | bool, token: str | None, transports: list[str] | None,
                       timeout: float) -> None:
        ssl_context: ssl.SSLContext | bool
        if isinstance(verify, str):
            ssl_context = ssl.create_default_context(cafile=verify)
        else:
            ssl_context = ssl.create_default_context() if verify else False
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context), trust_env=False)
        self.sio = socketio.AsyncClient(http_session=self._http, reconnection=False, ssl_verify=bool(verify))
        self.sio.on("*", self._record)
        self.sio.on("disconnect", lambda *reason: self._record("disconnect", reason[0] if reason else None))
        # WebSocket from the start, as the browser page does.
        await self.sio.connect(url, auth={"token": token} if token else None,
                               transports=transports or ["websocket"], wait_timeout=timeout)

    def _record(self, name: str, payload: Any = None) -> None:
        with self._cond:
            self.events.append(Received(time.perf_counter(), name, payload))
            self._cond.notify_all()

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    def emit(self, name: str, payload: Any = None) -> None:
        self._call(self.sio.emit(name, payload))

    def call(self, name: str, payload: Any = None, timeout: float = 10) -> Any:
        """An event with an acknowledgement; returns what the server's handler returned."""
        return self._call(self.sio.call(name, payload, timeout=timeout), timeout + 5)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float, *, after: int = 0) -> Received:
        """The first event from index ``after`` on that matches; TimeoutError when none arrives in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after:]:
                    if predicate(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [e.name for e in self.events[after:]]
                    raise TimeoutError(f"no matching event within {timeout} s; got {names}")
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def disconnect(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.sio.disconnect(), 15)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            asyncio.run_coroutine_threadsafe(http.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class LiveClient(SocketClient):
    """The live dictation protocol on top of ``SocketClient``."""

    def start(self, fmt: str = "pcm16", timeout: float = 15, **params: Any) -> dict[str, Any]:
        """start_recording; returns recording_started's payload, raises RuntimeError on transcription_error."""
        mark = self.mark()
        self.emit("start_recording", {"format": fmt, **params})
        e = self.wait_for(lambda e: e.name in ("recording_started", "transcription_error"), timeout, after=mark)
        if e.name == "transcription_error":
            raise RuntimeError(f"start_recording refused: {e.payload}")
        return e.payload

    def stream(self, chunks: Iterable[bytes], *, chunk_s: float = CHUNK_S, realtime: bool = True,
               pace_s: float | None = None, stop_after: int | None = None) -> tuple[list[float], float]:
        """Send chunks as a microphone would: chunk i once its audio has been recorded, at (i + 1) * chunk_s.

        ``pace_s`` overrides the interval (faster than real time for silence); ``stop_after`` stops sending
        after that many chunks (a client that goes away). Returns the send times and the stream's start time.
        """
        interval = chunk_s if pace_s is None else pace_s
        started = time.perf_counter()
        sent: list[float] = []
        for i, chunk in enumerate(chunks):
            if stop_after is not None and i >= stop_after:
                break
            if realtime:
                delay = started + (i + 1) * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self.emit("audio_chunk", {"audio_data": chunk, "seq": i})
            sent.append(time.perf_counter())
        return sent, started

    def stop(self, timeout: float = 120) -> Received:
        mark = self.mark()
        self.emit("stop_recording")
        return self.wait_for(lambda e: e.name == "recording_stopped", timeout, after=mark)

    def run_stream(self, chunks: list[bytes], duration: float, *, fmt: str, chunk_s: float = CHUNK_S,
                   pace_s: float | None = None, stop_timeout: float = 120, **params: Any) -> Outcome:
        """One whole session: start, stream, stop; the Outcome holds only this session's events."""
        mark = self.mark()
        self.start(fmt, **params)
        sent, started = self.stream(chunks, chunk_s=chunk_s, pace_s=pace_s)
        self.stop(stop_timeout)
        with self._cond:
            events = self.events[mark:]
        return Outcome(chunk_s=chunk_s, duration=duration, sent=sent, events=events, started_at=started)


# ---------------------------------------------------------------------------------------------------------------
# Offline reference, long job, own server


def reference(path: Path) -> str | None:
    ref = path.with_suffix(".txt")
    return ref.read_text(encoding="utf-8").strip() if ref.is_file() else None


def transcribe_offline(http: requests.Session, base_url: str, path: Path, model: str, timeout: float = 600) -> str:
    with open(path, "rb") as f:
        r = http.post(base_url + "/transcribe", files={"audio": (path.name, f)}, data={"model": model},
                      timeout=timeout)
    r.raise_for_status()
    return r.json()["text"]


def long_recording(seconds: float = 120.0, *, seed: int | None = None) -> bytes:
    """A ~2-minute WAV of real speech (the shared files one after another); a random tail of silence makes each
    call's audio unique, so the server's result cache cannot answer it instantly."""
    import soundfile as sf

    parts = [decode_audio(SPEECH_DIR / "synthetic_meeting.wav"), decode_audio(SPEECH_DIR / "jfk.mp3")]
    out: list[np.ndarray] = []
    total = 0
    while total < seconds * SAMPLE_RATE:
        for p in parts:
            out.append(p)
            total += p.size
    rng = np.random.default_rng(seed)
    out.append(np.zeros(int(rng.integers(1, SAMPLE_RATE)), dtype=np.float32))
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(out), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class BackgroundUpload:
    """POST /transcribe of a long file in a thread, for measuring live latency under load.

    With ``repeat`` it uploads a new ~2-minute recording (different audio each time, so the result cache cannot
    answer) as soon as the previous one is done, until ``stop()``: the server is never without a long job.
    """

    def __init__(self, http: requests.Session, base_url: str, data: bytes, model: str, *,
                 repeat: bool = False) -> None:
        self.started = time.perf_counter()
        self.finished: float | None = None
        self.status: int | None = None
        self.error: BaseException | None = None
        self.completed = 0
        self._stop = threading.Event()

        def run() -> None:
            payload = data
            try:
                while True:
                    r = http.post(base_url + "/transcribe", files={"audio": ("long.wav", payload)},
                                  data={"model": model}, timeout=900)
                    self.status = r.status_code
                    if r.status_code != 200:
                        return
                    self.completed += 1
                    if not repeat or self._stop.is_set():
                        return
                    payload = long_recording(seed=self.completed)
            except BaseException as exc:  # reported by the caller
                self.error = exc
            finally:
                self.finished = time.perf_counter()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 900) -> None:
        self.thread.join(timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnServer:
    """The appliance as a subprocess on free ports with a throwaway data folder (``python src/main.py serve``)."""

    def __init__(self, model: str, threads: int, workers: int = 0) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
        port = _free_port()
        self.url = f"https://127.0.0.1:{port}"
        self.cert = self.tmp / "ssl" / "cert.pem"
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        env.update({"HOST": "127.0.0.1", "HTTPS_PORT": str(port), "HTTP_REDIRECT": "false",
                    "DATA_DIR": str(self.tmp / "data"), "SSL_DIR": str(self.tmp / "ssl"),
                    "MODELS_DIR": str(ROOT / "models"), "WHISPER_MODEL": model, "MODEL_DOWNLOADS": "false",
                    "CPU_THREADS": str(threads), "INFERENCE_WORKERS": str(workers), "LOG_LEVEL": "WARNING",
                    "PYTHONUNBUFFERED": "1"})
        self.log = open(self.tmp / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(SRC / "main.py"), "serve"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        http = requests.Session()
        http.trust_env = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.tmp / 'server.log').read_text(errors='replace')[-3000:]}")
            try:
                if self.cert.exists() and http.get(self.url + "/health", verify=str(self.cert), timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError("server not ready in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Prepared:
    path: Path
    duration: float
    chunks: dict[str, list[bytes]] = field(default_factory=dict)


def prepare(path: Path) -> Prepared:
    audio = decode_audio(path)
    duration = audio.size / SAMPLE_RATE
    webm = encode_webm(path)
    return Prepared(path, duration, {"pcm16": pcm_chunks(audio), "webm": webm_chunks(webm, duration),
                                     "webm_bytes": byte_chunks(webm, duration)})


def run_concurrent(url: str, verify: str | bool, token: str | None, files: list[Prepared], chunking: str,
                   streams: int) -> list[tuple[Prepared, Outcome]]:
    """``streams`` clients at once, each streaming every file in turn on its own connection, as ``chunking``
    (a ``Prepared.chunks`` key: pcm16, webm or webm_bytes)."""
    fmt = "webm" if chunking.startswith("webm") else chunking
    results: list[tuple[Prepared, Outcome]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        try:
            c = LiveClient(url, verify=verify, token=token)
            try:
                # Stagger the clients so their chunks do not all land in the same instant.
                time.sleep(k * CHUNK_S / max(streams, 1))
                for f in files:
                    out = c.run_stream(f.chunks[chunking], f.duration, fmt=fmt)
                    with lock:
                        results.append((f, out))
            finally:
                c.disconnect()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:  # reported, and the other streams' figures still printed
        print(f"  a {fmt} stream failed: {type(exc).__name__}: {exc}", flush=True)
    if errors and not results:
        raise errors[0]
    return results


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_rows(label: str, rows: list[tuple[Prepared, Outcome]], offline: dict[Path, str]) -> dict[str, float | None]:
    commits = [x for _, o in rows for x in o.commit_latencies()]
    partials = [x for _, o in rows for x in o.partial_latencies()]
    for f, o in rows:
        s = o.summary()
        ref = reference(f.path)
        live_wer = word_error_rate(ref, o.committed_text) if ref else None
        off_wer = word_error_rate(ref, offline[f.path]) if ref and f.path in offline else None
        print(f"  {label:<22} {f.path.name:<22} first partial {_fmt(s['first_partial_s'])} s | partial p50/p95 "
              f"{_fmt(s['partial_p50_s'])}/{_fmt(s['partial_p95_s'])} s | commit p50/p95 {_fmt(s['commit_p50_s'])}/"
              f"{_fmt(s['commit_p95_s'])} s (last word of a commit {_fmt(s['commit_last_word_p50_s'])}) | "
              f"p50 by quarter {'->'.join(_fmt(x) for x in s['commit_p50_by_quarter_s'])} s, partial "
              f"{'->'.join(_fmt(x) for x in s['partial_p50_by_quarter_s'])} s | "
              f"wall/audio {_fmt(s['wall_over_audio'], '.3f')} | flush "
              f"{_fmt(s['flush_s'])} s | WER live {_fmt(live_wer, '.1%')} offline {_fmt(off_wer, '.1%')} | "
              f"errors {s['errors']}", flush=True)
    agg = {"commit_p50_s": _pct(commits, 50), "commit_p95_s": _pct(commits, 95),
           "partial_p50_s": _pct(partials, 50), "partial_p95_s": _pct(partials, 95)}
    print(f"  {label:<22} {'ALL':<22} commit p50/p95 {_fmt(agg['commit_p50_s'])}/{_fmt(agg['commit_p95_s'])} s | "
          f"partial p50/p95 {_fmt(agg['partial_p50_s'])}/{_fmt(agg['partial_p95_s'])} s", flush=True)
    return agg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing server (default: start one)")
    parser.add_argument("--cert", help="CA/cert file to trust for --url (default: do not verify)")
    parser.add_argument("--token", help="API token, when the server requires one")
    parser.add_argument("--model", default="tiny.en", help="model of the started server (default tiny.en)")
    parser.add_argument("--threads", type=int, default=0, help="CPU_THREADS of the started server")
    parser.add_argument("--workers", type=int, default=0, help="INFERENCE_WORKERS of the started server (0: auto)")
    parser.add_argument("--streams", default="1,3", help="numbers of concurrent streams (default 1,3)")
    parser.add_argument("--formats", default="pcm16,webm", help="pcm16, webm and/or webm_bytes")
    parser.add_argument("--files", default="jfk.mp3,synthetic_meeting.wav", help=f"files in {SPEECH_DIR}")
    parser.add_argument("--no-job", action="store_true", help="skip the run with a long file job")
    args = parser.parse_args(argv)

    server = None
    if args.url:
        url, verify = args.url.rstrip("/"), (args.cert or False)
    else:
        server = OwnServer(args.model, args.threads or (os.cpu_count() or 1), args.workers)
        print(f"starting a server ({args.model}) at {server.url} ...", flush=True)
        server.wait_ready()
        url, verify = server.url, str(server.cert)
    try:
        http = requests.Session()
        http.verify = verify
        http.trust_env = False
        if args.token:
            http.headers["Authorization"] = f"Bearer {args.token}"
        model = http.get(url + "/health", timeout=10).json()["model"]["name"]
        files = [prepare(SPEECH_DIR / name.strip()) for name in args.files.split(",") if name.strip()]
        print(f"live benchmark: model {model}, {os.cpu_count()} CPUs, load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}, chunks {CHUNK_S * 1000:.0f} ms", flush=True)
        offline = {f.path: transcribe_offline(http, url, f.path, model) for f in files}
        idle: dict[str, float | None] = {}
        for fmt in [x.strip() for x in args.formats.split(",") if x.strip()]:
            for n in [int(x) for x in args.streams.split(",") if x.strip()]:
                agg = print_rows(f"{fmt} x{n}", run_concurrent(url, verify, args.token, files, fmt, n), offline)
                if n == 1 and fmt == "pcm16":
                    idle = agg
        if not args.no_job:
            job = BackgroundUpload(http, url, long_recording(seed=0), model, repeat=True)
            time.sleep(1.0)  # let the long transcription get going
            rows = run_concurrent(url, verify, args.token, files, "pcm16", 1)
            still = job.running
            job.stop()
            agg = print_rows("pcm16 x1 + long job", rows, offline)
            job.join()
            if job.error is not None or job.status != 200:
                print(f"  long job failed: {job.error or job.status}")
            print(f"  long jobs: {job.completed} ~2-minute files transcribed back to back during the streams "
                  f"({'still running at the end' if still else 'NOT running at the end'})", flush=True)
            if idle.get("commit_p50_s") and agg.get("commit_p50_s"):
                print(f"  commit p50 with the long job / idle: {agg['commit_p50_s'] / idle['commit_p50_s']:.2f}x",
                      flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
