"""HTTP glue shared by the plugins: the appliance handle, who is asking, JSON errors, security headers.

Every error leaves the server as ``{"error": {"code": ..., "message": ...}}`` with its status (the OpenAI-compatible
routes under ``/v1`` add OpenAI's ``type`` and ``param``).

Identity: ``current_principal()`` resolves the caller once per request, as a ``Principal`` (core/identity.py):

* ``Authorization: Bearer <token>``: a personal token, an access token from ``POST /api/auth/token`` or one of
  ``API_KEYS``; an invalid token is refused (401), except under ``/v1`` while ``REQUIRE_AUTH=false``, where the
  official ``openai`` client always sends some key: there an unknown one is anonymous;
* else the session cookie of a login (changes made with it need the ``X-CSRF-Token`` header from the login);
* else the guest, who exists only while ``REQUIRE_AUTH=false``.

The ``require_*`` decorators say what a route needs; services then filter what they read by the principal.
A Socket.IO connection resolves its principal once, at connect (``remember_socket_principal``); it joins a room
named after its credential, so that revoking the credential ends the connection (``end_connections``).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, jsonify, request, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException

from .core.errors import ApplianceError, Forbidden, NotFound, PayloadTooLarge, Unauthorized, hide_paths, internal_error
from .core.identity import GUEST, GUEST_NAME, OwnerFilter, Principal
from .services.auth import csrf_matches, parse_bearer

if TYPE_CHECKING:
    from .services.appliance import Appliance

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Flask-Limiter is attached to each app by create_app; plugins decorate routes with it.
limiter = Limiter(key_func=get_remote_address, storage_uri="memory://", default_limits=[],
                  headers_enabled=True, strategy="fixed-window")

_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# The metrics' method label: any other method name is OTHER, so arbitrary names add no Prometheus series.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SESSION_TOKEN = "token"  # the session cookie's key for the login's credential
SOCKET_PRINCIPAL = "principal"  # the Socket.IO connection's session key for its principal


def appliance() -> Appliance:
    return current_app.extensions["appliance"]


# -- who is asking -----------------------------------------------------------------------------------------------
def current_principal() -> Principal:
    """The caller of this request (resolved once); ``GUEST`` when anonymous."""
    if "principal" in g:
        return g.principal
    a = appliance()
    principal, via_cookie = GUEST, False
    token = parse_bearer(request.headers.get("Authorization"))
    if token:
        found = a.accounts.verify_bearer(token, client_address())
        if found is not None:
            principal = found
        elif a.settings.require_auth or not request.path.startswith("/v1/"):
            raise Unauthorized("the bearer token is not valid", code="invalid_token")
    elif session.get(SESSION_TOKEN):
        found = a.accounts.verify(session[SESSION_TOKEN])
        if found is None:
            session.clear()  # expired, logged out elsewhere, or the account changed: this browser is logged out
        else:
            principal, via_cookie = found, True
    g.principal, g.via_cookie = principal, via_cookie
    return principal


def client_address() -> str:
    return get_remote_address() or "unknown"


def client_key() -> str:
    """Whose share an admission limit counts: the account, else (anonymous) the remote address."""
    principal = current_principal()
    return f"ip:{client_address()}" if principal.is_guest else f"user:{principal.user_id}"


@contextmanager
def admitted_upload(*, synchronous: bool) -> Iterator[None]:
    """Around an upload route, entered before the body is read: a place among the uploads being received (its
    Content-Length) and, for ``synchronous`` transcription, among those running (server-wide and per client)."""
    a = appliance()
    limits = a.transcription.admission
    size = min(request.content_length or a.settings.max_upload_size, a.settings.max_upload_size)
    if synchronous:
        with limits.transcription(client_key()), limits.upload(size):
            yield
    else:
        with limits.upload(size):
            yield


def _check_csrf() -> None:
    if request.method in _UNSAFE_METHODS and g.get("via_cookie"):
        if not csrf_matches(session.get("csrf"), request.headers.get("X-CSRF-Token")):
            raise Forbidden("missing or wrong X-CSRF-Token header for a cookie-authenticated change",
                            code="csrf_failed")


def _signed_in(principal: Principal) -> None:
    if principal.is_guest:
        raise Unauthorized("log in, or send a token (Authorization: Bearer ...)", code="auth_required")


def _full_access(principal: Principal, what: str) -> None:
    if not principal.full_access:
        raise Forbidden(f"this token's scope is 'transcribe'; {what} needs a login or an 'admin'-scope token",
                        code="insufficient_scope")


def _guarded(check: Callable[[Principal], None]) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check(current_principal())
            _check_csrf()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _access(principal: Principal) -> None:
    if principal.is_guest and appliance().settings.require_auth:
        raise Unauthorized("this server requires a login or a token (Authorization: Bearer ...)",
                           code="auth_required")


def _history_change(principal: Principal) -> None:
    _access(principal)
    if not principal.can_edit_history:
        _full_access(principal, "changing history or jobs")


def _account(principal: Principal) -> None:
    _signed_in(principal)
    _full_access(principal, "managing the account")


def _admin(principal: Principal) -> None:
    _signed_in(principal)
    if principal.role != "admin":
        raise Forbidden("this needs an admin account", code="admin_required")
    _full_access(principal, "administration")


# Transcription and reading one's history: anyone unless REQUIRE_AUTH (a presented token is always checked).
require_access = _guarded(_access)
# Correcting texts and cancelling jobs: full access, or a guest in open mode (guests share their history).
require_history_change = _guarded(_history_change)
# One's own account (password, personal tokens, deleting one's entries): a login or an admin-scope token.
require_account = _guarded(_account)
# Administration: an admin account with full access.
require_admin = _guarded(_admin)


def owner_filter() -> OwnerFilter | None:
    """An admin's ``?user=<username|id|guest>``: only that owner's records. Others may not name an owner."""
    value = (request.args.get("user") or "").strip()
    if not value:
        return None
    if not current_principal().is_admin:
        raise Forbidden("only an admin can list another user's records", code="admin_required")
    if value == GUEST_NAME:
        return OwnerFilter(None)
    accounts = appliance().accounts
    user = accounts.find_user(value)
    if user is None and value.isascii() and value.isdigit() and len(value) < 19:  # '³' is a digit, not an int
        user = next((u for u in accounts.list_users() if u.id == int(value)), None)
    if user is None:
        raise NotFound(f"no user {value!r}", code="unknown_user")
    return OwnerFilter(user.id)


# -- Socket.IO connections ---------------------------------------------------------------------------------------
def credential_room(credential_id: str) -> str:
    return f"credential:{credential_id}"


def remember_socket_principal(principal: Principal) -> None:
    """At connect: keep the connection's principal in its Socket.IO session (per connection, keyed by sid)."""
    from flask_socketio import join_room

    session[SOCKET_PRINCIPAL] = principal
    if principal.credential_id is not None:
        join_room(credential_room(principal.credential_id))


def socket_principal() -> Principal:
    """The principal a Socket.IO connection was opened with, if its credential still stands (else 401)."""
    principal = session.get(SOCKET_PRINCIPAL, GUEST)
    if not appliance().accounts.still_valid(principal):
        raise Unauthorized("the login or token this connection was opened with is no longer valid",
                           code="invalid_token")
    return principal


def end_connections(credential_ids: Iterable[str]) -> int:
    """Disconnect the Socket.IO connections opened with these credentials (revoked, logged out, disabled)."""
    socketio = current_app.extensions["appliance_socketio"]
    ended = 0
    for credential_id in set(credential_ids):
        for sid, _ in list(socketio.server.manager.get_participants("/", credential_room(credential_id))):
            socketio.server.disconnect(sid, namespace="/")
            ended += 1
    if ended:
        log.info("%d Socket.IO connection(s) of revoked credentials disconnected", ended)
    return ended


# -- cross-site requests -----------------------------------------------------------------------------------------
def origin_allowed(origin: str | None, host: str | None, extra: tuple[str, ...]) -> bool:
    """Same-origin (the Host the client connected to) plus CORS_ORIGINS; no Origin header is a non-browser."""
    if not origin:
        return True
    if origin in extra or "*" in extra:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.scheme in ("https", "http") and parts.netloc == host


def _refuse_cross_site() -> None:
    """Before any state-changing request, whatever its authentication: a foreign ``Origin``, or a browser's
    ``Sec-Fetch-Site: cross-site`` from an origin not listed in CORS_ORIGINS, is a 403. Clients that send
    neither header (curl, the openai client, scripts) are not browsers and pass."""
    if request.method not in _UNSAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    extra = appliance().settings.cors_origins
    if not origin_allowed(origin, request.host, extra):
        raise Forbidden(f"cross-site request refused: Origin {origin!r} is not this server (add it to CORS_ORIGINS "
                        "to allow it)", code="cross_site_request")
    listed = bool(origin) and (origin in extra or "*" in extra)
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site" and not listed:
        raise Forbidden("cross-site request refused (Sec-Fetch-Site: cross-site)", code="cross_site_request")


# -- request bodies ----------------------------------------------------------------------------------------------
MULTIPART_SLACK = 64 * 1024  # multipart framing on top of a file's own bytes; the spooler enforces the file's limit
JSON_BODY = "max_json_body"


def body_limit(setting: str) -> Callable[[F], F]:
    """Route decorator (put it right under ``@bp.post``): the request body may be as large as ``Settings.<setting>``
    plus multipart framing. Every other route takes at most MAX_JSON_BODY."""
    def decorate(view: F) -> F:
        view.body_limit = setting  # type: ignore[attr-defined]
        return view

    return decorate


def _limit_body() -> None:
    """Before the view: refuse a body over the route's limit from its Content-Length (413, nothing read or
    parsed), and make werkzeug stop reading at that limit when no length was sent."""
    view = current_app.view_functions.get(request.endpoint or "")
    setting = getattr(view, "body_limit", JSON_BODY)
    limit = getattr(appliance().settings, setting)
    g.body_limit = (setting, limit)
    multipart = setting != JSON_BODY and request.mimetype == "multipart/form-data"
    request.max_content_length = limit + MULTIPART_SLACK if multipart else limit
    if request.content_length is not None and request.content_length > request.max_content_length:
        raise PayloadTooLarge(_too_large_message())


def _too_large_message() -> str:
    setting, limit = g.get("body_limit", ("max_upload_size", appliance().settings.max_upload_size))
    return f"the request body is larger than the limit of {limit} bytes ({setting.upper()})"


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
        message = _too_large_message()
    if exc.code == 429:
        message = f"too many requests: {exc.description}"
    err = ApplianceError(message, code=code, status=exc.code or 500)
    resp = error_response(err)
    if exc.code == 429 and getattr(exc, "retry_after", None):
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def request_id() -> str:
    """This request's id: in the ``X-Request-Id`` header of every reply and in the log lines of its errors."""
    if "request_id" not in g:
        g.request_id = uuid.uuid4().hex[:16]
    return g.request_id


def _internal(rid: str, code: str = "internal_error") -> ApplianceError:
    return internal_error(rid, code=code, label="request id")


def install(app: Flask) -> None:
    """Error handlers, security headers and request metrics for the whole app."""

    app.before_request(_refuse_cross_site)
    app.before_request(_limit_body)

    @app.errorhandler(ApplianceError)
    def _appliance_error(err: ApplianceError) -> Response:
        if err.status == 500:
            log.error("[%s] %s %s -> 500 %s: %s", request_id(), request.method, request.path, err.code, err.message)
            return error_response(_internal(request_id(), err.code))
        if err.status > 500:
            log.warning("[%s] %s %s -> %s %s: %s", request_id(), request.method, request.path, err.status,
                        err.code, err.message)
            shown = ApplianceError(hide_paths(err.message) or err.message, code=err.code, status=err.status,
                                   headers=err.headers)
            return error_response(shown)
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _werkzeug_error(exc: HTTPException) -> Response:
        return _http_error(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("[%s] unhandled error on %s %s", request_id(), request.method, request.path)
        return error_response(_internal(request_id()))

    @app.after_request
    def _headers(resp: Response) -> Response:
        h = resp.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Request-Id", request_id())
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
        # Both labels come from fixed sets: the app's own routes, and METRIC_METHODS.
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        method = request.method if request.method in METRIC_METHODS else "OTHER"
        appliance().metrics.requests.labels(rule, method, str(resp.status_code)).inc()
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
