"""The admin JSON API: login session, model management, API tokens and the settings view.

Routes (the admin page itself is served by the pages plugin):

* ``POST /api/admin/login`` / ``POST /api/admin/logout`` / ``GET /api/admin/session``,
  ``POST /api/admin/password`` (change a generated password);
* ``GET /api/models`` (open like other reads), ``POST /api/models/load``, ``POST /api/models/cancel``,
  ``DELETE /api/models/<name>``;
* ``GET/POST /api/admin/tokens``, ``DELETE /api/admin/tokens/<id>``;
* ``GET /api/admin/settings``.

Admin rights come from the session cookie set by login (changes also need its ``X-CSRF-Token``) or from an API
token: tokens are issued by the admin, so they carry the admin's rights (see http.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request, session
from flask_socketio import SocketIO

from ..core import concurrency
from ..core.catalog import ENGINES, MODEL_NAMES
from ..core.errors import Conflict, InvalidInput, NotFound, Unauthorized
from ..http import appliance, limiter, request_json, require_access, require_admin

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__)

SESSION_LIFETIME = timedelta(hours=12)
LOGIN_RATE_LIMIT = "10 per minute"


def _string_field(data: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name!r} must be a non-empty string", code="invalid_request")
    return value


# -- session -------------------------------------------------------------------------------------------------------
def _failed_login(response: Response) -> bool:
    # Only failures count towards the limit: a person who logs in correctly is never locked out by it.
    return response.status_code != 200


@bp.post("/api/admin/login")
@limiter.limit(LOGIN_RATE_LIMIT, deduct_when=_failed_login)
def login() -> Response:
    password = request_json().get("password")
    if not isinstance(password, str):
        raise InvalidInput("'password' must be a string", code="invalid_request")
    # scrypt is deliberately slow; run it off the event loop.
    if not concurrency.wait_blocking(appliance().auth.verify_admin_password, password):
        log.warning("failed admin login from %s", request.remote_addr)
        raise Unauthorized("wrong admin password", code="invalid_password")
    session.clear()
    session["admin"] = True
    session["csrf"] = appliance().auth.new_csrf_token()
    session.permanent = True
    log.info("admin logged in from %s", request.remote_addr)
    return jsonify({"csrf_token": session["csrf"], "expires_in": int(SESSION_LIFETIME.total_seconds())})


@bp.post("/api/admin/logout")
def logout() -> Response:
    # No CSRF check: ending a session harms no one, and a page that lost its token can still log out.
    session.clear()
    return jsonify({"admin": False})


@bp.get("/api/admin/session")
def session_info() -> Response:
    body: dict[str, Any] = {"admin": bool(session.get("admin"))}
    if body["admin"]:
        body["csrf_token"] = session.get("csrf")
    return jsonify(body)


@bp.post("/api/admin/password")
@require_admin
def change_password() -> Response:
    data = request_json()
    current = _string_field(data, "current_password")
    new = _string_field(data, "new_password")
    concurrency.wait_blocking(appliance().auth.change_admin_password, current, new)
    return jsonify({"changed": True})


# -- models --------------------------------------------------------------------------------------------------------
def _model_list() -> list[dict[str, Any]]:
    """Every catalogue name with its state on this server; the ready model is 'loaded'."""
    a = appliance()
    status = a.models.status()
    entries = concurrency.wait_blocking(a.models.store.list_models)  # walks MODELS_DIR
    items = []
    for entry in entries:
        item = entry.to_dict()
        item.pop("path")  # where the server keeps files is not the client's business
        if entry.name == status.name and status.state == "ready":
            item["state"] = "loaded"
        items.append(item)
    return items


@bp.get("/api/models")
@require_access
def list_models() -> Response:
    a = appliance()
    return jsonify({"models": _model_list(), "current": a.models.status().to_dict(), "engines": list(ENGINES),
                    "downloads_allowed": a.settings.model_downloads})


@bp.post("/api/models/load")
@require_admin
def load_model() -> tuple[Response, int]:
    a = appliance()
    data = request_json()
    name = _string_field(data, "name")
    if name not in MODEL_NAMES:
        raise InvalidInput(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}", code="unknown_model")
    # Switching models keeps the engine in use unless another is asked for.
    engine = _string_field(data, "engine", required=False) or a.models.status().engine
    if engine not in ENGINES:
        raise InvalidInput(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}", code="unknown_engine")
    status = a.models.load(name, engine, wait=False)
    log.info("model %s (%s) requested by %s", name, engine, request.remote_addr)
    body = {"status": status.to_dict(), "links": {"status": "/api/status"}}
    # Already serving that model: nothing was started, so the answer is final.
    return jsonify(body), 200 if status.state == "ready" else 202


@bp.post("/api/models/cancel")
@require_admin
def cancel_load() -> Response:
    return jsonify({"cancelled": appliance().models.cancel_download()})


@bp.delete("/api/models/<name>")
@require_admin
def delete_model(name: str) -> Response:
    a = appliance()
    if name not in MODEL_NAMES:
        raise NotFound(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}", code="unknown_model")
    status = a.models.status()
    if status.name == name and status.state in ("ready", "loading"):
        raise Conflict(f"model {name!r} is {'loaded' if status.state == 'ready' else 'loading'}; "
                       "load another model before deleting it", code="model_in_use")
    concurrency.wait_blocking(a.models.store.delete, name)
    return jsonify({"deleted": name})


# -- API tokens ------------------------------------------------------------------------------------------------
@bp.get("/api/admin/tokens")
@require_admin
def list_tokens() -> Response:
    return jsonify({"tokens": [info.to_dict() for info in appliance().auth.list_tokens()]})


@bp.post("/api/admin/tokens")
@require_admin
def create_token() -> tuple[Response, int]:
    label = request_json().get("label")
    if not isinstance(label, str):
        raise InvalidInput("'label' must be a string", code="missing_label")
    token, info = concurrency.wait_blocking(appliance().auth.create_token, label)
    return jsonify({"token": token, **info.to_dict()}), 201


@bp.delete("/api/admin/tokens/<token_id>")
@require_admin
def revoke_token(token_id: str) -> Response:
    concurrency.wait_blocking(appliance().auth.revoke_token, token_id)
    return jsonify({"deleted": token_id})


# -- settings ------------------------------------------------------------------------------------------------------
@bp.get("/api/admin/settings")
@require_admin
def settings_view() -> Response:
    return jsonify(appliance().settings.public_dict())


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.permanent_session_lifetime = SESSION_LIFETIME
    app.register_blueprint(bp)
