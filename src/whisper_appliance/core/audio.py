"""Any audio in: decoding files, bytes, raw PCM and live compressed streams to 16 kHz mono float32.

This module owns every ffmpeg/ffprobe invocation of the appliance:

* ``decode_audio`` turns a path or bytes of any container/codec ffmpeg reads into a float32 array in [-1, 1].
  WAV, FLAC and Ogg-Vorbis take a fast path through libsndfile (``soundfile``) and ``librosa.resample``;
  everything else goes through one ffmpeg subprocess with a timeout.
* ``probe_audio`` records container/codec metadata (through pydub's ffprobe wrapper) for the history.
* ``pcm16_to_float32`` converts little-endian 16-bit PCM chunks (live microphone frames).
* ``StreamDecoder`` keeps one ffmpeg process per live session and turns a continuous compressed stream
  (MediaRecorder webm/opus chunks) into PCM as it arrives.

Failures are ``ApplianceError`` subclasses: ``EmptyAudio`` for no samples, ``AudioDecodeError`` for input that
is not audio or is truncated/corrupt. ffmpeg's pipes are read and written by real OS threads on raw file
descriptors (``io.FileIO``), and waits for ffmpeg go through ``concurrency.wait_blocking``, so a caller on the
eventlet loop never blocks on a pipe. The libsndfile/resampling work of ``decode_audio`` runs in the caller's
thread: long files should be decoded from a worker thread (or through ``wait_blocking``).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .concurrency import real_threading, start_os_thread, wait_blocking
from .errors import (
    ApplianceError,
    AudioDecodeError,
    AudioTooLong,
    EmptyAudio,
    InvalidInput,
    disk_full,
    is_disk_full,
)
from .records import SAMPLE_RATE

log = logging.getLogger(__name__)

# libsndfile formats read on the fast path; anything else (mp3, aac, opus, webm...) goes to ffmpeg.
_FAST_FORMATS = {"WAV", "WAVEX", "FLAC"}
_FAST_OGG_SUBTYPES = {"VORBIS"}
_FAST_MAGIC = {b"RIFF", b"RIFX", b"fLaC", b"OggS"}
# First bytes of a live stream per ffmpeg input format (EBML magic for Matroska/WebM).
_STREAM_MAGIC = {"webm": b"\x1a\x45\xdf\xa3", "matroska": b"\x1a\x45\xdf\xa3", "ogg": b"OggS"}
# Enough of a WAV file to find its data chunk behind any LIST/fact/bext chunks.
_WAV_HEAD_BYTES = 1 << 20
# An Ogg page is at most 27 + 255 + 255 * 255 bytes.
_OGG_TAIL_BYTES = 27 + 255 + 255 * 255
_READ_SIZE = 1 << 16
# Sample rates a real recording can have. A header claiming 1 Hz would be "resampled" into hours of audio: a
# 40 KB file became 5.5 h and 1.2 GiB of float32.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
# Every ffmpeg reads local files and pipes only: a crafted playlist or container must not make it fetch URLs.
_FFMPEG_INPUT_OPTIONS = ("-protocol_whitelist", "file,pipe")


@dataclass(frozen=True)
class AudioInfo:
    """What ffprobe says about a file: recorded with each history entry."""

    container: str
    codec: str
    sample_rate: int
    channels: int
    duration_seconds: float
    bit_rate: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"container": self.container, "codec": self.codec, "sample_rate": self.sample_rate,
                "channels": self.channels, "duration_seconds": round(self.duration_seconds, 3),
                "bit_rate": self.bit_rate}


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers


def wav_truncation_problem(head: bytes, total_size: int) -> str | None:
    """Why a RIFF/WAVE file is incomplete, or None when it looks whole (or is not a RIFF/WAVE file at all).

    ``head`` is the beginning of the file (at least its chunk headers), ``total_size`` its full length. The data
    chunk must hold as many bytes as its header declares: libsndfile and ffmpeg both quietly decode whatever is
    there, so a WAV cut in half would otherwise be transcribed as half a recording.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset = 12
    while True:
        if offset + 8 > total_size:
            return "the WAV file is truncated: it ends before its audio data begins"
        if offset + 8 > len(head):
            return None  # the data chunk lies beyond what we were given; cannot tell
        chunk_id = head[offset:offset + 4]
        (size,) = struct.unpack_from("<I", head, offset + 4)
        if chunk_id == b"data":
            # 0 and 0xFFFFFFFF are what streaming writers leave when they cannot seek back to fill in the size.
            if size in (0, 0xFFFFFFFF):
                return None
            present = total_size - (offset + 8)
            # One byte of slack: some writers count the pad byte of an odd-sized chunk.
            if present + 1 < size:
                return (f"the WAV file is truncated: its data chunk declares {size} bytes "
                        f"but only {max(present, 0)} are present")
            return None
        offset += 8 + size + (size & 1)


def ogg_truncation_problem(head: bytes, tail: bytes) -> str | None:
    """Why an Ogg file is incomplete, or None when it looks whole (or is not Ogg at all).

    ``tail`` is the end of the file (a page is at most ~64 KiB). A complete Ogg stream ends with a whole page
    flagged end-of-stream; libsndfile decodes a cut file without complaint, so this is checked up front.
    """
    if head[:4] != b"OggS":
        return None
    pos = len(tail)
    while True:
        pos = tail.rfind(b"OggS", 0, pos)
        if pos < 0:
            return "the Ogg file is truncated: its last page is incomplete"
        page_end = _ogg_page_end(tail, pos)
        if page_end == len(tail):
            if not tail[pos + 5] & 0x04:
                return "the Ogg file is truncated: it has no end-of-stream page"
            return None
        # "OggS" inside compressed data, or a page cut short: keep looking backwards for the last whole page.


def mp3_truncation_problem(head: bytes, total_size: int) -> str | None:
    """Why an MP3 with a Xing/Info header is incomplete, or None when it looks whole (or cannot be told).

    Encoders such as LAME write the stream's byte count into the first frame; ffmpeg decodes a cut file without
    an error, so the count is compared with the bytes present.
    """
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        # ID3v2 tag size is "syncsafe": 7 bits per byte; flag 0x10 adds a 10-byte footer.
        start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        start += 10 if head[5] & 0x10 else 0
    if len(head) < start + 4 or head[start] != 0xFF or head[start + 1] & 0xE0 != 0xE0:
        return None
    for side_info in (32, 17, 9):
        tag = start + 4 + side_info
        if head[tag:tag + 4] in (b"Xing", b"Info") and len(head) >= tag + 16:
            (flags,) = struct.unpack_from(">I", head, tag + 4)
            if not flags & 0x2:
                return None
            (declared,) = struct.unpack_from(">I", head, tag + 12 if flags & 0x1 else tag + 8)
            present = total_size - start
            # 1 % slack: some taggers append or trim a little after encoding.
            if declared and present < declared * 0.99:
                return (f"the MP3 file is truncated: its header declares {declared} bytes of audio "
                        f"but only {present} are present")
            return None
    return None


def _ogg_page_end(data: bytes, pos: int) -> int | None:
    if pos + 27 > len(data) or data[pos + 4] != 0:
        return None
    nsegs = data[pos + 26]
    if pos + 27 + nsegs > len(data):
        return None
    return pos + 27 + nsegs + sum(data[pos + 27:pos + 27 + nsegs])


def ffmpeg_error_message(stderr: str, *, input_name: str | None = None) -> str:
    """A clear sentence for people from ffmpeg's error-level output (``-v error``)."""
    text = stderr.strip()
    if input_name:
        text = text.replace(input_name, "input")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "the audio could not be decoded"
    low = text.lower()
    if "moov atom not found" in low:
        return "the file is truncated or corrupt: moov atom not found"
    if "error while decoding" in low or "ended prematurely" in low:
        return "the audio is truncated or corrupt: " + _strip_prefix(_first_matching(
            lines, ("error while decoding", "ended prematurely")))
    if "invalid data found when processing input" in low or "ebml header parsing failed" in low:
        return "the file is not audio that ffmpeg can read: " + _strip_prefix(_first_matching(
            lines, ("invalid data found", "ebml header")))
    if "does not contain any stream" in low or "matches no streams" in low:
        return "the file has no audio track"
    return "the audio could not be decoded (it may be truncated or corrupt): " + _strip_prefix(lines[0])


def _first_matching(lines: list[str], needles: tuple[str, ...]) -> str:
    for line in lines:
        if any(n in line.lower() for n in needles):
            return line
    return lines[0]


def _strip_prefix(line: str) -> str:
    # "input: Invalid data found ..." / "[matroska,webm @ 0x55d0] EBML header ..." -> the message part only.
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)
    if line.startswith("input: "):
        line = line[len("input: "):]
    return line


def pcm16_to_float32(data: bytes, sample_rate: int) -> np.ndarray:
    """Little-endian 16-bit mono PCM -> float32 in [-1, 1) at 16 kHz (resampled with soxr when needed)."""
    if len(data) % 2:
        raise InvalidInput(f"16-bit PCM must have an even number of bytes, got {len(data)}")
    if sample_rate <= 0:
        raise InvalidInput(f"sample rate must be positive, got {sample_rate}")
    audio = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return _resample(audio, sample_rate, SAMPLE_RATE)


def _resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr or audio.size == 0:
        return np.ascontiguousarray(audio, dtype=np.float32)
    import librosa  # imported lazily: it costs ~1 s and only resampling needs it

    out = librosa.resample(audio, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq")
    # The filter can overshoot by a hair on full-scale input; callers are promised [-1, 1].
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# ffmpeg processes


def ffmpeg_binary(name: str = "ffmpeg") -> str:
    path = shutil.which(name)
    if path is None:
        raise ApplianceError(f"{name} is not installed or not on PATH; install ffmpeg (e.g. apt-get install ffmpeg) "
                             "to decode audio other than WAV/FLAC/Ogg-Vorbis", code="ffmpeg_missing")
    return path


class _FfmpegProcess:
    """One ffmpeg child with its pipes on raw descriptors, drained by real OS threads.

    ``on_stdout`` receives every chunk ffmpeg writes; stderr is collected as text. When ``with_stdin`` is true,
    ``write`` queues bytes for a writer thread, so a caller on the event loop never blocks on a full pipe.
    """

    def __init__(self, args: list[str], *, on_stdout: Callable[[bytes], None], with_stdin: bool,
                 name: str) -> None:
        threading = real_threading()
        self._on_stdout = on_stdout
        self._stderr_parts: list[bytes] = []
        self._stdin_lock = threading.Condition(threading.Lock())
        self._stdin_queue: list[bytes] = []
        self._stdin_closed = False
        self.write_error: str | None = None

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if with_stdin else (None, None)
        try:
            self.proc = subprocess.Popen(args, stdin=in_r if with_stdin else subprocess.DEVNULL,
                                         stdout=out_w, stderr=err_w, close_fds=True)
        except FileNotFoundError:
            for fd in (out_r, out_w, err_r, err_w, in_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise ApplianceError(f"ffmpeg is not installed (could not run {args[0]!r})",
                                 code="ffmpeg_missing") from None
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w, in_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise
        # The child holds its own copies now; ours must go or EOF would never arrive.
        os.close(out_w)
        os.close(err_w)
        if in_r is not None:
            os.close(in_r)
        self.pid = self.proc.pid
        self._threads = [
            start_os_thread(self._drain, name=f"{name}-stdout-{self.pid}",
                            args=(io.FileIO(out_r, "rb"), self._on_stdout)),
            start_os_thread(self._drain, name=f"{name}-stderr-{self.pid}",
                            args=(io.FileIO(err_r, "rb"), self._stderr_parts.append)),
        ]
        if in_w is not None:
            self._threads.append(start_os_thread(self._feed_stdin, name=f"{name}-stdin-{self.pid}",
                                                 args=(io.FileIO(in_w, "wb"),)))

    @staticmethod
    def _drain(pipe: io.FileIO, sink: Callable[[bytes], None]) -> None:
        with pipe:
            while True:
                chunk = pipe.read(_READ_SIZE)
                if not chunk:
                    return  # EOF: ffmpeg exited or closed the stream
                sink(chunk)

    def _feed_stdin(self, pipe: io.FileIO) -> None:
        with pipe:
            while True:
                with self._stdin_lock:
                    while not self._stdin_queue and not self._stdin_closed:
                        self._stdin_lock.wait()
                    pending, self._stdin_queue = self._stdin_queue, []
                    closing = self._stdin_closed
                try:
                    for data in pending:
                        pipe.write(data)  # FileIO.write on a blocking pipe writes everything or raises
                except OSError as exc:  # BrokenPipeError: ffmpeg died; surfaced by the next write()
                    log.debug("ffmpeg %s stdin closed: %s", self.pid, exc)
                    with self._stdin_lock:
                        self.write_error = str(exc)
                        self._stdin_closed = True
                        self._stdin_queue = []
                    return
                if closing:
                    return

    def write(self, data: bytes) -> None:
        with self._stdin_lock:
            if self._stdin_closed:
                raise AudioDecodeError("the audio stream decoder is no longer running"
                                       + (f": {self.stderr_text}" if self.stderr_text else ""))
            self._stdin_queue.append(bytes(data))
            self._stdin_lock.notify()

    def close_stdin(self) -> None:
        with self._stdin_lock:
            self._stdin_closed = True
            self._stdin_lock.notify()

    @property
    def stderr_text(self) -> str:
        return b"".join(self._stderr_parts).decode("utf-8", "replace").strip()

    def join_readers(self, timeout: float | None) -> bool:
        """Wait (blocking this OS thread) until stdout/stderr reach EOF; True when both did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = self._threads[:2]
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def finish(self, timeout: float | None) -> bool:
        """Wait for ffmpeg to end by itself within ``timeout``; kill it otherwise. Always reaps it.

        Returns True when it ended by itself. The blocking wait runs off the event loop (``wait_blocking``).
        """
        ended = wait_blocking(self.join_readers, timeout)
        if not ended:
            self.kill()
        self._reap()
        return ended

    def kill(self) -> None:
        self.close_stdin()
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass  # it ended between poll() and kill()
        self._reap()
        # Once the process is gone its pipe ends are closed and the readers see EOF at once.
        wait_blocking(self.join_readers, 5.0)

    def _reap(self) -> None:
        """Collect the exit status (no zombie); off the event loop, since it may wait up to 10 s."""
        if self.proc.poll() is None:
            wait_blocking(self._wait_or_kill)

    def _wait_or_kill(self) -> None:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------------------------
# Whole files


def decode_audio(source: str | os.PathLike | bytes, *, sample_rate: int = SAMPLE_RATE, timeout: float = 600,
                 tmp_dir: str | None = None, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes to mono float32 in [-1, 1] at ``sample_rate`` (16 kHz).

    ``max_seconds`` caps the decoded duration before it is allocated (``AudioTooLong``, 413): from the header on
    the libsndfile path, by counting ffmpeg's output (and stopping ffmpeg) otherwise. Sample rates outside
    ``MIN_SAMPLE_RATE``..``MAX_SAMPLE_RATE`` are refused (``AudioDecodeError``).

    Bytes are written to a temporary file (MP4/M4A with the index at the end cannot be read from a pipe), which
    is always deleted. Raises ``EmptyAudio`` for no samples, ``AudioDecodeError`` for non-audio or truncated
    input, ``ApplianceError`` when ffmpeg is needed but missing.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise EmptyAudio("the audio is empty (0 bytes)")
        _check_complete(data[:_WAV_HEAD_BYTES], data[-_OGG_TAIL_BYTES:], len(data))
        fd, path = tempfile.mkstemp(prefix="whisper-audio-", suffix=".bin", dir=tmp_dir)
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as exc:
                if is_disk_full(exc):
                    raise disk_full("the audio's temp file", exc) from exc
                raise
            return _decode_path(path, sample_rate=sample_rate, timeout=timeout, max_seconds=max_seconds)
        finally:
            os.unlink(path)

    path = os.fspath(source)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise InvalidInput(f"audio file not found: {path}") from None
    if size == 0:
        raise EmptyAudio("the audio file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(_WAV_HEAD_BYTES)
        f.seek(max(0, size - _OGG_TAIL_BYTES))
        tail = f.read()
    _check_complete(head, tail, size)
    return _decode_path(path, sample_rate=sample_rate, timeout=timeout, max_seconds=max_seconds)


def _check_complete(head: bytes, tail: bytes, total_size: int) -> None:
    problem = (wav_truncation_problem(head, total_size) or ogg_truncation_problem(head, tail)
               or mp3_truncation_problem(head, total_size))
    if problem:
        raise AudioDecodeError(problem)


def _decode_path(path: str, *, sample_rate: int, timeout: float, max_seconds: float | None) -> np.ndarray:
    audio = _read_with_soundfile(path, sample_rate, max_seconds)
    if audio is None:
        audio = _read_with_ffmpeg(path, sample_rate, timeout, max_seconds)
    if audio.size == 0:
        raise EmptyAudio("the audio has no samples")
    return audio


def too_long(seconds: float, max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"the audio is longer than the limit of {max_seconds:g} s (MAX_AUDIO_SECONDS)"
                        + (f": it lasts {seconds:.0f} s" if seconds > max_seconds else ""))


def check_sample_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(f"the audio claims a sample rate of {rate} Hz; accepted are {MIN_SAMPLE_RATE} to "
                               f"{MAX_SAMPLE_RATE} Hz", code="unsupported_sample_rate")


_UNKNOWN_FRAMES = 2 ** 62


def _read_with_soundfile(path: str, sample_rate: int, max_seconds: float | None) -> np.ndarray | None:
    """The libsndfile fast path; None when the file is not a format it should handle."""
    import soundfile as sf

    with open(path, "rb") as f:
        magic = f.read(4)
    # Only ask libsndfile about its fast-path formats: it also opens MP3 and prints mpg123 warnings to stderr.
    if magic not in _FAST_MAGIC:
        return None
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as exc:
        log.debug("soundfile cannot read %s (%s); using ffmpeg", path, exc)
        return None
    if info.format not in _FAST_FORMATS and not (info.format == "OGG" and info.subtype in _FAST_OGG_SUBTYPES):
        return None
    # The header decides before anything is allocated: its rate, and its length (frames) at that rate.
    check_sample_rate(info.samplerate)
    if info.frames >= _UNKNOWN_FRAMES:
        # A FLAC written to a pipe has no length in its header (libsndfile says 2**63 - 1 frames, and reading it
        # would allocate that): ffmpeg decodes it, counted against the cap as it goes.
        log.debug("%s does not say how long it is; using ffmpeg", path)
        return None
    if max_seconds is not None and info.frames / info.samplerate > max_seconds:
        raise too_long(info.frames / info.samplerate, max_seconds)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        # ffmpeg gets a second try and, if it fails too, the clearer error message.
        log.debug("soundfile failed on %s (%s); using ffmpeg", path, exc)
        return None
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return _resample(mono, sr, sample_rate)


def _read_with_ffmpeg(path: str, sample_rate: int, timeout: float, max_seconds: float | None) -> np.ndarray:
    args = [ffmpeg_binary(), "-nostdin", "-v", "error", "-threads", "0", *_FFMPEG_INPUT_OPTIONS, "-i", path,
            "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1"]
    output = _CappedOutput(None if max_seconds is None else int(max_seconds * sample_rate) * 4)
    proc = _FfmpegProcess(args, on_stdout=output.append, with_stdin=False, name="ffmpeg-decode")
    output.proc = proc.proc
    if output.overflowed:  # the cap was passed before the reader knew the process
        proc.kill()
    if not proc.finish(timeout):
        raise AudioDecodeError(f"decoding the audio took longer than {timeout:g} s and was stopped")
    if output.overflowed:
        assert max_seconds is not None
        raise too_long(0.0, max_seconds)
    stderr = proc.stderr_text
    # Error-level output counts as failure even with exit status 0: that is how ffmpeg reports a corrupt
    # stream it decoded only partly.
    if proc.proc.returncode != 0 or stderr:
        raise AudioDecodeError(ffmpeg_error_message(stderr, input_name=path))
    raw = output.data
    audio = np.frombuffer(raw, dtype="<f4", count=len(raw) // 4)
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


class _CappedOutput:
    """ffmpeg's stdout, kept up to ``limit`` bytes; past it ffmpeg is killed and the rest is dropped.

    Runs on the stdout reader thread, so it only signals ffmpeg (``Popen.kill``); reaping stays with ``finish``.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.data = bytearray()
        self.overflowed = False
        self.proc: subprocess.Popen | None = None

    def append(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        if self.limit is not None and len(self.data) + len(chunk) > self.limit:
            self.overflowed = True
            self.data = bytearray()
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass  # it ended on its own meanwhile
            return
        self.data += chunk


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Container/codec metadata of the first audio stream (ffprobe via pydub). Non-audio -> AudioDecodeError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidInput(f"audio file not found: {path}")
    ffmpeg_binary("ffprobe")
    with warnings.catch_warnings():
        # pydub imports the stdlib's deprecated ``audioop`` (it only uses it for effects we never call).
        warnings.simplefilter("ignore", DeprecationWarning)
        from pydub.utils import mediainfo_json

    try:
        info = mediainfo_json(path)
    except (ValueError, KeyError, IndexError) as exc:  # json.JSONDecodeError is a ValueError
        raise AudioDecodeError(f"ffprobe could not read the file: {exc}") from exc
    streams = [s for s in info.get("streams") or () if s.get("codec_type") == "audio"]
    if not streams:
        raise AudioDecodeError("the file is not audio that ffprobe can read (no audio stream found)")
    stream, fmt = streams[0], info.get("format") or {}
    duration = _number(stream.get("duration")) or _number(fmt.get("duration")) or 0.0
    bit_rate = _number(stream.get("bit_rate")) or _number(fmt.get("bit_rate"))
    return AudioInfo(container=str(fmt.get("format_name") or ""), codec=str(stream.get("codec_name") or ""),
                     sample_rate=int(_number(stream.get("sample_rate")) or 0),
                     channels=int(_number(stream.get("channels")) or 0), duration_seconds=float(duration),
                     bit_rate=int(bit_rate) if bit_rate else None)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # ffprobe writes "N/A" for unknown values


# ---------------------------------------------------------------------------------------------------------------
# Live streams


class StreamDecoder:
    """One ffmpeg process per live session: compressed chunks in (``feed``), 16 kHz float32 out (``read``).

    Only the first chunk of a MediaRecorder stream carries the container header; later chunks continue it and
    may be split anywhere, so they must go through the same process in order. ``read`` never blocks.

    The first bytes are checked against the container's magic number before ffmpeg sees them: on a pipe,
    ffmpeg's demuxer can wait forever for more of a bogus header, so garbage would otherwise go unnoticed
    until ``close``.
    """

    def __init__(self, input_format: str = "webm", *, sample_rate: int = SAMPLE_RATE) -> None:
        self.input_format = input_format
        self.sample_rate = sample_rate
        self._lock = real_threading().Lock()
        self._pcm = bytearray()
        self._closed = False
        self._magic = _STREAM_MAGIC.get(input_format)
        self._head = b""
        self._rejected: str | None = None
        args = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", *_FFMPEG_INPUT_OPTIONS, "-f", input_format,
                "-i", "pipe:0",
                "-f", "s16le", "-ac", "1", "-ar", str(sample_rate), "pipe:1"]
        self._proc = _FfmpegProcess(args, on_stdout=self._on_pcm, with_stdin=True, name="ffmpeg-stream")
        log.debug("stream decoder %s started for %s", self._proc.pid, input_format)

    def _on_pcm(self, chunk: bytes) -> None:
        with self._lock:
            self._pcm += chunk

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.proc.poll() is None

    @property
    def error(self) -> str | None:
        """ffmpeg's error output as a sentence for people (set when it hit bad input and died); else None."""
        if self._rejected:
            return self._rejected
        text = self._proc.stderr_text
        if text:
            return ffmpeg_error_message(text)
        if not self._closed and not self.alive and self._proc.proc.returncode not in (0, None):
            return f"ffmpeg exited with status {self._proc.proc.returncode}"
        return None

    def feed(self, data: bytes) -> None:
        """Queue the next bytes of the stream. Raises AudioDecodeError once the decoder has died or is closed."""
        if self._rejected:
            raise AudioDecodeError(self._rejected)
        if self._closed:
            raise AudioDecodeError("the audio stream decoder is closed")
        if not self.alive:
            raise AudioDecodeError("the audio stream could not be decoded: "
                                   + (self.error or "ffmpeg is no longer running"))
        if not data:
            return
        if self._magic and len(self._head) < len(self._magic):
            self._head += bytes(data[: len(self._magic) - len(self._head)])
            if not self._magic.startswith(self._head):
                self._rejected = (f"the audio stream is not {self.input_format}: it does not start with a "
                                  f"{self.input_format} header")
                self._closed = True
                self._proc.kill()
                raise AudioDecodeError(self._rejected)
        self._proc.write(data)

    def read(self) -> np.ndarray:
        """All PCM decoded so far and not yet read, as float32 (possibly empty). Never blocks."""
        with self._lock:
            usable = len(self._pcm) - len(self._pcm) % 2
            raw = bytes(self._pcm[:usable])
            del self._pcm[:usable]
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0

    def close(self, timeout: float = 2.0) -> None:
        """End the stream: ffmpeg decodes what it has (left for ``read``), then exits or is killed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._proc.close_stdin()
        if not self._proc.finish(timeout):
            log.warning("stream decoder %s did not finish within %.1f s and was killed", self._proc.pid, timeout)

    def __enter__(self) -> StreamDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
