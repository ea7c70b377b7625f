"""User accounts and their credentials, in the database: ``Accounts``. No Flask here.

Owns the ``users`` and ``credentials`` tables (schema in database.py):

* users: a username (case-insensitive, unique), a scrypt password hash, a role (``admin`` | ``user``), created and
  last-login times, and ``disabled``;
* credentials, each stored as the SHA-256 digest of a random token, never the token: ``session`` (a browser
  login, carried in the signed session cookie), ``access`` (``POST /api/auth/token``, the OAuth2 password form)
  and ``personal`` (API tokens a user makes, with a label and a scope). Sessions and access tokens expire after
  ``SESSION_LIFETIME``; deleting a row revokes it at once. Tokens in ``API_KEYS`` are ``transcribe`` tokens of
  the admin account, held in memory only.

``bootstrap()`` makes sure an admin can log in: ``ADMIN_PASSWORD`` sets the password of the account ``admin``
(created, enabled and made an admin at every start, so setting it and restarting is also the way back in);
without it, an install with no admin gets one with a generated password, logged once. An install from before
accounts brings its admin password hash and API tokens over from auth.json (auth.py).

Failed logins are limited per client address and per username by ``LoginThrottle``, which counts every attempt
*before* the password is checked and gives the count back when the password was right: parallel guesses cannot
get past the limit, and correct logins never use it up.

Which principal may see or change what is ``core/identity.py``'s table; this module checks the account rules
(the last admin stays, ``admin`` follows ADMIN_PASSWORD, nobody locks themselves out).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from ..core.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized
from ..core.identity import (
    ADMIN,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    RESERVED_NAMES,
    ROLES,
    SCOPES,
    TRANSCRIBE,
    USERNAME,
    Principal,
)
from .auth import AuthFile, digests_match, hash_password, new_token, token_digest, verify_password
from .database import Database, format_timestamp

log = logging.getLogger(__name__)

ADMIN_NAME = "admin"
GENERATED_PASSWORD_FILE = "admin-password.txt"  # in DATA_DIR, mode 0600, written when the password is generated
SESSION_LIFETIME = timedelta(hours=12)  # browser sessions and tokens from POST /api/auth/token
LAST_USED_WRITE_INTERVAL = timedelta(minutes=1)  # a credential's last_used_at is written at most this often
LOGIN_LIMITS_PER_IP = "10 per minute"
LOGIN_LIMITS_PER_USER = "20 per hour"
TOKEN_FAILURE_LIMITS = "100 per minute"  # wrong bearer tokens per client address (AUTH_TOKEN_FAILURE_LIMIT)
MAX_LABEL_LENGTH = 100
KINDS = ("session", "access", "personal")


def _scopes(scope: str) -> frozenset[str]:
    return frozenset(SCOPES) if scope == ADMIN else frozenset({TRANSCRIBE})


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    created_at: str
    last_login_at: str | None
    disabled: bool

    def principal(self, scope: str, credential_id: str | None) -> Principal:
        return Principal(user_id=self.id, username=self.username, role=self.role, scopes=_scopes(scope),
                         credential_id=credential_id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "role": self.role, "created_at": self.created_at,
                "last_login_at": self.last_login_at, "disabled": self.disabled}


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a personal API token: never the token itself."""

    id: str
    label: str
    scope: str
    created_at: str | None  # None for tokens configured in API_KEYS
    last_used_at: str | None
    configured: bool = False  # from API_KEYS: cannot be revoked here

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "scope": self.scope, "configured": self.configured,
                "created_at": self.created_at, "last_used_at": self.last_used_at}


@dataclass(frozen=True)
class Issued:
    """A new credential: its plaintext token (shown once), its id, and when it expires (seconds; None: never)."""

    token: str
    credential_id: str
    user: User
    scope: str
    expires_in: int | None

    @property
    def principal(self) -> Principal:
        return self.user.principal(self.scope, self.credential_id)


@dataclass(frozen=True)
class _ApiKey:
    id: str
    label: str
    digest: str


def _user(row: sqlite3.Row) -> User:
    return User(id=row["id"], username=row["username"], role=row["role"], created_at=row["created_at"],
                last_login_at=row["last_login_at"], disabled=bool(row["disabled"]))


_USER_COLUMNS = "u.id, u.username, u.role, u.created_at, u.last_login_at, u.disabled"


# --- login throttling -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    keys: tuple[tuple[RateLimitItem, str, str], ...]


class LoginThrottle:
    """Failed-login limits per client address and per username (Flask-Limiter's ``limits`` library, in memory)."""

    def __init__(self, per_ip: str = LOGIN_LIMITS_PER_IP, per_user: str = LOGIN_LIMITS_PER_USER) -> None:
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._per_ip = parse_many(per_ip)
        self._per_user = parse_many(per_user)

    def attempt(self, address: str, username: str) -> Attempt:
        """Count one attempt now, before the password check; RateLimited (with Retry-After) when one is used up."""
        keys = [(item, "ip", address) for item in self._per_ip]
        keys += [(item, "user", username.strip().lower()) for item in self._per_user]
        taken: list[tuple[RateLimitItem, str, str]] = []
        for key in keys:
            item, kind, who = key
            taken.append(key)
            if not self._limiter.hit(item, "login", kind, who):
                retry = self._retry_after(item, kind, who)
                self._give_back(taken)  # a refused attempt checked no password: it is not a guess
                what = "from this address" if kind == "ip" else "for this user"
                raise RateLimited(f"too many failed logins {what} (at most {item}); try again in {retry} s",
                                  code="rate_limited", headers={"Retry-After": str(retry)})
        return Attempt(tuple(taken))

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the attempt does not count."""
        self._give_back(attempt.keys)

    def _give_back(self, keys: Iterable[tuple[RateLimitItem, str, str]]) -> None:
        for item, kind, who in keys:
            self._limiter.hit(item, "login", kind, who, cost=-1)

    def _retry_after(self, item: RateLimitItem, kind: str, who: str) -> int:
        reset = self._limiter.get_window_stats(item, "login", kind, who).reset_time
        return max(1, math.ceil(reset - time.time()))


class TokenThrottle:
    """Wrong bearer tokens per client address: guessing tokens is answered with 429 once a limit is used up.

    An attempt is counted before the token is checked and given back when it was right, so an address that
    used up its limit cannot learn whether its next guess is right."""

    def __init__(self, limits: str = TOKEN_FAILURE_LIMITS) -> None:
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._items = parse_many(limits)

    def attempt(self, address: str) -> Attempt:
        taken: list[tuple[RateLimitItem, str, str]] = []
        for item in self._items:
            taken.append((item, "ip", address))
            if not self._limiter.hit(item, "token", "ip", address):
                reset = self._limiter.get_window_stats(item, "token", "ip", address).reset_time
                retry = max(1, math.ceil(reset - time.time()))
                self.succeeded(Attempt(tuple(taken)))  # a refused attempt checked no token: it is not a guess
                raise RateLimited(f"too many wrong tokens from this address (at most {item}); try again in {retry} s",
                                  code="rate_limited", headers={"Retry-After": str(retry)})
        return Attempt(tuple(taken))

    def succeeded(self, attempt: Attempt) -> None:
        for item, kind, who in attempt.keys:
            self._limiter.hit(item, "token", kind, who, cost=-1)


# --- the service ------------------------------------------------------------------------------------------------

class Accounts:
    def __init__(self, db: Database, auth_file: AuthFile, *, admin_password: str = "",
                 api_keys: Iterable[str] = (), allow_registration: bool = False,
                 throttle: LoginThrottle | None = None, token_throttle: TokenThrottle | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.auth_file = auth_file
        self.allow_registration = allow_registration
        self.throttle = throttle or LoginThrottle()
        self.token_throttle = token_throttle or TokenThrottle()
        self._admin_password = admin_password
        self._clock = clock
        self._api_keys = [_ApiKey(f"api-key-{i}", f"API_KEYS #{i}", token_digest(key))
                          for i, key in enumerate(dict.fromkeys(k for k in api_keys if k), start=1)]
        # Unknown usernames are checked against this hash, so the time taken does not tell which names exist.
        self._decoy_hash = hash_password(secrets.token_urlsafe(16))

    @property
    def admin_from_environment(self) -> bool:
        return bool(self._admin_password)

    def _now(self) -> str:
        return format_timestamp(self._clock())

    # -- start-up ------------------------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Make sure an admin can log in, bringing an older install's admin password and tokens over."""
        legacy = self.auth_file.legacy()
        generated: str | None = None
        if self._admin_password:
            if len(self._admin_password) < MIN_PASSWORD_LENGTH:
                log.warning("ADMIN_PASSWORD has fewer than %d characters; choose a longer one", MIN_PASSWORD_LENGTH)
            self._ensure_env_admin()
        elif not self._has_admin():
            if legacy.admin_hash is not None:
                self._insert_user(ADMIN_NAME, legacy.admin_hash, "admin")
                log.info("user %r created with the admin password of %s", ADMIN_NAME, self.auth_file.path)
            else:
                generated = secrets.token_urlsafe(18)
                self._insert_user(ADMIN_NAME, hash_password(generated), "admin")
        if legacy.tokens:
            self._import_legacy_tokens(legacy.tokens)
        self.auth_file.drop_legacy()
        if generated is not None:
            saved = self._save_generated_password(generated)
            bar = "=" * 72
            log.warning("\n%s\nAdmin password generated: %s\n(user %r; shown once; also in %s (mode 0600): "
                        "delete it once read)\n%s", bar, generated, ADMIN_NAME, saved, bar)

    def _save_generated_password(self, password: str) -> Path:
        """Write the generated password to DATA_DIR/admin-password.txt, readable by the service user only."""
        path = self.db.path.parent / GENERATED_PASSWORD_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)  # the file may have existed with a wider mode
            out.write(f"{ADMIN_NAME}\n{password}\n")
        return path

    def _ensure_env_admin(self) -> None:
        with self.db.read() as conn:
            row = conn.execute("SELECT id, password_hash FROM users WHERE username = ?", (ADMIN_NAME,)).fetchone()
        if row is None:
            self._insert_user(ADMIN_NAME, hash_password(self._admin_password), "admin")
            return
        password_hash = row["password_hash"]
        if not verify_password(self._admin_password, password_hash):
            password_hash = hash_password(self._admin_password)
        with self.db.write() as conn:
            conn.execute("UPDATE users SET password_hash = ?, role = 'admin', disabled = 0 WHERE id = ?",
                         (password_hash, row["id"]))

    def _has_admin(self) -> bool:
        with self.db.read() as conn:
            return conn.execute("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1").fetchone() is not None

    def _import_legacy_tokens(self, tokens: Iterable[Any]) -> None:
        owner = self._api_key_owner()
        if owner is None:
            return
        with self.db.write() as conn:
            for token in tokens:
                # They were issued by the admin and carried the admin's rights: they keep them (review them in the
                # account page). The digest is what they were stored as; the plaintext is still only with clients.
                conn.execute("INSERT OR IGNORE INTO credentials (id, user_id, kind, label, scope, digest, "
                             "created_at, last_used_at) VALUES (?, ?, 'personal', ?, 'admin', ?, ?, ?)",
                             (token.id, owner.id, token.label[:MAX_LABEL_LENGTH], token.sha256,
                              token.created_at or self._now(), token.last_used_at))
        log.warning("%d API token(s) from %s now belong to user %r with the 'admin' scope; give clients that only "
                    "transcribe a 'transcribe' token instead", len(list(tokens)), self.auth_file.path, owner.username)

    def after_restore(self, previous_db: str) -> None:
        """A restored backup from before accounts has none: keep the accounts of the database it replaced."""
        with self.db.read() as conn:
            empty = conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None
        if empty:
            # ATTACH cannot run inside a transaction: hold the lock, attach, then copy in one transaction.
            with self.db.read() as conn:
                conn.execute("ATTACH DATABASE ? AS previous", (f"file:{previous_db}?mode=ro",))
                try:
                    with self.db.write() as tx:
                        tx.execute("INSERT INTO users SELECT * FROM previous.users")
                        tx.execute("INSERT INTO credentials SELECT * FROM previous.credentials")
                finally:
                    conn.execute("DETACH DATABASE previous")
            log.info("the restored database had no accounts; the previous database's accounts were kept")
        self.bootstrap()

    # -- users ---------------------------------------------------------------------------------------------------
    @staticmethod
    def check_username(username: Any) -> str:
        if not isinstance(username, str) or not USERNAME.fullmatch(username.strip()):
            raise InvalidInput("A username has 1 to 64 characters: letters, digits, '.', '_' or '-', starting "
                               "with a letter or digit.", code="invalid_username")
        username = username.strip()
        if username.lower() in RESERVED_NAMES:
            raise InvalidInput(f"The username {username!r} is reserved.", code="invalid_username")
        return username

    @staticmethod
    def check_password(password: Any, username: str | None = None) -> str:
        if not isinstance(password, str):
            raise InvalidInput("'password' must be a string", code="invalid_request")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise InvalidInput(f"The password must have at least {MIN_PASSWORD_LENGTH} characters.",
                               code="weak_password")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise InvalidInput(f"The password must have at most {MAX_PASSWORD_LENGTH} characters.",
                               code="weak_password")
        if username is not None and password.strip().lower() == username.lower():
            raise InvalidInput("The password must not be the username.", code="weak_password")
        return password

    def create_user(self, username: Any, password: Any, role: Any = "user") -> User:
        """A new account: 400 for a bad name, role or weak password, 409 when the name is taken."""
        username = self.check_username(username)
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
        password_hash = hash_password(self.check_password(password, username))
        user = self._insert_user(username, password_hash, role)
        log.info("user %r (%s) created", user.username, user.role)
        return user

    def _insert_user(self, username: str, password_hash: str, role: str) -> User:
        with self.db.write() as conn:
            try:
                cur = conn.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                                   (username, password_hash, role, self._now()))
            except sqlite3.IntegrityError:
                raise Conflict(f"The username {username!r} is taken.", code="username_taken") from None
            return self._get(conn, int(cur.lastrowid))

    def register(self, username: Any, password: Any) -> Issued:
        """Self-registration (``ALLOW_REGISTRATION``): a ``user`` account and an access token for it."""
        if not self.allow_registration:
            raise Forbidden("Registration is closed on this server; ask its administrator for an account.",
                            code="registration_closed")
        user = self.create_user(username, password, "user")
        return self._issue(user, "access", ADMIN, None, SESSION_LIFETIME)

    def get_user(self, user_id: int) -> User:
        with self.db.read() as conn:
            return self._get(conn, user_id)

    def list_users(self) -> list[User]:
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users AS u ORDER BY u.id").fetchall()
        return [_user(r) for r in rows]

    def find_user(self, username: str) -> User | None:
        with self.db.read() as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users AS u WHERE u.username = ?",
                               (username,)).fetchone()
        return _user(row) if row is not None else None

    @staticmethod
    def _get(conn: sqlite3.Connection, user_id: int) -> User:
        if not 0 < user_id < 2 ** 63:
            raise NotFound(f"user {user_id} not found")
        row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users AS u WHERE u.id = ?", (user_id,)).fetchone()
        if row is None:
            raise NotFound(f"user {user_id} not found")
        return _user(row)

    def update_user(self, actor: Principal, user_id: int, *, role: str | None = None, disabled: bool | None = None,
                    password: str | None = None) -> tuple[User, list[str]]:
        """An admin's change to an account. Returns it and the credentials it ended (to disconnect their sockets).

        A new password or disabling ends the account's sessions and access tokens; a disabled account's personal
        tokens are refused while it stays disabled.
        """
        user = self.get_user(user_id)
        if role is not None and role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
        changes_standing = (role is not None and role != user.role) or (disabled is not None
                                                                      and disabled != user.disabled)
        if self._admin_password and user.username == ADMIN_NAME and (changes_standing or password is not None):
            raise Conflict(f"The account {ADMIN_NAME!r} follows ADMIN_PASSWORD; change that setting instead.",
                           code="managed_by_environment")
        if changes_standing and actor.user_id == user.id:
            raise Conflict("You cannot change your own role or disable yourself; ask another admin.",
                           code="cannot_change_yourself")
        password_hash = hash_password(self.check_password(password, user.username)) if password is not None else None
        # Disabling ends every connection acting for the account (personal tokens and API_KEYS included).
        ended: list[str] = self.connections_of(user.id) if disabled and not user.disabled else []
        with self.db.write() as conn:
            if role is not None:
                conn.execute("UPDATE users SET role = ? WHERE id = ?", (role, user.id))
            if disabled is not None:
                conn.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user.id))
            if password_hash is not None:
                conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user.id))
            self._keep_an_admin(conn)
            if password_hash is not None or disabled:
                ended.extend(self._end_logins(conn, user.id))
            updated = self._get(conn, user.id)
        log.info("user %r changed by %r: %s", user.username, actor.username,
                 ", ".join(name for name, value in (("role", role), ("disabled", disabled), ("password", password))
                           if value is not None))
        return updated, ended

    def check_deletable(self, actor: Principal, user_id: int, transfer_to: int | None) -> User:
        """The account ``actor`` may delete (handing its records to ``transfer_to``, when given)."""
        user = self.get_user(user_id)
        if actor.user_id == user.id:
            raise Conflict("You cannot delete your own account.", code="cannot_change_yourself")
        if self._admin_password and user.username == ADMIN_NAME:
            raise Conflict(f"The account {ADMIN_NAME!r} follows ADMIN_PASSWORD and cannot be deleted.",
                           code="managed_by_environment")
        if transfer_to is not None:
            if transfer_to == user.id:
                raise InvalidInput("transfer_to must be another user", code="invalid_request")
            self.get_user(transfer_to)
        return user

    def connections_of(self, user_id: int) -> list[str]:
        """Every credential that acts for the account (API_KEYS too, when it owns them)."""
        ended = self._credentials_of(user_id)
        owner = self._api_key_owner()
        if owner is not None and owner.id == user_id:
            ended.extend(k.id for k in self._api_keys)
        return ended

    def delete_user(self, user: User) -> None:
        """Remove the account and its credentials (its records must be gone or handed over: the caller's
        transaction does that first)."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM users WHERE id = ?", (user.id,))
            self._keep_an_admin(conn)
        log.info("user %r deleted", user.username)

    @staticmethod
    def _keep_an_admin(conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0 LIMIT 1").fetchone() is None:
            raise Conflict("That would leave no enabled admin account.", code="last_admin")

    def _api_key_owner(self) -> User | None:
        """API_KEYS belong to the account ``admin``, else to the oldest enabled admin."""
        with self.db.read() as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users AS u WHERE u.role = 'admin' AND u.disabled = 0 "
                               "ORDER BY u.username = ? DESC, u.id LIMIT 1", (ADMIN_NAME,)).fetchone()
        return _user(row) if row is not None else None

    def _owns_api_keys(self, principal: Principal) -> bool:
        owner = self._api_key_owner()
        return owner is not None and owner.id == principal.user_id

    # -- logging in ----------------------------------------------------------------------------------------------
    def authenticate(self, username: Any, password: Any, address: str) -> User:
        """The account for a username and password: 401 when wrong, 403 when disabled, 429 after too many tries.

        Slow on purpose (scrypt): call it off the event loop."""
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise InvalidInput("send 'username' and 'password'", code="invalid_request")
        attempt = self.throttle.attempt(address, username)
        with self.db.read() as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS}, u.password_hash FROM users AS u WHERE u.username = ?",
                               (username.strip(),)).fetchone()
        ok = len(password) <= MAX_PASSWORD_LENGTH and verify_password(
            password, row["password_hash"] if row is not None else self._decoy_hash)
        if row is None or not ok:
            log.warning("failed login for %r from %s", username[:64], address)
            raise Unauthorized("wrong username or password", code="invalid_credentials")
        self.throttle.succeeded(attempt)
        user = _user(row)
        if user.disabled:
            raise Forbidden(f"the account {user.username!r} is disabled", code="account_disabled")
        now = self._now()
        with self.db.write() as conn:
            conn.execute("UPDATE users SET last_login_at = ? WHERE id = ?", (now, user.id))
        log.info("user %r logged in from %s", user.username, address)
        return replace(user, last_login_at=now)

    def login(self, username: Any, password: Any, address: str) -> Issued:
        """A browser session (its token goes into the signed session cookie)."""
        return self._issue(self.authenticate(username, password, address), "session", ADMIN, None, SESSION_LIFETIME)

    def grant_token(self, username: Any, password: Any, address: str, scope: str | None = None) -> Issued:
        """``POST /api/auth/token``: an access token for the account, optionally narrowed to ``transcribe``."""
        wanted = set((scope or "").split()) or {ADMIN}
        if not wanted <= set(SCOPES):
            raise InvalidInput(f"scope may name {' and '.join(SCOPES)}", code="invalid_scope")
        user = self.authenticate(username, password, address)
        return self._issue(user, "access", ADMIN if ADMIN in wanted else TRANSCRIBE, None, SESSION_LIFETIME)

    def _issue(self, user: User, kind: str, scope: str, label: str | None, lifetime: timedelta | None) -> Issued:
        token = new_token()
        credential_id = secrets.token_hex(8)
        now = self._clock()
        expires = format_timestamp(now + lifetime) if lifetime is not None else None
        with self.db.write() as conn:
            conn.execute("DELETE FROM credentials WHERE expires_at IS NOT NULL AND expires_at <= ?",
                         (format_timestamp(now),))
            conn.execute("INSERT INTO credentials (id, user_id, kind, label, scope, digest, created_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (credential_id, user.id, kind, label, scope, token_digest(token), format_timestamp(now),
                          expires))
        return Issued(token=token, credential_id=credential_id, user=user, scope=scope,
                      expires_in=int(lifetime.total_seconds()) if lifetime is not None else None)

    def verify_bearer(self, token: str, address: str) -> Principal | None:
        """``verify`` for a token a client presents (a header, Socket.IO auth): wrong ones count per address and
        raise RateLimited once too many came from it."""
        attempt = self.token_throttle.attempt(address)
        principal = self.verify(token)
        if principal is not None:
            self.token_throttle.succeeded(attempt)
        return principal

    def verify(self, token: str | None) -> Principal | None:
        """The principal a token (session, access, personal, API_KEYS) stands for; None when it is not valid."""
        if not token or len(token) > 512:
            return None
        digest = token_digest(token)
        matched: _ApiKey | None = None
        for key in self._api_keys:  # every one compared, so timing does not tell which matched
            if digests_match(digest, key.digest):
                matched = key
        if matched is not None:
            owner = self._api_key_owner()
            return owner.principal(TRANSCRIBE, matched.id) if owner is not None else None
        now = self._now()
        with self.db.read() as conn:
            row = conn.execute(f"SELECT c.id AS credential_id, c.scope, c.last_used_at AS used, c.expires_at, "
                               f"{_USER_COLUMNS} FROM credentials AS c JOIN users AS u ON u.id = c.user_id "
                               "WHERE c.digest = ?", (digest,)).fetchone()
        if row is None or row["disabled"] or (row["expires_at"] is not None and row["expires_at"] <= now):
            return None
        stale = format_timestamp(self._clock() - LAST_USED_WRITE_INTERVAL)
        if row["used"] is None or row["used"] < stale:
            with self.db.write() as conn:
                conn.execute("UPDATE credentials SET last_used_at = ? WHERE id = ?", (now, row["credential_id"]))
        return _user(row).principal(row["scope"], row["credential_id"])

    def still_valid(self, principal: Principal) -> bool:
        """Whether the credential a principal came with still stands (a Socket.IO connection's, checked again)."""
        if principal.credential_id is None:
            return principal.is_guest
        if any(k.id == principal.credential_id for k in self._api_keys):
            owner = self._api_key_owner()
            return owner is not None and owner.id == principal.user_id
        with self.db.read() as conn:
            row = conn.execute("SELECT c.expires_at, u.disabled FROM credentials AS c JOIN users AS u "
                               "ON u.id = c.user_id WHERE c.id = ?", (principal.credential_id,)).fetchone()
        return row is not None and not row["disabled"] and (row["expires_at"] is None or row["expires_at"] > self._now())

    def logout(self, principal: Principal, *, everywhere: bool = False) -> list[str]:
        """End the session (or access token) the principal came with, or with ``everywhere`` every session and
        access token of the account. Returns the credentials that ended."""
        if principal.credential_id is None or principal.user_id is None:
            return []
        with self.db.write() as conn:
            if everywhere:
                return self._end_logins(conn, principal.user_id)
            rows = conn.execute("DELETE FROM credentials WHERE id = ? AND kind IN ('session', 'access') RETURNING id",
                                (principal.credential_id,)).fetchall()
        return [r[0] for r in rows]

    def change_password(self, principal: Principal, current: Any, new: Any, address: str, *,
                        new_session: bool) -> tuple[Issued | None, list[str]]:
        """A user's own password change: every session and access token of the account ends (a copied cookie
        stops working); with ``new_session`` the caller gets a new one. Returns it and the credentials that ended."""
        if principal.user_id is None:
            raise Unauthorized("log in to change your password", code="auth_required")
        if self._admin_password and principal.username == ADMIN_NAME:
            raise Conflict("The admin password is set by ADMIN_PASSWORD; change it there and restart.",
                           code="password_from_environment")
        if not isinstance(current, str) or not current:
            raise InvalidInput("'current_password' must be a non-empty string", code="invalid_request")
        try:
            user = self.authenticate(principal.username, current, address)
        except Unauthorized:
            raise Unauthorized("The current password is wrong.", code="wrong_password") from None
        password_hash = hash_password(self.check_password(new, user.username))
        with self.db.write() as conn:
            conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user.id))
            ended = self._end_logins(conn, user.id)
        log.info("user %r changed their password", user.username)
        issued = self._issue(user, "session", ADMIN, None, SESSION_LIFETIME) if new_session else None
        return issued, ended

    @staticmethod
    def _end_logins(conn: sqlite3.Connection, user_id: int) -> list[str]:
        rows = conn.execute("DELETE FROM credentials WHERE user_id = ? AND kind IN ('session', 'access') "
                            "RETURNING id", (user_id,)).fetchall()
        return [r[0] for r in rows]

    def _credentials_of(self, user_id: int) -> list[str]:
        with self.db.read() as conn:
            return [r[0] for r in conn.execute("SELECT id FROM credentials WHERE user_id = ?", (user_id,))]

    # -- personal API tokens -------------------------------------------------------------------------------------
    def create_token(self, principal: Principal, label: Any, scope: Any) -> tuple[Issued, TokenInfo]:
        """A personal token of the principal's account; the plaintext is returned once."""
        if principal.user_id is None:
            raise Unauthorized("log in to create API tokens", code="auth_required")
        if not isinstance(label, str) or not label.strip():
            raise InvalidInput("A token needs a label (what or who it is for).", code="missing_label")
        label = label.strip()
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidInput(f"A token label has at most {MAX_LABEL_LENGTH} characters.", code="invalid_request")
        if scope not in SCOPES:
            raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}", code="invalid_scope")
        issued = self._issue(self.get_user(principal.user_id), "personal", scope, label, None)
        log.info("API token %s (%s, %s) created by %r", issued.credential_id, label, scope, principal.username)
        return issued, self._token_info(issued.credential_id)

    def list_tokens(self, principal: Principal) -> list[TokenInfo]:
        """The account's personal tokens, oldest first; API_KEYS first for the account they belong to."""
        configured: list[TokenInfo] = []
        if self._owns_api_keys(principal):
            configured = [TokenInfo(k.id, k.label, TRANSCRIBE, None, None, configured=True) for k in self._api_keys]
        with self.db.read() as conn:
            rows = conn.execute("SELECT id, label, scope, created_at, last_used_at FROM credentials "
                                "WHERE user_id IS ? AND kind = 'personal' ORDER BY created_at, id",
                                (principal.user_id,)).fetchall()
        return configured + [TokenInfo(r["id"], r["label"], r["scope"], r["created_at"], r["last_used_at"])
                             for r in rows]

    def _token_info(self, credential_id: str) -> TokenInfo:
        with self.db.read() as conn:
            r = conn.execute("SELECT id, label, scope, created_at, last_used_at FROM credentials WHERE id = ?",
                             (credential_id,)).fetchone()
        return TokenInfo(r["id"], r["label"], r["scope"], r["created_at"], r["last_used_at"])

    def revoke_token(self, principal: Principal, token_id: str) -> None:
        """Revoke one of the account's personal tokens (another account's token is 404, like a missing one)."""
        if any(k.id == token_id for k in self._api_keys) and self._owns_api_keys(principal):
            raise Conflict(f"Token {token_id} comes from API_KEYS; remove it there and restart.",
                           code="token_configured")
        with self.db.write() as conn:
            gone = conn.execute("DELETE FROM credentials WHERE id = ? AND user_id IS ? AND kind = 'personal'",
                                (token_id, principal.user_id)).rowcount
        if not gone:
            raise NotFound(f"No API token with id {token_id!r}.")
        log.info("API token %s revoked by %r", token_id, principal.username)
