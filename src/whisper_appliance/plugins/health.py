"""Health, status and metrics: ``GET /health``, ``GET /api/status``, ``GET /metrics``."""

from __future__ import annotations

import os
from typing import Any

import psutil
from flask import Blueprint, Flask, Response, jsonify
from flask_socketio import SocketIO

from .. import __version__
from ..core.errors import hide_paths
from ..http import appliance, require_access
from ..services.metrics import CONTENT_TYPE

bp = Blueprint("health", __name__)


def _gpu() -> dict[str, Any]:
    try:
        import ctranslate2

        return {"cuda_devices": ctranslate2.get_cuda_device_count()}
    except Exception as exc:  # reported, not fatal: status must answer even on odd hosts
        return {"cuda_devices": 0, "error": str(exc)}


@bp.get("/health")
def health() -> Response:
    a = appliance()
    status = a.models.status()
    body: dict[str, Any] = {"status": "ok", "version": __version__,
                            "model": {"name": status.name, "state": status.state, "engine": status.engine},
                            "uptime_seconds": round(a.uptime_seconds, 1)}
    if status.state != "ready":
        body["status"] = "degraded"
        body["reason"] = (f"model {status.name} is loading" if status.state == "loading"
                          else hide_paths(status.error) or "no model is loaded")
        resp = jsonify(body)
        resp.status_code = 503
        resp.headers["Retry-After"] = "5" if status.state == "loading" else "30"
        return resp
    return jsonify(body)


# Status and metrics show counts and the host's load: under REQUIRE_AUTH only to a login or a token.
@bp.get("/api/status")
@require_access
def status() -> Response:
    a = appliance()
    disk = psutil.disk_usage(str(a.settings.data_dir))
    vm = psutil.virtual_memory()
    proc = psutil.Process(os.getpid())
    return jsonify({
        "version": __version__,
        "uptime_seconds": round(a.uptime_seconds, 1),
        "model": a.models.status().to_dict(),
        "queue": a.scheduler.depth().to_dict(),
        "live_sessions": a.live.count(),
        "jobs": a.jobs.counts(),
        "history": {"entries": a.history.count()},
        "system": {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "cpu_count": psutil.cpu_count(),
            "load_average": list(os.getloadavg()),
            "memory": {"total": vm.total, "available": vm.available, "percent": vm.percent},
            "process_rss": proc.memory_info().rss,
            "disk": {"total": disk.total, "free": disk.free,
                     "percent": disk.percent},
            "gpu": _gpu(),
        },
    })


@bp.get("/metrics")
@require_access
def metrics() -> Response:
    return Response(appliance().metrics.render(), mimetype=CONTENT_TYPE.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE})


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
