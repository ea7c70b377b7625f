"""The one error type of the appliance.

Every failure a caller should see is an ``ApplianceError`` (or a subclass) carrying a machine-readable
``code``, a human ``message`` and the HTTP ``status`` it maps to. The web layer turns it into exactly one JSON
shape, ``{"error": {"code": ..., "message": ...}}``; the CLI prints the message. Nothing here imports Flask.
"""

from __future__ import annotations

import errno
import re
import sqlite3
import uuid


class ApplianceError(Exception):
    """Base error: ``code`` (snake_case), ``message`` (for people), ``status`` (HTTP)."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(ApplianceError):
    """A request option or argument is missing or has a value we do not accept (HTTP 400)."""

    status = 400
    code = "invalid_request"


class EmptyAudio(InvalidInput):
    """No audio bytes at all, or audio with no samples (HTTP 400)."""

    code = "empty_audio"


class AudioDecodeError(ApplianceError):
    """The input is not audio, or it is truncated/corrupt so that it cannot be decoded (HTTP 415)."""

    status = 415
    code = "unsupported_media"


class PayloadTooLarge(ApplianceError):
    status = 413
    code = "payload_too_large"


class AudioTooLong(PayloadTooLarge):
    """The decoded audio would be longer than ``MAX_AUDIO_SECONDS`` (HTTP 413); refused before it is allocated."""

    code = "audio_too_long"


class NotFound(ApplianceError):
    status = 404
    code = "not_found"


class Conflict(ApplianceError):
    status = 409
    code = "conflict"


class Unauthorized(ApplianceError):
    status = 401
    code = "unauthorized"


class Forbidden(ApplianceError):
    status = 403
    code = "forbidden"


class RateLimited(ApplianceError):
    status = 429
    code = "rate_limited"


class InsufficientStorage(ApplianceError):
    """The disk (or the database) is full: nothing was written, nothing already stored is lost (HTTP 507)."""

    status = 507
    code = "insufficient_storage"


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" from the OS (ENOSPC, EDQUOT) or from SQLite (SQLITE_FULL)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


def disk_full(what: str, exc: BaseException) -> InsufficientStorage:
    return InsufficientStorage(f"the server's disk is full: {what} could not be written ({exc})")


class ModelUnavailable(ApplianceError):
    """No model can serve right now (loading failed, not present offline, still loading...). HTTP 503."""

    status = 503
    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: int = 10, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class ServerBusy(ApplianceError):
    """The server is at one of its admission limits; the caller may try again after ``Retry-After`` (HTTP 503)."""

    status = 503
    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class Cancelled(ApplianceError):
    """Work was cancelled by its owner (a job deleted, a download cancelled)."""

    status = 409
    code = "cancelled"


class ConfigError(ApplianceError):
    """A setting read from the environment is invalid. Raised at start-up."""

    status = 500
    code = "config_error"


def error_reference() -> str:
    """A short id for one internal error: sent to the client and written next to the details in the server log."""
    return uuid.uuid4().hex[:16]


def internal_error(reference: str, *, what: str = "internal server error", code: str = "internal_error",
                   label: str = "error id") -> ApplianceError:
    """What a client learns of an internal error: no paths, no exception text, only where to look."""
    return ApplianceError(f"{what} ({label} {reference}); the details are in the server log", code=code)


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


def hide_paths(text: str | None) -> str | None:
    """``text`` with each absolute filesystem path cut to its last part (``/srv/wa/models/x`` -> ``.../x``); URLs
    stay as they are."""
    if not text:
        return text
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}", text)
