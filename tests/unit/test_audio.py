"""core/audio.py: decoding every container to the same speech, clear errors for non-audio and cut files,
no leftover temp files or ffmpeg processes, and the live StreamDecoder on real webm/opus bytes."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.fixtures_audio import convert, live_webm
from whisper_appliance.core.audio import (
    AudioInfo,
    StreamDecoder,
    decode_audio,
    ffmpeg_error_message,
    mp3_truncation_problem,
    ogg_truncation_problem,
    pcm16_to_float32,
    probe_audio,
    wav_truncation_problem,
)
from whisper_appliance.core.errors import (
    ApplianceError,
    AudioDecodeError,
    AudioTooLong,
    EmptyAudio,
    InvalidInput,
)

SR = 16_000


# ---------------------------------------------------------------------------------------------------------------
# helpers


def envelope(audio: np.ndarray, frame: int = 320) -> np.ndarray:
    """RMS per 20 ms frame: compares speech across lossy codecs, insensitive to small codec delays."""
    n = len(audio) // frame
    return np.sqrt((audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    ea, eb = envelope(a), envelope(b)
    n = min(len(ea), len(eb))
    return float(np.corrcoef(ea[:n], eb[:n])[0, 1])


def ffmpeg_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True) if "ffmpeg" in c.name()]


def png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00\xff\x00\x00" * 1  # one row, filter byte + one RGB pixel
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def wav_header(data_size: int, *, extra_chunk: bytes = b"") -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, SR, SR * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk
    riff_size = min(len(body) + 8 + data_size, 0xFFFFFFFF)
    return b"RIFF" + struct.pack("<I", riff_size) + body + b"data" + struct.pack("<I", data_size)


@pytest.fixture(scope="module")
def jfk(speech_dir: Path) -> Path:
    return speech_dir / "jfk.mp3"


@pytest.fixture(scope="module")
def jfk_audio(jfk: Path) -> np.ndarray:
    return decode_audio(jfk)


@pytest.fixture(scope="module")
def variants(jfk: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("variants")
    made = {suffix: convert(jfk, suffix, out) for suffix in (".mp3", ".m4a", ".webm", ".ogg", ".flac", ".opus",
                                                              ".mkv")}
    # A WAV at 44.1 kHz stereo exercises the soundfile path with resampling and downmixing.
    made[".wav"] = convert(jfk, ".wav", out, extra=["-ar", "44100", "-ac", "2"])
    return made


# ---------------------------------------------------------------------------------------------------------------
# pure helpers


def test_wav_check_accepts_complete_file_and_rejects_cut_one():
    whole = wav_header(1000) + b"\x00" * 1000
    assert wav_truncation_problem(whole, len(whole)) is None
    problem = wav_truncation_problem(whole[:500], 500)
    assert problem is not None and "truncated" in problem and "declares 1000 bytes" in problem


def test_wav_check_walks_past_other_chunks():
    extra = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\x00"  # odd size: one pad byte
    whole = wav_header(100, extra_chunk=extra) + b"\x00" * 100
    assert wav_truncation_problem(whole, len(whole)) is None
    assert wav_truncation_problem(whole[:-50], len(whole) - 50) is not None


def test_wav_check_accepts_streamed_sizes_and_ignores_other_files():
    for unknown in (0, 0xFFFFFFFF):
        head = wav_header(unknown)
        assert wav_truncation_problem(head + b"\x00" * 10, len(head) + 10) is None
    assert wav_truncation_problem(b"OggS" + b"\x00" * 100, 104) is None
    assert wav_truncation_problem(b"", 0) is None


def test_wav_check_rejects_file_ending_inside_its_header():
    head = wav_header(100)[:30]
    assert "before its audio data" in wav_truncation_problem(head, len(head))


def test_wav_check_on_the_real_cut_file(speech_dir):
    data = (speech_dir / "cards_001.wav").read_bytes()
    assert wav_truncation_problem(data, len(data)) is None
    assert wav_truncation_problem(data[: len(data) // 2], len(data) // 2) is not None


def test_ogg_check(variants):
    data = variants[".ogg"].read_bytes()
    assert ogg_truncation_problem(data[:100], data[-70000:]) is None
    half = data[: len(data) // 2]
    assert "truncated" in ogg_truncation_problem(half[:100], half[-70000:])
    # Whole pages but no end-of-stream flag: cut exactly at a page boundary.
    last_page = data.rfind(b"OggS")
    cut = data[:last_page]
    assert "end-of-stream" in ogg_truncation_problem(cut[:100], cut[-70000:])
    assert ogg_truncation_problem(b"RIFF", b"") is None


def test_mp3_check(jfk):
    data = jfk.read_bytes()
    assert mp3_truncation_problem(data[:4096], len(data)) is None
    problem = mp3_truncation_problem(data[:4096], len(data) // 2)
    assert problem is not None and "MP3 file is truncated" in problem
    assert mp3_truncation_problem(b"\x00" * 100, 100) is None


def test_ffmpeg_error_message_is_for_people():
    msg = ffmpeg_error_message("/tmp/x.bin: Invalid data found when processing input", input_name="/tmp/x.bin")
    assert msg == "the file is not audio that ffmpeg can read: Invalid data found when processing input"
    assert "/tmp" not in msg
    assert "moov atom not found" in ffmpeg_error_message("[mov,mp4 @ 0x1] moov atom not found\nx: Invalid data")
    assert ffmpeg_error_message("Output file #0 does not contain any stream") == "the file has no audio track"
    assert "truncated or corrupt" in ffmpeg_error_message("[matroska,webm @ 0x5] File ended prematurely")


def test_pcm16_to_float32_scales_and_resamples():
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    out = pcm16_to_float32(pcm, SR)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])
    tone = (np.sin(np.arange(48_000) * 2 * np.pi * 440 / 48_000) * 10_000).astype("<i2").tobytes()
    resampled = pcm16_to_float32(tone, 48_000)
    assert len(resampled) == SR
    assert np.abs(resampled).max() <= 1.0
    assert pcm16_to_float32(b"", SR).size == 0


def test_pcm16_to_float32_rejects_odd_bytes_and_bad_rate():
    with pytest.raises(InvalidInput, match="even number of bytes"):
        pcm16_to_float32(b"\x00\x01\x02", SR)
    with pytest.raises(InvalidInput):
        pcm16_to_float32(b"\x00\x01", 0)


# ---------------------------------------------------------------------------------------------------------------
# decode_audio


def test_reference_decode(jfk_audio):
    assert jfk_audio.dtype == np.float32 and jfk_audio.ndim == 1
    assert abs(len(jfk_audio) / SR - 11.0) < 0.1
    assert 0.05 < np.sqrt((jfk_audio ** 2).mean()) < 0.5
    assert np.abs(jfk_audio).max() <= 1.0


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".m4a", ".webm", ".ogg", ".flac", ".opus", ".mkv"])
def test_every_container_decodes_to_the_same_speech(suffix, variants, jfk_audio, tmp_path):
    from_path = decode_audio(variants[suffix])
    from_bytes = decode_audio(variants[suffix].read_bytes(), tmp_dir=str(tmp_path))
    for audio in (from_path, from_bytes):
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) / SR - 11.0) < 0.15, len(audio) / SR
        assert np.abs(audio).max() <= 1.0
        assert similarity(audio, jfk_audio) > 0.95
    np.testing.assert_array_equal(from_path, from_bytes)
    assert list(tmp_path.iterdir()) == []  # the temporary copy of the bytes is gone


def test_path_input_is_not_modified(variants):
    before = variants[".m4a"].read_bytes()
    decode_audio(variants[".m4a"])
    assert variants[".m4a"].read_bytes() == before


@pytest.mark.parametrize("make", [
    pytest.param(lambda sd: os.urandom(20_000), id="random-bytes"),
    pytest.param(lambda sd: png_bytes(), id="png"),
    pytest.param(lambda sd: b"just some text, not audio\n" * 50, id="text"),
])
def test_non_audio_raises_decode_error(make, speech_dir, tmp_path):
    data = make(speech_dir)
    # Random bytes can happen to look like a damaged MP3 frame, hence the third wording.
    with pytest.raises(AudioDecodeError, match="not audio|no audio track|could not be decoded"):
        decode_audio(data, tmp_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with pytest.raises(AudioDecodeError):
        decode_audio(path)
    assert not ffmpeg_children()


def test_png_error_message_is_clear(tmp_path):
    with pytest.raises(AudioDecodeError) as err:
        decode_audio(png_bytes(), tmp_dir=str(tmp_path))
    assert err.value.status == 415
    assert str(tmp_path) not in err.value.message


def test_empty_input_raises_empty_audio(tmp_path):
    with pytest.raises(EmptyAudio):
        decode_audio(b"", tmp_dir=str(tmp_path))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyAudio):
        decode_audio(empty)
    assert list(tmp_path.iterdir()) == [empty]


def test_wav_with_no_samples_raises_empty_audio(tmp_path):
    with pytest.raises(EmptyAudio):
        decode_audio(wav_header(0), tmp_dir=str(tmp_path))


def test_wav_cut_in_half_raises_decode_error(speech_dir, tmp_path):
    data = (speech_dir / "cards_001.wav").read_bytes()
    half = data[: len(data) // 2]
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(half, tmp_dir=str(tmp_path))
    cut = tmp_path / "cut.wav"
    cut.write_bytes(half)
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(cut)
    assert list(tmp_path.iterdir()) == [cut]


@pytest.mark.parametrize("suffix", [".m4a", ".webm", ".ogg", ".flac", ".mp3"])
def test_other_containers_cut_in_half_raise_decode_error(suffix, variants, tmp_path):
    data = variants[suffix].read_bytes()
    with pytest.raises(AudioDecodeError):
        decode_audio(data[: len(data) // 2], tmp_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_missing_file_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match="not found"):
        decode_audio(tmp_path / "nope.mp3")


def test_timeout_kills_ffmpeg_and_cleans_up(variants, tmp_path):
    with pytest.raises(AudioDecodeError, match="longer than"):
        decode_audio(variants[".m4a"].read_bytes(), timeout=0, tmp_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    assert not ffmpeg_children()


# ---------------------------------------------------------------------------------------------------------------
# MAX_AUDIO_SECONDS and absurd sample rates (decoded-size amplification)


def wav_bytes(samples: int, rate: int) -> bytes:
    """A mono 16-bit WAV of ``samples`` zero samples whose header claims ``rate`` Hz."""
    data = b"\0" * (2 * samples)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def silence(tmp_path: Path, suffix: str, seconds: int, *codec: str) -> Path:
    """``seconds`` of silence encoded by ffmpeg (lavfi anullsrc): compresses to almost nothing."""
    out = tmp_path / f"silence{suffix}"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono",
                    "-t", str(seconds), *codec, str(out)], check=True)
    return out


@pytest.mark.parametrize("rate", [1, 999, 400_000])
def test_wav_claiming_an_absurd_sample_rate_is_refused_before_decoding(rate, tmp_path):
    # 40 KB claiming 1 Hz: it used to be "resampled" into 5.5 h and 1.2 GiB of float32.
    data = wav_bytes(20_000, rate)
    with pytest.raises(AudioDecodeError, match="sample rate") as exc:
        decode_audio(data, tmp_dir=str(tmp_path))
    assert exc.value.code == "unsupported_sample_rate"
    assert list(tmp_path.iterdir()) == []


def test_wav_longer_than_the_cap_is_refused_from_its_header(tmp_path):
    data = wav_bytes(16_000 * 3, 16_000)
    assert decode_audio(data, max_seconds=3).size == 16_000 * 3
    with pytest.raises(AudioTooLong, match="MAX_AUDIO_SECONDS") as exc:
        decode_audio(data, max_seconds=2, tmp_dir=str(tmp_path))
    assert (exc.value.status, exc.value.code) == (413, "audio_too_long")
    assert list(tmp_path.iterdir()) == []


def test_flac_silence_longer_than_the_cap_is_refused_from_its_header(tmp_path):
    flac = silence(tmp_path, ".flac", 60)
    with pytest.raises(AudioTooLong):
        decode_audio(flac, max_seconds=30)


def test_opus_silence_longer_than_the_cap_stops_ffmpeg(tmp_path):
    opus = silence(tmp_path, ".opus", 120, "-c:a", "libopus")
    spool = tmp_path / "spool"
    spool.mkdir()
    assert opus.stat().st_size < 200_000
    assert decode_audio(opus, max_seconds=200).size == pytest.approx(120 * SR, abs=SR)
    with pytest.raises(AudioTooLong) as exc:
        decode_audio(opus.read_bytes(), max_seconds=10, tmp_dir=str(spool))
    assert exc.value.status == 413
    assert list(spool.iterdir()) == []
    assert not ffmpeg_children()


def test_every_ffmpeg_reads_only_files_and_pipes_and_runs_without_a_shell(variants, webm_stream, monkeypatch):
    import whisper_appliance.core.audio as audio_module

    calls: list[tuple[object, dict]] = []
    real = audio_module.subprocess.Popen

    def spy(args, **kwargs):
        calls.append((args, kwargs))
        return real(args, **kwargs)

    monkeypatch.setattr(audio_module.subprocess, "Popen", spy)
    decode_audio(variants[".mp3"])
    with StreamDecoder() as dec:
        dec.feed(webm_stream[:4096])
    assert len(calls) == 2
    for args, kwargs in calls:
        assert isinstance(args, list) and not kwargs.get("shell")
        at = args.index("-protocol_whitelist")
        assert args[at + 1] == "file,pipe" and at < args.index("-i")


def test_missing_ffmpeg_is_a_clear_error(variants, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ApplianceError, match="ffmpeg is not installed"):
        decode_audio(variants[".mp3"])
    with pytest.raises(ApplianceError, match="ffmpeg is not installed"):
        StreamDecoder()


# ---------------------------------------------------------------------------------------------------------------
# probe_audio


def test_probe_audio_reports_container_and_codec(jfk, variants):
    info = probe_audio(jfk)
    assert isinstance(info, AudioInfo)
    assert info.container == "mp3" and info.codec == "mp3"
    assert info.channels == 1 and info.sample_rate > 0
    assert abs(info.duration_seconds - 11.0) < 0.2
    assert info.bit_rate and info.bit_rate > 0
    webm = probe_audio(variants[".webm"])
    assert "webm" in webm.container and webm.codec == "opus"
    assert probe_audio(variants[".wav"]).channels == 2


def test_probe_non_audio_raises(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes())
    with pytest.raises(AudioDecodeError):
        probe_audio(path)


# ---------------------------------------------------------------------------------------------------------------
# StreamDecoder


@pytest.fixture(scope="module")
def webm_stream(jfk) -> bytes:
    return live_webm(jfk)


def _pieces(data: bytes, sizes) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(data[pos:pos + size])
        pos += size
    if pos < len(data):
        out.append(data[pos:])
    return out


def _decode_stream(pieces: list[bytes]) -> np.ndarray:
    decoder = StreamDecoder("webm")
    parts = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            parts.append(decoder.read())
    finally:
        decoder.close()
    parts.append(decoder.read())  # what ffmpeg flushed when its input ended
    assert decoder.error is None
    assert not psutil.pid_exists(decoder.pid) or psutil.Process(decoder.pid).status() == psutil.STATUS_ZOMBIE
    assert not ffmpeg_children()
    return np.concatenate(parts)


def test_stream_decoder_with_4kb_chunks(webm_stream, jfk_audio):
    audio = _decode_stream(_pieces(webm_stream, [4096] * 1000))
    assert audio.dtype == np.float32
    assert abs(len(audio) / SR - 11.0) < 0.15
    assert similarity(audio, jfk_audio) > 0.95
    rms = np.sqrt((audio ** 2).mean()) / np.sqrt((jfk_audio ** 2).mean())
    assert 0.8 < rms < 1.25


def test_stream_decoder_with_random_splits(webm_stream, jfk_audio):
    rng = random.Random(7)
    audio = _decode_stream(_pieces(webm_stream, [rng.randint(1, 3000) for _ in range(10_000)]))
    assert abs(len(audio) / SR - 11.0) < 0.15
    assert similarity(audio, jfk_audio) > 0.95


def test_stream_decoder_output_arrives_while_feeding(webm_stream):
    decoder = StreamDecoder()
    try:
        decoder.feed(webm_stream[: len(webm_stream) // 2])
        got = 0
        deadline = time.monotonic() + 30
        # Half the stream in: PCM must come out before the input ends (low latency, not batch at close).
        while got < 4 * SR and time.monotonic() < deadline:
            got += decoder.read().size
            time.sleep(0.05)
        assert got >= 4 * SR
        assert decoder.alive
    finally:
        decoder.close()


def test_stream_decoder_garbage_is_rejected_and_process_ends():
    decoder = StreamDecoder("webm")
    garbage = b"\x00" + random.Random(1).randbytes(8191)
    with pytest.raises(AudioDecodeError, match="not webm"):
        decoder.feed(garbage[:1])  # one byte is enough to see it is not the WebM magic
    assert not decoder.alive
    assert decoder.error and "not webm" in decoder.error
    with pytest.raises(AudioDecodeError):
        decoder.feed(garbage[1:])
    assert decoder.read().size == 0
    decoder.close()
    assert not psutil.pid_exists(decoder.pid) or psutil.Process(decoder.pid).status() == psutil.STATUS_ZOMBIE
    assert not ffmpeg_children()


def test_stream_decoder_garbage_after_a_header_surfaces_ffmpeg_error():
    decoder = StreamDecoder("webm")
    try:
        decoder.feed(b"\x1a\x45\xdf\xa3")
        decoder.feed(random.Random(2).randbytes(8192))
    finally:
        decoder.close()  # ffmpeg sees the end of input and reports what it could not parse
    assert decoder.error and ("not audio" in decoder.error or "truncated or corrupt" in decoder.error)
    assert decoder.read().size == 0
    with pytest.raises(AudioDecodeError):
        decoder.feed(b"more")
    assert not ffmpeg_children()


def test_stream_decoder_dead_process_write_is_decode_error(webm_stream):
    decoder = StreamDecoder("webm")
    try:
        decoder.feed(webm_stream[:4096])
        os.kill(decoder.pid, 9)
        deadline = time.monotonic() + 30
        while decoder.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(AudioDecodeError, match="could not be decoded"):
            decoder.feed(webm_stream[4096:8192])
    finally:
        decoder.close()
    assert not ffmpeg_children()


def test_stream_decoder_close_is_idempotent_and_stops_feeding(webm_stream):
    decoder = StreamDecoder()
    decoder.feed(webm_stream[:4096])
    pid = decoder.pid
    assert psutil.Process(pid).name().startswith("ffmpeg")
    decoder.close()
    decoder.close()
    assert not decoder.alive
    with pytest.raises(AudioDecodeError, match="closed"):
        decoder.feed(b"x")
    assert not ffmpeg_children()


def test_stream_decoder_closed_without_input():
    with StreamDecoder() as decoder:
        pass
    assert not decoder.alive
    assert decoder.read().size == 0
    assert not ffmpeg_children()


def test_a_flac_written_to_a_pipe_has_no_length_and_is_decoded_by_ffmpeg_within_the_cap(tmp_path):
    # Its header says nothing about its length (libsndfile reports 2**63 - 1 frames): it used to be a 500
    # ("array is too big"), then a 413 for a 3-s file. Over the cap, ffmpeg's counted output still refuses it.
    path = tmp_path / "piped.flac"
    with path.open("wb") as out:
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=d=3", "-ar", "16000", "-ac", "1",
                        "-f", "flac", "-"], stdout=out, check=True)
    audio = decode_audio(str(path), max_seconds=10)
    assert abs(len(audio) / 16000 - 3.0) < 0.1  # decoded at 16 kHz
    with pytest.raises(AudioTooLong):
        decode_audio(str(path), max_seconds=1)
