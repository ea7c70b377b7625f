"""An install from before accounts (schema version 4, auth.json format 1) upgrades with its data.

The old data folder is written as that version wrote it: SQL for the database, JSON for auth.json. Then the
appliance of today is built on it and used through its HTTP API.
"""

from __future__ import annotations

import base64
import json

import pytest

from whisper_appliance import app as app_module
from whisper_appliance.core.config import Settings
from whisper_appliance.services import auth
from whisper_appliance.services.appliance import Appliance
from whisper_appliance.services.database import LATEST_VERSION, Database
from whisper_appliance.services.model_manager import ModelManager

from .fakes import silent_factory
from .web import Client

OLD_PASSWORD = "the password of the old admin"
OLD_TOKEN = "wa_a-token-made-in-the-old-admin-panel"
SECRET = base64.b64encode(bytes(range(32))).decode()


def write_version_4_install(data_dir) -> None:
    db = Database(data_dir / "appliance.db", migrate=False)
    assert db.migrate(target=4) == 4
    with db.write() as conn:
        conn.execute("INSERT INTO history (created_at, source, filename, text, language, model, engine, duration, "
                     "segments, audio_sha256, metadata, options_key) VALUES ('2025-01-02T03:04:05.678Z', 'upload', "
                     "'old.wav', 'The payment system still needs testing.', 'en', 'tiny.en', 'faster-whisper', 12.5, "
                     "'[{\"id\": 0, \"start\": 0.0, \"end\": 2.0, \"text\": \" The payment\"}]', ?, '{}', 'k')",
                     ("ab" * 32,))
        conn.execute("INSERT INTO history (created_at, source, text) VALUES ('2025-01-03T00:00:00.000Z', 'live', "
                     "'A dictated note about the budget.')")
        conn.execute("INSERT INTO jobs (id, created_at, updated_at, status, filename, history_id) VALUES "
                     "('j1', '2025-01-02T03:04:00.000Z', '2025-01-02T03:04:05.000Z', 'completed', 'old.wav', 1)")
    db.close()
    (data_dir / "auth.json").write_text(json.dumps({
        "version": 1, "secret_key": SECRET, "admin_password": auth.hash_password(OLD_PASSWORD),
        "tokens": [{"id": "old1", "label": "old laptop", "sha256": auth.token_digest(OLD_TOKEN),
                    "created_at": "2025-01-01T00:00:00+00:00", "last_used_at": None}]}))
    (data_dir / "auth.json").chmod(0o600)


@pytest.fixture
def upgraded(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "admin", "history", "jobs"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_version_4_install(data_dir)
    settings = Settings(data_dir=data_dir, models_dir=tmp_path / "models", async_mode="threading",
                        admin_password="", whisper_model="tiny.en", model_downloads=False).validated()
    appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=silent_factory))
    yield app_module.create_app(settings, appliance=appliance, start_services=False), appliance
    appliance.stop()


def test_the_database_is_migrated_and_keeps_every_entry_as_the_guests(upgraded):
    app, appliance = upgraded
    assert appliance.database.version == LATEST_VERSION
    assert appliance.database.integrity_check() == "ok"
    guest = Client(app)
    page = guest.get("/api/history?q=payment").get_json()
    assert page["total"] == 1
    entry = page["items"][0]
    assert (entry["filename"], entry["created_at"], entry["owner_id"], entry["edited_at"]) == (
        "old.wav", "2025-01-02T03:04:05.678Z", None, None)
    assert guest.get("/api/history").get_json()["total"] == 2  # open mode: shared with anonymous callers, as before
    assert guest.get("/api/jobs/j1").get_json()["history_id"] == 1


def test_the_old_admin_password_and_tokens_keep_working_and_leave_auth_json(upgraded):
    app, appliance = upgraded
    admin = Client(app).login("admin", OLD_PASSWORD)
    assert admin.get("/api/admin/users").get_json()["users"][0]["username"] == "admin"
    assert admin.get("/api/history").get_json()["total"] == 2  # an admin sees every entry
    tokens = admin.get("/api/auth/tokens").get_json()["tokens"]
    assert [(t["id"], t["label"], t["scope"]) for t in tokens] == [("old1", "old laptop", "admin")]
    old_client = Client(app)
    old_client.headers["Authorization"] = f"Bearer {OLD_TOKEN}"
    assert old_client.get("/api/admin/settings").status_code == 200  # it was an admin token: it still is
    assert json.loads((appliance.settings.data_dir / "auth.json").read_text()) == {"version": 2,
                                                                                  "secret_key": SECRET}
    assert app.config["SECRET_KEY"] == bytes(range(32))  # browsers stay logged in across the upgrade


def test_a_backup_from_before_accounts_can_be_restored_without_losing_the_accounts(upgraded, tmp_path):
    app, appliance = upgraded
    admin = Client(app).login("admin", OLD_PASSWORD)
    old_backup = tmp_path / "old-backup.db"
    write_version_4_install(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "appliance.db").rename(old_backup)
    with open(old_backup, "rb") as fh:
        r = admin.post("/api/admin/restore", data={"file": (fh, "old-backup.db")}, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["entries"] == 2
    # The restored database had no accounts: the admin's own stayed (its sessions with it).
    again = Client(app).login("admin", OLD_PASSWORD)
    assert again.get("/api/history").get_json()["total"] == 2
