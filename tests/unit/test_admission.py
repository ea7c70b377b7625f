"""core/admission.py: synchronous transcriptions (server-wide and per client) and upload bytes in flight."""

from __future__ import annotations

import pytest

from whisper_appliance.core.admission import AdmissionLimits
from whisper_appliance.core.config import Settings
from whisper_appliance.core.errors import ApplianceError, ConfigError


def limits(**overrides) -> AdmissionLimits:
    values = dict(max_transcriptions=3, max_per_client=2, max_spooled_bytes=100)
    return AdmissionLimits(**{**values, **overrides})


def test_one_client_gets_a_429_at_its_share_while_others_still_get_in():
    adm = limits()
    with adm.transcription("ip:10.0.0.1"), adm.transcription("ip:10.0.0.1"):
        with pytest.raises(ApplianceError) as refused, adm.transcription("ip:10.0.0.1"):
            pass
        assert (refused.value.status, refused.value.code) == (429, "too_many_concurrent_transcriptions")
        assert refused.value.headers["Retry-After"] == "5"
        with adm.transcription("user:7"):
            assert adm.transcriptions == 3
    assert adm.transcriptions == 0


def test_the_server_wide_cap_is_a_503_with_retry_after():
    adm = limits()
    with adm.transcription("a"), adm.transcription("b"), adm.transcription("c"):
        with pytest.raises(ApplianceError) as refused, adm.transcription("d"):
            pass
    assert (refused.value.status, refused.value.code) == (503, "server_busy")
    assert refused.value.headers["Retry-After"] == "5"


def test_a_place_is_given_back_when_the_request_fails():
    adm = limits(max_transcriptions=1)
    with pytest.raises(RuntimeError), adm.transcription("a"):
        raise RuntimeError("decoding failed")
    with adm.transcription("a"):
        assert adm.transcriptions == 1


def test_upload_bytes_in_flight_are_capped():
    adm = limits()
    with adm.upload(60):
        with pytest.raises(ApplianceError) as refused, adm.upload(41):
            pass
        assert (refused.value.status, refused.value.code) == (503, "upload_capacity")
        with adm.upload(40):
            assert adm.spooled_bytes == 100
    assert adm.spooled_bytes == 0


def test_settings_are_validated_and_generous_by_default():
    s = Settings()
    assert s.max_concurrent_transcriptions >= 32 and s.max_concurrent_transcriptions_per_client >= 16
    assert s.max_spooled_upload_bytes >= 4 * s.max_upload_size
    env = {"MAX_CONCURRENT_TRANSCRIPTIONS": "2", "MAX_SPOOLED_UPLOAD_BYTES": "200MB", "MAX_QUEUED_JOBS": "5"}
    s = Settings.from_env(env)
    assert (s.max_concurrent_transcriptions, s.max_spooled_upload_bytes, s.max_queued_jobs) == (2, 200 * 1024 ** 2, 5)
    with pytest.raises(ConfigError, match="MAX_SPOOLED_UPLOAD_BYTES must be at least MAX_UPLOAD_SIZE"):
        Settings.from_env({"MAX_SPOOLED_UPLOAD_BYTES": "1MB"})
    with pytest.raises(ConfigError, match="MAX_CONCURRENT_TRANSCRIPTIONS_PER_CLIENT must be greater than 0"):
        Settings.from_env({"MAX_CONCURRENT_TRANSCRIPTIONS_PER_CLIENT": "0"})
