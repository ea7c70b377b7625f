"""Abuse run: the attacks of issue 12 against a real server, with bounded loops, while it is watched.

    python scripts/abuse.py                                   # starts its own server (tiny.en) on 127.0.0.1
    python scripts/abuse.py --url https://127.0.0.1:5001 --cert ssl/cert.pem [--token T] [--admin-password P]
                            [--pid PID] [--data-dir DIR]      # RSS, ffmpeg and temp-file checks need these
    python scripts/abuse.py --small                           # tiny sizes, for trying the script itself

Each attack is one function (``attack_*``) that runs a bounded loop (sizes from the command line) and reports
what the server did: the status codes and error codes it answered, timeouts, dropped connections. It assumes
no fix: the tables say what this server does, whatever that is. While the attacks run one after another,
three watchers run beside them (it needs the test tools, requirements-dev.txt):

* ``/health`` polled every 100 ms: p50/p95/max latency, overall and per attack;
* a live dictation session over Socket.IO (pcm16, real speech from ../shared/speech, at real-time pace):
  commit latency p50/p95, commits per attack and the longest gap between two commits;
* the server's RSS with its children (psutil), and the most ffmpeg children seen at once.

At the end it checks that no ffmpeg child and no file in DATA_DIR/tmp is left. The crafted restores replace
the server's database: they run on the server this script starts, and on a ``--url`` server only with
``--admin-password`` (the original database is restored afterwards). Exit code 0 unless the server stopped
answering (or its process died).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import ssl
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
SPEECH_DIR = (ROOT / ".." / "shared" / "speech").resolve()
SAMPLE_RATE = 16000
CHUNK_S = 0.25
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

log = logging.getLogger("abuse")


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (tests/unit/test_abuse_script.py)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks, as numpy's default; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def wav_claiming(sample_rate: int, seconds: float) -> bytes:
    """A 16-bit mono PCM WAV whose header says ``sample_rate`` Hz, holding ``seconds`` of silence at that rate.

    At 1 Hz every sample is a second: 20,000 samples (40 KB) claim 5.5 h, which a resampler to 16 kHz turns
    into 1.2 GiB of float32.
    """
    frames = max(1, int(seconds * sample_rate))
    data = b"\x00\x00" * frames
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def prefix_query(terms: int) -> str:
    """``a* b* ... z* aa* ab* ...``: ``terms`` distinct one- then two-letter prefix terms."""
    letters = string.ascii_lowercase
    names = list(letters) + [a + b for a in letters for b in letters]
    if terms > len(names):
        names += [a + b + c for a in letters for b in letters for c in letters]
    return " ".join(f"{n}*" for n in names[:terms])


def method_names(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct made-up HTTP method names (tokens, so every HTTP stack sends them)."""
    rng = random.Random(seed)
    return [f"ABUSE{i}{''.join(rng.choices(string.ascii_uppercase, k=6))}" for i in range(count)]


def metric_methods(metrics_text: str) -> set[str]:
    """The distinct ``method="..."`` label values in a Prometheus text exposition."""
    found = set()
    for line in metrics_text.splitlines():
        if line.startswith("#") or 'method="' not in line:
            continue
        found.add(line.split('method="', 1)[1].split('"', 1)[0])
    return found


def formula_cells(cells: Iterable[str]) -> list[str]:
    """The cells a spreadsheet would run as a formula (they start with = + - @ TAB or CR)."""
    return [c for c in cells if c.startswith(FORMULA_STARTS)]


def before_restore_copies(data_dir: Path) -> list[str]:
    """The copies a restore saved of the database it replaced (``appliance.db.before-restore``, timestamped or
    not), in DATA_DIR."""
    return sorted(p.name for p in data_dir.glob("*.before-restore*") if p.is_file())


def summarize(outcomes: Iterable[str]) -> str:
    """``['200', '413', '413']`` -> ``'413 x2, 200 x1'`` (most common first)."""
    counts = Counter(outcomes)
    return ", ".join(f"{k} x{n}" for k, n in counts.most_common()) or "-"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with a header line and columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


# ---------------------------------------------------------------------------------------------------------------
# The target server


def _e2e():
    """tests/e2e/conftest.py: its ``make_server`` (the real server over HTTPS) and ``bench`` (bench_live.py)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.e2e import conftest

    return conftest


@dataclass
class Target:
    url: str
    verify: str | bool
    token: str | None = None
    admin_password: str | None = None
    pid: int | None = None
    data_dir: Path | None = None
    own: bool = False
    timeout: float = 120.0

    @property
    def host_port(self) -> tuple[str, int]:
        rest = self.url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port)

    def session(self) -> requests.Session:
        s = requests.Session()
        s.verify = self.verify
        s.trust_env = False
        if self.token:
            s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def admin(self) -> requests.Session | None:
        """A session logged in as admin (CSRF header set), or None without an admin password."""
        if not self.admin_password:
            return None
        s = self.session()
        s.headers.pop("Authorization", None)
        r = s.post(self.url + "/api/auth/login", json={"username": "admin", "password": self.admin_password},
                   timeout=30)
        if r.status_code != 200:
            log.warning("admin login failed: %s %s", r.status_code, r.text[:200])
            return None
        s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return s

    def tls_socket(self, *, handshake: bool = True, timeout: float = 10) -> socket.socket:
        host, port = self.host_port
        raw = socket.create_connection((host, port), timeout=timeout)
        if not handshake:
            return raw
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # raw sockets only; the server's identity is not what is tested
        return ctx.wrap_socket(raw, server_hostname=host)


def outcome_of(fn: Callable[[], requests.Response]) -> str:
    """A request's status code with its error ``code`` when it has one (``413 audio_too_long``), or the name of
    the exception it raised (``ReadTimeout``, ``ConnectionError``)."""
    try:
        r = fn()
    except requests.RequestException as exc:
        return type(exc).__name__
    code = None
    if r.status_code >= 400 and r.headers.get("Content-Type", "").startswith("application/json"):
        try:
            body = r.json()
            code = body.get("code") or (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        except (ValueError, AttributeError):
            code = None
    return f"{r.status_code} {code}" if code else str(r.status_code)


# ---------------------------------------------------------------------------------------------------------------
# Watchers


class HealthPoller(threading.Thread):
    """GET /health every ``interval`` seconds; ``samples`` holds (time, latency or None, outcome)."""

    def __init__(self, target: Target, interval: float = 0.1) -> None:
        super().__init__(name="health-poller", daemon=True)
        self.target, self.interval = target, interval
        self.samples: list[tuple[float, float | None, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        http = self.target.session()
        while not self.stopped.is_set():
            t0 = time.perf_counter()
            try:
                r = http.get(self.target.url + "/health", timeout=5)
                self.samples.append((t0, time.perf_counter() - t0, str(r.status_code)))
            except requests.RequestException as exc:
                self.samples.append((t0, None, type(exc).__name__))
            self.stopped.wait(max(0.0, self.interval - (time.perf_counter() - t0)))

    def latencies(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [lat for t, lat, out in self.samples if start <= t <= end and lat is not None and out == "200"]

    def failures(self, start: float = 0.0, end: float = float("inf")) -> list[str]:
        return [out for t, _, out in self.samples if start <= t <= end and out != "200"]


class RssSampler(threading.Thread):
    """The server's RSS plus its children's every ``interval`` seconds, and the most ffmpeg children at once."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.max_ffmpeg = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error as exc:
            log.warning("cannot watch pid %s: %s", self.pid, exc)
            return
        while not self.stopped.is_set():
            try:
                children = proc.children(recursive=True)
                rss = proc.memory_info().rss
                for child in children:
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.max_ffmpeg = max(self.max_ffmpeg, len(ffmpeg_children(children)))
                self.samples.append((time.perf_counter(), rss))
            except psutil.Error:
                return  # the server is gone; main() reports it
            self.stopped.wait(self.interval)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int | None:
        values = [rss for t, rss in self.samples if start <= t <= end]
        return max(values) if values else None


def ffmpeg_children(children: Iterable[Any]) -> list[Any]:
    out = []
    for child in children:
        try:
            if "ffmpeg" in child.name():
                out.append(child)
        except Exception:  # noqa: BLE001 - a child that exited in between is not one left behind
            continue
    return out


class LiveDictation(threading.Thread):
    """One live session at real-time pace for as long as the attacks run (looping over the speech files)."""

    def __init__(self, target: Target, chunks: list[bytes], max_seconds: float) -> None:
        super().__init__(name="live-dictation", daemon=True)
        self.target, self.chunks, self.max_seconds = target, chunks, max_seconds
        self.stopped = threading.Event()
        self.outcome: Any = None
        self.error: str | None = None
        self.started_ok = threading.Event()

    def run(self) -> None:
        bench = _e2e().bench
        client = None
        sent: list[float] = []
        started = time.perf_counter()
        try:
            client = bench.LiveClient(self.target.url, verify=self.target.verify, token=self.target.token)
            client.start("pcm16")
            self.started_ok.set()
            started = time.perf_counter()
            i = 0
            while not self.stopped.is_set() and i * CHUNK_S < self.max_seconds:
                delay = started + (i + 1) * CHUNK_S - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                client.emit("audio_chunk", {"audio_data": self.chunks[i % len(self.chunks)], "seq": i})
                sent.append(time.perf_counter())
                i += 1
            client.stop(timeout=120)
        except Exception as exc:  # noqa: BLE001 - reported in the live figures
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.started_ok.set()
            if client is not None:
                self.outcome = bench.Outcome(chunk_s=CHUNK_S, duration=len(sent) * CHUNK_S, sent=sent,
                                             events=list(client.events), started_at=started)
                try:
                    client.disconnect()
                except Exception as exc:  # noqa: BLE001
                    self.error = self.error or f"disconnect: {exc}"

    def commits_between(self, start: float, end: float) -> int | None:
        if self.outcome is None:
            return None
        return sum(1 for e in self.outcome.finals if start <= e.at <= end)

    def longest_gap(self) -> float | None:
        """Longest wait between two commits (or from the start to the first), while audio was being sent."""
        if self.outcome is None or not self.outcome.sent:
            return None
        times = [self.outcome.started_at] + [e.at for e in self.outcome.finals if e.at <= self.outcome.sent[-1]]
        times.append(self.outcome.sent[-1])
        return max(b - a for a, b in zip(times, times[1:], strict=False))


# ---------------------------------------------------------------------------------------------------------------
# Attacks: each returns what it observed


@dataclass
class Observed:
    name: str
    outcomes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    skipped: str | None = None


@dataclass
class Context:
    target: Target
    args: argparse.Namespace
    rss: RssSampler | None


def _post_audio(ctx: Context, name: str, data: bytes, *, headers: dict[str, str] | None = None,
                http: requests.Session | None = None) -> str:
    http = http or ctx.target.session()
    return outcome_of(lambda: http.post(ctx.target.url + "/transcribe", files={"audio": (name, data)},
                                        headers=headers or {}, timeout=ctx.args.request_timeout))


def _silence(seconds: float, codec: str) -> bytes:
    """``seconds`` of silence encoded by ffmpeg (``opus`` in Ogg, ``flac``): tiny files, long audio."""
    fmt = {"opus": ["-c:a", "libopus", "-b:a", "6k", "-f", "ogg"], "flac": ["-c:a", "flac", "-f", "flac"]}[codec]
    args = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t",
            str(seconds), "-ac", "1", *fmt, "pipe:1"]
    return subprocess.run(args, check=True, capture_output=True, timeout=600).stdout


def attack_decoded_size(ctx: Context, obs: Observed) -> None:
    """Small uploads that decode to hours: a WAV header claiming 1 Hz, long Opus and FLAC silence."""
    seconds = ctx.args.amplify_seconds
    rss_before = ctx.rss.peak() if ctx.rss else None
    for name, data in (("one-hz.wav", wav_claiming(1, seconds)), ("silence.ogg", _silence(seconds, "opus")),
                       ("silence.flac", _silence(seconds, "flac"))):
        t0 = time.perf_counter()
        out = _post_audio(ctx, name, data)
        obs.outcomes.append(out)
        obs.notes.append(f"{name}: {len(data):,} bytes claiming {seconds / 3600:.2f} h -> {out} "
                         f"in {time.perf_counter() - t0:.1f} s")
    if ctx.rss and rss_before:
        peak = ctx.rss.peak(obs.start)
        if peak:
            obs.notes.append(f"RSS peak during it {peak / 2**20:.0f} MB (before {rss_before / 2**20:.0f} MB)")


def attack_slow_uploads(ctx: Context, obs: Observed) -> None:
    """Many uploads at once that send their body one byte per second."""
    n, hold = ctx.args.slow_uploads, ctx.args.slow_seconds
    host = ctx.target.host_port[0]
    head = (f"POST /transcribe HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: 10000000\r\n\r\n--xx\r\nContent-Disposition: form-data; name=\"audio\"; "
            f"filename=\"slow.wav\"\r\n\r\n").encode()
    socks: list[socket.socket] = []
    for _ in range(n):
        try:
            s = ctx.target.tls_socket()
            s.sendall(head)
            socks.append(s)
        except OSError as exc:
            obs.outcomes.append(f"connect {type(exc).__name__}")
    obs.notes.append(f"{len(socks)} of {n} slow uploads started, held {hold} s at 1 byte/s each")
    deadline = time.monotonic() + hold
    alive = list(socks)
    while time.monotonic() < deadline and alive:
        for s in list(alive):
            try:
                s.sendall(b"\0")
            except OSError:
                obs.outcomes.append("closed by server while sending")
                alive.remove(s)
        time.sleep(1.0)
    for s in alive:
        obs.outcomes.append(_read_state(s))
    for s in socks:
        s.close()


def _read_state(s: socket.socket) -> str:
    """What a held connection shows now: ``open`` (nothing to read), ``closed by server``, or ``answered NNN``."""
    s.settimeout(0.05)
    try:
        data = s.recv(256)
    except (TimeoutError, ssl.SSLWantReadError, BlockingIOError):
        return "open"
    except OSError as exc:
        return f"closed by server ({type(exc).__name__})"
    if not data:
        return "closed by server"
    if data.startswith(b"HTTP/"):
        return "answered " + data.split(b" ", 2)[1].decode(errors="replace")
    return "sent bytes"


def attack_idle_connections(ctx: Context, obs: Observed) -> None:
    """Hundreds of idle connections: half bare TCP (no TLS handshake), half TLS with no request."""
    n, hold = ctx.args.idle_connections, ctx.args.idle_seconds
    held: list[tuple[str, socket.socket]] = []
    for i in range(n):
        kind = "tcp" if i % 2 == 0 else "tls"
        try:
            held.append((kind, ctx.target.tls_socket(handshake=kind == "tls", timeout=10)))
        except OSError as exc:
            obs.outcomes.append(f"{kind} connect {type(exc).__name__}")
    obs.notes.append(f"{len(held)} of {n} idle connections opened, held {hold} s")
    time.sleep(hold / 2)
    http = ctx.target.session()
    fresh = outcome_of(lambda: http.get(ctx.target.url + "/health", timeout=10))
    obs.notes.append(f"a fresh GET /health with them held: {fresh}")
    time.sleep(hold / 2)
    for kind, s in held:
        obs.outcomes.append(f"{kind} {_read_state(s)}")
        s.close()


def attack_live_start_stop(ctx: Context, obs: Observed) -> None:
    """start_recording/stop_recording loops without waiting, on a few connections at once (pcm16 and webm)."""
    bench = _e2e().bench
    cycles, clients = ctx.args.live_cycles, ctx.args.live_clients
    results: list[str] = []
    counts: list[int] = []  # the live_sessions counts the server broadcast meanwhile
    lock = threading.Lock()

    def loop(k: int) -> None:
        try:
            c = bench.LiveClient(ctx.target.url, verify=ctx.target.verify, token=ctx.target.token)
        except Exception as exc:  # noqa: BLE001 - reported
            with lock:
                results.append(f"connect {type(exc).__name__}")
            return
        try:
            for i in range(cycles):
                c.emit("start_recording", {"format": "webm" if (i + k) % 2 else "pcm16"})
                c.emit("stop_recording")
            time.sleep(2.0)
        except Exception as exc:  # noqa: BLE001 - a dropped connection is an observation
            with lock:
                results.append(f"emit {type(exc).__name__}")
        finally:
            with lock:
                for e in c.events:
                    if e.name == "transcription_error":
                        results.append(f"error {(e.payload or {}).get('code')}")
                    elif e.name in ("recording_started", "recording_stopped", "disconnect"):
                        results.append(e.name)
                    elif e.name == "live_sessions" and isinstance(e.payload, dict):
                        counts.append(int(e.payload.get("count") or 0))
            c.disconnect()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    obs.outcomes.extend(results)
    obs.notes.append(f"{clients} connections x {cycles} start/stop cycles; most live sessions the server "
                     f"announced meanwhile: {max(counts) if counts else '-'} (the dictation watcher holds one)")
    if ctx.rss:
        obs.notes.append(f"most ffmpeg children seen at once so far: {ctx.rss.max_ffmpeg}")


def attack_fast_live_intake(ctx: Context, obs: Observed) -> None:
    """One live session fed ``--fast-seconds`` of speech as fast as the socket takes it."""
    bench = _e2e().bench
    chunks = speech_chunks(ctx.args.fast_seconds)
    c = bench.LiveClient(ctx.target.url, verify=ctx.target.verify, token=ctx.target.token)
    try:
        try:
            c.start("pcm16")
        except RuntimeError as exc:
            obs.outcomes.append(f"start refused: {exc}")
            return
        t0 = time.perf_counter()
        sent = 0
        try:
            for i, chunk in enumerate(chunks):
                c.emit("audio_chunk", {"audio_data": chunk, "seq": i})
                sent += 1
        except Exception as exc:  # noqa: BLE001 - the server may drop us: an observation
            obs.outcomes.append(f"emit {type(exc).__name__}")
        wall = time.perf_counter() - t0
        obs.notes.append(f"sent {sent * CHUNK_S:.0f} s of audio in {wall:.2f} s "
                         f"({sent * CHUNK_S / max(wall, 1e-6):.0f}x real time)")
        try:
            stopped = c.stop(timeout=ctx.args.request_timeout)
            obs.notes.append(f"recording_stopped after {stopped.at - t0:.1f} s")
        except (TimeoutError, Exception) as exc:  # noqa: BLE001
            obs.outcomes.append(f"stop {type(exc).__name__}")
        for e in c.events:
            if e.name == "transcription_error":
                obs.outcomes.append(f"error {(e.payload or {}).get('code')}")
            elif e.name in ("transcription_result", "disconnect"):
                obs.outcomes.append(e.name)
    finally:
        c.disconnect()


def attack_legacy_recordings(ctx: Context, obs: Observed) -> None:
    """The seed page's whole-recording ``audio_chunk`` (no start_recording, no seq) from many connections at
    once: do they count as sessions? One of them is the 1-Hz WAV claiming ``--amplify-seconds``."""
    bench = _e2e().bench
    n = ctx.args.legacy_clients
    speech = sorted(SPEECH_DIR.glob("*.wav"))
    recording = speech[0].read_bytes() if speech else wav_claiming(SAMPLE_RATE, 3.0)
    results: list[str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        data = wav_claiming(1, ctx.args.amplify_seconds) if k == 0 else recording
        try:
            c = bench.LiveClient(ctx.target.url, verify=ctx.target.verify, token=ctx.target.token)
        except Exception as exc:  # noqa: BLE001 - reported
            with lock:
                results.append(f"connect {type(exc).__name__}")
            return
        try:
            mark = c.mark()
            c.emit("audio_chunk", {"audio_data": data})
            e = c.wait_for(lambda e: e.name in ("transcription_result", "transcription_error", "disconnect"),
                           ctx.args.request_timeout, after=mark)
            label = f"error {(e.payload or {}).get('code')}" if e.name == "transcription_error" else e.name
        except Exception as exc:  # noqa: BLE001 - a timeout is an observation
            label = type(exc).__name__
        finally:
            c.disconnect()
        with lock:
            results.append(("1-Hz WAV: " if k == 0 else "") + label)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ctx.args.request_timeout + 30)
    obs.outcomes.extend(results)
    obs.notes.append(f"{n} connections each sent one whole recording at once ({speech[0].name if speech else 'a WAV'};"
                     f" one a 1-Hz WAV claiming {ctx.args.amplify_seconds / 3600:.2f} h)")


async def _attachments(ctx: Context, announced: int, frames: int, frame_bytes: int) -> list[str]:
    import aiohttp

    seen: list[str] = []
    ssl_ctx = ssl.create_default_context(cafile=ctx.target.verify) if isinstance(ctx.target.verify, str) else False
    ws_url = ctx.target.url.replace("https://", "wss://") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, ssl=ssl_ctx, timeout=10) as ws:
        opened = await ws.receive(timeout=10)
        seen.append(f"open {str(opened.data)[:1]}")
        await ws.send_str("40" + json.dumps({"token": ctx.target.token} if ctx.target.token else {}))
        connected = await ws.receive(timeout=10)
        seen.append(f"namespace {str(connected.data)[:2]}")
        header = json.dumps(["audio_chunk", {"audio_data": {"_placeholder": True, "num": 0}}])
        await ws.send_str(f"45{announced}-{header}")
        payload = os.urandom(frame_bytes)
        try:
            for _ in range(frames):
                await ws.send_bytes(payload)
        except (aiohttp.ClientError, ConnectionError) as exc:
            seen.append(f"send {type(exc).__name__}")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not ws.closed:
            try:
                msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "2":
                    await ws.send_str("3")
                else:
                    seen.append(f"message {msg.data[:40]}")
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                seen.append(f"closed by server ({ws.close_code})")
                break
        if not ws.closed:
            seen.append("still open")
    return seen


def attack_attachments(ctx: Context, obs: Observed) -> None:
    """A Socket.IO binary event announcing 999999 attachments, then a stream of attachment frames."""
    frames, size = ctx.args.attachment_frames, ctx.args.attachment_bytes
    rss_before = ctx.rss.samples[-1][1] if ctx.rss and ctx.rss.samples else None
    try:
        obs.outcomes.extend(asyncio.run(_attachments(ctx, 999999, frames, size)))
    except Exception as exc:  # noqa: BLE001 - reported
        obs.outcomes.append(f"{type(exc).__name__}: {exc}"[:80])
    obs.notes.append(f"announced 999999 attachments, sent {frames} frames of {size // 1024} KB")
    time.sleep(1.0)
    if ctx.rss and rss_before and ctx.rss.samples:
        obs.notes.append(f"RSS {rss_before / 2**20:.0f} -> {ctx.rss.samples[-1][1] / 2**20:.0f} MB")


def _import(admin: requests.Session, ctx: Context, items: list[dict[str, Any]]) -> str:
    return outcome_of(lambda: admin.post(ctx.target.url + "/api/history/import", json=items, timeout=300))


def attack_search_prefixes(ctx: Context, obs: Observed) -> None:
    """Searches with hundreds of one- and two-letter prefix terms (after importing entries, when admin)."""
    admin = ctx.target.admin()
    rng = random.Random(1)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(2000)]
    if admin is not None and ctx.args.search_entries:
        items = [{"text": " ".join(rng.choices(words, k=40)), "created_at": "2026-01-01T00:00:00Z"}
                 for _ in range(ctx.args.search_entries)]
        obs.notes.append(f"imported {len(items)} entries: {_import(admin, ctx, items)}")
    http = admin or ctx.target.session()
    q = prefix_query(ctx.args.search_terms)
    times = []
    for _ in range(ctx.args.search_repeats):
        t0 = time.perf_counter()
        obs.outcomes.append(outcome_of(lambda: http.get(ctx.target.url + "/api/history", params={"q": q},
                                                        timeout=ctx.args.request_timeout)))
        times.append(time.perf_counter() - t0)
    obs.notes.append(f"{ctx.args.search_terms} prefix terms, each search took "
                     f"{', '.join(f'{t:.2f}' for t in times)} s")


def attack_dates(ctx: Context, obs: Observed) -> None:
    """Date and number parameters out of range: each should be a 400, never a 500."""
    http = ctx.target.session()
    cases = [("until", "9999-12-31"), ("since", "0000-01-01"), ("since", "99999-01-01"), ("until", "-1"),
             ("since", "2026-13-45"), ("until", "9999-12-31T23:59:59+99:00")]
    for name, value in cases:
        out = outcome_of(lambda n=name, v=value: http.get(ctx.target.url + "/api/history", params={n: v},
                                                          timeout=30))
        obs.outcomes.append(out)
        obs.notes.append(f"{name}={value}: {out}")
    out = outcome_of(lambda: http.get(ctx.target.url + "/api/history/stats", params={"days": str(10**12)},
                                      timeout=30))
    obs.outcomes.append(out)
    obs.notes.append(f"stats days=10**12: {out}")


def attack_oversized_json(ctx: Context, obs: Observed) -> None:
    """JSON bodies of ``--json-mb`` MB to anonymous JSON endpoints."""
    http = ctx.target.session()
    size = int(ctx.args.json_mb * 2**20)
    body = json.dumps({"username": "x" * size, "password": "y"})
    ids = json.dumps({"ids": list(range(size // 8))})
    for path, data in (("/api/auth/login", body), ("/api/history/delete", ids)):
        t0 = time.perf_counter()
        out = outcome_of(lambda p=path, d=data: http.post(ctx.target.url + p, data=d, timeout=ctx.args.request_timeout,
                                                          headers={"Content-Type": "application/json"}))
        obs.outcomes.append(out)
        obs.notes.append(f"{path} {len(data) / 2**20:.1f} MB: {out} in {time.perf_counter() - t0:.1f} s")


def _crafted(original: Path, tmp: Path, variant: str) -> Path:
    path = tmp / f"{variant}.db"
    if variant == "not-a-database":
        path.write_bytes(b"SQLite format 3\0" + os.urandom(8192))
        return path
    path.write_bytes(original.read_bytes())
    db = sqlite3.connect(path)
    try:
        if variant == "trigger":
            db.execute("CREATE TRIGGER abuse_trigger AFTER INSERT ON history BEGIN "
                       "UPDATE history SET text = 'abuse trigger ran' WHERE id = NEW.id; END")
        elif variant == "wrong-columns":
            db.execute("DROP TABLE history")
            db.execute("CREATE TABLE history (id INTEGER PRIMARY KEY, junk TEXT)")
        elif variant == "job-path":
            # A finished job whose file is the canary next to the crafted file: deleting the job unlinks it?
            owner = db.execute("SELECT id FROM users WHERE username = 'admin'").fetchone()
            db.execute("INSERT INTO jobs (id, created_at, updated_at, status, filename, upload_path, owner_id) "
                       "VALUES ('abuse-job', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'failed', 'x.wav', ?, ?)",
                       (str(tmp / "canary.txt"), owner[0] if owner else None))
        elif variant == "extra-table":
            db.execute("CREATE TABLE abuse_extra (x)")
            db.execute("CREATE VIEW abuse_view AS SELECT 1")
        db.commit()
    finally:
        db.close()
    return path


def _restore(admin: requests.Session, ctx: Context, path: Path) -> str:
    with open(path, "rb") as f:
        return outcome_of(lambda: admin.post(ctx.target.url + "/api/admin/restore", files={"file": (path.name, f)},
                                             timeout=300))


def attack_crafted_restore(ctx: Context, obs: Observed) -> None:
    """Restores of crafted databases (admin): a trigger, a table with wrong columns, extras, garbage."""
    admin = ctx.target.admin()
    if admin is None:
        obs.skipped = "no admin password"
        return
    with tempfile.TemporaryDirectory(prefix="abuse-restore-") as name:
        tmp = Path(name)
        r = admin.get(ctx.target.url + "/api/admin/backup", timeout=300)
        if r.status_code != 200:
            obs.skipped = f"backup answered {r.status_code}"
            return
        original = tmp / "original.db"
        original.write_bytes(r.content)
        canary = tmp / "canary.txt"
        canary.write_text("a file outside the jobs directory\n")
        for variant in ("trigger", "wrong-columns", "job-path", "extra-table", "not-a-database"):
            out = _restore(admin, ctx, _crafted(original, tmp, variant))
            obs.outcomes.append(out)
            health = outcome_of(lambda: ctx.target.session().get(ctx.target.url + "/health", timeout=10))
            note = f"{variant}: {out}, then /health {health}"
            if variant == "trigger" and out.startswith("200"):
                admin = ctx.target.admin() or admin  # a restore may end the login's session
                _import(admin, ctx, [{"text": "abuseprobe entry", "created_at": "2026-06-01T00:00:00Z"}])
                found = [admin.get(ctx.target.url + "/api/history", params={"q": q}, timeout=30)
                         for q in ("abuseprobe", "trigger")]
                texts = [i.get("text") for r in found if r.ok for i in r.json().get("items", [])]
                ran = "abuse trigger ran" in texts
                note += f"; the crafted trigger {'RAN on' if ran else 'did not touch'} an entry imported afterwards"
            if variant == "job-path" and out.startswith("200"):
                admin = ctx.target.admin() or admin
                deleted = outcome_of(lambda a=admin: a.delete(ctx.target.url + "/api/jobs/abuse-job", timeout=30))
                note += (f"; DELETE of its job {deleted}, the file outside the jobs directory "
                         f"{'still exists' if canary.exists() else 'was DELETED'}")
            obs.notes.append(note)
            admin = ctx.target.admin() or admin
        obs.notes.append(f"original database restored: {_restore(admin, ctx, original)}")
        if ctx.target.data_dir:
            accepted = sum(1 for o in obs.outcomes if o.startswith("200")) + 1
            obs.notes.append(f"{len(before_restore_copies(ctx.target.data_dir))} before-restore copies in DATA_DIR "
                             f"after {accepted} accepted restores")


def attack_csv_formulas(ctx: Context, obs: Observed) -> None:
    """Entries whose text starts with = + - @ TAB CR, exported as CSV: does a cell start with a formula?"""
    admin = ctx.target.admin()
    if admin is None:
        obs.skipped = "no admin password"
        return
    marker = f"abuse{random.randrange(10**6)}"
    texts = [f"=HYPERLINK(\"http://x\",\"{marker}\")", f"+1+{marker}", f"-1-{marker}", f"@SUM({marker})",
             f"\t{marker}", f"\r{marker}"]
    obs.outcomes.append(_import(admin, ctx, [{"text": t, "created_at": "2026-06-02T00:00:00Z"} for t in texts]))
    r = admin.get(ctx.target.url + "/api/history/export", params={"format": "csv"}, timeout=300)
    obs.outcomes.append(f"export {r.status_code}")
    if r.status_code != 200:
        return
    cells = [cell for row in csv.reader(io.StringIO(r.text, newline="")) for cell in row if marker in cell]
    risky = formula_cells(cells)
    obs.notes.append(f"{len(risky)} of {len(cells)} exported text cells start with a formula character")


def attack_http_methods(ctx: Context, obs: Observed) -> None:
    """Requests with made-up HTTP method names: do they become new Prometheus series?"""
    http = ctx.target.session()
    before = http.get(ctx.target.url + "/metrics", timeout=30)
    methods_before = metric_methods(before.text) if before.ok else set()
    for method in method_names(ctx.args.methods):
        obs.outcomes.append(outcome_of(lambda m=method: http.request(m, ctx.target.url + "/health", timeout=30)))
    after = http.get(ctx.target.url + "/metrics", timeout=30)
    if not after.ok:
        obs.notes.append(f"/metrics answered {after.status_code}")
        return
    methods_after = metric_methods(after.text)
    obs.notes.append(f"method label values in /metrics: {len(methods_before)} before, {len(methods_after)} after "
                     f"{ctx.args.methods} made-up methods")


def attack_foreign_origin(ctx: Context, obs: Observed) -> None:
    """State-changing requests from a foreign site: Origin https://evil.example, Sec-Fetch-Site cross-site."""
    http = ctx.target.session()
    wav = wav_claiming(SAMPLE_RATE, 0.5)
    for label, headers in (("no Origin (control)", {}), ("Origin https://evil.example",
                                                          {"Origin": "https://evil.example"}),
                           ("Sec-Fetch-Site cross-site", {"Sec-Fetch-Site": "cross-site"})):
        out = _post_audio(ctx, "short.wav", wav, headers=headers, http=http)
        obs.outcomes.append(out)
        obs.notes.append(f"POST /transcribe, {label}: {out}")
    out = outcome_of(lambda: http.post(ctx.target.url + "/api/history/delete", json={"ids": [999999999]},
                                       headers={"Origin": "https://evil.example"}, timeout=30))
    obs.outcomes.append(out)
    obs.notes.append(f"POST /api/history/delete, Origin https://evil.example: {out}")


ATTACKS: list[Callable[[Context, Observed], None]] = [
    attack_decoded_size, attack_slow_uploads, attack_idle_connections, attack_live_start_stop,
    attack_fast_live_intake, attack_legacy_recordings, attack_attachments, attack_search_prefixes, attack_dates,
    attack_oversized_json,
    attack_crafted_restore, attack_csv_formulas, attack_http_methods, attack_foreign_origin,
]


# ---------------------------------------------------------------------------------------------------------------
# Running


def speech_chunks(seconds: float | None = None) -> list[bytes]:
    """The shared speech files as 16 kHz pcm16 chunks of ``CHUNK_S``, one after another (up to ``seconds``)."""
    bench = _e2e().bench
    files = sorted(p for p in SPEECH_DIR.iterdir() if p.suffix in (".wav", ".mp3")) if SPEECH_DIR.is_dir() else []
    chunks: list[bytes] = []
    for path in files:
        chunks += bench.pcm_chunks(bench.decode_audio(path))
        if seconds is not None and len(chunks) * CHUNK_S >= seconds:
            return chunks[:int(seconds / CHUNK_S)]
    if not chunks:
        raise SystemExit(f"no speech files in {SPEECH_DIR}")
    while seconds is not None and len(chunks) * CHUNK_S < seconds:
        chunks += chunks
    return chunks if seconds is None else chunks[:int(seconds / CHUNK_S)]


def leftovers(target: Target) -> tuple[list[str], list[str]]:
    """ffmpeg processes still under the server, and files still in DATA_DIR/tmp."""
    ffmpeg: list[str] = []
    if target.pid:
        import psutil

        try:
            ffmpeg = [f"pid {p.pid}" for p in ffmpeg_children(psutil.Process(target.pid).children(recursive=True))]
        except psutil.Error:
            pass
    tmp_files: list[str] = []
    if target.data_dir:
        tmp = target.data_dir / "tmp"
        tmp_files = sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []
    return ffmpeg, tmp_files


def answering(target: Target, tries: int = 3) -> bool:
    http = target.session()
    for _ in range(tries):
        try:
            if http.get(target.url + "/health", timeout=10).status_code in (200, 503):
                return True
        except requests.RequestException:
            pass
        time.sleep(2)
    return False


def report(observed: list[Observed], health: HealthPoller, live: LiveDictation, rss: RssSampler | None) -> None:
    rows = []
    for o in observed:
        lat = health.latencies(o.start, o.end)
        rows.append([o.name.removeprefix("attack_"), o.skipped and f"skipped: {o.skipped}" or summarize(o.outcomes),
                     _ms(percentile(lat, 50)), _ms(percentile(lat, 95)), len(health.failures(o.start, o.end)),
                     live.commits_between(o.start, o.end),
                     None if rss is None or rss.peak(o.start, o.end) is None
                     else f"{rss.peak(o.start, o.end) / 2**20:.0f}"])
    print("\n" + format_table(["attack", "observed", "health p50 ms", "p95 ms", "health failures",
                                "live commits", "RSS peak MB"], rows))
    for o in observed:
        for note in o.notes:
            print(f"  {o.name.removeprefix('attack_')}: {note}")
    lat = health.latencies()
    print(f"\n/health: {len(health.samples)} polls, p50 {_ms(percentile(lat, 50))} ms, p95 "
          f"{_ms(percentile(lat, 95))} ms, max {_ms(max(lat) if lat else None)} ms, "
          f"failures {summarize(health.failures())}")
    out = live.outcome
    if out is None:
        print(f"live dictation: did not run ({live.error})")
    else:
        commits = out.commit_latencies()
        errors = [(e.payload or {}).get("code") for e in out.errors]
        print(f"live dictation: {len(out.sent) * CHUNK_S:.0f} s of audio sent, {len(out.finals)} commits, commit "
              f"p50 {percentile(commits, 50) or 0:.2f} s, p95 {percentile(commits, 95) or 0:.2f} s, longest gap "
              f"between commits {live.longest_gap() or 0:.1f} s, errors {summarize(map(str, errors))}, "
              f"stopped cleanly: {out.stopped is not None}" + (f", error {live.error}" if live.error else ""))
    if rss is not None and rss.samples:
        print(f"server RSS (with children): start {rss.samples[0][1] / 2**20:.0f} MB, peak "
              f"{rss.peak() / 2**20:.0f} MB, end {rss.samples[-1][1] / 2**20:.0f} MB; most ffmpeg children at once "
              f"{rss.max_ffmpeg}")


def goals(args: argparse.Namespace, health: HealthPoller, live: LiveDictation, rss: RssSampler | None,
          ffmpeg: list[str], tmp_files: list[str]) -> list[tuple[str, str]]:
    """The issue's proof, one line each: (goal, 'yes' / 'NO' / 'not checked' with the figure)."""
    p95 = percentile(health.latencies(), 95)
    rows = [(f"/health p95 under {args.health_goal_ms:.0f} ms",
             "not checked" if p95 is None else f"{'yes' if p95 * 1000 < args.health_goal_ms else 'NO'} "
                                               f"({p95 * 1000:.0f} ms)")]
    gap = live.longest_gap()
    rows.append((f"live dictation kept committing (no gap over {args.live_gap_goal_s:.0f} s)",
                 "not checked" if gap is None else f"{'yes' if gap <= args.live_gap_goal_s else 'NO'} "
                                                   f"(longest {gap:.1f} s)"))
    peak = rss.peak() if rss is not None else None
    rows.append((f"RSS under {args.rss_bound_mb:.0f} MB",
                 "not checked" if peak is None else f"{'yes' if peak < args.rss_bound_mb * 2**20 else 'NO'} "
                                                    f"(peak {peak / 2**20:.0f} MB)"))
    rows.append(("no ffmpeg left", "yes" if not ffmpeg else f"NO ({len(ffmpeg)})"))
    rows.append(("no temp file left", "yes" if not tmp_files else f"NO ({len(tmp_files)})"))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an existing server (default: start one on 127.0.0.1)")
    p.add_argument("--cert", help="certificate to trust for --url (default: do not verify)")
    p.add_argument("--token", help="API token, when the server requires one")
    p.add_argument("--admin-password", help="admin password for --url (restore, import); own server: known")
    p.add_argument("--pid", type=int, help="the --url server's process id (RSS and ffmpeg checks)")
    p.add_argument("--data-dir", type=Path, help="the --url server's DATA_DIR (temp-file check)")
    p.add_argument("--only", help="comma-separated attack names to run (default: all)")
    p.add_argument("--small", action="store_true", help="tiny sizes everywhere, to try the script")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--amplify-seconds", type=float, default=5 * 3600, help="audio claimed by the small uploads")
    p.add_argument("--slow-uploads", type=int, default=40)
    p.add_argument("--slow-seconds", type=float, default=30.0)
    p.add_argument("--idle-connections", type=int, default=300)
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--live-cycles", type=int, default=50, help="start/stop cycles per connection")
    p.add_argument("--live-clients", type=int, default=3)
    p.add_argument("--legacy-clients", type=int, default=12, help="connections sending a whole recording at once")
    p.add_argument("--fast-seconds", type=float, default=300.0, help="audio sent as fast as possible")
    p.add_argument("--attachment-frames", type=int, default=100)
    p.add_argument("--attachment-bytes", type=int, default=64 * 1024)
    p.add_argument("--search-entries", type=int, default=3000, help="entries imported before searching (admin)")
    p.add_argument("--search-terms", type=int, default=300)
    p.add_argument("--search-repeats", type=int, default=3)
    p.add_argument("--json-mb", type=float, default=20.0)
    p.add_argument("--methods", type=int, default=50, help="made-up HTTP method names sent")
    p.add_argument("--health-goal-ms", type=float, default=200.0, help="the /health p95 goal")
    p.add_argument("--live-gap-goal-s", type=float, default=10.0, help="the longest wait for a live commit")
    p.add_argument("--rss-bound-mb", type=float, default=1536.0, help="the RSS goal (tiny.en, with children)")
    p.add_argument("--live-max-seconds", type=float, default=3600.0, help="bound on the live session's length")
    args = p.parse_args(argv)
    if args.small:
        for name, value in (("amplify_seconds", 60), ("slow_uploads", 3), ("slow_seconds", 3),
                            ("idle_connections", 10), ("idle_seconds", 2), ("live_cycles", 3), ("live_clients", 1),
                            ("fast_seconds", 10), ("legacy_clients", 2), ("attachment_frames", 3),
                            ("search_entries", 20),
                            ("search_terms", 30), ("search_repeats", 1), ("json_mb", 0.5), ("methods", 3)):
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    server = None
    if args.url:
        target = Target(args.url.rstrip("/"), args.cert or False, args.token, args.admin_password, args.pid,
                        args.data_dir)
    else:
        conftest = _e2e()
        tmp = Path(tempfile.mkdtemp(prefix="abuse-"))
        server = conftest.make_server(tmp, LOG_LEVEL="WARNING", HTTP_REDIRECT="false")
        log.info("starting a server (tiny.en) at %s, data in %s", server.base_url, tmp)
        server.start()
        # No token: the started server has no REQUIRE_AUTH, and anonymous is what an attacker on the LAN is.
        target = Target(server.base_url, str(server.cert_path), None, server.admin_password,
                        server.proc.pid, server.data_dir, own=True)
    chosen = [a for a in ATTACKS if not args.only or a.__name__.removeprefix("attack_") in args.only.split(",")]
    rss = RssSampler(target.pid) if target.pid else None
    health = HealthPoller(target)
    live = LiveDictation(target, speech_chunks(), args.live_max_seconds)
    observed: list[Observed] = []
    try:
        for watcher in (w for w in (rss, health, live) if w is not None):
            watcher.start()
        live.started_ok.wait(60)
        time.sleep(3.0)  # a little undisturbed dictation first: the baseline
        ctx = Context(target, args, rss)
        for attack in chosen:
            obs = Observed(attack.__name__, start=time.perf_counter())
            log.info("%s ...", attack.__name__)
            try:
                attack(ctx, obs)
            except Exception as exc:  # noqa: BLE001 - one attack's failure is reported, the others still run
                obs.outcomes.append(f"script error {type(exc).__name__}: {exc}"[:120])
                log.exception("%s failed", attack.__name__)
            obs.end = time.perf_counter()
            observed.append(obs)
            if not answering(target):
                log.error("the server stopped answering after %s", attack.__name__)
                break
        time.sleep(3.0)  # and some after: does dictation recover?
    finally:
        live.stopped.set()
        live.join(180)
        health.stopped.set()
        health.join(10)
        up = answering(target) and (server is None or server.proc.poll() is None)
        if rss is not None:
            rss.stopped.set()
            rss.join(10)
        ffmpeg, tmp_files = leftovers(target)
        report(observed, health, live, rss)
        print(f"left behind: ffmpeg children {ffmpeg or 'none'}"
              f"{'' if target.pid else ' (not checked: no --pid)'}; DATA_DIR/tmp files {tmp_files or 'none'}"
              f"{'' if target.data_dir else ' (not checked: no --data-dir)'}")
        print("\n" + format_table(["goal", "met"], [*goals(args, health, live, rss, ffmpeg, tmp_files),
                                                    ("server still answering", "yes" if up else "NO")]))
        if server is not None:
            server.stop()
            if up:
                shutil.rmtree(server.data_dir.parent, ignore_errors=True)
            else:
                print(f"the server's log: {server.log_path}")
    return 0 if up else 1


if __name__ == "__main__":
    sys.exit(main())
