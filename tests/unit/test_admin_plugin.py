"""plugins/admin.py and plugins/history.py through Flask's test client on the real app factory.

The services are real (SQLite file, auth file, model store on a temporary MODELS_DIR); only the model engine is
a fake, since these tests are about the HTTP layer around it. Plugins other than health/admin/history are left
out so the tests do not depend on them.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from whisper_appliance import app as app_module
from whisper_appliance.core.config import Settings
from whisper_appliance.core.engines.base import Engine
from whisper_appliance.core.records import LanguageDetection, TranscriptionInfo
from whisper_appliance.http import limiter
from whisper_appliance.plugins.history import retention_loop
from whisper_appliance.services.appliance import Appliance
from whisper_appliance.services.database import Database
from whisper_appliance.services.history import HistoryStore
from whisper_appliance.services.model_manager import ModelManager

PASSWORD = "unit-admin-password"
TOKEN = "unit-api-token"
HTTPS = "https://localhost"


class FakeEngine(Engine):
    engine_name = "faster-whisper"

    def transcribe(self, audio, options):
        return iter(()), TranscriptionInfo("en", 1.0, len(audio) / 16000)

    def detect_language(self, audio):
        return LanguageDetection("en", 1.0)

    def close(self) -> None:
        pass


def fake_factory(engine, model_name, path, *, device, compute_type, cpu_threads, workers):
    return FakeEngine(model_name, "cpu", "int8")


def fake_weights(models_dir: Path, name: str) -> None:
    d = models_dir / name
    d.mkdir(parents=True)
    for f in ("model.bin", "config.json", "tokenizer.json"):
        (d / f).write_text("{}")


class Client:
    """The test client over https (the session cookie is Secure), with an optional CSRF header."""

    def __init__(self, app) -> None:
        self.inner = app.test_client()
        self.headers: dict[str, str] = {}

    def __getattr__(self, method):
        def call(path, **kwargs):
            headers = {**self.headers, **kwargs.pop("headers", {})}
            return getattr(self.inner, method)(path, base_url=HTTPS, headers=headers, **kwargs)
        return call

    def login(self) -> Client:
        r = self.post("/api/admin/login", json={"password": PASSWORD})
        assert r.status_code == 200, r.get_json()
        self.headers["X-CSRF-Token"] = r.get_json()["csrf_token"]
        return self


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "admin", "history"))
    built = []

    def make(**overrides):
        models_dir = tmp_path / "models"
        for name in ("tiny.en", "base"):
            if not (models_dir / name).exists():
                fake_weights(models_dir, name)
        values = dict(data_dir=tmp_path / "data", models_dir=models_dir, async_mode="threading",
                      admin_password=PASSWORD, api_keys=(TOKEN,), whisper_model="tiny.en", model_downloads=False)
        values.update(overrides)
        settings = Settings(**values).validated()
        appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=fake_factory))
        app = app_module.create_app(settings, appliance=appliance, start_services=False)
        limiter.reset()
        built.append(appliance)
        return app

    yield make
    for a in built:
        a.stop()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def appliance(app):
    return app.extensions["appliance"]


def load_ready(appliance, name="tiny.en"):
    status = appliance.models.load(name, wait=True)
    assert status.state == "ready", status


def add_entry(appliance, text, **extra):
    values = dict(source="upload", filename="talk.wav", language="en", model="tiny.en", engine="faster-whisper",
                  duration=4.0, segments=[{"start": 0.0, "end": 2.0, "text": text}])
    values.update(extra)
    return appliance.history.add(text=text, **values)


# -- login and session -------------------------------------------------------------------------------------------
def test_login_wrong_password_is_401_and_logged(app, caplog):
    caplog.set_level(logging.WARNING, logger="whisper_appliance.plugins.admin")
    r = Client(app).post("/api/admin/login", json={"password": "nope"})
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "invalid_password"
    assert any("failed admin login" in rec.getMessage() for rec in caplog.records)


def test_login_sets_a_session_with_csrf(app):
    c = Client(app).login()
    r = c.get("/api/admin/session")
    assert r.get_json() == {"admin": True, "csrf_token": c.headers["X-CSRF-Token"]}
    assert c.post("/api/admin/logout").get_json() == {"admin": False}
    assert c.get("/api/admin/session").get_json() == {"admin": False}
    assert c.get("/api/admin/tokens").status_code == 401


def test_login_body_must_be_json(app):
    r = Client(app).post("/api/admin/login", data="password=x")
    assert r.status_code == 400


def test_failed_logins_are_rate_limited_but_good_ones_do_not_count(app):
    c = Client(app)
    for _ in range(12):
        c.login()
    codes = [c.post("/api/admin/login", json={"password": "bad"}).status_code for _ in range(11)]
    assert codes[:10] == [401] * 10
    assert codes[10] == 429
    r = c.post("/api/admin/login", json={"password": PASSWORD})
    assert r.status_code == 429
    assert r.get_json()["error"]["code"] == "rate_limited"


def test_admin_routes_need_auth_and_csrf(app):
    anon = Client(app)
    assert anon.get("/api/admin/settings").status_code == 401
    assert anon.post("/api/admin/tokens", json={"label": "x"}).status_code == 401

    c = Client(app).login()
    csrf = c.headers.pop("X-CSRF-Token")
    r = c.post("/api/admin/tokens", json={"label": "x"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "csrf_failed"
    assert c.get("/api/admin/settings").status_code == 200  # reads need no CSRF header
    c.headers["X-CSRF-Token"] = csrf
    assert c.post("/api/admin/tokens", json={"label": "x"}).status_code == 201

    bearer = Client(app)
    bearer.headers["Authorization"] = f"Bearer {TOKEN}"
    assert bearer.post("/api/admin/tokens", json={"label": "y"}).status_code == 201


def test_settings_hide_secrets(app):
    body = Client(app).login().get("/api/admin/settings").get_json()
    assert body["whisper_model"] == "tiny.en"
    assert "admin_password" not in body and "api_keys" not in body
    assert PASSWORD not in json.dumps(body) and TOKEN not in json.dumps(body)


def test_tokens_create_use_revoke(app):
    c = Client(app).login()
    r = c.post("/api/admin/tokens", json={"label": "laptop"})
    assert r.status_code == 201
    created = r.get_json()
    assert created["label"] == "laptop" and created["token"].startswith("wa_")
    listed = c.get("/api/admin/tokens").get_json()["tokens"]
    assert [t["label"] for t in listed] == ["API_KEYS #1", "laptop"]
    assert created["token"] not in json.dumps(listed)

    user = Client(app)
    user.headers["Authorization"] = f"Bearer {created['token']}"
    assert user.get("/api/admin/settings").status_code == 200
    assert c.delete(f"/api/admin/tokens/{created['id']}").get_json() == {"deleted": created["id"]}
    assert user.get("/api/admin/settings").status_code == 401
    assert c.delete(f"/api/admin/tokens/{created['id']}").status_code == 404
    assert c.post("/api/admin/tokens", json={"label": "  "}).status_code == 400


# -- models ------------------------------------------------------------------------------------------------------
def test_models_list_marks_the_loaded_one(app, appliance):
    load_ready(appliance)
    body = Client(app).get("/api/models").get_json()
    states = {m["name"]: m["state"] for m in body["models"]}
    assert states["tiny.en"] == "loaded" and states["base"] == "downloaded" and states["medium"] == "available"
    assert all("path" not in m for m in body["models"])
    assert body["current"]["name"] == "tiny.en"


def test_models_list_follows_require_auth(make_app):
    app = make_app(require_auth=True)
    assert Client(app).get("/api/models").status_code == 401
    c = Client(app)
    c.headers["Authorization"] = f"Bearer {TOKEN}"
    assert c.get("/api/models").status_code == 200


def test_load_model(app, appliance):
    load_ready(appliance)
    c = Client(app).login()
    r = c.post("/api/models/load", json={"name": "nonsense"})
    assert r.status_code == 400 and "tiny.en" in r.get_json()["error"]["message"]
    assert c.post("/api/models/load", json={"name": "base", "engine": "x"}).status_code == 400
    assert c.post("/api/models/load", json={"name": "tiny.en"}).status_code == 200  # already loaded

    r = c.post("/api/models/load", json={"name": "base"})
    assert r.status_code == 202
    body = r.get_json()
    assert body["status"]["name"] == "base" and body["status"]["state"] == "loading"
    assert body["links"] == {"status": "/api/status"}
    deadline = time.monotonic() + 10
    while appliance.models.status().state == "loading" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert appliance.models.status().state == "ready" and appliance.models.status().name == "base"


def test_load_of_a_model_not_available_offline_ends_in_error(app, appliance):
    c = Client(app).login()
    assert c.post("/api/models/load", json={"name": "medium"}).status_code == 202
    appliance.models.load("medium", wait=True)  # joins the load already running
    status = appliance.models.status()
    assert status.state == "error" and "tiny.en" in status.error


def test_delete_model(app, appliance, tmp_path):
    load_ready(appliance)
    c = Client(app).login()
    r = c.delete("/api/models/tiny.en")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "model_in_use"
    assert c.delete("/api/models/..%2Fdata").status_code == 404
    assert c.delete("/api/models/medium").status_code == 404  # known, but nothing on disk
    assert c.delete("/api/models/base").get_json() == {"deleted": "base"}
    assert not (tmp_path / "models" / "base").exists()
    assert (tmp_path / "models" / "tiny.en").exists()


# -- history -----------------------------------------------------------------------------------------------------
def test_history_search_filters_pages(app, appliance):
    add_entry(appliance, "the quarterly payment was late")
    add_entry(appliance, "lunch on friday", source="live", language="de")
    add_entry(appliance, "payment plan agreed", created_at="2020-01-02T10:00:00Z")
    c = Client(app)
    body = c.get("/api/history?q=payment").get_json()
    assert body["total"] == 2
    assert all("\u0002payment\u0003" in item["snippet"] for item in body["items"])
    assert c.get("/api/history?source=live").get_json()["total"] == 1
    assert c.get("/api/history?language=de").get_json()["items"][0]["text"] == "lunch on friday"
    assert c.get("/api/history?until=2020-01-02").get_json()["total"] == 1
    assert c.get("/api/history?since=2021-01-01").get_json()["total"] == 2
    page = c.get("/api/history?limit=1&offset=1").get_json()
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (3, 1, 1, 1)
    assert c.get("/api/history?limit=abc").status_code == 400
    assert c.get("/api/history?source=nope").status_code == 400


def test_history_get_patch_delete(app, appliance):
    entry = add_entry(appliance, "first version")
    anon, admin = Client(app), Client(app).login()
    assert anon.get(f"/api/history/{entry.id}").get_json()["text"] == "first version"
    assert anon.get("/api/history/99999").status_code == 404
    r = anon.patch(f"/api/history/{entry.id}", json={"text": "corrected version"})
    assert r.status_code == 200 and r.get_json()["text"] == "corrected version"
    assert anon.get("/api/history?q=corrected").get_json()["total"] == 1
    assert anon.patch(f"/api/history/{entry.id}", json={"text": 5}).status_code == 400
    assert anon.delete(f"/api/history/{entry.id}").status_code == 401
    assert admin.delete(f"/api/history/{entry.id}").get_json() == {"deleted": entry.id}
    assert admin.delete(f"/api/history/{entry.id}").status_code == 404


def test_patch_with_cookie_needs_csrf(app, appliance):
    entry = add_entry(appliance, "text")
    c = Client(app).login()
    c.headers.pop("X-CSRF-Token")
    assert c.patch(f"/api/history/{entry.id}", json={"text": "x"}).status_code == 403


def test_delete_many(app, appliance):
    ids = [add_entry(appliance, f"entry {i}").id for i in range(3)]
    c = Client(app).login()
    assert c.post("/api/history/delete", json={"ids": ids[:2] + [12345]}).get_json() == {"deleted": 2}
    assert c.post("/api/history/delete", json={"ids": list(range(1001))}).status_code == 400
    assert c.post("/api/history/delete", json={"ids": ["1"]}).status_code == 400
    assert [i["id"] for i in c.get("/api/history").get_json()["items"]] == [ids[2]]


def test_entry_export_formats(app, appliance):
    entry = add_entry(appliance, "hello there")
    c = Client(app)
    srt = c.get(f"/api/history/{entry.id}/export?format=srt")
    assert srt.status_code == 200
    assert "00:00:00,000 --> 00:00:02,000" in srt.get_data(as_text=True)
    assert 'filename="talk.srt"' in srt.headers["Content-Disposition"]
    assert c.get(f"/api/history/{entry.id}/export?format=vtt").get_data(as_text=True).startswith("WEBVTT")
    assert c.get(f"/api/history/{entry.id}/export?format=txt").get_data(as_text=True).strip() == "hello there"
    as_json = c.get(f"/api/history/{entry.id}/export?format=json")
    assert as_json.get_json()["id"] == entry.id and "attachment" in as_json.headers["Content-Disposition"]
    assert c.get(f"/api/history/{entry.id}/export?format=html").status_code == 400


def test_export_import_round_trip(make_app, tmp_path):
    source_app = make_app()
    a = source_app.extensions["appliance"]
    add_entry(a, "alpha, with \"quotes\"\nand a newline", created_at="2024-05-01T08:00:00.123Z")
    add_entry(a, "beta", source="live", audio_sha256="ab" * 32)
    exports = {}
    for fmt in ("json", "csv"):
        r = Client(source_app).get(f"/api/history/export?format={fmt}")
        assert r.status_code == 200
        assert f".{fmt}\"" in r.headers["Content-Disposition"]
        exports[fmt] = r.get_data()
    originals = [(e["created_at"], e["text"], e["source"]) for e in json.loads(exports["json"])]
    assert len(originals) == 2

    for fmt, data in exports.items():
        target_app = make_app(data_dir=tmp_path / f"fresh-{fmt}")
        c = Client(target_app).login()
        upload = {"file": (io.BytesIO(data), f"history.{fmt}")}
        r = c.post("/api/history/import", data=upload, content_type="multipart/form-data")
        assert r.get_json() == {"imported": 2, "skipped_duplicates": 0, "errors": [], "error_count": 0}
        again = c.post("/api/history/import", data={"file": (io.BytesIO(data), "no-extension")},
                       content_type="multipart/form-data")
        assert again.get_json()["skipped_duplicates"] == 2
        entries = json.loads(Client(target_app).get("/api/history/export").get_data())
        assert sorted((e["created_at"], e["text"], e["source"]) for e in entries) == sorted(originals)


def test_import_rejects_bad_input(app):
    c = Client(app).login()
    r = c.post("/api/history/import", data={"file": (io.BytesIO(b"\x89PNG\r\n\x1a\n\x00\x00"), "x.json")},
               content_type="multipart/form-data")
    assert r.status_code == 400
    assert c.post("/api/history/import", json=[{"text": "no date"}]).status_code == 400
    r = c.post("/api/history/import", json=[{"text": "ok", "created_at": "2024-01-01T00:00:00Z"}, {"x": 1}])
    assert r.get_json()["imported"] == 1 and r.get_json()["errors"][0].startswith("row 2")
    assert Client(app).post("/api/history/import", json=[]).status_code == 401
    r = c.post("/api/history/import", data={"upload": (io.BytesIO(b"[]"), "x.json")},
               content_type="multipart/form-data")
    assert r.status_code == 400 and "'file'" in r.get_json()["error"]["message"]
    assert c.post("/api/history/import", data="[]", content_type="text/plain").status_code == 400


def test_stats(app, appliance):
    add_entry(appliance, "one")
    body = Client(app).get("/api/history/stats").get_json()
    assert body["entries"] == 1 and body["by_source"] == {"upload": 1}


def test_backup_and_restore(app, appliance, tmp_path):
    add_entry(appliance, "kept in the backup")
    c = Client(app).login()
    r = c.get("/api/admin/backup")
    assert r.status_code == 200
    assert r.headers["Content-Disposition"].startswith('attachment; filename="whisper-appliance-')
    backup = tmp_path / "backup.db"
    backup.write_bytes(r.get_data())
    r.close()
    assert not list((tmp_path / "data" / "tmp").iterdir())
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    add_entry(appliance, "written after the backup")
    for junk in (b"\x89PNG\r\n\x1a\n" + bytes(200), b"SQLite format 3\x00" + bytes(100)):
        r = c.post("/api/admin/restore", data={"file": (io.BytesIO(junk), "x.db")},
                   content_type="multipart/form-data")
        assert r.status_code == 400, r.get_json()
    assert c.get("/api/history").get_json()["total"] == 2

    r = c.post("/api/admin/restore", data={"file": (io.BytesIO(backup.read_bytes()), "b.db")},
               content_type="multipart/form-data")
    assert r.status_code == 200 and r.get_json()["entries"] == 1
    assert [i["text"] for i in c.get("/api/history").get_json()["items"]] == ["kept in the backup"]
    assert not list((tmp_path / "data" / "tmp").iterdir())
    assert Client(app).get("/api/admin/backup").status_code == 401
    r = c.post("/api/admin/restore", data={"backup": (io.BytesIO(b"x"), "b.db")}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "missing_file"
    r = c.post("/api/admin/restore", data={"file": (io.BytesIO(b""), "b.db")}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "empty_file"
    assert not list((tmp_path / "data" / "tmp").iterdir())


class _StopLoop(Exception):
    pass


class _Sleeper:
    def __init__(self, rounds: int) -> None:
        self.rounds, self.slept = rounds, []

    def sleep(self, seconds):
        self.slept.append(seconds)
        if len(self.slept) >= self.rounds:
            raise _StopLoop


def test_retention_loop_purges_every_round_and_survives_failures(appliance, caplog):
    add_entry(appliance, "old", created_at="2001-01-01T00:00:00Z")
    add_entry(appliance, "recent")
    calls = []

    def purge(days):
        calls.append(days)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return appliance.history.purge_older_than(days)

    sleeper = _Sleeper(rounds=2)
    with pytest.raises(_StopLoop):
        retention_loop(sleeper, purge, 7)
    assert calls == [7, 7] and sleeper.slept == [3600, 3600]
    assert "history retention clean-up failed" in caplog.text
    assert [i["text"] for i in stored_entries(appliance)] == ["recent"]


def stored_entries(appliance):
    return [h.entry.to_dict() for h in appliance.history.search().items]


def test_retention_task_starts_with_the_app(make_app, tmp_path):
    data_dir = tmp_path / "retention"
    db = Database(data_dir / "appliance.db")
    HistoryStore(db).add(text="ancient", source="upload", created_at="2001-01-01T00:00:00Z")
    db.close()
    app = make_app(data_dir=data_dir, history_retention_days=30)
    history = app.extensions["appliance"].history
    deadline = time.monotonic() + 10
    while history.search().total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert history.search().total == 0


def test_no_retention_task_when_zero(make_app, tmp_path):
    data_dir = tmp_path / "keep"
    db = Database(data_dir / "appliance.db")
    HistoryStore(db).add(text="ancient", source="upload", created_at="2001-01-01T00:00:00Z")
    db.close()
    app = make_app(data_dir=data_dir, history_retention_days=0)
    assert app.extensions["appliance"].history.search().total == 1
