"""File upload transcription: ``POST /transcribe`` (seed-compatible) and ``POST /api/detect-language``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from flask_socketio import SocketIO

from ..core.errors import InvalidInput
from ..core.formats import FORMATS
from ..core.options import parse_int, parse_options
from ..core.records import TranscribeOptions
from ..http import (
    admitted_upload,
    appliance,
    body_limit,
    current_principal,
    formatted_response,
    require_access,
    safe_filename,
    uploaded_file,
)

bp = Blueprint("upload", __name__)

FILE_FIELDS = ("audio", "file")


def parse_output(value: str | None) -> str:
    fmt = (value or "json").strip().lower()
    if fmt not in FORMATS:
        raise InvalidInput(f"output must be one of {', '.join(FORMATS)}, got {value!r}", code="invalid_option")
    return fmt


def parse_line_width(value: str | None) -> int | None:
    return parse_int("max_line_width", value, lo=10, hi=500)


@dataclass(frozen=True)
class UploadForm:
    """A multipart transcription request (``POST /transcribe`` and ``POST /api/jobs``), checked."""

    storage: Any                   # werkzeug FileStorage, not read yet
    filename: str
    options: TranscribeOptions
    output: str
    model: str | None
    max_line_width: int | None


def parse_upload_form() -> UploadForm:
    storage = uploaded_file(*FILE_FIELDS)
    form = request.form
    return UploadForm(storage=storage, filename=safe_filename(storage.filename), options=parse_options(form),
                      output=parse_output(form.get("output")), model=form.get("model") or None,
                      max_line_width=parse_line_width(form.get("max_line_width")))


@bp.post("/transcribe")
@body_limit("max_upload_size")
@require_access
def transcribe() -> Response:
    a = appliance()
    with admitted_upload(synchronous=True):
        upload = parse_upload_form()
        with a.transcription.spooled(upload.storage.stream, upload.filename) as spooled:
            result = a.transcription.transcribe_file(spooled, upload.options, source="upload",
                                                     owner=current_principal(), requested_model=upload.model,
                                                     metadata={"size_bytes": spooled.size})
    if upload.output == "json":
        return jsonify(result.to_dict(words=upload.options.word_timestamps))
    return formatted_response(result.transcript, upload.output, upload.filename,
                              max_line_width=upload.max_line_width)


@bp.post("/api/detect-language")
@body_limit("max_upload_size")
@require_access
def detect_language() -> Response:
    a = appliance()
    with admitted_upload(synchronous=True):
        storage = uploaded_file(*FILE_FIELDS)
        with a.transcription.spooled(storage.stream, safe_filename(storage.filename)) as spooled:
            detection = a.transcription.detect_language(spooled)
    return jsonify(detection.to_dict())


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
