"""The OpenAPI document (openapi.py), its routes (plugins/api_docs.py) and the OpenAI-compatible shapes.

The spec must be a valid OpenAPI document and describe exactly the routes ``create_app`` registers, so a route
added without documentation (or documentation left behind by a removed route) fails here. The app is the real
factory with real services on a temporary DATA_DIR; no model is loaded (these tests are about the HTTP layer).
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from whisper_appliance.app import create_app
from whisper_appliance.core.config import Settings
from whisper_appliance.core.languages import LANGUAGE_NAMES, language_name
from whisper_appliance.core.options import LANGUAGES
from whisper_appliance.core.records import Segment, Transcript, Word
from whisper_appliance.openapi import build_spec
from whisper_appliance.plugins.openai_api import openai_options, parse_granularities, verbose_json

TOKEN = "unit-openapi-token"
METHODS = {"get", "post", "put", "patch", "delete"}
# Not API routes: Flask's own static files, and flask-swagger-ui's bundled assets (/docs/<path>) that the
# Swagger UI page loads; the page itself (/docs/) is documented.
UNDOCUMENTED_RULES = {"/static/<path:filename>", "/docs/<path:path>"}


@pytest.fixture
def app(tmp_path: Path):
    settings = Settings.from_env({}).replace(data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                             api_keys=(TOKEN,), admin_password="unit-admin-password", model_downloads=False, async_mode="threading")
    app = create_app(settings, start_services=False, load_model=False)
    app.config["TESTING"] = True
    yield app
    app.extensions["appliance"].database.close()


@pytest.fixture
def client(app):
    return app.test_client()


def openapi_path(rule: str) -> str:
    """Flask ``/api/history/<int:entry_id>`` -> OpenAPI ``/api/history/{entry_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def flask_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED_RULES:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            ops.add((openapi_path(rule.rule), method.lower()))
    return ops


def spec_operations(spec: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in METHODS}


# -- the document ------------------------------------------------------------------------------------------------
def test_spec_is_valid_openapi():
    spec = build_spec()
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_route_is_documented_and_nothing_else(app):
    flask_ops, spec_ops = flask_operations(app), spec_operations(build_spec())
    assert flask_ops - spec_ops == set(), "routes missing from openapi.py"
    assert spec_ops - flask_ops == set(), "openapi.py documents routes the app does not have"


def test_openapi_path_conversion():
    assert openapi_path("/api/history/<int:entry_id>/export") == "/api/history/{entry_id}/export"
    assert openapi_path("/api/jobs/<job_id>") == "/api/jobs/{job_id}"
    assert openapi_path("/health") == "/health"


def test_every_operation_documents_errors_and_security():
    spec = build_spec()
    assert set(spec["components"]["securitySchemes"]) == {"bearerAuth", "cookieAuth"}
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    for path, method in spec_operations(spec):
        op = spec["paths"][path][method]
        assert "security" in op, (path, method)
        assert op["responses"]["default"] == {"$ref": "#/components/responses/Error"}, (path, method)
        authenticated = any(req for req in op["security"])
        if authenticated:
            assert "401" in op["responses"], (path, method)
        if authenticated and method != "get":
            names = [p.get("$ref") for p in op.get("parameters", [])]
            assert "#/components/parameters/CsrfToken" in names, (path, method)


def test_admin_only_operations_do_not_allow_anonymous_calls():
    spec = build_spec()
    for path, method in [("/api/models/load", "post"), ("/api/admin/users", "get"), ("/api/admin/backup", "get"),
                         ("/api/admin/restore", "post"), ("/api/history/{entry_id}", "delete"),
                         ("/api/auth/tokens", "post"), ("/api/admin/users/{user_id}", "delete")]:
        assert {} not in spec["paths"][path][method]["security"], (path, method)
    assert {} in spec["paths"]["/transcribe"]["post"]["security"]


def test_required_fields_named_in_the_contract():
    spec = build_spec()
    paths = spec["paths"]

    def json_schema(path, method, status):
        return paths[path][method]["responses"][status]["content"]["application/json"]["schema"]

    assert set(json_schema("/api/jobs", "post", "202")["required"]) >= {"job_id", "status", "links"}
    login = json_schema("/api/auth/login", "post", "200")["allOf"]
    assert login[1]["required"] == ["csrf_token"]
    assert set(json_schema("/api/auth/token", "post", "200")["$ref"].split("/")[-1:]) == {"TokenGrant"}
    grant = spec["components"]["schemas"]["TokenGrant"]
    assert set(grant["required"]) == {"access_token", "token_type", "expires_in"}
    detect = spec["components"]["schemas"]["LanguageDetection"]
    assert set(detect["required"]) == {"language", "probability", "top"}
    form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["required"]) == {"file", "model"}
    assert "timestamp_granularities[]" in form["properties"]
    assert paths["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


# -- served by the app -----------------------------------------------------------------------------------------------
def test_spec_and_swagger_ui_are_served(client):
    r = client.get("/api/openapi.json")
    assert r.status_code == 200
    assert r.get_json() == build_spec()
    page = client.get("/docs/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "/api/openapi.json" in page.get_data(as_text=True)
    assert "swagger-ui-bundle.js" in page.get_data(as_text=True)
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.data) > 100_000  # the bundled asset, no CDN
    assert client.get("/docs").status_code in (301, 308)


# -- OpenAI-compatible routes without a model ------------------------------------------------------------------------
def test_v1_models_lists_the_alias(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.get_json()
    assert body["object"] == "list"
    assert body["data"][0] == {"id": "whisper-1", "object": "model", "created": body["data"][0]["created"],
                               "owned_by": "whisper-appliance"}
    assert client.get("/v1/models/whisper-1").get_json()["id"] == "whisper-1"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["type"] == "invalid_request_error"


def test_v1_errors_use_openai_shape(client):
    r = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, content_type="multipart/form-data")
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "missing_file" and error["type"] == "invalid_request_error" and "param" in error

    def post(**fields):
        data = {"file": (io.BytesIO(b"RIFF...."), "a.wav"), **fields}
        return client.post("/v1/audio/transcriptions", data=data, content_type="multipart/form-data")

    assert post(model="whisper-1", response_format="xml").get_json()["error"]["code"] == "invalid_option"
    assert post(response_format="json").get_json()["error"]["code"] == "missing_model"
    bad = post(model="whisper-1", **{"timestamp_granularities[]": "character"})
    assert bad.status_code == 400 and "character" in bad.get_json()["error"]["message"]
    assert post(model="whisper-1", language="klingon").status_code == 400
    # No model is loaded in these tests: a valid request gets 503 with Retry-After, never a 200 or a 500.
    unavailable = post(model="whisper-1")
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"]
    assert unavailable.get_json()["error"]["type"] == "server_error"


def test_v1_takes_an_unknown_key_as_anonymous_in_open_mode_and_refuses_it_otherwise(app, tmp_path):
    client = app.test_client()
    # The official client always sends some key: in open mode an unknown one is the guest, not a 401.
    assert client.get("/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # Elsewhere a token that is presented is always checked.
    r = client.get("/api/history", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_token"

    settings = app.extensions["appliance"].settings.replace(require_auth=True, data_dir=tmp_path / "strict")
    strict = create_app(settings, start_services=False, load_model=False)
    try:
        r = strict.test_client().get("/v1/models", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 401
        assert r.get_json()["error"]["type"] == "authentication_error"
        assert strict.test_client().get("/v1/models").status_code == 401
        assert strict.test_client().get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        strict.extensions["appliance"].database.close()


# -- OpenAI shapes (pure) --------------------------------------------------------------------------------------------
def test_granularities_accept_lists_and_commas_and_reject_others():
    assert parse_granularities(["word", "segment"]) == {"word", "segment"}
    assert parse_granularities(["word,segment"]) == {"word", "segment"}
    assert parse_granularities([]) == frozenset()
    with pytest.raises(Exception, match="timestamp_granularities"):
        parse_granularities(["sentence"])


def test_openai_options_map_onto_the_shared_parser():
    options = openai_options({"language": "en", "prompt": "Kennedy", "temperature": "0"}, "transcribe",
                             frozenset({"word"}))
    assert options.language == "en" and options.initial_prompt == "Kennedy" and options.word_timestamps
    assert options.temperature is None  # OpenAI's 0 = Whisper's fallback schedule
    assert openai_options({"temperature": "0.4"}, "translate", frozenset()).temperature == 0.4
    assert openai_options({}, "translate", frozenset()).task == "translate"
    with pytest.raises(Exception, match="temperature"):
        openai_options({"temperature": "3"}, "transcribe", frozenset())


def test_verbose_json_shape():
    words = (Word(0.0, 0.4, " And", 0.9), Word(0.4, 0.9, " so", 0.8))
    seg = Segment(id=0, start=0.0, end=0.9, text=" And so", avg_logprob=-0.2, no_speech_prob=0.01, words=words,
                  temperature=0.0, compression_ratio=0.8, tokens=(400, 370))
    transcript = Transcript(text="And so", language="en", language_probability=1.0, duration=1.0, segments=(seg,))
    body = verbose_json(transcript, "transcribe", words=True)
    assert body["task"] == "transcribe" and body["language"] == "english" and body["duration"] == 1.0
    assert body["segments"][0]["tokens"] == [400, 370]
    assert set(body["segments"][0]) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                                        "avg_logprob", "compression_ratio", "no_speech_prob"}
    assert body["words"] == [{"word": " And", "start": 0.0, "end": 0.4}, {"word": " so", "start": 0.4, "end": 0.9}]
    assert "words" not in verbose_json(transcript, "transcribe", words=False)


def test_language_names_match_whisper_and_the_option_parser():
    # Read openai-whisper's table without importing it (its package imports torch).
    source = Path(importlib.util.find_spec("whisper").origin).parent / "tokenizer.py"
    tree = ast.parse(source.read_text())
    whisper_languages = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                             and getattr(node.targets[0], "id", None) == "LANGUAGES")
    assert LANGUAGE_NAMES == whisper_languages
    assert set(LANGUAGES) == set(LANGUAGE_NAMES)
    assert language_name("EN") == "english" and language_name("xx") == "xx" and language_name(None) is None
