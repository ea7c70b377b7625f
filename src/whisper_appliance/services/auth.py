"""Secrets and their primitives: password hashes, token digests, CSRF, and the session secret file. No Flask here.

``AuthFile`` owns ``DATA_DIR/auth.json`` (mode 0600, written atomically), which now holds only ``secret_key``:
32 random bytes (base64) that sign the web layer's session cookie, stable across restarts. Accounts, sessions and
tokens live in the database (accounts.py).

Before accounts existed the file also held the admin password's scrypt hash and the admin panel's API tokens
(format version 1). ``AuthFile.legacy()`` reads them so that ``Accounts.bootstrap`` can move them into the
database (user ``admin``); ``drop_legacy()`` then rewrites the file without them (format version 2).

Tokens are long random strings, so a plain SHA-256 digest stores them safely; passwords are chosen by people, so
they get a slow, salted scrypt hash. Every comparison of secrets is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.concurrency import real_threading
from ..core.errors import ConfigError

log = logging.getLogger(__name__)

AUTH_FILE = "auth.json"
FILE_VERSION = 2
TOKEN_PREFIX = "wa_"  # makes a leaked token recognisable (secret scanners, logs)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_SCRYPT_SALT_BYTES, _SCRYPT_HASH_BYTES = 16, 32
_SCRYPT_MAXMEM = 64 * 1024 ** 2  # n=2**14, r=8 needs 16 MiB; hashlib's default limit is 32 MiB


# --- pure helpers -----------------------------------------------------------------------------------------------

def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A self-describing scrypt hash: ``scrypt$n$r$p$salt_b64$hash_b64``."""
    salt = secrets.token_bytes(_SCRYPT_SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=_SCRYPT_HASH_BYTES)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a ``hash_password`` string (constant-time comparison of the digests)."""
    scheme, n, r, p, salt, digest = parse_password_hash(encoded)
    candidate = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM,
                               dklen=len(digest))
    return hmac.compare_digest(candidate, digest)


def parse_password_hash(encoded: str) -> tuple[str, int, int, int, bytes, bytes]:
    """Split a stored hash; ValueError when it is not one we wrote."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$n$r$p$salt$hash string")
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n > _SCRYPT_MAXMEM // 2:
        raise ValueError(f"unusable scrypt parameters n={n} r={r} p={p}")
    return parts[0], n, r, p, _unb64(parts[4]), _unb64(parts[5])


def new_token() -> str:
    """A new bearer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def digests_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


_BEARER = re.compile(r"\s*bearer\s+(\S+)\s*", re.IGNORECASE)


def parse_bearer(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None for anything else."""
    if not header_value:
        return None
    match = _BEARER.fullmatch(header_value)
    return match.group(1) if match else None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session_value: str | None, submitted: str | None) -> bool:
    """True only when both are present and equal (constant-time)."""
    if not session_value or not submitted:
        return False
    return hmac.compare_digest(session_value.encode("utf-8"), submitted.encode("utf-8"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# --- the file ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LegacyToken:
    """An API token created in the admin panel before accounts (format version 1)."""

    id: str
    label: str
    sha256: str
    created_at: str | None
    last_used_at: str | None


@dataclass(frozen=True)
class LegacyAuth:
    """What a version-1 auth.json held besides the session secret."""

    admin_hash: str | None
    tokens: tuple[LegacyToken, ...]

    @property
    def empty(self) -> bool:
        return self.admin_hash is None and not self.tokens


class AuthFile:
    """``DATA_DIR/auth.json``: the session secret (and, once, what an older version kept there)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / AUTH_FILE
        self._lock = real_threading().RLock()
        state = self._read()
        secret = state.get("secret_key")
        self._legacy = self._parse_legacy(state)
        if secret:
            try:
                self._secret_key = _unb64(secret)
            except (ValueError, AttributeError) as exc:
                raise self._corrupt(f"secret_key: {exc}") from exc
            self._tighten_mode()
        else:
            self._secret_key = secrets.token_bytes(32)
            self._write()

    @property
    def secret_key(self) -> bytes:
        return self._secret_key

    def legacy(self) -> LegacyAuth:
        return self._legacy

    def drop_legacy(self) -> None:
        """Rewrite the file with the session secret only (call once the legacy data is in the database)."""
        with self._lock:
            if self._legacy.empty:
                return
            self._write()
            self._legacy = LegacyAuth(None, ())
        log.info("%s: the admin password and API tokens moved into the database", self.path)

    def _parse_legacy(self, state: dict[str, Any]) -> LegacyAuth:
        admin_hash = state.get("admin_password")
        if admin_hash is not None:
            try:
                parse_password_hash(admin_hash)
            except (ValueError, AttributeError) as exc:
                raise self._corrupt(f"admin_password: {exc}") from exc
        tokens = []
        for raw in state.get("tokens", []):
            try:
                tokens.append(LegacyToken(id=str(raw["id"]), label=str(raw["label"]), sha256=str(raw["sha256"]),
                                          created_at=raw.get("created_at"), last_used_at=raw.get("last_used_at")))
            except (KeyError, TypeError) as exc:
                raise self._corrupt(f"token entry {raw!r}: {exc!r}") from exc
        return LegacyAuth(admin_hash, tuple(tokens))

    def _corrupt(self, detail: str) -> ConfigError:
        # Never silently start over: a new secret would log everyone out, and lost legacy data would lock out the
        # admin of an upgraded install.
        return ConfigError(f"{self.path} is damaged ({detail}). Fix it, or delete it to generate a new session "
                           "key (everyone is then logged out).")

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"Cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._corrupt(f"not JSON: {exc}") from exc
        if not isinstance(state, dict) or not isinstance(state.get("tokens", []), list):
            raise self._corrupt("unexpected structure")
        version = state.get("version", FILE_VERSION)
        if not isinstance(version, int):
            raise self._corrupt(f"version {version!r}")
        if version > FILE_VERSION:
            raise ConfigError(f"{self.path} was written by a newer version (format {state['version']}).")
        return state

    def _write(self) -> None:
        """Replace auth.json atomically; the temporary file is created 0600, so no secret is ever exposed."""
        state = {"version": FILE_VERSION, "secret_key": _b64(self._secret_key)}
        data = (json.dumps(state, indent=2) + "\n").encode("utf-8")
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{AUTH_FILE}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except OSError as exc:
                raise ConfigError(f"Cannot write {self.path}: {exc.strerror or exc}") from exc

    def _tighten_mode(self) -> None:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by other users (mode %o); setting mode 600", self.path, mode)
            self.path.chmod(0o600)
