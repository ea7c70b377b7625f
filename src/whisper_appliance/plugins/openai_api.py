"""OpenAI-compatible API under ``/v1``: audio transcriptions and translations, and the model list.

Clients written for OpenAI's Whisper API (the official ``openai`` package among them) work unchanged: the same
multipart fields, the same ``response_format`` values and reply shapes, and errors in OpenAI's shape (``http.py``
adds ``type`` and ``param`` under ``/v1``). ``whisper-1`` is an alias of whatever model is loaded; naming another
model is a 409 naming the loaded one. Every transcription is recorded in the caller's history with source ``api``.
The official client always sends an API key: while ``REQUIRE_AUTH=false`` a key that is not a known token is
taken as anonymous (the guest), not refused (http.py).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from flask_socketio import SocketIO

from ..core.errors import InvalidInput, NotFound
from ..core.formats import FORMATS, render
from ..core.languages import language_name
from ..core.options import parse_options
from ..core.records import Segment, TranscribeOptions, Transcript
from ..http import (
    admitted_upload,
    appliance,
    body_limit,
    current_principal,
    require_access,
    safe_filename,
    uploaded_file,
)
from ..services.transcription import OPENAI_MODEL_ALIAS

bp = Blueprint("openai_api", __name__, url_prefix="/v1")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
OWNER = "whisper-appliance"


def parse_response_format(value: str | None) -> str:
    fmt = (value or "json").strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise InvalidInput(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {value!r}",
                           code="invalid_option")
    return fmt


def parse_granularities(values: list[str]) -> frozenset[str]:
    # The official client sends the list as repeated ``timestamp_granularities[]`` fields; curl users often
    # send one comma-separated field.
    wanted = {part.strip().lower() for value in values for part in value.split(",") if part.strip()}
    unknown = wanted - set(GRANULARITIES)
    if unknown:
        raise InvalidInput(f"timestamp_granularities accepts {' and '.join(GRANULARITIES)}, got "
                           f"{', '.join(sorted(unknown))}", code="invalid_option")
    return frozenset(wanted)


def openai_options(form: Any, task: str, granularities: frozenset[str]) -> TranscribeOptions:
    """OpenAI's field names mapped onto the appliance's one option parser."""
    fields: dict[str, Any] = {"task": task, "word_timestamps": "true" if "word" in granularities else ""}
    if "language" in form:
        fields["language"] = form.get("language")
    if form.get("prompt"):
        fields["initial_prompt"] = form.get("prompt")
    temperature = form.get("temperature")
    if temperature not in (None, ""):
        fields["temperature"] = temperature
    options = parse_options(fields)
    # OpenAI documents temperature 0 (its default) as "raise the temperature automatically when decoding
    # fails", which is Whisper's fallback schedule; any other value is used as is.
    if options.temperature == 0.0:
        options = options.replace(temperature=None)
    return options


def verbose_segment(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        # Segment records do not keep the 30 s window offset; the start in 10 ms mel frames is the closest
        # equivalent of Whisper's ``seek``.
        "seek": int(round(segment.start * 100)),
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": round(segment.avg_logprob, 4),
        "compression_ratio": round(segment.compression_ratio, 4),
        "no_speech_prob": round(segment.no_speech_prob, 4),
    }


def verbose_json(transcript: Transcript, task: str, *, words: bool) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` body; ``words`` only when word granularity was asked for."""
    body: dict[str, Any] = {
        "task": task,
        "language": language_name(transcript.language) or "",
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [verbose_segment(s) for s in transcript.segments],
    }
    if words:
        body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                         for s in transcript.segments for w in s.words]
    return body


def reply(transcript: Transcript, fmt: str, task: str, *, words: bool) -> Response:
    if fmt == "json":
        return jsonify({"text": transcript.text})
    if fmt == "verbose_json":
        return jsonify(verbose_json(transcript, task, words=words))
    if fmt == "text":
        return Response(transcript.text + "\n", content_type=FORMATS["txt"].content_type)
    return Response(render(transcript, fmt), content_type=FORMATS[fmt].content_type)


def audio_request(task: str) -> Response:
    with admitted_upload(synchronous=True):
        return _audio_request(task)


def _audio_request(task: str) -> Response:
    a = appliance()
    storage = uploaded_file("file")
    form = request.form
    model = (form.get("model") or "").strip()
    if not model:
        raise InvalidInput(f"model is required: use {OPENAI_MODEL_ALIAS!r} or the loaded model's name",
                           code="missing_model")
    fmt = parse_response_format(form.get("response_format"))
    if (form.get("stream") or "").strip().lower() in ("true", "1"):
        raise InvalidInput("streaming transcription is not supported; use live dictation over Socket.IO",
                           code="invalid_option")
    granularities = parse_granularities(form.getlist("timestamp_granularities[]")
                                        + form.getlist("timestamp_granularities"))
    options = openai_options(form, task, granularities)
    filename = safe_filename(storage.filename)
    with a.transcription.spooled(storage.stream, filename) as spooled:
        result = a.transcription.transcribe_file(spooled, options, source="api", owner=current_principal(),
                                                 requested_model=model, allow_openai_alias=True,
                                                 metadata={"size_bytes": spooled.size, "endpoint": task})
    return reply(result.transcript, fmt, task, words="word" in granularities)


@bp.post("/audio/transcriptions")
@body_limit("max_upload_size")
@require_access
def transcriptions() -> Response:
    return audio_request("transcribe")


@bp.post("/audio/translations")
@body_limit("max_upload_size")
@require_access
def translations() -> Response:
    return audio_request("translate")


def model_entries() -> list[dict[str, Any]]:
    a = appliance()
    status = a.models.status()
    created = int(a.started_at)
    if status.path and os.path.exists(status.path):
        created = int(os.path.getmtime(status.path))
    ids = [OPENAI_MODEL_ALIAS] + ([status.name] if status.name else [])
    return [{"id": model_id, "object": "model", "created": created, "owned_by": OWNER} for model_id in ids]


@bp.get("/models")
@require_access
def list_models() -> Response:
    return jsonify({"object": "list", "data": model_entries()})


@bp.get("/models/<model_id>")
@require_access
def get_model(model_id: str) -> Response:
    for entry in model_entries():
        if entry["id"] == model_id:
            return jsonify(entry)
    raise NotFound(f"model {model_id!r} does not exist here; the models are "
                   f"{', '.join(e['id'] for e in model_entries())}", code="model_not_found")


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
