"""Per-route body limits (http.body_limit): an oversized body is a 413 JSON error before it is parsed."""

from __future__ import annotations

import io
import json

import pytest

from whisper_appliance import app as app_module

from .web import PASSWORD, TOKEN, Client, build_app


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "history", "jobs", "upload", "openai_api"))
    built = []

    yield lambda **overrides: build_app(tmp_path, built, **overrides)
    for appliance in built:
        appliance.stop()


def test_a_json_body_over_max_json_body_is_413_before_it_is_parsed(make_app, monkeypatch):
    app = make_app(max_json_body=1000)
    parsed = []
    monkeypatch.setattr("flask.Request.get_json", lambda *a, **k: parsed.append(1))
    r = Client(app).post("/api/auth/login", data=json.dumps({"username": "admin", "password": "x" * 2000}),
                         content_type="application/json")
    assert r.status_code == 413
    error = r.get_json()["error"]
    assert error["code"] == "payload_too_large" and "MAX_JSON_BODY" in error["message"]
    assert parsed == []


def test_a_json_body_within_the_limit_still_works(make_app):
    app = make_app(max_json_body=1000)
    r = Client(app).post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200


def test_uploads_keep_max_upload_size_and_the_import_has_its_own_limit(make_app):
    app = make_app(max_json_body=1000, max_upload_size=20_000, max_import_size=5000)
    c = Client(app)
    c.headers["Authorization"] = f"Bearer {TOKEN}"
    # An upload far over MAX_JSON_BODY but under MAX_UPLOAD_SIZE gets past the body limit (to the model check).
    r = c.post("/transcribe", data={"audio": (io.BytesIO(b"\0" * 10_000), "a.wav")},
               content_type="multipart/form-data")
    assert r.get_json()["error"]["code"] != "payload_too_large", r.get_json()
    r = c.post("/v1/audio/transcriptions", data={"file": (io.BytesIO(b"\0" * 200_000), "a.wav"), "model": "x"},
               content_type="multipart/form-data")
    assert r.status_code == 413 and "MAX_UPLOAD_SIZE" in r.get_json()["error"]["message"]
    r = c.post("/api/history/import", data=json.dumps([{"text": "x" * 6000}]), content_type="application/json")
    assert r.status_code == 413 and "MAX_IMPORT_SIZE" in r.get_json()["error"]["message"]


def test_metrics_labels_stay_a_fixed_set_whatever_the_method_and_path(make_app):
    app = make_app()
    c = Client(app)
    for n in range(5):
        c.open(f"/no/such/path/{n}", method=f"BREW{n}")
        c.open(f"/random-{n}")
    c.open("/health", method="PROPFIND")  # 405: no rule matched
    c.get("/health")
    labels = {(s.labels["route"], s.labels["method"])
              for metric in app.extensions["appliance"].metrics.requests.collect()
              for s in metric.samples if s.name.endswith("_total")}
    assert labels == {("<unmatched>", "OTHER"), ("<unmatched>", "GET"), ("/health", "GET")}


def test_status_and_metrics_need_a_token_under_require_auth(make_app):
    app = make_app(require_auth=True)
    anon = Client(app)
    for path in ("/api/status", "/metrics"):
        r = anon.get(path)
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "auth_required", path
        assert bearer(app).get(path).status_code == 200, path
    assert anon.get("/health").status_code in (200, 503)  # health stays open for monitors


def test_no_absolute_path_reaches_a_client(make_app, tmp_path):
    app = make_app()
    a = app.extensions["appliance"]
    a.models.load("tiny.en", wait=True)  # loaded from the temporary MODELS_DIR: its path is under tmp_path
    assert str(tmp_path) in a.models.status().path
    texts = [Client(app).get(path).get_data(as_text=True) for path in ("/api/status", "/health")]
    a.models.load("small", wait=True)  # not there, no downloads: the error names MODELS_DIR
    assert str(tmp_path) in a.models.status().error
    texts += [Client(app).get(path).get_data(as_text=True) for path in ("/api/status", "/health")]
    for text in texts:
        assert str(tmp_path) not in text, text
    assert not any(str(v).startswith("/") for v in a.settings.public_dict().values())


def test_hide_paths_keeps_the_last_part_and_urls():
    from whisper_appliance.core.errors import hide_paths

    assert hide_paths("model 'x' is not in /srv/wa/models, see https://example.org/a/b") == (
        "model 'x' is not in .../models, see https://example.org/a/b")
    assert hide_paths(None) is None


def bearer(app) -> Client:
    c = Client(app)
    c.headers["Authorization"] = f"Bearer {TOKEN}"
    return c


# -- cross-site requests -------------------------------------------------------------------------------------------
def login(c: Client, **headers):
    return c.post("/api/auth/login", json={"username": "admin", "password": PASSWORD}, headers=headers)


def test_a_state_changing_request_from_a_foreign_origin_is_403_whatever_the_authentication(make_app):
    app = make_app()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "https://localhost.evil.example", "Sec-Fetch-Site": "same-origin"}):
        r = login(Client(app), **headers)
        assert r.status_code == 403 and r.get_json()["error"]["code"] == "cross_site_request", headers
        r = bearer(app).post("/api/history/delete", json={"ids": [1]}, headers=headers)
        assert r.status_code == 403 and r.get_json()["error"]["code"] == "cross_site_request", headers
    assert bearer(app).get("/api/history", headers={"Origin": "https://evil.example"}).status_code == 200


def test_same_origin_and_non_browser_requests_still_work(make_app):
    app = make_app()
    assert login(Client(app)).status_code == 200  # no Origin: curl, the openai client
    assert login(Client(app), Origin="https://localhost", **{"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert login(Client(app), **{"Sec-Fetch-Site": "same-site"}).status_code == 200


def test_an_origin_listed_in_cors_origins_may_post_cross_site(make_app):
    app = make_app(cors_origins=("https://app.example",))
    r = login(Client(app), Origin="https://app.example", **{"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200
    assert login(Client(app), Origin="https://other.example").status_code == 403


# -- error text ------------------------------------------------------------------------------------------------------
def test_internal_errors_send_a_generic_message_and_log_the_detail_with_the_request_id(make_app, caplog):
    from whisper_appliance.core.errors import ApplianceError, ModelUnavailable

    app = make_app()

    def crash():
        raise RuntimeError("secret detail in /srv/wa/data/appliance.db")

    def internal():
        raise ApplianceError("database /srv/wa/data/appliance.db is closed")

    def busy():
        raise ModelUnavailable("no model is ready: weights not in /srv/wa/models/small", retry_after=30)

    for rule, view in (("/crash", crash), ("/internal", internal), ("/busy", busy)):
        app.add_url_rule(rule, view.__name__, view)
    c = Client(app)
    for path in ("/crash", "/internal"):
        r = c.get(path)
        assert r.status_code == 500
        rid = r.headers["X-Request-Id"]
        message = r.get_json()["error"]["message"]
        assert message == f"internal server error (request id {rid}); the details are in the server log"
        assert r.get_json()["error"]["code"] == "internal_error"
        logged = [rec.getMessage() for rec in caplog.records if rid in rec.getMessage()]
        assert logged, caplog.text
    assert "secret detail in /srv/wa/data" in caplog.text  # the traceback of the crash
    assert "database /srv/wa/data/appliance.db is closed" in caplog.text
    r = c.get("/busy")
    assert r.status_code == 503 and r.headers["Retry-After"] == "30"
    assert r.get_json()["error"] == {"code": "model_unavailable",
                                     "message": "no model is ready: weights not in .../small"}
