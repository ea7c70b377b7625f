"""The admin JSON API: model management, user management, per-user figures and the settings view.

Routes (the admin page itself is served by the pages plugin; logging in is the auth plugin's):

* ``GET /api/models`` (open like other reads), ``POST /api/models/load``, ``POST /api/models/cancel``,
  ``DELETE /api/models/<name>``;
* ``GET|POST /api/admin/users``, ``PATCH|DELETE /api/admin/users/<id>`` (create, disable, reset a password,
  change a role; delete with the user's data or with it handed to another user);
* ``GET /api/admin/stats``: per-user history entries, audio hours, storage and jobs;
* ``GET /api/admin/settings``.

Everything but the model list needs an admin account with full access: a login (changes also need its
``X-CSRF-Token``) or an ``admin``-scope token of an admin (see http.py).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask_socketio import SocketIO

from ..core import concurrency
from ..core.catalog import ENGINES, MODEL_NAMES
from ..core.errors import Conflict, InvalidInput, NotFound
from ..http import appliance, current_principal, end_connections, request_json, require_access, require_admin

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__)



def _string_field(data: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name!r} must be a non-empty string", code="invalid_request")
    return value


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


# -- users -------------------------------------------------------------------------------------------------------
def _user_id(raw: str) -> int:
    if not raw.isdigit():
        raise NotFound(f"user {raw} not found")
    return int(raw)


@bp.get("/api/admin/users")
@require_admin
def list_users() -> Response:
    users = concurrency.wait_blocking(appliance().accounts.list_users)
    return jsonify({"users": [u.to_dict() for u in users]})


@bp.post("/api/admin/users")
@require_admin
def create_user() -> tuple[Response, int]:
    data = request_json()
    user = concurrency.wait_blocking(appliance().accounts.create_user, data.get("username"), data.get("password"),
                                     data.get("role", "user"))
    log.info("user %r created by %r", user.username, current_principal().username)
    return jsonify(user.to_dict()), 201


@bp.patch("/api/admin/users/<user_id>")
@require_admin
def update_user(user_id: str) -> Response:
    data = request_json()
    unknown = set(data) - {"role", "disabled", "password"}
    if unknown or not data:
        raise InvalidInput("send one or more of 'role', 'disabled' and 'password'"
                           + (f" (not {', '.join(sorted(unknown))})" if unknown else ""), code="invalid_request")
    disabled = data.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise InvalidInput("'disabled' must be true or false", code="invalid_request")
    user, ended = concurrency.wait_blocking(appliance().accounts.update_user, current_principal(), _user_id(user_id),
                                            role=data.get("role"), disabled=disabled, password=data.get("password"))
    end_connections(ended)
    return jsonify(user.to_dict())


@bp.delete("/api/admin/users/<user_id>")
@require_admin
def delete_user(user_id: str) -> Response:
    """``?data=delete`` deletes the account's history and jobs with it; ``?transfer_to=<id>`` hands them over."""
    a = appliance()
    uid = _user_id(user_id)
    data, transfer = request.args.get("data"), request.args.get("transfer_to")
    if (data == "delete") == bool(transfer):
        raise InvalidInput("say what happens to the user's history and jobs: ?data=delete, or ?transfer_to=<user "
                           "id> to hand them to another user", code="invalid_request")
    if transfer is not None and not transfer.isdigit():
        raise InvalidInput("transfer_to must be a user id", code="invalid_request")
    target = int(transfer) if transfer else None
    user = concurrency.wait_blocking(a.accounts.check_deletable, current_principal(), uid, target)
    # Their live sessions end first, and save what they committed, before the records go or move.
    end_connections(concurrency.wait_blocking(a.accounts.connections_of, user.id))
    deleted = concurrency.wait_blocking(a.delete_user, current_principal(), uid, transfer_to=target)
    return jsonify(deleted.to_dict())


@bp.get("/api/admin/stats")
@require_admin
def stats() -> Response:
    return jsonify(concurrency.wait_blocking(appliance().usage))


# -- settings ------------------------------------------------------------------------------------------------------
@bp.get("/api/admin/settings")
@require_admin
def settings_view() -> Response:
    return jsonify(appliance().settings.public_dict())


@bp.get("/api/admin/certificate")
@require_admin
def certificate_view() -> Response:
    cert = current_app.extensions.get("certificate")
    if cert is None:
        raise NotFound("this server was started without a TLS certificate", code="no_certificate")
    return jsonify(cert.to_dict())


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
