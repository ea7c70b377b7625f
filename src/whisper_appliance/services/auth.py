"""Who may do what: the admin password, API tokens, the session secret and CSRF primitives. No Flask here.

``AuthService`` owns ``DATA_DIR/auth.json`` (mode 0600, written atomically), which holds only:

* ``secret_key``: 32 random bytes (base64) that sign the web layer's session cookie, stable across restarts;
* ``admin_password``: a scrypt hash of the generated admin password, never the password itself. When
  ``ADMIN_PASSWORD`` is set it wins; it is hashed in memory and never written;
* ``tokens``: API tokens created in the admin panel, as SHA-256 digests with a label, id and dates.

Tokens configured in ``API_KEYS`` are accepted too; they live only in memory (as digests) and cannot be revoked
here. Tokens are long random strings, so a plain SHA-256 digest is enough to store them safely; the admin
password is chosen by a person, so it gets a slow, salted scrypt hash.

The web layer keeps a CSRF token (``new_csrf_token``) in the signed session cookie and checks it with
``csrf_matches`` against the X-CSRF-Token header on state-changing requests made with that cookie.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..core.concurrency import real_threading
from ..core.errors import ConfigError, Conflict, InvalidInput, NotFound, Unauthorized

log = logging.getLogger(__name__)

AUTH_FILE = "auth.json"
FILE_VERSION = 1
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_LABEL_LENGTH = 100
TOKEN_PREFIX = "wa_"  # makes a leaked token recognisable (secret scanners, logs)
# last_used_at is kept in memory on every use but written to disk at most this often per token.
LAST_USED_WRITE_INTERVAL = timedelta(minutes=1)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_SCRYPT_SALT_BYTES, _SCRYPT_HASH_BYTES = 16, 32
_SCRYPT_MAXMEM = 64 * 1024 ** 2  # n=2**14, r=8 needs 16 MiB; hashlib's default limit is 32 MiB


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about an API token: never the token itself."""

    id: str
    label: str
    created_at: datetime | None  # None for tokens configured in API_KEYS
    last_used_at: datetime | None
    configured: bool = False  # from API_KEYS: cannot be revoked in the admin panel

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "configured": self.configured,
                "created_at": _iso(self.created_at), "last_used_at": _iso(self.last_used_at)}


# --- pure helpers -----------------------------------------------------------------------------------------------

def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A self-describing scrypt hash: ``scrypt$n$r$p$salt_b64$hash_b64``."""
    salt = secrets.token_bytes(_SCRYPT_SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=_SCRYPT_HASH_BYTES)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a ``hash_password`` string (constant-time comparison of the digests)."""
    scheme, n, r, p, salt, digest = _parse_password_hash(encoded)
    candidate = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM,
                               dklen=len(digest))
    return hmac.compare_digest(candidate, digest)


def _parse_password_hash(encoded: str) -> tuple[str, int, int, int, bytes, bytes]:
    """Split a stored hash; ValueError when it is not one we wrote."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$n$r$p$salt$hash string")
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n > _SCRYPT_MAXMEM // 2:
        raise ValueError(f"unusable scrypt parameters n={n} r={r} p={p}")
    return parts[0], n, r, p, _unb64(parts[4]), _unb64(parts[5])


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- the service ------------------------------------------------------------------------------------------------

@dataclass
class _StoredToken:
    info: TokenInfo
    digest: str  # sha256 hex of the token
    written_last_used: datetime | None  # last_used_at as it is on disk


class AuthService:
    """The admin password, API tokens and session secret of one appliance (one ``DATA_DIR``)."""

    def __init__(self, data_dir: Path, *, admin_password: str = "", api_keys: Iterable[str] = (),
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self._path = Path(data_dir) / AUTH_FILE
        self._clock = clock
        self._lock = real_threading().RLock()
        self._admin_from_env = bool(admin_password)

        state = self._read()
        changed = False
        secret = state.get("secret_key")
        if secret:
            self._secret_key = self._decode_field(secret, "secret_key")
        else:
            self._secret_key = secrets.token_bytes(32)
            changed = True

        generated: str | None = None
        if admin_password:
            # Configured passwords are checked against an in-memory hash, so the plaintext does not linger.
            self._admin_hash = hash_password(admin_password)
        elif state.get("admin_password"):
            self._admin_hash = state["admin_password"]
            try:
                _parse_password_hash(self._admin_hash)
            except ValueError as exc:
                raise self._corrupt(f"admin_password: {exc}") from exc
        else:
            generated = secrets.token_urlsafe(18)
            self._admin_hash = hash_password(generated)
            changed = True
        # With ADMIN_PASSWORD set, a hash generated on an earlier start stays in the file untouched, so removing
        # the variable later brings back that password rather than silently generating another one.
        self._stored_admin_hash = state.get("admin_password") if admin_password else self._admin_hash

        self._tokens: dict[str, _StoredToken] = {}
        for raw in state.get("tokens", []):
            try:
                info = TokenInfo(id=str(raw["id"]), label=str(raw["label"]), created_at=_from_iso(raw["created_at"]),
                                 last_used_at=_from_iso(raw.get("last_used_at")))
                self._tokens[info.id] = _StoredToken(info, str(raw["sha256"]), info.last_used_at)
            except (KeyError, TypeError, ValueError) as exc:
                raise self._corrupt(f"token entry {raw!r}: {exc!r}") from exc

        self._configured: list[_StoredToken] = []
        for i, key in enumerate(dict.fromkeys(k for k in api_keys if k), start=1):
            info = TokenInfo(id=f"api-key-{i}", label=f"API_KEYS #{i}", created_at=None, last_used_at=None,
                             configured=True)
            self._configured.append(_StoredToken(info, token_digest(key), None))

        if changed:
            self._write()
        else:
            self._tighten_mode()
        if generated is not None:
            bar = "=" * 72
            log.warning("\n%s\nAdmin password generated: %s\n(shown once; stored only as a hash in %s)\n%s",
                        bar, generated, self._path, bar)

    # The request helpers are the module's pure functions, reachable from the service for callers holding only it.
    parse_bearer = staticmethod(parse_bearer)
    new_csrf_token = staticmethod(new_csrf_token)
    csrf_matches = staticmethod(csrf_matches)

    # -- admin password --

    @property
    def admin_password_from_env(self) -> bool:
        return self._admin_from_env

    def verify_admin_password(self, password: str | None) -> bool:
        if not password or len(password) > MAX_PASSWORD_LENGTH:
            return False
        return verify_password(password, self._admin_hash)

    def change_admin_password(self, old: str, new: str) -> None:
        if self._admin_from_env:
            raise Conflict("The admin password is set by ADMIN_PASSWORD; change it there and restart.",
                           code="password_from_environment")
        if not self.verify_admin_password(old):
            raise Unauthorized("The current admin password is wrong.", code="wrong_password")
        if len(new) < MIN_PASSWORD_LENGTH:
            raise InvalidInput(f"The new password must have at least {MIN_PASSWORD_LENGTH} characters.",
                               code="password_too_short")
        if len(new) > MAX_PASSWORD_LENGTH:
            raise InvalidInput(f"The new password must have at most {MAX_PASSWORD_LENGTH} characters.",
                               code="password_too_long")
        new_hash = hash_password(new)
        with self._lock:
            self._admin_hash = self._stored_admin_hash = new_hash
            self._write()
        log.info("Admin password changed")

    # -- session secret --

    @property
    def secret_key(self) -> bytes:
        return self._secret_key

    # -- API tokens --

    def create_token(self, label: str) -> tuple[str, TokenInfo]:
        """A new token: the plaintext (show it once) and its record. Only its SHA-256 digest is stored."""
        label = (label or "").strip()
        if not label:
            raise InvalidInput("A token needs a label (what or who it is for).", code="missing_label")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidInput(f"A token label has at most {MAX_LABEL_LENGTH} characters.")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(id=secrets.token_hex(6), label=label, created_at=self._clock(), last_used_at=None)
        with self._lock:
            self._tokens[info.id] = _StoredToken(info, token_digest(token), None)
            self._write()
        log.info("API token %s (%s) created", info.id, label)
        return token, info

    def list_tokens(self) -> list[TokenInfo]:
        """Configured API_KEYS first, then created tokens, oldest first."""
        with self._lock:
            created = sorted((t.info for t in self._tokens.values()), key=lambda i: (i.created_at, i.id))
            return [t.info for t in self._configured] + created

    def revoke_token(self, token_id: str) -> None:
        with self._lock:
            if any(t.info.id == token_id for t in self._configured):
                raise Conflict(f"Token {token_id} comes from API_KEYS; remove it there and restart.",
                               code="token_configured")
            if token_id not in self._tokens:
                raise NotFound(f"No API token with id {token_id!r}.")
            removed = self._tokens.pop(token_id)
            self._write()
        log.info("API token %s (%s) revoked", token_id, removed.info.label)

    def verify_token(self, token: str | None) -> TokenInfo | None:
        """The record of a valid token (configured or created), else None. Notes when it was used."""
        if not token:
            return None
        digest = token_digest(token).encode("ascii")
        with self._lock:
            match: _StoredToken | None = None
            # Compare against every entry, without stopping early, so timing does not tell which one matched.
            for entry in [*self._configured, *self._tokens.values()]:
                if hmac.compare_digest(digest, entry.digest.encode("ascii")):
                    match = entry
            if match is None:
                return None
            now = self._clock()
            match.info = replace(match.info, last_used_at=now)
            if not match.info.configured and (match.written_last_used is None
                                               or now - match.written_last_used >= LAST_USED_WRITE_INTERVAL):
                try:
                    self._write()
                except ConfigError:
                    # A usage date that cannot be saved must not turn a valid token away; it is retried later.
                    log.exception("Could not record the use of API token %s", match.info.id)
            return match.info

    def flush(self) -> None:
        """Write pending last_used_at dates (call at shutdown)."""
        with self._lock:
            if any(t.info.last_used_at != t.written_last_used for t in self._tokens.values()):
                self._write()

    # -- the file --

    def _corrupt(self, detail: str) -> ConfigError:
        # Never silently start over: that would lock out every token holder and change the admin password.
        return ConfigError(f"{self._path} is damaged ({detail}). Fix it, or delete it to generate a new admin "
                           "password and session key (all API tokens created in the admin panel are then lost).")

    def _decode_field(self, value: Any, name: str) -> bytes:
        try:
            return _unb64(value)
        except (ValueError, AttributeError) as exc:
            raise self._corrupt(f"{name}: {exc}") from exc

    def _read(self) -> dict[str, Any]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"Cannot read {self._path}: {exc.strerror or exc}") from exc
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
            raise ConfigError(f"{self._path} was written by a newer version (format {state['version']}).")
        return state

    def _write(self) -> None:
        """Replace auth.json atomically; the temporary file is created 0600, so no secret is ever exposed."""
        with self._lock:
            state: dict[str, Any] = {"version": FILE_VERSION, "secret_key": _b64(self._secret_key)}
            if self._stored_admin_hash:
                state["admin_password"] = self._stored_admin_hash
            state["tokens"] = [
                {"id": t.info.id, "label": t.info.label, "sha256": t.digest, "created_at": _iso(t.info.created_at),
                 "last_used_at": _iso(t.info.last_used_at)}
                for t in self._tokens.values()
            ]
            data = (json.dumps(state, indent=2) + "\n").encode("utf-8")
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{AUTH_FILE}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self._path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except OSError as exc:
                raise ConfigError(f"Cannot write {self._path}: {exc.strerror or exc}") from exc
            for t in self._tokens.values():
                t.written_last_used = t.info.last_used_at

    def _tighten_mode(self) -> None:
        if not self._path.exists():
            return
        mode = stat.S_IMODE(self._path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by other users (mode %o); setting mode 600", self._path, mode)
            self._path.chmod(0o600)
