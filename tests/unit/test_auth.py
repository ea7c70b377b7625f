"""services/auth.py: admin password, API tokens, session secret and CSRF primitives."""

from __future__ import annotations

import base64
import json
import logging
import re
import stat
import threading
from datetime import UTC, datetime, timedelta

import pytest

from whisper_appliance.core.errors import ConfigError, Conflict, InvalidInput, NotFound, Unauthorized
from whisper_appliance.services import auth
from whisper_appliance.services.auth import AuthService, csrf_matches, new_csrf_token, parse_bearer

GENERATED = re.compile(r"Admin password generated: (\S+)")


def _generated_passwords(caplog) -> list[str]:
    return [m.group(1) for r in caplog.records if (m := GENERATED.search(r.getMessage()))]


def _file(data_dir) -> dict:
    return json.loads((data_dir / "auth.json").read_text())


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


# --- admin password ---------------------------------------------------------------------------------------------

def test_generated_password_is_logged_once_and_stored_only_as_hash(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="whisper_appliance.services.auth")
    first = AuthService(tmp_path)
    second = AuthService(tmp_path)

    passwords = _generated_passwords(caplog)
    assert len(passwords) == 1
    password = passwords[0]
    assert len(password) >= 24
    record = next(r for r in caplog.records if GENERATED.search(r.getMessage()))
    assert record.levelno == logging.WARNING
    assert "shown once" in record.getMessage() and str(tmp_path / "auth.json") in record.getMessage()
    assert sum(password in r.getMessage() for r in caplog.records) == 1

    text = (tmp_path / "auth.json").read_text()
    assert password not in text
    assert _file(tmp_path)["admin_password"].startswith("scrypt$16384$8$1$")
    assert stat.S_IMODE((tmp_path / "auth.json").stat().st_mode) == 0o600

    for service in (first, second):
        assert service.verify_admin_password(password)
        assert not service.verify_admin_password(password + "x")
        assert not service.verify_admin_password("")
        assert not service.verify_admin_password(None)


def test_admin_password_from_environment_wins_and_is_not_written(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="whisper_appliance.services.auth")
    service = AuthService(tmp_path, admin_password="correct horse battery")
    assert service.admin_password_from_env
    assert service.verify_admin_password("correct horse battery")
    assert not service.verify_admin_password("correct horse")
    assert _generated_passwords(caplog) == []

    text = (tmp_path / "auth.json").read_text()
    assert "correct horse" not in text
    assert "admin_password" not in _file(tmp_path)
    assert "secret_key" in _file(tmp_path)


def test_environment_password_overrides_an_earlier_generated_one(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="whisper_appliance.services.auth")
    AuthService(tmp_path)
    generated = _generated_passwords(caplog)[0]
    stored = _file(tmp_path)["admin_password"]

    service = AuthService(tmp_path, admin_password="from the environment")
    assert service.verify_admin_password("from the environment")
    assert not service.verify_admin_password(generated)
    service.create_token("forces a write")
    assert _file(tmp_path)["admin_password"] == stored  # left as it was, for when the variable is removed
    assert "from the environment" not in (tmp_path / "auth.json").read_text()


def test_change_admin_password(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="whisper_appliance.services.auth")
    service = AuthService(tmp_path)
    old = _generated_passwords(caplog)[0]

    with pytest.raises(Unauthorized):
        service.change_admin_password("wrong", "a new long password")
    with pytest.raises(InvalidInput):
        service.change_admin_password(old, "short")
    assert service.verify_admin_password(old)

    service.change_admin_password(old, "a new long password")
    assert service.verify_admin_password("a new long password")
    assert not service.verify_admin_password(old)
    again = AuthService(tmp_path)
    assert again.verify_admin_password("a new long password")
    assert "a new long password" not in (tmp_path / "auth.json").read_text()

    from_env = AuthService(tmp_path / "env", admin_password="set in the environment")
    with pytest.raises(Conflict):
        from_env.change_admin_password("set in the environment", "something else entirely")


def test_password_hash_format_and_salt():
    encoded = auth.hash_password("hunter2 hunter2")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert auth.verify_password("hunter2 hunter2", encoded)
    assert not auth.verify_password("hunter2 hunter3", encoded)
    assert auth.hash_password("hunter2 hunter2") != encoded  # a fresh salt every time
    fixed = bytes(range(16))
    assert auth.hash_password("x", salt=fixed) == auth.hash_password("x", salt=fixed)


# --- session secret ---------------------------------------------------------------------------------------------

def test_secret_key_is_random_and_stable_across_instances(tmp_path):
    key = AuthService(tmp_path / "a", admin_password="password one").secret_key
    assert isinstance(key, bytes) and len(key) == 32
    assert AuthService(tmp_path / "a", admin_password="password one").secret_key == key
    assert AuthService(tmp_path / "b", admin_password="password one").secret_key != key


def test_damaged_auth_file_is_a_config_error_and_is_kept(tmp_path):
    (tmp_path / "auth.json").write_text("{not json")
    with pytest.raises(ConfigError, match="auth.json"):
        AuthService(tmp_path)
    assert (tmp_path / "auth.json").read_text() == "{not json"


def test_open_file_mode_is_tightened(tmp_path):
    AuthService(tmp_path, admin_password="password one")
    (tmp_path / "auth.json").chmod(0o644)
    AuthService(tmp_path, admin_password="password one")
    assert stat.S_IMODE((tmp_path / "auth.json").stat().st_mode) == 0o600


# --- API tokens -------------------------------------------------------------------------------------------------

def test_tokens_create_verify_list_revoke(tmp_path):
    service = AuthService(tmp_path, admin_password="password one")
    token, info = service.create_token("  laptop script ")
    assert token.startswith("wa_") and len(token) > 40
    assert info.label == "laptop script" and not info.configured and info.created_at is not None

    assert service.verify_token(token).id == info.id
    assert service.verify_token(token + "x") is None
    assert service.verify_token("") is None and service.verify_token(None) is None

    listed = service.list_tokens()
    assert [t.id for t in listed] == [info.id]
    assert token not in json.dumps([t.to_dict() for t in listed])

    text = (tmp_path / "auth.json").read_text()
    assert token not in text
    assert _file(tmp_path)["tokens"][0]["sha256"] == auth.token_digest(token)

    # Survives a restart.
    restarted = AuthService(tmp_path, admin_password="password one")
    assert restarted.verify_token(token).id == info.id

    restarted.revoke_token(info.id)
    assert restarted.verify_token(token) is None
    assert restarted.list_tokens() == []
    with pytest.raises(NotFound):
        restarted.revoke_token(info.id)
    assert AuthService(tmp_path, admin_password="password one").verify_token(token) is None


def test_token_label_is_required(tmp_path):
    service = AuthService(tmp_path, admin_password="password one")
    with pytest.raises(InvalidInput):
        service.create_token("   ")
    with pytest.raises(InvalidInput):
        service.create_token("x" * 101)


def test_configured_api_keys_verify_but_are_not_stored_or_revocable(tmp_path):
    service = AuthService(tmp_path, admin_password="password one", api_keys=["key-one", "key-two", "key-one", ""])
    one = service.verify_token("key-one")
    two = service.verify_token("key-two")
    assert one is not None and two is not None and one.id != two.id
    assert one.configured and two.configured
    assert service.verify_token("key-three") is None
    assert service.verify_token("") is None  # an empty entry in API_KEYS must not become a valid token

    _token, created = service.create_token("panel")
    assert [t.id for t in service.list_tokens()] == [one.id, two.id, created.id]
    assert "key-one" not in (tmp_path / "auth.json").read_text()
    assert len(_file(tmp_path)["tokens"]) == 1
    with pytest.raises(Conflict):
        service.revoke_token(one.id)
    assert service.verify_token("key-one") is not None


def test_last_used_is_recorded_in_memory_and_written_at_most_once_a_minute(tmp_path):
    clock = Clock()
    service = AuthService(tmp_path, admin_password="password one", clock=clock)
    token, info = service.create_token("ci")
    assert info.last_used_at is None
    assert _file(tmp_path)["tokens"][0]["last_used_at"] is None

    first_use = clock.now
    assert service.verify_token(token).last_used_at == first_use
    assert _file(tmp_path)["tokens"][0]["last_used_at"] == first_use.isoformat()

    clock.now += timedelta(seconds=30)
    assert service.verify_token(token).last_used_at == clock.now
    assert service.list_tokens()[0].last_used_at == clock.now
    assert _file(tmp_path)["tokens"][0]["last_used_at"] == first_use.isoformat()  # not written again yet

    clock.now += timedelta(seconds=31)
    service.verify_token(token)
    assert _file(tmp_path)["tokens"][0]["last_used_at"] == clock.now.isoformat()

    clock.now += timedelta(seconds=5)
    service.verify_token(token)
    service.flush()
    assert _file(tmp_path)["tokens"][0]["last_used_at"] == clock.now.isoformat()


def test_concurrent_token_creation_keeps_every_token(tmp_path):
    service = AuthService(tmp_path, admin_password="password one")
    made: list[str] = []

    def create(n: int) -> None:
        for i in range(5):
            made.append(service.create_token(f"worker {n} #{i}")[0])

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_file(tmp_path)["tokens"]) == 20
    restarted = AuthService(tmp_path, admin_password="password one")
    assert all(restarted.verify_token(token) for token in made)


# --- request helpers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    ("Bearer abc.DEF-123_~+/=", "abc.DEF-123_~+/="),
    ("bearer xyz", "xyz"),
    ("BEARER   xyz  ", "xyz"),
    (" Bearer xyz", "xyz"),
    ("Bearer", None),
    ("Bearer ", None),
    ("Bearer two words", None),
    ("Basic dXNlcjpwYXNz", None),
    ("Bearerxyz", None),
    ("xyz", None),
    ("", None),
    (None, None),
])
def test_parse_bearer(header, expected):
    assert parse_bearer(header) == expected


def test_csrf_tokens():
    token = new_csrf_token()
    assert len(token) >= 40 and new_csrf_token() != token
    assert csrf_matches(token, token)
    assert not csrf_matches(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not csrf_matches(token, None)
    assert not csrf_matches(None, token)
    assert not csrf_matches("", "")
    assert not csrf_matches(token, "Ünïcode")


def test_request_helpers_are_reachable_from_the_service(tmp_path):
    service = AuthService(tmp_path, admin_password="password one")
    token, _info = service.create_token("web")
    assert service.verify_token(service.parse_bearer(f"Bearer {token}")) is not None
    csrf = service.new_csrf_token()
    assert service.csrf_matches(csrf, csrf) and not service.csrf_matches(csrf, "other")
