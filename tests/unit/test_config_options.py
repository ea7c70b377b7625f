"""Settings from the environment and the one option parser."""

from __future__ import annotations

import pytest

from whisper_appliance.core.config import PROJECT_ROOT, VARIABLES, Settings, parse_size
from whisper_appliance.core.errors import ConfigError, InvalidInput
from whisper_appliance.core.options import check_language_for_model, parse_options
from whisper_appliance.core.records import TranscribeOptions


def test_defaults_match_the_documented_table():
    s = Settings.from_env({})
    assert s.whisper_engine == "faster-whisper" and s.whisper_model == "base"
    assert s.https_port == 5001 and s.http_port == 5000 and s.http_redirect is True
    assert s.max_upload_size == 100 * 1024 ** 2 and s.require_auth is False
    assert s.models_dir == PROJECT_ROOT / "models"
    assert {v.env.lower() for v in VARIABLES} == set(Settings.__dataclass_fields__)


@pytest.mark.parametrize("text,expected", [("500KB", 512_000), ("100MB", 104_857_600), ("2GB", 2 * 1024 ** 3),
                                           ("1024", 1024), ("1.5M", 1_572_864), ("10 mb", 10_485_760)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_invalid_values_are_all_reported_with_their_variable():
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"MAX_UPLOAD_SIZE": "lots", "HTTPS_PORT": "x", "WHISPER_ENGINE": "x"})
    message = str(err.value)
    assert "MAX_UPLOAD_SIZE" in message and "HTTPS_PORT" in message


def test_semantic_validation():
    with pytest.raises(ConfigError, match="WHISPER_MODEL"):
        Settings.from_env({"WHISPER_MODEL": "huge"})
    with pytest.raises(ConfigError, match="SSL_CERT_PATH"):
        Settings.from_env({"SSL_CERT_PATH": "/tmp/c.pem"})
    with pytest.raises(ConfigError, match="DEVICE"):
        Settings.from_env({"DEVICE": "tpu"})


def test_lists_and_booleans():
    s = Settings.from_env({"API_KEYS": "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb,,cccccccccccccccc", "REQUIRE_AUTH": "yes", "CORS_ORIGINS": "https://x.example"})
    assert s.api_keys == ("a" * 16, "b" * 16, "c" * 16) and s.require_auth is True and s.cors_origins == ("https://x.example",)
    assert "api_keys" not in s.public_dict() and "admin_password" not in s.public_dict()


def test_parse_options_accepts_form_strings():
    opts = parse_options({"language": "DE", "task": "translate", "beam_size": "3", "temperature": "0.2",
                          "word_timestamps": "true", "vad_filter": "1", "initial_prompt": "Names: Sarah"})
    assert opts == TranscribeOptions(language="de", task="translate", beam_size=3, temperature=0.2,
                                     word_timestamps=True, vad_filter=True, initial_prompt="Names: Sarah")


def test_parse_options_auto_language_and_empty_fields_keep_defaults():
    assert parse_options({"language": "auto", "beam_size": ""}) == TranscribeOptions()


@pytest.mark.parametrize("fields", [{"language": "klingon"}, {"task": "summarise"}, {"beam_size": "0"},
                                    {"beam_size": "many"}, {"temperature": "2"}, {"word_timestamps": "maybe"},
                                    {"initial_prompt": "x" * 3000}])
def test_parse_options_rejects_bad_values(fields):
    with pytest.raises(InvalidInput):
        parse_options(fields)


def test_english_only_models_refuse_other_languages_and_translation():
    check_language_for_model(TranscribeOptions(language="en"), "tiny.en")
    check_language_for_model(TranscribeOptions(language="de"), "base")
    with pytest.raises(InvalidInput):
        check_language_for_model(TranscribeOptions(language="de"), "tiny.en")
    with pytest.raises(InvalidInput):
        check_language_for_model(TranscribeOptions(task="translate"), "base.en")


def test_readme_documents_every_variable_with_its_default():
    readme = (PROJECT_ROOT / "README.md").read_text()
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(empty)"
        assert f"| `{var.env}` | {default} |" in readme, var.env


def test_inference_workers_auto_and_explicit(monkeypatch):
    import os

    from whisper_appliance.core.engines import MAX_AUTO_WORKERS, resolve_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert resolve_workers(0) == MAX_AUTO_WORKERS == 2
    assert resolve_workers(0, "cuda") == 1
    assert resolve_workers(3, "cuda") == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert resolve_workers(0) == 1
    assert Settings.from_env({"INFERENCE_WORKERS": "2"}).inference_workers == 2
    with pytest.raises(ConfigError):
        Settings.from_env({"INFERENCE_WORKERS": "-1"})


def test_connection_limits_are_settings_that_must_be_positive():
    settings = Settings.from_env({})
    assert (settings.socket_timeout, settings.keepalive_timeout) == (60, 30)
    assert (settings.max_connections, settings.max_connections_per_ip) == (1000, 128)
    for env in ("SOCKET_TIMEOUT", "KEEPALIVE_TIMEOUT", "MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_IP"):
        with pytest.raises(ConfigError, match=env):
            Settings.from_env({env: "0"})


def test_history_text_and_search_limits_are_generous_settings_that_must_be_positive():
    settings = Settings.from_env({})
    assert (settings.history_max_text_length, settings.search_timeout_ms) == (1_000_000, 10_000)
    assert Settings.from_env({"HISTORY_MAX_TEXT_LENGTH": "500", "SEARCH_TIMEOUT_MS": "250"}).search_timeout_ms == 250
    for name in ("HISTORY_MAX_TEXT_LENGTH", "SEARCH_TIMEOUT_MS"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "0"})


@pytest.mark.parametrize("env,message", [
    ({"API_KEYS": "long-enough-key-0123456789,short"}, "API_KEYS: key(s) #2 have fewer than 16 characters"),
    ({"ADMIN_PASSWORD": "short-pw"}, "ADMIN_PASSWORD must have at least 12 characters"),
    ({"ADMIN_PASSWORD": "Password1234"}, "ADMIN_PASSWORD is a common password"),
])
def test_weak_credentials_are_refused_at_start_without_quoting_them(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert message in str(err.value)
    for secret in env.values():
        assert secret not in str(err.value)


def test_strong_credentials_are_accepted():
    s = Settings.from_env({"API_KEYS": "k" * 16, "ADMIN_PASSWORD": "a long admin passphrase"})
    assert s.api_keys == ("k" * 16,) and s.admin_password == "a long admin passphrase"
