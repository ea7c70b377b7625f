"""The application factory: ``create_app(settings)`` builds the Flask app and its SocketIO object.

It takes the services (``Appliance``, the composition root, built here unless given), installs the JSON error
handling and security headers, registers every plugin module (each one a Blueprint and/or Socket.IO handlers with
an ``init_app(app, socketio)``), checks Socket.IO connections (origin, the caller's principal and
``REQUIRE_AUTH``), and with ``start_services`` starts the appliance and the one background task that delivers
service events (model status, job progress) to Socket.IO clients. Without it nothing is started.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from flask import Flask
from flask_cors import CORS
from flask_socketio import SocketIO
from socketio.exceptions import ConnectionRefusedError as SocketRefused

from . import http
from .core.config import Settings
from .core.errors import ApplianceError
from .core.identity import Principal
from .core.tls import CertificateInfo
from .services.appliance import Appliance

log = logging.getLogger(__name__)

PLUGINS = ("health", "upload", "openai_api", "history", "jobs", "auth", "admin", "live_speech", "api_docs",
           "pages")
EVENT_PUMP_INTERVAL = 0.2  # seconds: events reach clients "at most a few times a second"


def create_app(settings: Settings | None = None, *, appliance: Appliance | None = None,
               start_services: bool = True, load_model: bool = True,
               certificate: CertificateInfo | None = None) -> Flask:
    """The Flask app; ``certificate`` is the TLS certificate the server uses (shown to admins), when it has one."""
    settings = settings or Settings.from_env()
    appliance = appliance or Appliance.build(settings)

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=appliance.auth_file.secret_key,
        # The largest body of any route before http.body_limit narrows it per route (multipart framing included).
        MAX_CONTENT_LENGTH=settings.max_upload_size + 64 * 1024,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="wa_session",
    )
    app.json.sort_keys = False  # keep documented field order in replies
    app.extensions["certificate"] = certificate
    app.extensions["appliance"] = appliance
    http.install(app)
    http.limiter.init_app(app)
    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), supports_credentials=False,
             allow_headers=["Authorization", "Content-Type", "X-CSRF-Token"])

    socketio = SocketIO(
        app,
        async_mode=settings.async_mode,
        cors_allowed_origins=lambda origin, environ: http.origin_allowed(origin, environ.get("HTTP_HOST"),
                                                                    settings.cors_origins),
        # A live chunk may be up to LIVE_MAX_CHUNK_SIZE; leave room for base64 and the packet envelope.
        max_http_buffer_size=settings.live_max_chunk_size * 2 + 4096,
        ping_interval=10,
        ping_timeout=20,
        logger=False,
        engineio_logger=False,
        # Live chunks must be handled in order. Under eventlet each client's events already run in order; in
        # threading mode python-socketio would start a thread per event, so handle them inline there.
        async_handlers=settings.async_mode != "threading",
    )
    app.extensions["appliance_socketio"] = socketio

    @socketio.on("connect")
    def _connect(auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is not None and not isinstance(token, str):
            # Refused, not ignored: falling back to the cookie or guest would hide the client's mistake.
            raise SocketRefused({"code": "invalid_token",
                                 "message": f"auth.token must be a string, not {type(token).__name__}"})
        principal: Principal | None = None
        if token:
            try:
                principal = appliance.accounts.verify_bearer(token, http.client_address())
            except ApplianceError as err:  # too many wrong tokens from this address
                raise SocketRefused({"code": err.code, "message": err.message}) from None
            if principal is None:
                raise SocketRefused({"code": "invalid_token", "message": "the token is not valid"})
        else:
            try:
                principal = http.current_principal()  # the Authorization header, or the login's cookie
            except ApplianceError as err:
                raise SocketRefused({"code": err.code, "message": err.message}) from None
            if principal.is_guest and settings.require_auth:
                raise SocketRefused({"code": "auth_required",
                                     "message": "this server requires a login or a token"})
        http.remember_socket_principal(principal)

    for name in PLUGINS:
        importlib.import_module(f".plugins.{name}", __package__).init_app(app, socketio)

    def pump() -> None:
        while True:
            socketio.sleep(EVENT_PUMP_INTERVAL)
            for event in appliance.events.drain():
                try:
                    socketio.emit(event.name, event.data, to=event.room)
                except Exception:
                    log.exception("could not deliver %s event", event.name)

    if start_services:
        appliance.start(load_model=load_model)
        socketio.start_background_task(pump)
    return app


def socketio_of(app: Flask) -> SocketIO:
    return app.extensions["appliance_socketio"]
