"""File upload transcription: ``POST /transcribe`` (seed-compatible) and ``POST /api/detect-language``."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, request
from flask_socketio import SocketIO

from ..core.errors import InvalidInput
from ..core.formats import FORMATS
from ..core.options import parse_int, parse_options
from ..http import appliance, formatted_response, require_access, safe_filename, uploaded_file

bp = Blueprint("upload", __name__)

FILE_FIELDS = ("audio", "file")


def parse_output(value: str | None) -> str:
    fmt = (value or "json").strip().lower()
    if fmt not in FORMATS:
        raise InvalidInput(f"output must be one of {', '.join(FORMATS)}, got {value!r}", code="invalid_option")
    return fmt


def parse_line_width(value: str | None) -> int | None:
    return parse_int("max_line_width", value, lo=10, hi=500)


@bp.post("/transcribe")
@require_access
def transcribe() -> Response:
    a = appliance()
    storage = uploaded_file(*FILE_FIELDS)
    options = parse_options(request.form)
    fmt = parse_output(request.form.get("output"))
    line_width = parse_line_width(request.form.get("max_line_width"))
    filename = safe_filename(storage.filename)
    with a.transcription.spooled(storage.stream, filename) as spooled:
        result = a.transcription.transcribe_file(spooled, options, source="upload",
                                                 requested_model=request.form.get("model") or None,
                                                 metadata={"size_bytes": spooled.size})
    if fmt == "json":
        return jsonify(result.to_dict(words=options.word_timestamps))
    return formatted_response(result.transcript, fmt, filename, max_line_width=line_width)


@bp.post("/api/detect-language")
@require_access
def detect_language() -> Response:
    a = appliance()
    storage = uploaded_file(*FILE_FIELDS)
    with a.transcription.spooled(storage.stream, safe_filename(storage.filename)) as spooled:
        detection = a.transcription.detect_language(spooled)
    return jsonify(detection.to_dict())


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
