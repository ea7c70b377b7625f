"""The browser pages: ``GET /`` (upload and live dictation), ``GET /admin`` and ``GET /history``.

Thin: each page is a Jinja2 template (autoescaped) plus static JS that talks to the JSON API and Socket.IO.
The server renders only what the first paint needs (model state, a degraded-mode banner, the language and
source lists from their one definition); the scripts keep it current. Pages are served in degraded mode too,
so a person sees why transcription is unavailable. Nothing here needs a login: the APIs behind the pages do
their own checks.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, make_response, render_template
from flask_socketio import SocketIO

from .. import __version__
from ..core.languages import LANGUAGE_NAMES
from ..core.records import TASKS
from ..http import appliance
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
            "require_auth": a.settings.require_auth}


def render_page(template: str, **context: Any) -> Response:
    resp = make_response(render_template(template, **page_context(), **context))
    # The pages embed live state (model, degraded banner); a cached copy would show stale state.
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/")
def index() -> Response:
    return render_page("index.html", page="index", languages=LANGUAGES, tasks=TASKS)


@bp.get("/history")
def history() -> Response:
    return render_page("history.html", page="history", languages=LANGUAGES, sources=SOURCES)


@bp.get("/admin")
def admin() -> Response:
    return render_page("admin.html", page="admin")


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
