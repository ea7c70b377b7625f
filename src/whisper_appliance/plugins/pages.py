"""The browser pages: ``/`` (upload and live dictation), ``/history``, ``/login``, ``/account`` and ``/admin``.

Thin: each page is a Jinja2 template (autoescaped) plus static JS that talks to the JSON API and Socket.IO.
The server renders only what the first paint needs (model state, a degraded-mode banner, who is logged in, the
language and source lists from their one definition); the scripts keep it current. Pages are served in degraded
mode too, so a person sees why transcription is unavailable.

The APIs behind the pages do their own checks; the pages only send a browser to ``/login`` where there is nothing
for it to see: ``/account`` and ``/admin`` without a login, every page while ``REQUIRE_AUTH=true``. ``/admin``
tells a logged-in user without admin rights so (403).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, Response, current_app, make_response, redirect, render_template, request
from flask_socketio import SocketIO

from .. import __version__
from ..core.identity import SCOPES
from ..core.languages import LANGUAGE_NAMES
from ..core.records import TASKS
from ..http import appliance, current_principal
from ..services.history import SOURCES

bp = Blueprint("pages", __name__)

# Languages sorted by their English name, for the <select>s; "auto" is added by the templates.
LANGUAGES = tuple(sorted(LANGUAGE_NAMES.items(), key=lambda item: item[1]))


def page_context() -> dict[str, Any]:
    """What every page shows before its script runs: version and model state (with the degraded reason)."""
    a = appliance()
    status = a.models.status()
    degraded_reason = None
    if status.state != "ready":
        degraded_reason = (f"model {status.name} is loading" if status.state == "loading"
                           else status.error or "no model is loaded")
    return {"version": __version__, "model": status, "degraded_reason": degraded_reason,
            "require_auth": a.settings.require_auth, "principal": current_principal(),
            "registration": a.settings.allow_registration}


def render_page(template: str, status: int = 200, **context: Any) -> Response:
    resp = make_response(render_template(template, **page_context(), **context), status)
    # The pages embed live state (model, degraded banner, who is logged in); a cached copy would show stale state.
    resp.headers["Cache-Control"] = "no-store"
    return resp


def to_login() -> Response | None:
    """A redirect to the login page (coming back here afterwards) when this browser must log in first."""
    if not current_principal().is_guest:
        return None
    resp = redirect("/login?next=" + quote(request.full_path.rstrip("?"), safe="/?=&"), 303)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _open_page() -> Response | None:
    return to_login() if appliance().settings.require_auth else None


@bp.get("/")
def index() -> Response:
    return _open_page() or render_page("index.html", page="index", languages=LANGUAGES, tasks=TASKS)


@bp.get("/history")
def history() -> Response:
    return _open_page() or render_page("history.html", page="history", languages=LANGUAGES, sources=SOURCES)


@bp.get("/login")
def login() -> Response:
    return render_page("login.html", page="login")


@bp.get("/account")
def account() -> Response:
    return to_login() or render_page("account.html", page="account", scopes=SCOPES)


@bp.get("/admin")
def admin() -> Response:
    if (gone := to_login()) is not None:
        return gone
    allowed = current_principal().is_admin
    certificate = current_app.extensions.get("certificate") if allowed else None
    return render_page("admin.html", 200 if allowed else 403, page="admin", allowed=allowed,
                       certificate=certificate)


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
