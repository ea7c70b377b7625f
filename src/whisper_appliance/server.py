"""The one way to start the server: TLS certificate, app, HTTP->HTTPS redirect listener, event loop.

``serve(settings)`` is what ``python src/main.py`` and ``scripts/dev.sh run`` end up calling.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from .core import concurrency
from .core.config import Settings
from .core.tls import ensure_certificate

log = logging.getLogger(__name__)

# Files the server creates (database, jobs, spooled uploads, certificate, secrets) are its own alone: 0600 files,
# 0700 directories. Set before anything is created; the systemd unit sets the same with UMask=0077.
PRIVATE_UMASK = 0o077

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d+)?$")


def redirect_app(https_port: int) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering every request with a 308 to the same path on HTTPS."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host_header = environ.get("HTTP_HOST", "")
        m = _HOST.match(host_header)
        host = m.group(1) if m else environ.get("SERVER_NAME", "localhost")
        path = quote(environ.get("PATH_INFO", "/") or "/", safe="/:@!$&'()*+,;=-._~%")
        query = environ.get("QUERY_STRING", "")
        port = "" if https_port == 443 else f":{https_port}"
        location = f"https://{host}{port}{path}" + (f"?{query}" if query else "")
        body = b"Redirecting to HTTPS\n"
        start_response("308 Permanent Redirect", [("Location", location), ("Content-Type", "text/plain"),
                                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def connection_limits(settings: Settings) -> concurrency.ConnectionLimits:
    return concurrency.ConnectionLimits(socket_timeout=settings.socket_timeout,
                                        keepalive_timeout=settings.keepalive_timeout,
                                        max_connections=settings.max_connections,
                                        max_per_ip=settings.max_connections_per_ip)


def serve(settings: Settings) -> None:
    os.umask(PRIVATE_UMASK)
    if settings.async_mode == "eventlet":
        concurrency.use_eventlet()
    cert = ensure_certificate(settings.ssl_dir, cert_path=settings.ssl_cert_path, key_path=settings.ssl_key_path)
    log.info("TLS certificate %s (%s)", cert.cert_path, cert.reason)

    from .app import create_app, socketio_of

    app = create_app(settings, certificate=cert)
    socketio = socketio_of(app)
    limits = connection_limits(settings)
    redirect = None
    if settings.http_redirect:
        redirect = concurrency.start_wsgi_listener(redirect_app(settings.https_port), settings.host,
                                                   settings.http_port, name="http-redirect", limits=limits)
        log.info("HTTP on %s:%d redirects to HTTPS", settings.host, settings.http_port)
    log.info("Whisper Appliance listening on https://%s:%d (%s)", settings.host, settings.https_port,
             settings.async_mode)
    try:
        if settings.async_mode == "eventlet":
            socketio.run(app, host=settings.host, port=settings.https_port, certfile=str(cert.cert_path),
                         keyfile=str(cert.key_path), log_output=False,
                         **concurrency.eventlet_server_options(limits))
        else:
            socketio.run(app, host=settings.host, port=settings.https_port,
                         ssl_context=(str(cert.cert_path), str(cert.key_path)), allow_unsafe_werkzeug=True)
    finally:
        if redirect is not None:
            redirect.close()
        app.extensions["appliance"].stop()
