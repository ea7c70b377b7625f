"""MAX_AUDIO_SECONDS and absurd sample rates on every route that decodes uploads, against the real server.

The server runs with a low cap (5 s) of its own; silence compresses to almost nothing, so a small upload can
claim hours of audio. Refused uploads leave no spool file and no ffmpeg process behind.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import psutil
import pytest

# /v1/audio/translations shares the decode of /v1/audio/transcriptions; tiny.en refuses to translate first.
ROUTES = [("/transcribe", "audio", {}), ("/v1/audio/transcriptions", "file", {"model": "whisper-1"}),
          ("/api/jobs", "audio", {})]


def wav_bytes(samples: int, rate: int) -> bytes:
    data = b"\0" * (2 * samples)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    from .conftest import make_server

    srv = make_server(tmp_path_factory.mktemp("capped"), MAX_AUDIO_SECONDS="5")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def opus_silence(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("silence") / "silence.opus"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono",
                    "-t", "600", "-c:a", "libopus", str(out)], check=True)
    return out.read_bytes()


def assert_nothing_left(srv) -> None:
    tmp = Path(srv.data_dir) / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    jobs = Path(srv.data_dir) / "jobs"
    assert not jobs.exists() or list(jobs.iterdir()) == []
    children = psutil.Process(srv.proc.pid).children(recursive=True)
    assert not [p for p in children if p.name() == "ffmpeg"]


@pytest.mark.parametrize(("route", "field", "form"), ROUTES)
def test_audio_over_the_cap_is_413_audio_too_long(capped, opus_silence, route, field, form):
    s = capped.session(token=capped.token)
    for name, data in (("long.wav", wav_bytes(16_000 * 8, 16_000)), ("long.opus", opus_silence)):
        r = s.post(capped.url(route), files={field: (name, data)}, data=form, timeout=120)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "audio_too_long"
        assert "MAX_AUDIO_SECONDS" in r.json()["error"]["message"]
    assert_nothing_left(capped)


@pytest.mark.parametrize(("route", "field", "form"), ROUTES)
def test_wav_claiming_1_hz_is_refused(capped, route, field, form):
    # 40 KB claiming 1 Hz: 20,000 samples would have been "resampled" into 5.5 h of audio.
    s = capped.session(token=capped.token)
    r = s.post(capped.url(route), files={field: ("one-hertz.wav", wav_bytes(20_000, 1))}, data=form, timeout=120)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_sample_rate"
    assert_nothing_left(capped)


def test_audio_under_the_cap_is_still_transcribed(capped):
    s = capped.session(token=capped.token)
    r = s.post(capped.url("/transcribe"), files={"audio": ("short.wav", wav_bytes(16_000 * 3, 16_000))},
               timeout=120)
    assert r.status_code == 200, r.text
