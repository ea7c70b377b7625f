"""Async transcription jobs: ``/api/jobs`` (submit, status, result, cancel, list) and the ``join_job`` event.

Thin: parse the request, authorise it, call ``JobQueue`` (services/jobs.py) with the caller's principal, shape the
reply. Another owner's job is 404, on every route and in ``join_job``, so only a job's owner (or an admin) can
join its room. Progress reaches Socket.IO clients through the event bus (room ``job:<id>``), never by emitting from
a worker thread.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from flask_socketio import SocketIO, emit, join_room, leave_room

from ..core.errors import ApplianceError, InvalidInput
from ..core.options import parse_int
from ..http import (
    admitted_upload,
    appliance,
    body_limit,
    current_principal,
    formatted_response,
    owner_filter,
    require_access,
    require_history_change,
    socket_principal,
)
from ..services.job_store import MAX_PAGE, STATUSES
from ..services.jobs import JobQueue, job_room
from .upload import parse_line_width, parse_output, parse_upload_form

bp = Blueprint("jobs", __name__)

MAX_JOB_ID = 64


def jobs() -> JobQueue:
    return appliance().jobs


@bp.post("/api/jobs")
@body_limit("max_upload_size")
@require_access
def submit() -> Response:
    a = appliance()
    with admitted_upload(synchronous=False):
        upload = parse_upload_form()
        with a.transcription.spooled(upload.storage.stream, upload.filename) as spooled:
            view = jobs().submit(spooled, upload.options, owner=current_principal(), output=upload.output,
                                 requested_model=upload.model)
    body = {"job_id": view.job_id, "status": view.status, "links": view.links}
    if view.cached:
        body["cached"] = True
    resp = jsonify(body)
    resp.status_code = 202
    resp.headers["Location"] = view.links["self"]
    return resp


@bp.get("/api/jobs")
@require_access
def list_jobs() -> Response:
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    limit = parse_int("limit", request.args.get("limit"), default=50, lo=1, hi=MAX_PAGE)
    offset = parse_int("offset", request.args.get("offset"), default=0, lo=0)
    views = jobs().list(current_principal(), status, limit, offset, owner=owner_filter())
    return jsonify({"jobs": [v.to_dict() for v in views], "limit": limit, "offset": offset})


@bp.get("/api/jobs/<job_id>")
@require_access
def get_job(job_id: str) -> Response:
    return jsonify(jobs().get(current_principal(), job_id).to_dict())


@bp.get("/api/jobs/<job_id>/result")
@require_access
def job_result(job_id: str) -> Response:
    finished = jobs().result(current_principal(), job_id)
    fmt = parse_output(request.args.get("format") or finished.output)
    if fmt == "json":
        return jsonify(finished.result.to_dict(words=finished.word_timestamps))
    return formatted_response(finished.result.transcript, fmt, finished.filename,
                              max_line_width=parse_line_width(request.args.get("max_line_width")))


@bp.delete("/api/jobs/<job_id>")
@require_history_change
def delete_job(job_id: str) -> Response:
    view, deleted = jobs().cancel(current_principal(), job_id)
    body = view.to_dict()
    body["deleted"] = deleted
    return jsonify(body)


def _join_job(data: Any = None) -> dict[str, Any]:
    job_id = data.get("job_id") if isinstance(data, dict) else None
    try:
        if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID:
            raise InvalidInput("join_job needs {\"job_id\": \"<id>\"}")
        # Another owner's job answers job_error not_found, like a missing one.
        view = jobs().get(socket_principal(), job_id, with_result=False)
    except ApplianceError as err:
        payload = {"job_id": job_id if isinstance(job_id, str) else None, **err.to_dict()}
        emit("job_error", payload)
        return payload
    join_room(job_room(view.job_id))
    payload = view.event()
    emit("job_progress", payload)
    return {"ok": True, **payload}


def _leave_job(data: Any = None) -> dict[str, Any]:
    job_id = data.get("job_id") if isinstance(data, dict) else None
    if isinstance(job_id, str) and job_id and len(job_id) <= MAX_JOB_ID:
        leave_room(job_room(job_id))
        return {"ok": True, "job_id": job_id}
    return InvalidInput("leave_job needs {\"job_id\": \"<id>\"}").to_dict()


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
    socketio.on_event("join_job", _join_job)
    socketio.on_event("leave_job", _leave_job)
