"""services/auth.py: password hashes, token digests, CSRF primitives, and auth.json (the session secret)."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from whisper_appliance.core.errors import ConfigError
from whisper_appliance.services import auth
from whisper_appliance.services.auth import AuthFile, csrf_matches, new_csrf_token, parse_bearer


def _file(data_dir) -> dict:
    return json.loads((data_dir / "auth.json").read_text())


LEGACY = {"version": 1, "secret_key": base64.b64encode(bytes(range(32))).decode(),
          "admin_password": auth.hash_password("the old admin password"),
          "tokens": [{"id": "abc123", "label": "laptop", "sha256": auth.token_digest("wa_legacy"),
                      "created_at": "2025-01-01T00:00:00+00:00", "last_used_at": None}]}


# --- passwords and tokens ---------------------------------------------------------------------------------------

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


def test_tokens_are_long_random_and_stored_as_digests():
    token = auth.new_token()
    assert token.startswith("wa_") and len(token) > 40 and auth.new_token() != token
    digest = auth.token_digest(token)
    assert len(digest) == 64 and token not in digest
    assert auth.digests_match(digest, auth.token_digest(token))
    assert not auth.digests_match(digest, auth.token_digest(token + "x"))


# --- the file ---------------------------------------------------------------------------------------------------

def test_secret_key_is_random_stable_and_the_file_private(tmp_path):
    key = AuthFile(tmp_path / "a").secret_key
    assert isinstance(key, bytes) and len(key) == 32
    assert AuthFile(tmp_path / "a").secret_key == key
    assert AuthFile(tmp_path / "b").secret_key != key
    assert stat.S_IMODE((tmp_path / "a" / "auth.json").stat().st_mode) == 0o600
    assert _file(tmp_path / "a") == {"version": 2, "secret_key": base64.b64encode(key).decode()}


def test_damaged_auth_file_is_a_config_error_and_is_kept(tmp_path):
    (tmp_path / "auth.json").write_text("{not json")
    with pytest.raises(ConfigError, match="auth.json"):
        AuthFile(tmp_path)
    assert (tmp_path / "auth.json").read_text() == "{not json"
    (tmp_path / "auth.json").write_text(json.dumps({**LEGACY, "admin_password": "plaintext?"}))
    with pytest.raises(ConfigError, match="admin_password"):
        AuthFile(tmp_path)


def test_open_file_mode_is_tightened(tmp_path):
    AuthFile(tmp_path)
    (tmp_path / "auth.json").chmod(0o644)
    AuthFile(tmp_path)
    assert stat.S_IMODE((tmp_path / "auth.json").stat().st_mode) == 0o600


def test_a_version_1_file_offers_its_admin_hash_and_tokens_once(tmp_path):
    (tmp_path / "auth.json").write_text(json.dumps(LEGACY))
    legacy_file = AuthFile(tmp_path)
    assert legacy_file.secret_key == bytes(range(32))  # everyone stays logged in across the upgrade
    legacy = legacy_file.legacy()
    assert legacy.admin_hash == LEGACY["admin_password"]
    assert [(t.id, t.label, t.sha256) for t in legacy.tokens] == [("abc123", "laptop", auth.token_digest("wa_legacy"))]
    legacy_file.drop_legacy()
    assert _file(tmp_path) == {"version": 2, "secret_key": LEGACY["secret_key"]}
    assert AuthFile(tmp_path).legacy().empty


def test_a_newer_file_is_refused(tmp_path):
    (tmp_path / "auth.json").write_text(json.dumps({"version": 3, "secret_key": LEGACY["secret_key"]}))
    with pytest.raises(ConfigError, match="newer"):
        AuthFile(tmp_path)


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
