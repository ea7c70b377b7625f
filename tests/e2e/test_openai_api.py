"""The OpenAI-compatible API (/v1) driven by the official ``openai`` Python client against the real server.

The shared ``server`` fixture runs tiny.en (English-only) on faster-whisper; jfk.mp3 is real speech with a
reference transcript. A second server with REQUIRE_AUTH=true checks that the client's API key is enforced.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile
from openai import OpenAI

from whisper_appliance.core.wer import word_error_rate

from ..conftest import reference_text


def client_for(server, *, api_key: str | None = None, verify: bool | ssl.SSLContext | None = None) -> OpenAI:
    if verify is None:
        verify = ssl.create_default_context(cafile=str(server.cert_path))
    http_client = openai.DefaultHttpxClient(verify=verify)
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key or server.token, http_client=http_client,
                  max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return client_for(server)


@pytest.fixture(scope="module")
def jfk(speech_dir: Path) -> Path:
    return speech_dir / "jfk.mp3"


def test_transcription_text_is_close_to_the_reference(client, jfk):
    with jfk.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    wer = word_error_rate(reference_text("jfk"), result.text)
    assert wer <= 0.05, (wer, result.text)


def test_client_without_verification_also_works(server, jfk):
    # verify=False is what people do with a self-signed certificate they have not installed.
    with client_for(server, verify=False) as insecure, jfk.open("rb") as f:
        text = insecure.audio.transcriptions.create(model="tiny.en", file=f, response_format="text")
    assert "country" in text.lower()


def test_verbose_json_with_word_and_segment_timestamps(client, jfk):
    with jfk.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                    timestamp_granularities=["word", "segment"])
    assert result.language == "english"
    assert result.duration == pytest.approx(11.0, abs=0.5)
    assert word_error_rate(reference_text("jfk"), result.text) <= 0.05
    assert result.segments and result.words
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and all(s.end > s.start for s in result.segments)
    assert all(isinstance(s.tokens, list) and s.tokens for s in result.segments)
    word_starts = [w.start for w in result.words]
    assert word_starts == sorted(word_starts) and all(w.end >= w.start for w in result.words)
    assert result.words[-1].end <= result.duration + 0.5
    assert "country" in " ".join(w.word for w in result.words).lower()


def test_verbose_json_without_word_granularity_has_no_words(client, speech_dir):
    with (speech_dir / "goforward.wav").open("rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f,
                                                                   response_format="verbose_json")
    body = raw.http_response.json()
    assert body["task"] == "transcribe" and body["segments"] and "words" not in body


@pytest.mark.parametrize("fmt", ["srt", "vtt", "text"])
def test_subtitle_and_text_formats(client, jfk, fmt):
    with jfk.open("rb") as f:
        out = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    assert isinstance(out, str)
    if fmt == "srt":
        assert out.startswith("1\n00:00:00,000 --> ")
        assert " --> 00:00:" in out
    elif fmt == "vtt":
        assert out.startswith("WEBVTT\n\n00:00")
        assert "-->" in out
    else:
        assert "-->" not in out
        assert word_error_rate(reference_text("jfk"), out) <= 0.05


def test_translation_needs_a_multilingual_model(client, jfk):
    with jfk.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.translations.create(model="whisper-1", file=f)
    assert "English-only" in str(info.value)
    assert info.value.body["type"] == "invalid_request_error"


def test_wrong_model_is_a_conflict_naming_the_loaded_model(client, jfk):
    with jfk.open("rb") as f, pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="large-v3", file=f)
    assert info.value.status_code == 409
    assert "tiny.en" in info.value.message


def test_unknown_response_format_is_a_bad_request(server, jfk):
    with jfk.open("rb") as f:
        r = server.session().post(server.url("/v1/audio/transcriptions"), files={"file": f},
                                  data={"model": "whisper-1", "response_format": "docx"}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "whisper-1"
    assert "tiny.en" in ids
    assert client.models.retrieve("whisper-1").owned_by == "whisper-appliance"


def test_api_transcriptions_are_recorded_in_history(server, client, speech_dir, tmp_path):
    # Bytes no other test uploads: a result-cache hit would answer from the first upload's entry instead.
    audio, rate = soundfile.read(speech_dir / "cards_001.wav", dtype="float32")
    unique = tmp_path / "cards_001.wav"
    soundfile.write(unique, np.concatenate([audio, np.zeros(rate // 10, dtype="float32")]), rate)
    with unique.open("rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f).text
    r = server.session(token=server.token).get(server.url("/api/history"), params={"source": "api"}, timeout=30)
    assert r.status_code == 200, r.text
    entries = r.json()["items"]
    assert any(e["source"] == "api" and e["text"] == text and e["filename"] == "cards_001.wav" for e in entries)


def test_require_auth_enforces_the_api_key(start_server, speech_dir):
    srv = start_server(REQUIRE_AUTH="true")
    with client_for(srv, api_key="wrong-key") as bad, pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with (speech_dir / "goforward.wav").open("rb") as f, client_for(srv, api_key="wrong-key") as bad, \
            pytest.raises(openai.AuthenticationError):
        bad.audio.transcriptions.create(model="whisper-1", file=f)
    anonymous = srv.session().post(srv.url("/v1/audio/transcriptions"), data={"model": "whisper-1"},
                                   files={"file": ("a.wav", b"RIFF")}, timeout=30)
    assert anonymous.status_code == 401
    with client_for(srv) as good, (speech_dir / "goforward.wav").open("rb") as f:
        assert "whisper-1" in [m.id for m in good.models.list()]
        text = good.audio.transcriptions.create(model="whisper-1", file=f).text
    assert word_error_rate(reference_text("goforward"), text) <= 0.3, text
