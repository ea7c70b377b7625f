"""The OpenAPI 3.0.3 description of every HTTP route of the appliance: ``build_spec()``.

One module holds the whole spec, organised as one function per plugin (``health_paths()``, ``upload_paths()``,
...) returning that plugin's paths, plus the shared components: the error shape ``{"error": {"code",
"message"}}``, the records (transcripts, model status, history entries, jobs) and the two ways to authenticate
(``bearerAuth``: a token; ``cookieAuth``: a login's session, whose changes need the ``X-CSRF-Token`` header).
Operations say who may call them: ``OPEN`` (anyone while ``REQUIRE_AUTH=false``), ``USER`` (an account),
``ADMIN`` (an admin account) or ``PUBLIC`` (no credentials at all). ``tests/unit/test_openapi_spec.py`` checks that every route ``create_app`` registers is described here.
Nothing here imports Flask: the spec is plain data, served by ``plugins/api_docs.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import __version__
from .core.formats import FORMATS
from .core.identity import MIN_PASSWORD_LENGTH, ROLES, SCOPES
from .core.options import LANGUAGES
from .core.records import TASKS
from .services.history import MAX_STATS_DAYS

Schema = dict[str, Any]

OPENAPI_VERSION = "3.0.3"
TRANSCRIPT_FORMATS = tuple(FORMATS)  # json, txt, srt, vtt, tsv
OPENAI_RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MODEL_STATES = ("unloaded", "loading", "ready", "error")
JOB_STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
HISTORY_SOURCES = ("upload", "job", "live", "api")

# Who may call an operation. ``{}`` in a list means "anonymous is fine" (unless REQUIRE_AUTH is on). USER and
# ADMIN list the same schemes; they are separate lists because ``operation`` tells them apart by identity.
OPEN: list[dict[str, list[str]]] = [{}, {"bearerAuth": []}, {"cookieAuth": []}]
USER: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"cookieAuth": []}]
ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"cookieAuth": []}]
PUBLIC: list[dict[str, list[str]]] = []

_CONTENT_TYPES = {name: fmt.content_type.split(";")[0] for name, fmt in FORMATS.items()}


# -- small builders ------------------------------------------------------------------------------------------------
def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema(name: str) -> Schema:
    return ref("schemas", name)


def nullable(type_: str, **extra: Any) -> Schema:
    return {"type": type_, "nullable": True, **extra}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        out["required"] = list(required)
    return out


def json_content(body: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": body}}


def ok(description: str, body: Schema | None = None, *, content: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if body is not None:
        out["content"] = json_content(body)
    elif content is not None:
        out["content"] = content
    return out


def text_content(*media_types: str) -> dict[str, Any]:
    return {media: {"schema": {"type": "string"}} for media in media_types}


def query(name: str, description: str, type_: str = "string", **extra: Any) -> Schema:
    # allowEmptyValue: every query parameter treats "name=" like an absent one (its default).
    return {"name": name, "in": "query", "required": False, "allowEmptyValue": True, "description": description,
            "schema": {"type": type_, **extra}}


def path_param(name: str, description: str, type_: str = "string", **extra: Any) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": type_, **extra}}


def operation(op_id: str, tag: str, summary: str, responses: dict[Any, Any], *,
              security: list[dict[str, list[str]]], errors: tuple[int, ...] = (),
              parameters: list[Schema] | None = None, body: dict[str, Any] | None = None,
              description: str | None = None, changes: bool = False) -> dict[str, Any]:
    """One operation; ``errors`` adds the error responses it documents explicitly.

    Every operation also gets a ``default`` error response: any other status still carries the one error shape.
    ``changes`` marks state changes, which take the CSRF header when the admin cookie authenticates them.
    """
    op: dict[str, Any] = {"operationId": op_id, "tags": [tag], "summary": summary, "security": security}
    if description:
        op["description"] = description
    params = list(parameters or [])
    if changes and security is not PUBLIC:
        params.append(ref("parameters", "CsrfToken"))
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    all_responses: dict[str, Any] = {str(code): value for code, value in responses.items()}
    implied = {401} if security is OPEN else {401, 403} if security is ADMIN or security is USER else set()
    for code in sorted(set(errors) | implied | {429}):
        all_responses.setdefault(str(code), ref("responses", _ERROR_RESPONSES[code]))
    all_responses["default"] = ref("responses", "Error")
    op["responses"] = all_responses
    return op


_ERROR_RESPONSES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                    413: "PayloadTooLarge", 415: "UnsupportedMedia", 429: "RateLimited", 503: "ModelUnavailable"}
UPLOAD_ERRORS = (400, 409, 413, 415, 503)


# -- shared components ---------------------------------------------------------------------------------------------
def components() -> dict[str, Any]:
    error = obj({"error": obj({
        "code": {"type": "string", "description": "machine-readable, snake_case", "example": "invalid_request"},
        "message": {"type": "string", "description": "for people"},
        "type": {"type": "string", "description": "OpenAI error type (only under /v1)"},
        "param": nullable("string", description="OpenAI error parameter (only under /v1)"),
    }, ("code", "message"))}, ("error",))
    word = obj({"start": {"type": "number"}, "end": {"type": "number"}, "word": {"type": "string"},
                "probability": {"type": "number"}}, ("start", "end", "word"))
    segment = obj({
        "id": {"type": "integer"}, "start": {"type": "number"}, "end": {"type": "number"},
        "text": {"type": "string"}, "avg_logprob": {"type": "number"}, "no_speech_prob": {"type": "number"},
        "words": {"type": "array", "items": schema("Word")},
    }, ("start", "end", "text"))
    transcript = obj({
        "text": {"type": "string"}, "language": {"type": "string"},
        "language_probability": {"type": "number"}, "duration": {"type": "number"},
        "segments": {"type": "array", "items": schema("Segment")},
    }, ("text", "language", "duration", "segments"))
    transcription_result = {"allOf": [schema("Transcript"), obj({
        "model": {"type": "string"}, "engine": {"type": "string"}, "processing_seconds": {"type": "number"},
        "timestamp": {"type": "string", "format": "date-time"}, "history_id": nullable("integer"),
        "cached": {"type": "boolean"},
    }, ("model", "engine", "processing_seconds", "timestamp", "history_id", "cached"))]}
    model_status = obj({
        "name": nullable("string"), "engine": {"type": "string"}, "device": {"type": "string"},
        "compute_type": {"type": "string"}, "state": {"type": "string", "enum": list(MODEL_STATES)},
        "load_seconds": nullable("number"), "source": nullable("string"),
        "error": nullable("string"), "generation": {"type": "integer"}, "progress": nullable("number"),
    }, ("name", "engine", "state"))
    health = obj({
        "status": {"type": "string", "enum": ["ok", "degraded"]}, "version": {"type": "string"},
        "model": obj({"name": nullable("string"), "state": {"type": "string", "enum": list(MODEL_STATES)},
                      "engine": {"type": "string"}}, ("name", "state")),
        "uptime_seconds": {"type": "number"},
        "reason": {"type": "string", "description": "why the appliance is degraded (HTTP 503 only)"},
    }, ("status", "version", "model"))
    status = obj({
        "version": {"type": "string"}, "uptime_seconds": {"type": "number"}, "model": schema("ModelStatus"),
        "queue": {"type": "object", "additionalProperties": True},
        "live_sessions": {"type": "integer"},
        "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
        "history": obj({"entries": {"type": "integer"}}),
        "system": {"type": "object", "additionalProperties": True},
    }, ("version", "model", "queue", "live_sessions", "jobs", "system"))
    detection = obj({
        "language": {"type": "string"}, "probability": {"type": "number"},
        "top": {"type": "array", "items": obj({"language": {"type": "string"}, "probability": {"type": "number"}},
                                              ("language", "probability"))},
    }, ("language", "probability", "top"))
    history_entry = obj({
        "id": {"type": "integer"}, "created_at": {"type": "string"},
        "source": {"type": "string", "enum": list(HISTORY_SOURCES)}, "filename": nullable("string"),
        "text": {"type": "string"}, "language": nullable("string"), "model": nullable("string"),
        "engine": nullable("string"), "duration": nullable("number"), "processing_seconds": nullable("number"),
        "segments": {"type": "array", "items": {"type": "object"}}, "audio_sha256": nullable("string"),
        "metadata": {"type": "object", "additionalProperties": True},
        "options_key": nullable("string"),
        "owner_id": nullable("integer", description="the owning account; null for the guests' shared history"),
        "edited_at": nullable("string", description="when the text was last corrected"),
        "snippet": nullable("string", description="search hits only: the text around the matches"),
    }, ("id", "created_at", "source", "text"))
    history_page = obj({"items": {"type": "array", "items": schema("HistoryEntry")}, "total": {"type": "integer"},
                        "limit": {"type": "integer"}, "offset": {"type": "integer"}},
                       ("items", "total", "limit", "offset"))
    job = obj({
        "job_id": {"type": "string"}, "status": {"type": "string", "enum": list(JOB_STATUSES)},
        "progress": {"type": "number"}, "eta_seconds": nullable("number"), "queue_position": nullable("integer"),
        "error": {"type": "object", "nullable": True, "properties": {"code": {"type": "string"},
                                                                     "message": {"type": "string"}}},
        "filename": nullable("string"), "duration": nullable("number"), "created_at": {"type": "string"},
        "started_at": nullable("string"), "finished_at": nullable("string"), "history_id": nullable("integer"),
        "output": {"type": "string", "enum": list(TRANSCRIPT_FORMATS)}, "cached": {"type": "boolean"},
        "links": schema("JobLinks"),
        "result": {"type": "object", "description": "the transcription, once completed"},
    }, ("job_id", "status", "progress", "created_at", "links"))
    job_links = obj({"self": {"type": "string"}, "result": {"type": "string"}}, ("self", "result"))
    token = obj({"id": {"type": "string"}, "label": {"type": "string"}, "scope": {"type": "string", "enum": list(SCOPES)},
                 "configured": {"type": "boolean"}, "created_at": nullable("string"),
                 "last_used_at": nullable("string")}, ("id", "label", "scope"))
    user = obj({"id": {"type": "integer"}, "username": {"type": "string"},
                "role": {"type": "string", "enum": list(ROLES)}, "created_at": {"type": "string"},
                "last_login_at": nullable("string"), "disabled": {"type": "boolean"}},
               ("id", "username", "role", "disabled"))
    me = obj({"id": nullable("integer"), "username": {"type": "string"},
              "role": {"type": "string", "enum": [*ROLES, "guest"]},
              "scopes": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
              "authenticated": {"type": "boolean", "description": "false for the anonymous guest"},
              "require_auth": {"type": "boolean"}, "registration": {"type": "boolean"},
              "csrf_token": {"type": "string", "description": "only with a login's session cookie"}},
             ("username", "role", "scopes", "authenticated"))
    token_grant = obj({"access_token": {"type": "string"}, "token_type": {"type": "string", "enum": ["bearer"]},
                       "expires_in": {"type": "integer"}, "scope": {"type": "string", "enum": list(SCOPES)},
                       "user": schema("User")}, ("access_token", "token_type", "expires_in"))
    figures = {"entries": {"type": "integer"}, "audio_hours": {"type": "number"},
               "storage_bytes": {"type": "integer"},
               "jobs": {"type": "object", "additionalProperties": {"type": "integer"}}}
    usage = obj({
        "users": {"type": "array", "items": {"allOf": [schema("User"), obj(figures, tuple(figures))]}},
        "guest": obj(figures, tuple(figures)),
        "totals": obj({"entries": {"type": "integer"}, "audio_hours": {"type": "number"},
                       "storage_bytes": {"type": "integer"}, "database_bytes": {"type": "integer"},
                       "users": {"type": "integer"}})}, ("users", "guest", "totals"))
    model_load = obj({"status": schema("ModelStatus"), "links": {"type": "object"}}, ("status",))
    openai_model = obj({"id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
                        "created": {"type": "integer"}, "owned_by": {"type": "string"}},
                       ("id", "object", "created", "owned_by"))
    verbose = obj({
        "task": {"type": "string", "enum": list(TASKS)},
        "language": {"type": "string", "description": "English name of the language, e.g. english"},
        "duration": {"type": "number"}, "text": {"type": "string"},
        "segments": {"type": "array", "items": obj({
            "id": {"type": "integer"}, "seek": {"type": "integer"}, "start": {"type": "number"},
            "end": {"type": "number"}, "text": {"type": "string"},
            "tokens": {"type": "array", "items": {"type": "integer"}}, "temperature": {"type": "number"},
            "avg_logprob": {"type": "number"}, "compression_ratio": {"type": "number"},
            "no_speech_prob": {"type": "number"},
        }, ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob"))},
        "words": {"type": "array", "description": "only with timestamp_granularities[]=word",
                  "items": obj({"word": {"type": "string"}, "start": {"type": "number"}, "end": {"type": "number"}},
                               ("word", "start", "end"))},
    }, ("task", "language", "duration", "text", "segments"))

    def error_response(description: str) -> dict[str, Any]:
        return {"description": description, "content": json_content(schema("Error"))}

    return {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "A personal API token (scope transcribe or admin), a token from "
                                          "POST /api/auth/token, or one of API_KEYS (transcribe tokens of the "
                                          "admin account)."},
            "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "wa_session",
                           "description": "A login's session from POST /api/auth/login. Changes made with it "
                                          "need the X-CSRF-Token header returned by the login."},
        },
        "parameters": {
            "CsrfToken": {"name": "X-CSRF-Token", "in": "header", "required": False,
                          "description": "Required when the admin session cookie authenticates a change.",
                          "schema": {"type": "string"}},
        },
        "responses": {
            "Error": error_response("An error, in the one error shape."),
            "BadRequest": error_response("A missing or invalid field."),
            "Unauthorized": error_response("No valid credentials (an invalid token is refused, except under /v1 "
                                           "while REQUIRE_AUTH=false)."),
            "Forbidden": error_response("Not allowed: missing or wrong X-CSRF-Token on a cookie-authenticated "
                                        "change, a transcribe-scope token, or not an admin."),
            "NotFound": error_response("No such resource, or not the caller's (ids of others' records do not "
                                       "leak)."),
            "Conflict": error_response("The request conflicts with the appliance's state, e.g. another model is "
                                       "loaded (the message names the loaded model)."),
            "PayloadTooLarge": error_response("The upload is larger than MAX_UPLOAD_SIZE (`payload_too_large`), or its "
                                              "decoded audio longer than MAX_AUDIO_SECONDS (`audio_too_long`)."),
            "UnsupportedMedia": error_response("The file is not audio or cannot be decoded."),
            "RateLimited": error_response("Too many requests; see Retry-After."),
            "ModelUnavailable": error_response("No model is ready (loading or failed); see Retry-After."),
        },
        "schemas": {
            "Error": error, "Word": word, "Segment": segment, "Transcript": transcript,
            "TranscriptionResult": transcription_result, "ModelStatus": model_status, "Health": health,
            "Status": status, "LanguageDetection": detection, "HistoryEntry": history_entry,
            "HistoryPage": history_page, "Job": job, "JobLinks": job_links,
            "TokenInfo": token, "User": user, "Me": me, "TokenGrant": token_grant, "Usage": usage,
            "ModelLoad": model_load, "OpenAIModel": openai_model,
            "OpenAITranscription": obj({"text": {"type": "string"}}, ("text",)),
            "OpenAIVerboseTranscription": verbose,
            "TranscribeForm": transcribe_form(),
        },
    }


def transcribe_form() -> Schema:
    """The multipart fields of POST /transcribe and POST /api/jobs (core/options.py parses them)."""
    flag = {"type": "boolean"}
    return {
        "type": "object",
        "properties": {
            "audio": {"type": "string", "format": "binary", "description": "the audio file (or send it as 'file')"},
            "file": {"type": "string", "format": "binary", "description": "alias of 'audio'"},
            "language": {"type": "string", "enum": ["auto", *LANGUAGES],
                         "description": "a Whisper language code; empty or 'auto' detects it"},
            "task": {"type": "string", "enum": list(TASKS)},
            "output": {"type": "string", "enum": list(TRANSCRIPT_FORMATS), "default": "json"},
            "word_timestamps": flag, "vad_filter": flag, "condition_on_previous_text": flag,
            "initial_prompt": {"type": "string", "maxLength": 2000},
            "beam_size": {"type": "integer", "minimum": 1, "maximum": 10},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "model": {"type": "string", "description": "must be the loaded model's name if given (else 409)"},
            "max_line_width": {"type": "integer", "minimum": 10, "maximum": 500},
        },
        "anyOf": [{"required": ["audio"]}, {"required": ["file"]}],
    }


def multipart(body: Schema, *, encoding: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": body}
    if encoding:
        media["encoding"] = encoding
    return {"required": True, "content": {"multipart/form-data": media}}


def transcript_content() -> dict[str, Any]:
    content = json_content(schema("TranscriptionResult"))
    content.update(text_content(*(_CONTENT_TYPES[f] for f in TRANSCRIPT_FORMATS if f != "json")))
    return content


# -- per-plugin paths ----------------------------------------------------------------------------------------------
def health_paths() -> dict[str, Any]:
    return {
        "/health": {"get": operation(
            "health", "health", "Liveness and model readiness",
            {200: ok("The model is ready.", schema("Health")),
             503: ok("Degraded: the model is loading or failed (see reason, Retry-After).", schema("Health"))},
            security=PUBLIC)},
        "/api/status": {"get": operation(
            "status", "health", "Model, queue, live sessions, jobs, history and system figures",
            {200: ok("Current status.", schema("Status"))}, security=OPEN)},
        "/metrics": {"get": operation(
            "metrics", "health", "Prometheus metrics",
            {200: ok("Prometheus text exposition format.", content=text_content("text/plain"))}, security=OPEN)},
    }


def upload_paths() -> dict[str, Any]:
    return {
        "/transcribe": {"post": operation(
            "transcribe", "transcription", "Transcribe an uploaded audio file",
            {200: ok("The transcript, in the requested output format.", content=transcript_content())},
            security=OPEN, errors=UPLOAD_ERRORS, changes=True, body=multipart(schema("TranscribeForm")),
            description="Waits for the result (use POST /api/jobs for long files). Identical audio and options "
                        "return the stored result (cached: true).")},
        "/api/detect-language": {"post": operation(
            "detectLanguage", "transcription", "Detect the spoken language of an audio file",
            {200: ok("The most likely language and the runners-up.", schema("LanguageDetection"))},
            security=OPEN, errors=(400, 413, 415, 503), changes=True,
            body=multipart({"type": "object", "properties": {
                "audio": {"type": "string", "format": "binary"},
                "file": {"type": "string", "format": "binary", "description": "alias of 'audio'"}},
                "anyOf": [{"required": ["audio"]}, {"required": ["file"]}]}))},
    }


def openai_form(*, translation: bool) -> Schema:
    properties: dict[str, Schema] = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "description": "whisper-1 or the loaded model's name (else 409)",
                  "example": "whisper-1"},
        "prompt": {"type": "string", "maxLength": 2000},
        "response_format": {"type": "string", "enum": list(OPENAI_RESPONSE_FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1,
                        "description": "0 (default) lets Whisper raise it when decoding fails"},
    }
    if not translation:
        properties["language"] = {"type": "string", "enum": list(LANGUAGES), "description": "ISO-639-1 code"}
        properties["timestamp_granularities[]"] = {
            "type": "array", "items": {"type": "string", "enum": ["segment", "word"]},
            "description": "'word' adds words to verbose_json"}
    return {"type": "object", "properties": properties, "required": ["file", "model"]}


def openai_paths() -> dict[str, Any]:
    def audio_op(op_id: str, summary: str, *, translation: bool) -> dict[str, Any]:
        content = json_content({"oneOf": [schema("OpenAITranscription"), schema("OpenAIVerboseTranscription")]})
        content.update(text_content("text/plain", "application/x-subrip", "text/vtt"))
        encoding = None if translation else {"timestamp_granularities[]": {"style": "form", "explode": True}}
        return operation(op_id, "openai", summary, {200: ok("json, text, srt, vtt or verbose_json.", content=content)},
                         security=OPEN, errors=UPLOAD_ERRORS, changes=True,
                         body=multipart(openai_form(translation=translation), encoding=encoding))

    return {
        "/v1/audio/transcriptions": {"post": audio_op(
            "openaiTranscriptions", "OpenAI-compatible transcription", translation=False)},
        "/v1/audio/translations": {"post": audio_op(
            "openaiTranslations", "OpenAI-compatible translation into English (multilingual models only)",
            translation=True)},
        "/v1/models": {"get": operation(
            "openaiModels", "openai", "Models: whisper-1 and the loaded model",
            {200: ok("The model list.", obj({"object": {"type": "string", "enum": ["list"]},
                                             "data": {"type": "array", "items": schema("OpenAIModel")}},
                                            ("object", "data")))},
            security=OPEN)},
        "/v1/models/{model_id}": {"get": operation(
            "openaiModel", "openai", "One model", {200: ok("The model.", schema("OpenAIModel"))},
            security=OPEN, errors=(404,), parameters=[path_param("model_id", "whisper-1 or the loaded model")])},
    }


def history_paths() -> dict[str, Any]:
    entry_id = path_param("entry_id", "history entry id", "integer", format="int64", minimum=1)
    deleted = obj({"deleted": {"type": "integer"}}, ("deleted",))
    import_result = obj({"imported": {"type": "integer"}, "skipped_duplicates": {"type": "integer"},
                         "errors": {"type": "array", "items": {"type": "string"}},
                         "error_count": {"type": "integer"}}, ("imported", "skipped_duplicates", "errors"))
    entry_file = {**json_content(schema("HistoryEntry")),
                  **text_content(*(_CONTENT_TYPES[f] for f in TRANSCRIPT_FORMATS if f != "json"))}
    binary = {"schema": {"type": "string", "format": "binary"}}
    user_param = query("user", "admins only: just this user's entries (a username, or 'guest')")
    return {
        "/api/history": {"get": operation(
            "historySearch", "history", "Search and page through the history",
            {200: ok("One page of entries, newest first.", schema("HistoryPage"))},
            security=OPEN, errors=(400, 403, 404), parameters=[
                query("q", "full-text search (words, \"phrases\", a trailing * for a prefix)"),
                query("source", "only entries from this source", enum=list(HISTORY_SOURCES)),
                query("language", "language code"),
                query("since", "ISO date or date-time (inclusive)", anyOf=[{"format": "date"}, {"format": "date-time"}]),
                query("until", "ISO date or date-time", anyOf=[{"format": "date"}, {"format": "date-time"}]),
                query("limit", "page size (default 50)", "integer", minimum=1, maximum=500),
                query("offset", "entries to skip", "integer", minimum=0), user_param])},
        "/api/history/{entry_id}": {
            "get": operation("historyGet", "history", "One history entry",
                             {200: ok("The entry.", schema("HistoryEntry"))},
                             security=OPEN, errors=(404,), parameters=[entry_id]),
            "patch": operation("historyUpdate", "history", "Correct an entry's text (it stops being a cache hit)",
                               {200: ok("The updated entry.", schema("HistoryEntry"))},
                               security=OPEN, errors=(400, 403, 404), parameters=[entry_id], changes=True,
                               body={"required": True, "content": json_content(
                                   obj({"text": {"type": "string"}}, ("text",)))}),
            "delete": operation("historyDelete", "history", "Delete one of your entries",
                                {200: ok("Deleted.", deleted)},
                                security=USER, errors=(404,), parameters=[entry_id], changes=True),
        },
        "/api/history/{entry_id}/export": {"get": operation(
            "historyExportEntry", "history", "One entry as a file (json is the stored entry)",
            {200: ok("The transcript file (an attachment).", content=entry_file)},
            security=OPEN, errors=(400, 404), parameters=[
                entry_id, query("format", "file format (default txt)", enum=list(TRANSCRIPT_FORMATS))])},
        "/api/history/export": {"get": operation(
            "historyExport", "history", "The whole history as JSON or CSV (streamed)",
            {200: ok("The export file (an attachment).", content={
                **json_content({"type": "array", "items": schema("HistoryEntry")}), **text_content("text/csv")})},
            security=OPEN, errors=(400, 403, 404), parameters=[
                query("format", "json (default) or csv", enum=["json", "csv"]), user_param])},
        "/api/history/import": {"post": operation(
            "historyImport", "history", "Import entries exported by this or another appliance",
            {200: ok("What was imported (duplicates are skipped).", import_result)},
            security=ADMIN, errors=(400, 413), changes=True, parameters=[
                query("owner", "whose history the entries join: a username or 'guest' (default: yours)")],
            body={"required": True, "content": {
                "multipart/form-data": {"schema": obj({
                    "file": {"type": "string", "format": "binary"},
                    "format": {"type": "string", "enum": ["json", "csv"],
                               "description": "default: from the file name or content"}}, ("file",))},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            }})},
        "/api/history/delete": {"post": operation(
            "historyDeleteMany", "history", "Delete several of your entries (others' ids are ignored)",
            {200: ok("How many were deleted.", deleted)},
            security=USER, errors=(400,), changes=True, body={"required": True, "content": json_content(
                obj({"ids": {"type": "array", "maxItems": 1000, "items": {"type": "integer"}}}, ("ids",)))})},
        "/api/history/stats": {"get": operation(
            "historyStats", "history", "Totals and counts by source, model and day",
            {200: ok("Statistics.", obj({
                "entries": {"type": "integer"}, "audio_hours": {"type": "number"},
                "processing_hours": {"type": "number"},
                "by_source": {"type": "object", "additionalProperties": {"type": "integer"}},
                "by_model": {"type": "object", "additionalProperties": {"type": "integer"}},
                "by_day": {"type": "object", "additionalProperties": {"type": "integer"}}},
                ("entries", "audio_hours", "processing_hours", "by_source", "by_model", "by_day")))},
            security=OPEN, errors=(400, 403, 404), parameters=[query("days", "days in by_day (default 30)", "integer",
                                                                 minimum=1, maximum=MAX_STATS_DAYS), user_param])},
        "/api/admin/backup": {"get": operation(
            "adminBackup", "admin", "Download a consistent copy of the database",
            {200: ok("The SQLite database file (an attachment).", content={"application/vnd.sqlite3": binary})},
            security=ADMIN)},
        "/api/admin/restore": {"post": operation(
            "adminRestore", "admin", "Replace the database with a backup (validated first; the old one is kept)",
            {200: ok("Restored.", obj({"restored": {"type": "boolean"}, "entries": {"type": "integer"},
                                       "previous_saved_as": {"type": "string"}}, ("restored", "entries")))},
            security=ADMIN, errors=(400, 413), changes=True,
            body=multipart(obj({"file": {"type": "string", "format": "binary"}}, ("file",))))},
    }


def jobs_paths() -> dict[str, Any]:
    job_id = path_param("job_id", "job id", maxLength=64)
    return {
        "/api/jobs": {
            "post": operation(
                "jobCreate", "jobs", "Queue an audio file for background transcription",
                {202: ok("Queued (Location: the job).", obj({
                    "job_id": {"type": "string"}, "status": {"type": "string", "enum": list(JOB_STATUSES)},
                    "links": schema("JobLinks"), "cached": {"type": "boolean"}}, ("job_id", "status", "links")))},
                security=OPEN, errors=UPLOAD_ERRORS, changes=True, body=multipart(schema("TranscribeForm"))),
            "get": operation(
                "jobList", "jobs", "List jobs, newest first",
                {200: ok("One page of jobs.", obj({"jobs": {"type": "array", "items": schema("Job")},
                                                   "limit": {"type": "integer"}, "offset": {"type": "integer"}},
                                                  ("jobs", "limit", "offset")))},
                security=OPEN, errors=(400, 403, 404), parameters=[
                    query("status", "only jobs in this state", enum=list(JOB_STATUSES)),
                    query("limit", "page size (default 50)", "integer", minimum=1, maximum=500),
                    query("offset", "jobs to skip", "integer", minimum=0),
                    query("user", "admins only: just this user's jobs (a username, or 'guest')")]),
        },
        "/api/jobs/{job_id}": {
            "get": operation("jobGet", "jobs", "A job's state, progress and queue position",
                             {200: ok("The job.", schema("Job"))},
                             security=OPEN, errors=(404,), parameters=[job_id]),
            "delete": operation("jobDelete", "jobs", "Cancel a job (or delete a finished one)",
                                {200: ok("The job as it was left; deleted says whether its record is gone.",
                                         {"allOf": [schema("Job"), obj({"deleted": {"type": "boolean"}},
                                                                       ("deleted",))]})},
                                security=OPEN, errors=(403, 404, 409), parameters=[job_id], changes=True),
        },
        "/api/jobs/{job_id}/result": {"get": operation(
            "jobResult", "jobs", "A finished job's transcript",
            {200: ok("The transcript in the requested format (default: the one asked for at submission).",
                     content=transcript_content())},
            security=OPEN, errors=(400, 404, 409), parameters=[
                job_id, query("format", "file format", enum=list(TRANSCRIPT_FORMATS)),
                query("max_line_width", "wrap subtitle lines", "integer", minimum=10, maximum=500)])},
    }


def admin_paths() -> dict[str, Any]:
    def body_of(properties: dict[str, Schema], required: tuple[str, ...]) -> dict[str, Any]:
        return {"required": True, "content": json_content(obj(properties, required))}

    username = {"type": "string", "minLength": 1, "maxLength": 64}
    password = {"type": "string", "minLength": MIN_PASSWORD_LENGTH}
    user_id = path_param("user_id", "user id", "integer", minimum=1)
    return {
        "/api/models": {"get": operation(
            "modelList", "models", "Known models (loaded, on disk, downloadable) and the current status",
            {200: ok("The models.", obj({
                "models": {"type": "array", "items": obj({"name": {"type": "string"}, "state": {"type": "string"}},
                                                         ("name",))},
                "current": schema("ModelStatus"), "engines": {"type": "array", "items": {"type": "string"}},
                "downloads_allowed": {"type": "boolean"}}, ("models", "current", "engines")))},
            security=OPEN)},
        "/api/models/load": {"post": operation(
            "modelLoad", "models", "Switch to another model (loads in the background)",
            {200: ok("That model is already serving.", schema("ModelLoad")),
             202: ok("Loading started; follow /api/status or the model_status event.", schema("ModelLoad"))},
            security=ADMIN, errors=(400, 409, 503), changes=True,
            body=body_of({"name": {"type": "string"}, "engine": {"type": "string", "enum": ["faster-whisper",
                                                                                           "openai-whisper"]}},
                         ("name",)))},
        "/api/models/cancel": {"post": operation(
            "modelCancel", "models", "Cancel a model download in progress",
            {200: ok("Whether a download was cancelled.", obj({"cancelled": {"type": "boolean"}}, ("cancelled",)))},
            security=ADMIN, changes=True)},
        "/api/models/{name}": {"delete": operation(
            "modelDelete", "models", "Delete a model's files from the models folder",
            {200: ok("Deleted.", obj({"deleted": {"type": "string"}}, ("deleted",)))},
            security=ADMIN, errors=(404, 409), changes=True, parameters=[path_param("name", "model name")])},
        "/api/admin/users": {
            "get": operation("userList", "admin", "Every account",
                             {200: ok("The users.", obj({"users": {"type": "array", "items": schema("User")}},
                                                        ("users",)))}, security=ADMIN),
            "post": operation("userCreate", "admin", "Create an account",
                              {201: ok("The new user.", schema("User"))},
                              security=ADMIN, errors=(400, 409), changes=True,
                              body=body_of({"username": username, "password": password,
                                            "role": {"type": "string", "enum": list(ROLES), "default": "user"}},
                                           ("username", "password"))),
        },
        "/api/admin/users/{user_id}": {
            "patch": operation(
                "userUpdate", "admin", "Disable or enable an account, reset its password, change its role",
                {200: ok("The user as it is now.", schema("User"))},
                security=ADMIN, errors=(400, 404, 409), changes=True, parameters=[user_id],
                description="A new password or disabling ends the account's sessions and access tokens (and its "
                            "Socket.IO connections). The last enabled admin, your own role and state, and the "
                            "account that ADMIN_PASSWORD manages cannot be changed (409).",
                body=body_of({"role": {"type": "string", "enum": list(ROLES)}, "disabled": {"type": "boolean"},
                              "password": password}, ())),
            "delete": operation(
                "userDelete", "admin", "Delete an account with its history and jobs, or handing them over",
                {200: ok("What went.", obj({"deleted": {"type": "integer"}, "username": {"type": "string"},
                                            "entries": {"type": "integer"}, "jobs": {"type": "integer"},
                                            "transferred_to": nullable("integer")},
                                           ("deleted", "entries", "jobs", "transferred_to")))},
                security=ADMIN, errors=(400, 404, 409), changes=True, parameters=[
                    user_id, query("data", "'delete': delete the user's history and jobs too", enum=["delete"]),
                    query("transfer_to", "hand the user's history and jobs to this user id", "integer",
                          minimum=1)]),
        },
        "/api/admin/stats": {"get": operation(
            "adminStats", "admin", "Per user: history entries, audio hours, storage and jobs",
            {200: ok("The figures.", schema("Usage"))}, security=ADMIN)},
        "/api/admin/settings": {"get": operation(
            "adminSettings", "admin", "The effective settings (secrets masked)",
            {200: ok("Settings.", {"type": "object", "additionalProperties": True})}, security=ADMIN)},
        "/api/admin/certificate": {"get": operation(
            "adminCertificate", "admin", "The TLS certificate in use: SHA-256 fingerprint, validity, names",
            {200: ok("The certificate.", obj({
                "fingerprint_sha256": {"type": "string", "example": "AB:CD:..."},
                "not_after": {"type": "string", "format": "date-time"},
                "san_dns": {"type": "array", "items": {"type": "string"}},
                "san_ips": {"type": "array", "items": {"type": "string"}},
                "custom": {"type": "boolean", "description": "true: SSL_CERT_PATH; false: generated"},
                "cert_path": {"type": "string"},
            }, ("fingerprint_sha256", "not_after", "san_dns", "san_ips", "custom")))},
            errors=(404,), security=ADMIN)},
    }


def auth_paths() -> dict[str, Any]:
    def body_of(properties: dict[str, Schema], required: tuple[str, ...]) -> dict[str, Any]:
        return {"required": True, "content": json_content(obj(properties, required))}

    text = {"type": "string", "minLength": 1}
    password = {"type": "string", "minLength": MIN_PASSWORD_LENGTH}
    grant_form = obj({"grant_type": {"type": "string", "enum": ["password"]}, "username": text,
                      "password": text, "scope": {"type": "string", "description": "'transcribe' narrows the token"}},
                     ("username", "password"))
    return {
        "/api/auth/login": {"post": operation(
            "login", "auth", "Log in (failed attempts are limited per address and per username)",
            {200: ok("Logged in: the session cookie is set; send csrf_token as X-CSRF-Token on changes.",
                     {"allOf": [schema("Me"), obj({"csrf_token": {"type": "string"},
                                                   "expires_in": {"type": "integer"}}, ("csrf_token",))]})},
            security=PUBLIC, errors=(400, 401, 403),
            body=body_of({"username": text, "password": text}, ("username", "password")))},
        "/api/auth/logout": {"post": operation(
            "logout", "auth", "End this login, or every login of the account (a copied cookie stops working too)",
            {200: ok("Logged out; ended: how many sessions and access tokens ended.",
                     obj({"logged_out": {"type": "boolean"}, "ended": {"type": "integer"}}, ("logged_out",)))},
            security=PUBLIC, body={"required": False, "content": json_content(obj(
                {"everywhere": {"type": "boolean", "default": False,
                                "description": "end every session and access token of the account"}}))})},
        "/api/auth/me": {"get": operation(
            "me", "auth", "Who the caller is (the guest when anonymous and REQUIRE_AUTH=false)",
            {200: ok("The caller.", schema("Me"))}, security=OPEN)},
        "/api/auth/token": {"post": operation(
            "token", "auth", "An access token for a username and password (OAuth2 password grant)",
            {200: ok("A bearer token.", schema("TokenGrant"))}, security=PUBLIC, errors=(400, 401, 403),
            body={"required": True, "content": {"application/x-www-form-urlencoded": {"schema": grant_form}}})},
        "/api/auth/register": {"post": operation(
            "register", "auth", "Create an account (only with ALLOW_REGISTRATION=true)",
            {201: ok("The account's first access token.", schema("TokenGrant"))},
            security=PUBLIC, errors=(400, 403, 409), changes=True,
            body=body_of({"username": {"type": "string", "minLength": 1, "maxLength": 64}, "password": password},
                         ("username", "password")))},
        "/api/auth/password": {"post": operation(
            "changePassword", "auth", "Change your password (every session of the account ends)",
            {200: ok("Changed; with a session cookie, this browser gets a new session and CSRF token.",
                     obj({"changed": {"type": "boolean"}, "csrf_token": {"type": "string"}}, ("changed",)))},
            security=USER, errors=(400, 409), changes=True,
            body=body_of({"current_password": text, "new_password": password}, ("current_password", "new_password")))},
        "/api/auth/tokens": {
            "get": operation("tokenList", "auth", "Your personal API tokens (never the secrets)",
                             {200: ok("The tokens.", obj({"tokens": {"type": "array", "items": schema("TokenInfo")}},
                                                         ("tokens",)))},
                             security=USER),
            "post": operation("tokenCreate", "auth", "Make a personal API token (the secret is shown only now)",
                              {201: ok("The new token.", {"allOf": [schema("TokenInfo"), obj(
                                  {"token": {"type": "string"}}, ("token",))]})},
                              security=USER, errors=(400,), changes=True,
                              body=body_of({"label": {"type": "string", "minLength": 1, "maxLength": 100},
                                            "scope": {"type": "string", "enum": list(SCOPES),
                                                      "default": "transcribe"}}, ("label",))),
        },
        "/api/auth/tokens/{token_id}": {"delete": operation(
            "tokenRevoke", "auth", "Revoke one of your tokens (its Socket.IO connections end)",
            {200: ok("Revoked.", obj({"deleted": {"type": "string"}}, ("deleted",)))},
            security=USER, errors=(404, 409), changes=True, parameters=[path_param("token_id", "token id")])},
    }


def _html(op_id: str, tag: str, summary: str, *, login: bool = False, admin: bool = False) -> dict[str, Any]:
    responses: dict[Any, Any] = {200: ok("An HTML page.", content=text_content("text/html"))}
    if login:
        responses[303] = {"description": "To /login first (without a login, or always while REQUIRE_AUTH=true)."}
    if admin:
        responses[403] = ok("The page, saying it is for admins.", content=text_content("text/html"))
    return {"get": operation(op_id, tag, summary, responses, security=PUBLIC)}


def pages_paths() -> dict[str, Any]:
    return {
        "/": _html("pageHome", "pages", "Upload and live dictation page", login=True),
        "/admin": _html("pageAdmin", "pages", "Admin panel", login=True, admin=True),
        "/history": _html("pageHistory", "pages", "History page", login=True),
        "/login": _html("pageLogin", "pages", "Login (and registration) page"),
        "/account": _html("pageAccount", "pages", "Your account: API tokens and password", login=True),
    }


def live_speech_paths() -> dict[str, Any]:
    # Live dictation is Socket.IO (/socket.io/, handled by the Socket.IO server, not by Flask routes).
    return {}


def api_docs_paths() -> dict[str, Any]:
    return {
        "/api/openapi.json": {"get": operation(
            "openapi", "docs", "This OpenAPI document",
            {200: ok("The OpenAPI 3 document.", {"type": "object", "additionalProperties": True})}, security=PUBLIC)},
        "/docs/": _html("swaggerUi", "docs", "Swagger UI for this API"),
    }


PLUGIN_PATHS: dict[str, Callable[[], dict[str, Any]]] = {
    "health": health_paths, "upload": upload_paths, "openai_api": openai_paths, "history": history_paths,
    "jobs": jobs_paths, "auth": auth_paths, "admin": admin_paths, "live_speech": live_speech_paths,
    "api_docs": api_docs_paths,
    "pages": pages_paths,
}


def build_spec(plugins: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The OpenAPI document for ``plugins`` (default: all of them), merged path by path."""
    paths: dict[str, Any] = {}
    for name in plugins if plugins is not None else tuple(PLUGIN_PATHS):
        for path, item in PLUGIN_PATHS[name]().items():
            paths.setdefault(path, {}).update(item)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Whisper Appliance",
            "version": __version__,
            "description": "Self-hosted speech-to-text. Errors are always {\"error\": {\"code\", \"message\"}} "
                           "with the HTTP status; OpenAI-compatible routes live under /v1.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": n} for n in ("health", "transcription", "openai", "jobs", "history", "auth", "models",
                                       "admin", "pages", "docs")],
        "paths": paths,
        "components": components(),
    }
