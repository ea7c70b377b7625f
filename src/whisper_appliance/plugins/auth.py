"""Logging in and one's own account: ``/api/auth/*``.

* ``POST /api/auth/login {username, password}`` (the browser: sets the session cookie, returns the CSRF token),
  ``POST /api/auth/logout`` (``{"everywhere": true}``: every login of the account), ``GET /api/auth/me``;
* ``POST /api/auth/token`` (form fields ``username``, ``password``, optional ``scope``: OAuth2's password grant)
  answers ``{access_token, token_type: "bearer", expires_in}``;
* ``POST /api/auth/register {username, password}`` (only with ``ALLOW_REGISTRATION=true``), 201 with a token;
* ``POST /api/auth/password {current_password, new_password}``;
* ``GET|POST /api/auth/tokens``, ``DELETE /api/auth/tokens/<id>``: personal API tokens (scope ``transcribe`` or
  ``admin``; the plaintext is returned once).

Failed logins are limited per address and per username by the accounts service (counted before the password is
checked, so parallel guesses cannot pass the limit). Ending a login, changing a password or revoking a token also
disconnects the Socket.IO connections opened with it.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request, session
from flask_socketio import SocketIO

from ..core import concurrency
from ..core.errors import InvalidInput, Unauthorized
from ..http import (
    SESSION_TOKEN,
    appliance,
    client_address,
    current_principal,
    end_connections,
    limiter,
    request_json,
    require_account,
)
from ..services.accounts import SESSION_LIFETIME, Issued
from ..services.auth import new_csrf_token

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

REGISTRATION_RATE_LIMIT = "20 per hour"


def _string(data: Any, name: str) -> str:
    value = data.get(name) if hasattr(data, "get") else None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name!r} must be a non-empty string", code="invalid_request")
    return value


def _start_session(issued: Issued) -> str:
    """Put a login's credential into a fresh session cookie; returns its CSRF token."""
    session.clear()
    session[SESSION_TOKEN] = issued.token
    session["csrf"] = new_csrf_token()
    session.permanent = True
    return session["csrf"]


def _bearer(issued: Issued, status: int = 200) -> tuple[Response, int]:
    resp = jsonify({"access_token": issued.token, "token_type": "bearer", "expires_in": issued.expires_in,
                    "scope": issued.scope, "user": issued.user.to_dict()})
    resp.headers["Cache-Control"] = "no-store"  # RFC 6749 5.1
    return resp, status


# -- logging in and out --------------------------------------------------------------------------------------------
@bp.post("/api/auth/login")
def login() -> Response:
    data = request_json()
    # scrypt is deliberately slow; run it off the event loop.
    issued = concurrency.wait_blocking(appliance().accounts.login, data.get("username"), data.get("password"),
                                       client_address())
    csrf = _start_session(issued)
    return jsonify({"csrf_token": csrf, "expires_in": issued.expires_in, **issued.principal.to_dict()})


@bp.post("/api/auth/logout")
def logout() -> Response:
    """This login ends; with ``{"everywhere": true}`` every login of the account (all browsers, access tokens)."""
    # No CSRF check: ending a session harms no one, and a page that lost its token can still log out.
    principal = current_principal()
    data = request.get_json(silent=True)
    everywhere = isinstance(data, dict) and data.get("everywhere") is True
    ended = concurrency.wait_blocking(appliance().accounts.logout, principal, everywhere=everywhere)
    end_connections(ended)
    session.clear()
    return jsonify({"logged_out": True, "ended": len(ended)})


@bp.get("/api/auth/me")
def me() -> Response:
    principal = current_principal()
    a = appliance()
    if principal.is_guest and a.settings.require_auth:
        raise Unauthorized("not logged in", code="auth_required")
    body: dict[str, Any] = {**principal.to_dict(), "require_auth": a.settings.require_auth,
                            "registration": a.settings.allow_registration}
    if session.get(SESSION_TOKEN) and not principal.is_guest:
        body["csrf_token"] = session.get("csrf")
    return jsonify(body)


@bp.post("/api/auth/token")
def token() -> tuple[Response, int]:
    form = request.form
    grant = form.get("grant_type")
    if grant not in (None, "", "password"):
        raise InvalidInput(f"grant_type must be 'password', got {grant!r}", code="unsupported_grant_type")
    if not form:
        raise InvalidInput("send the form fields username and password (application/x-www-form-urlencoded)",
                           code="invalid_request")
    issued = concurrency.wait_blocking(appliance().accounts.grant_token, form.get("username"), form.get("password"),
                                       client_address(), form.get("scope"))
    return _bearer(issued)


@bp.post("/api/auth/register")
@limiter.limit(REGISTRATION_RATE_LIMIT)
def register() -> tuple[Response, int]:
    data = request_json()
    issued = concurrency.wait_blocking(appliance().accounts.register, data.get("username"), data.get("password"))
    log.info("user %r registered from %s", issued.user.username, client_address())
    return _bearer(issued, 201)


@bp.post("/api/auth/password")
@require_account
def change_password() -> Response:
    data = request_json()
    principal = current_principal()
    in_browser = bool(session.get(SESSION_TOKEN))
    issued, ended = concurrency.wait_blocking(appliance().accounts.change_password, principal,
                                              data.get("current_password"), _string(data, "new_password"),
                                              client_address(), new_session=in_browser)
    end_connections(ended)
    body: dict[str, Any] = {"changed": True}
    if issued is not None:
        # Every session of the account ended, this browser's too: it goes on with a new one.
        body["csrf_token"] = _start_session(issued)
    return jsonify(body)


# -- personal API tokens -------------------------------------------------------------------------------------------
@bp.get("/api/auth/tokens")
@require_account
def list_tokens() -> Response:
    tokens = concurrency.wait_blocking(appliance().accounts.list_tokens, current_principal())
    return jsonify({"tokens": [t.to_dict() for t in tokens]})


@bp.post("/api/auth/tokens")
@require_account
def create_token() -> tuple[Response, int]:
    data = request_json()
    issued, info = concurrency.wait_blocking(appliance().accounts.create_token, current_principal(),
                                             data.get("label"), data.get("scope", "transcribe"))
    return jsonify({"token": issued.token, **info.to_dict()}), 201


@bp.delete("/api/auth/tokens/<token_id>")
@require_account
def revoke_token(token_id: str) -> Response:
    concurrency.wait_blocking(appliance().accounts.revoke_token, current_principal(), token_id)
    end_connections([token_id])
    return jsonify({"deleted": token_id})


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.permanent_session_lifetime = SESSION_LIFETIME
    app.register_blueprint(bp)
