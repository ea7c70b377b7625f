"""HTTP glue shared by the plugins: the appliance handle, auth checks, JSON errors, security headers.

Every error leaves the server as ``{"error": {"code": ..., "message": ...}}`` with its status (the OpenAI-compatible
routes under ``/v1`` add OpenAI's ``type`` and ``param``). Auth:

* admin rights: the admin session cookie (state changes need the ``X-CSRF-Token`` header from login), or an API
  token (``Authorization: Bearer``; tokens are issued by the admin, so they carry the admin's rights);
* transcription: open on the LAN unless ``REQUIRE_AUTH=true``, then it needs a token or the admin session.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, Response, current_app, g, jsonify, request, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException

from .core.errors import ApplianceError, Forbidden, Unauthorized

if TYPE_CHECKING:
    from .services.appliance import Appliance

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Flask-Limiter is attached to each app by create_app; plugins decorate routes with it.
limiter = Limiter(key_func=get_remote_address, storage_uri="memory://", default_limits=[],
                  headers_enabled=True, strategy="fixed-window")

_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def appliance() -> Appliance:
    return current_app.extensions["appliance"]


# -- auth --------------------------------------------------------------------------------------------------------
def current_principal() -> str | None:
    """'admin' for the admin session, 'token:<label>' for a bearer token, None when anonymous."""
    if "principal" in g:
        return g.principal
    principal = None
    token = appliance().auth.parse_bearer(request.headers.get("Authorization"))
    if token:
        info = appliance().auth.verify_token(token)
        if info is None:
            raise Unauthorized("the bearer token is not valid", code="invalid_token")
        principal = f"token:{info.label}"
        g.via_cookie = False
    elif session.get("admin"):
        principal = "admin"
        g.via_cookie = True
    g.principal = principal
    return principal


def _check_csrf() -> None:
    if request.method in _UNSAFE_METHODS and g.get("via_cookie"):
        if not appliance().auth.csrf_matches(session.get("csrf"), request.headers.get("X-CSRF-Token")):
            raise Forbidden("missing or wrong X-CSRF-Token header for a cookie-authenticated change",
                            code="csrf_failed")


def require_admin(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        principal = current_principal()
        if principal is None:
            raise Unauthorized("admin login or an API token is required", code="auth_required")
        _check_csrf()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require_access(view: F) -> F:
    """Open unless REQUIRE_AUTH; a presented token is always checked."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        principal = current_principal()
        if principal is None and appliance().settings.require_auth:
            raise Unauthorized("this server requires an API token (Authorization: Bearer ...)",
                               code="auth_required")
        _check_csrf()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# -- request helpers ---------------------------------------------------------------------------------------------
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_filename(name: str | None, default: str = "audio") -> str:
    """A display/download name: no path parts, no control or shell-special characters, at most 120 chars."""
    if not name:
        return default
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_FILENAME.sub("_", name).strip(" ._")
    return name[:120] or default


def download_name(filename: str | None, extension: str) -> str:
    stem = safe_filename(filename, "transcript").rsplit(".", 1)[0] or "transcript"
    return f"{stem}.{extension}"


def error_response(err: ApplianceError) -> Response:
    body = err.to_dict()
    if request.path.startswith("/v1/"):
        body["error"].update(type=_openai_type(err.status), param=None)
    resp = jsonify(body)
    resp.status_code = err.status
    for k, v in err.headers.items():
        resp.headers[k] = v
    return resp


def _openai_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _http_error(exc: HTTPException) -> Response:
    code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
            415: "unsupported_media", 429: "rate_limited"}.get(exc.code or 500, "http_error")
    message = exc.description or exc.name
    if exc.code == 413:
        limit = appliance().settings.max_upload_size
        message = f"the request body is larger than the limit of {limit} bytes (MAX_UPLOAD_SIZE)"
    if exc.code == 429:
        message = f"too many requests: {exc.description}"
    err = ApplianceError(message, code=code, status=exc.code or 500)
    resp = error_response(err)
    if exc.code == 429 and getattr(exc, "retry_after", None):
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def install(app: Flask) -> None:
    """Error handlers, security headers and request metrics for the whole app."""

    @app.errorhandler(ApplianceError)
    def _appliance_error(err: ApplianceError) -> Response:
        if err.status >= 500:
            log.warning("%s %s -> %s %s: %s", request.method, request.path, err.status, err.code, err.message)
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _werkzeug_error(exc: HTTPException) -> Response:
        return _http_error(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApplianceError("internal server error; the details are in the server log"))

    @app.after_request
    def _headers(resp: Response) -> Response:
        h = resp.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "same-origin")
        if request.path.startswith("/docs"):
            # Swagger UI's page initialises itself with an inline script.
            csp = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                   "img-src 'self' data:; frame-ancestors 'none'; object-src 'none'; base-uri 'self'")
        else:
            csp = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                   "media-src 'self' blob:; connect-src 'self' wss: ws:; worker-src 'self' blob:; "
                   "frame-ancestors 'none'; object-src 'none'; base-uri 'self'; form-action 'self'")
        h.setdefault("Content-Security-Policy", csp)
        if request.is_secure:
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        appliance().metrics.requests.labels(rule, request.method, str(resp.status_code)).inc()
        return resp


def formatted_response(transcript: Any, fmt: str, filename: str | None, *, max_line_width: int | None = None,
                       status: int = 200) -> Response:
    """A transcript as txt/srt/vtt/tsv/json text with its content type and a download filename."""
    from .core.formats import FORMATS, render

    body = render(transcript, fmt, max_line_width=max_line_width)
    out_format = FORMATS[fmt]
    resp = Response(body, status=status, content_type=out_format.content_type)
    resp.headers["Content-Disposition"] = f'attachment; filename="{download_name(filename, out_format.extension)}"'
    return resp


def uploaded_file(*field_names: str, what: str = "audio file") -> Any:
    """The first file among ``field_names`` in a multipart request, else a 400 naming the fields.

    Emptiness is checked while spooling (``spool_upload``), where the bytes are actually read.
    """
    from .core.errors import InvalidInput

    for name in field_names:
        storage = request.files.get(name)
        if storage is not None:
            return storage
    wanted = " or ".join(repr(n) for n in field_names)
    raise InvalidInput(f"no {what}: send it as multipart/form-data in the field {wanted}", code="missing_file")


def request_json() -> dict[str, Any]:
    """The request body as a JSON object, else a 400 that says what was expected."""
    from .core.errors import InvalidInput

    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object (Content-Type: application/json)",
                           code="invalid_json")
    return data
