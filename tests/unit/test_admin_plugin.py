"""plugins/admin.py and plugins/history.py through Flask's test client on the real app factory.

The services are real (SQLite file, auth file, model store on a temporary MODELS_DIR); only the model engine is
a fake, since these tests are about the HTTP layer around it. Plugins other than health/admin/history are left
out so the tests do not depend on them.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time

import pytest

from whisper_appliance import app as app_module
from whisper_appliance.core.config import Settings
from whisper_appliance.core.errors import ApplianceError
from whisper_appliance.core.identity import SYSTEM
from whisper_appliance.core.records import Segment, Transcript
from whisper_appliance.http import limiter
from whisper_appliance.services.appliance import Appliance
from whisper_appliance.services.database import Database
from whisper_appliance.services.history import HistoryStore
from whisper_appliance.services.model_manager import ModelManager
from whisper_appliance.services.retention import RetentionTask

from .fakes import silent_factory
from .web import PASSWORD, TOKEN, Client, fake_weights


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "admin", "history"))
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
        appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=silent_factory))
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


# -- access ------------------------------------------------------------------------------------------------------
def test_admin_routes_need_an_admin_login_or_admin_token_and_csrf(app, appliance):
    anon = Client(app)
    assert anon.get("/api/admin/settings").status_code == 401
    r = anon.post("/api/admin/users", json={"username": "x", "password": "a long enough password"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "auth_required"

    c = Client(app).login()
    csrf = c.headers.pop("X-CSRF-Token")
    r = c.post("/api/admin/users", json={"username": "bob", "password": "a long enough password"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "csrf_failed"
    assert c.get("/api/admin/settings").status_code == 200  # reads need no CSRF header
    c.headers["X-CSRF-Token"] = csrf
    assert c.post("/api/admin/users", json={"username": "bob", "password": "a long enough password"}).status_code == 201

    api_key = Client(app)  # API_KEYS are transcribe tokens of the admin: no administration with them
    api_key.headers["Authorization"] = f"Bearer {TOKEN}"
    r = api_key.get("/api/admin/settings")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "insufficient_scope"
    admin_token = c.post("/api/auth/tokens", json={"label": "ops", "scope": "admin"}).get_json()["token"]
    ops = Client(app)
    ops.headers["Authorization"] = f"Bearer {admin_token}"
    assert ops.get("/api/admin/settings").status_code == 200
    bob = Client(app).login("bob", "a long enough password")
    r = bob.get("/api/admin/users")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "admin_required"


# -- users -------------------------------------------------------------------------------------------------------
def test_create_list_and_change_users(app, appliance):
    c = Client(app).login()
    r = c.post("/api/admin/users", json={"username": "alice", "password": "a long enough password"})
    assert r.status_code == 201
    alice = r.get_json()
    assert (alice["username"], alice["role"], alice["disabled"]) == ("alice", "user", False)
    assert "password" not in json.dumps(alice) and "hash" not in json.dumps(alice)
    assert c.post("/api/admin/users", json={"username": "ALICE", "password": "a long enough password"}
                  ).status_code == 409
    assert c.post("/api/admin/users", json={"username": "carol", "password": "short"}).status_code == 400
    assert c.post("/api/admin/users", json={"username": "carol", "password": "a long enough password",
                                            "role": "root"}).status_code == 400
    assert [u["username"] for u in c.get("/api/admin/users").get_json()["users"]] == ["admin", "alice"]

    session = Client(app).login("alice", "a long enough password")
    assert session.get("/api/auth/me").get_json()["username"] == "alice"
    r = c.patch(f"/api/admin/users/{alice['id']}", json={"disabled": True})
    assert r.status_code == 200 and r.get_json()["disabled"] is True
    me = session.get("/api/auth/me").get_json()
    assert me["authenticated"] is False  # the copied cookie's session ended with the account
    assert Client(app).post("/api/auth/login", json={"username": "alice", "password": "a long enough password"}
                            ).status_code == 403
    assert c.patch(f"/api/admin/users/{alice['id']}", json={"disabled": False, "role": "admin",
                                                            "password": "a reset long password"}).status_code == 200
    promoted = Client(app).login("alice", "a reset long password")
    assert promoted.get("/api/admin/users").status_code == 200
    for body in ({}, {"name": "x"}, {"disabled": "yes"}, {"role": "root"}, {"password": "short"}):
        assert c.patch(f"/api/admin/users/{alice['id']}", json=body).status_code == 400, body
    assert c.patch("/api/admin/users/999", json={"role": "user"}).status_code == 404
    assert c.patch("/api/admin/users/abc", json={"role": "user"}).status_code == 404
    admin_id = c.get("/api/auth/me").get_json()["id"]
    r = c.patch(f"/api/admin/users/{admin_id}", json={"disabled": True})
    assert r.status_code == 409


def test_delete_a_user_with_their_data_or_handing_it_over(app, appliance):
    c = Client(app).login()
    ids = {}
    for name in ("alice", "bob", "carol"):
        ids[name] = c.post("/api/admin/users", json={"username": name, "password": "a long enough password"}
                           ).get_json()["id"]
    add_entry(appliance, "alice says hello", owner_id=ids["alice"])
    add_entry(appliance, "bob says hello", owner_id=ids["bob"])
    guest = add_entry(appliance, "a guest says hello")
    assert c.delete(f"/api/admin/users/{ids['alice']}").status_code == 400  # say what happens to the data
    assert c.delete(f"/api/admin/users/{ids['alice']}?data=delete&transfer_to={ids['bob']}").status_code == 400
    assert c.delete(f"/api/admin/users/{ids['alice']}?transfer_to={ids['alice']}").status_code == 400
    assert c.delete(f"/api/admin/users/{ids['alice']}?transfer_to=999").status_code == 404

    r = c.delete(f"/api/admin/users/{ids['alice']}?transfer_to={ids['carol']}")
    assert r.status_code == 200
    assert r.get_json() == {"deleted": ids["alice"], "username": "alice", "entries": 1, "jobs": 0,
                            "transferred_to": ids["carol"]}
    carol = Client(app).login("carol", "a long enough password")
    assert [i["text"] for i in carol.get("/api/history").get_json()["items"]] == ["alice says hello"]
    assert Client(app).post("/api/auth/login", json={"username": "alice", "password": "a long enough password"}
                            ).status_code == 401

    r = c.delete(f"/api/admin/users/{ids['bob']}?data=delete")
    assert r.status_code == 200 and r.get_json()["entries"] == 1
    texts = [i["text"] for i in c.get("/api/history").get_json()["items"]]
    assert sorted(texts) == ["a guest says hello", "alice says hello"]
    assert c.get(f"/api/history/{guest.id}").status_code == 200
    assert c.delete(f"/api/admin/users/{ids['bob']}?data=delete").status_code == 404
    admin_id = c.get("/api/auth/me").get_json()["id"]
    assert c.delete(f"/api/admin/users/{admin_id}?data=delete").status_code == 409


def test_admin_stats_per_user(app, appliance):
    c = Client(app).login()
    alice = c.post("/api/admin/users", json={"username": "alice", "password": "a long enough password"}).get_json()
    add_entry(appliance, "x" * 1000, owner_id=alice["id"], duration=1800.0)
    add_entry(appliance, "guest words", duration=360.0)
    body = c.get("/api/admin/stats").get_json()
    rows = {u["username"]: u for u in body["users"]}
    assert rows["alice"]["entries"] == 1 and rows["alice"]["audio_hours"] == 0.5
    assert rows["alice"]["storage_bytes"] > 1000 and rows["alice"]["jobs"]["completed"] == 0
    assert rows["admin"]["entries"] == 0
    assert body["guest"]["entries"] == 1 and body["guest"]["audio_hours"] == 0.1
    assert body["totals"]["entries"] == 2 and body["totals"]["users"] == 2
    assert body["totals"]["database_bytes"] > 0


def test_settings_hide_secrets(app):
    body = Client(app).login().get("/api/admin/settings").get_json()
    assert body["whisper_model"] == "tiny.en"
    assert "admin_password" not in body and "api_keys" not in body
    assert PASSWORD not in json.dumps(body) and TOKEN not in json.dumps(body)


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
def test_history_search_refuses_hostile_queries_and_dates_with_400s(app, appliance):
    add_entry(appliance, "the quarterly payment was late")
    c = Client(app)
    attack = "%20".join(f"{chr(ord('a') + i % 26)}*" for i in range(300))
    r = c.get(f"/api/history?q={attack}")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "query_too_complex"
    for query in ("until=9999-12-31", "since=0000-01-01", "since=garbage", "until=0001-01-01T00:00:00%2B05:00",
                  "since=%C2%85"):  # U+0085 alone: Python's strip() would have made it "no date"
        r = c.get(f"/api/history?{query}")
        assert r.status_code == 400, (query, r.status_code)
        assert r.get_json()["error"]["code"] == "invalid_date"
    assert c.get("/api/history?q=pay*").get_json()["total"] == 1


def test_an_unknown_user_that_looks_like_a_number_is_a_404_not_a_500(app):
    c = Client(app).login()  # the admin
    for user in ("%C2%B3", "%D9%A3", "12345"):  # '³' and Arabic-Indic 3 pass str.isdigit() but not int()
        r = c.get(f"/api/history/stats?user={user}")
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "unknown_user", user


def test_history_text_is_capped_on_every_path_that_stores_it(make_app):
    app = make_app(history_max_text_length=20)
    appliance = app.extensions["appliance"]
    c = Client(app).login()
    entry = add_entry(appliance, "short enough")
    too_long = "x" * 21

    r = c.patch(f"/api/history/{entry.id}", json={"text": too_long})  # edit
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "text_too_long"
    assert c.patch(f"/api/history/{entry.id}", json={"text": "y" * 20}).status_code == 200

    r = c.post("/api/history/import", json=[{"text": too_long, "created_at": "2024-01-01T00:00:00Z"},
                                            {"text": "fits", "created_at": "2024-01-01T00:00:00Z"}])  # import
    assert r.status_code == 200 and r.get_json()["imported"] == 1
    assert "at most 20" in r.get_json()["errors"][0]

    transcript = Transcript(text=too_long, segments=(Segment(0, 0.0, 1.0, too_long),), language="en",
                            language_probability=1.0, duration=1.0)
    for source in ("upload", "live"):  # what uploads, jobs and live sessions store through
        with pytest.raises(ApplianceError) as caught:
            appliance.transcription.record(transcript, None, source=source, filename=None, audio_sha256=None,
                                           processing_seconds=0.1, owner_id=None)
        assert caught.value.code == "text_too_long" and caught.value.status == 413
    assert sorted(i["text"] for i in c.get("/api/history").get_json()["items"]) == ["fits", "y" * 20]


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
        # Imported entries join the importing admin's history unless ?owner= names another owner.
        assert json.loads(Client(target_app).get("/api/history/export").get_data()) == []
        entries = json.loads(c.get("/api/history/export").get_data())
        assert sorted((e["created_at"], e["text"], e["source"]) for e in entries) == sorted(originals)
        r = c.post("/api/history/import?owner=guest", data={"file": (io.BytesIO(data), f"history.{fmt}")},
                   content_type="multipart/form-data")
        assert r.get_json()["imported"] == 2  # another owner's copies are not duplicates
        assert len(json.loads(Client(target_app).get("/api/history/export").get_data())) == 2
        r = c.post("/api/history/import?owner=nobody", data={"file": (io.BytesIO(data), f"history.{fmt}")},
                   content_type="multipart/form-data")
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "unknown_user"


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


def test_restore_of_a_crafted_backup_is_a_clear_400_and_keeps_the_data(app, appliance, tmp_path):
    add_entry(appliance, "kept")
    c = Client(app).login()
    crafted = tmp_path / "crafted.db"
    appliance.database.backup_to(crafted)
    with sqlite3.connect(crafted) as conn:
        conn.execute("CREATE TRIGGER spy AFTER INSERT ON history BEGIN UPDATE history SET text = 'owned'; END")
    r = c.post("/api/admin/restore", data={"file": (io.BytesIO(crafted.read_bytes()), "b.db")},
               content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "backup_schema_mismatch"
    assert "trigger spy" in r.get_json()["error"]["message"]
    add_entry(appliance, "after")
    assert sorted(i["text"] for i in c.get("/api/history").get_json()["items"]) == ["after", "kept"]
    assert not list((tmp_path / "data" / "tmp").iterdir())


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_retention_purges_every_round_and_survives_failures(appliance, caplog):
    add_entry(appliance, "old", created_at="2001-01-01T00:00:00Z")
    add_entry(appliance, "recent")
    calls = []

    def purge(days):
        calls.append(days)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return appliance.history.purge_older_than(days)

    task = RetentionTask(purge, 7, interval=0.01)
    task.start()
    try:
        assert wait_until(lambda: task.rounds >= 3)
    finally:
        task.stop()
    assert not task.running
    assert set(calls) == {7} and len(calls) >= 3
    assert "history retention clean-up failed" in caplog.text
    assert [i["text"] for i in stored_entries(appliance)] == ["recent"]


def stored_entries(appliance):
    return [h.entry.to_dict() for h in appliance.history.search(SYSTEM).items]


def test_building_the_app_starts_no_thread_and_start_begins_retention(make_app, tmp_path):
    data_dir = tmp_path / "retention"
    db = Database(data_dir / "appliance.db")
    HistoryStore(db).add(text="ancient", source="upload", created_at="2001-01-01T00:00:00Z")
    db.close()
    before = {t.ident for t in threading.enumerate()}
    app = make_app(data_dir=data_dir, history_retention_days=30)
    appliance = app.extensions["appliance"]
    def started() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]

    # create_app(start_services=False) starts nothing (a short-lived thread an earlier test left may still end).
    wait_until(lambda: not started(), timeout=2.0)
    assert started() == []
    assert appliance.history.search(SYSTEM).total == 1
    appliance.start(load_model=False)
    assert appliance.retention.running
    assert wait_until(lambda: appliance.history.search(SYSTEM).total == 0)
    appliance.stop()
    assert not appliance.retention.running
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= before


def test_no_retention_task_when_zero(make_app, tmp_path):
    data_dir = tmp_path / "keep"
    db = Database(data_dir / "appliance.db")
    HistoryStore(db).add(text="ancient", source="upload", created_at="2001-01-01T00:00:00Z")
    db.close()
    app = make_app(data_dir=data_dir, history_retention_days=0)
    appliance = app.extensions["appliance"]
    appliance.start(load_model=False)
    assert not appliance.retention.running
    assert appliance.history.search(SYSTEM).total == 1


def test_start_removes_leftovers_from_data_dir_tmp(make_app, tmp_path):
    data_dir = tmp_path / "leftovers"
    tmp = data_dir / "tmp"
    tmp.mkdir(parents=True)
    for name in ("upload-abc.audio", "whisper-audio-x.bin", "restore-1.db"):
        (tmp / name).write_bytes(b"left by a killed process")
    (tmp / "stray-dir").mkdir()
    (data_dir / "keep.txt").write_text("not in tmp")
    app = make_app(data_dir=data_dir)
    appliance = app.extensions["appliance"]
    appliance.start(load_model=False)
    try:
        assert list(tmp.iterdir()) == []
        assert (data_dir / "keep.txt").exists()
    finally:
        appliance.stop()
