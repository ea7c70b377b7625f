"""API documentation: ``GET /api/openapi.json`` (the spec from ``openapi.py``) and Swagger UI at ``GET /docs/``.

Swagger UI comes from flask-swagger-ui, whose assets are inside the package, so the page works offline.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify
from flask_socketio import SocketIO
from flask_swagger_ui import get_swaggerui_blueprint

from ..openapi import build_spec

bp = Blueprint("api_docs", __name__)

SPEC_URL = "/api/openapi.json"
DOCS_URL = "/docs"


@bp.get(SPEC_URL)
def openapi_json() -> Response:
    return jsonify(build_spec())


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
    # validatorUrl None: Swagger UI would otherwise send the spec to validator.swagger.io (no network here,
    # and the CSP forbids it anyway).
    app.register_blueprint(get_swaggerui_blueprint(DOCS_URL, SPEC_URL, config={
        "app_name": "Whisper Appliance API", "validatorUrl": None, "persistAuthorization": True}))
