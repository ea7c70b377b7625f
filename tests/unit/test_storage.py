"""A full disk: uploads, job files and database writes answer 507 ``insufficient_storage`` and lose nothing stored.

ENOSPC is raised by a monkeypatched write (no root needed for a tiny filesystem); a full database is real: SQLite's
``max_page_count`` stops it growing, which it reports exactly as a full disk (SQLITE_FULL).
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_appliance.core.errors import InsufficientStorage
from whisper_appliance.core.identity import GUEST, SYSTEM
from whisper_appliance.core.records import TranscribeOptions
from whisper_appliance.services import jobs as jobs_module
from whisper_appliance.services import transcription as transcription_module
from whisper_appliance.services.database import Database
from whisper_appliance.services.history import HistoryStore
from whisper_appliance.services.transcription import spool_upload

from .test_jobs_service import Env


class FullFile(io.RawIOBase):
    """A writable file on a full disk."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_spooling_an_upload_on_a_full_disk_is_507_and_leaves_no_file(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    def full_fdopen(fd, *args, **kwargs):
        os.close(fd)
        return FullFile()

    monkeypatch.setattr(transcription_module.os, "fdopen", full_fdopen)
    with pytest.raises(InsufficientStorage) as exc:
        spool_upload(io.BytesIO(b"RIFF" + b"\0" * 5000), tmp_path, "a.wav", 1 << 20)
    assert (exc.value.status, exc.value.code) == (507, "insufficient_storage")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(transcription_module.os, "fdopen", real_fdopen)


def test_a_full_database_is_507_and_keeps_what_it_held(tmp_path):
    db = Database(tmp_path / "appliance.db")
    history = HistoryStore(db)
    kept = history.add(text="stored before the disk filled", source="upload")
    with db.write() as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(InsufficientStorage) as exc:
        history.add(text="x" * 200_000, source="upload")
    assert exc.value.status == 507
    assert history.get(SYSTEM, kept.id).text == "stored before the disk filled"
    assert history.search(SYSTEM).total == 1
    with db.write() as conn:  # space again: the connection still works
        conn.execute("PRAGMA max_page_count = 1073741823")
    history.add(text="after", source="upload")
    assert history.search(SYSTEM).total == 2
    db.close()


def test_a_job_file_that_cannot_be_written_is_507_and_no_job(tmp_path, monkeypatch):
    env = Env(tmp_path)
    try:
        def no_link(src, dest):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        def full_copy(src, dest):
            Path(dest).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(jobs_module.os, "link", no_link)
        monkeypatch.setattr(jobs_module.shutil, "copyfile", full_copy)
        path = tmp_path / "speech.wav"
        sf.write(path, (np.random.default_rng(1).standard_normal(16_000) * 0.01).astype(np.float32), 16_000)
        with open(path, "rb") as f:
            spooled = spool_upload(f, env.settings.data_dir / "tmp", path.name, 1 << 24)
        with pytest.raises(InsufficientStorage):
            env.queue.submit(spooled, TranscribeOptions(), owner=GUEST)
        spooled.path.unlink()
        assert env.queue.list(SYSTEM) == []
        assert env.job_files(settle=0) == []
    finally:
        env.close()


def test_transcribe_on_a_full_disk_answers_507_json(tmp_path, monkeypatch):
    from whisper_appliance import app as app_module
    from whisper_appliance.core.config import Settings
    from whisper_appliance.services.appliance import Appliance
    from whisper_appliance.services.model_manager import ModelManager

    from .fakes import silent_factory
    from .web import PASSWORD, TOKEN, Client, fake_weights

    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "upload"))
    fake_weights(tmp_path / "models", "tiny.en")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", async_mode="threading",
                        admin_password=PASSWORD, api_keys=(TOKEN,), whisper_model="tiny.en",
                        model_downloads=False).validated()
    appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=silent_factory))
    app = app_module.create_app(settings, appliance=appliance, start_services=False)

    def full_fdopen(fd, *args, **kwargs):
        os.close(fd)
        return FullFile()

    monkeypatch.setattr(transcription_module.os, "fdopen", full_fdopen)
    try:
        r = Client(app).post("/transcribe", data={"audio": (io.BytesIO(b"RIFF" + b"\0" * 5000), "a.wav")},
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 507, r.get_json()
        assert r.get_json()["error"]["code"] == "insufficient_storage"
        assert list((tmp_path / "data" / "tmp").iterdir()) == []
    finally:
        appliance.stop()
        appliance.database.close()
