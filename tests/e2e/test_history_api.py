"""The history API on the real server: search after a real transcription, edits, exports, import into fresh
servers, backup while transcriptions are written, restore.

Entries are only edited or deleted when this module created them without audio (imported), so a cached upload
result that other tests rely on is never changed. Restores run on their own servers.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.conftest import SPEECH_DIR
from tests.e2e.conftest import ServerProcess, login

MEETING = SPEECH_DIR / "synthetic_meeting.wav"
GOFORWARD = SPEECH_DIR / "goforward.wav"
START, END = "\u0002", "\u0003"


def transcribe(session: requests.Session, server: ServerProcess, path: Path, **form) -> requests.Response:
    with open(path, "rb") as f:
        return session.post(server.url("/transcribe"), files={"audio": (path.name, f)}, data=form, timeout=300)


def search(session: requests.Session, server: ServerProcess, **params) -> dict:
    r = session.get(server.url("/api/history"), params=params, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


def fresh_server(start_server) -> ServerProcess:
    """An extra server with an empty database; "medium" is not available offline, so no model loads (no CPU)."""
    return start_server(wait_ready=False, WHISPER_MODEL="medium")


def identity(entries: list[dict]) -> list[tuple]:
    return sorted((e["created_at"], e["text"], e["source"], e["model"]) for e in entries)


def upload_file(session: requests.Session, server: ServerProcess, path: str, data: bytes,
                filename: str) -> requests.Response:
    return session.post(server.url(path), files={"file": (filename, io.BytesIO(data))}, timeout=120)


@pytest.fixture(scope="module")
def meeting(server) -> dict:
    r = transcribe(server.session(), server, MEETING)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["history_id"] is not None
    return body


# -- search, filters, pagination -------------------------------------------------------------------------------
def test_search_finds_the_transcript_with_a_snippet(api, server, meeting):
    body = search(api, server, q="payment")
    hits = [i for i in body["items"] if i["id"] == meeting["history_id"]]
    assert len(hits) == 1
    snippet = hits[0]["snippet"]
    assert f"{START}payment{END}" in snippet.lower()
    assert "<" not in snippet  # markers are control characters, never HTML
    assert hits[0]["source"] == "upload" and hits[0]["filename"] == "synthetic_meeting.wav"
    assert hits[0]["model"] == "tiny.en"
    assert search(api, server, q="payment system")["total"] >= 1
    assert meeting["history_id"] not in [i["id"] for i in search(api, server, q="xylophone")["items"]]


def test_filters_and_pagination(api, server, meeting):
    mine = meeting["history_id"]

    def ids(**params):
        return [i["id"] for i in search(api, server, limit=500, **params)["items"]]

    assert mine in ids(source="upload")
    assert mine not in ids(source="live")
    assert mine in ids(language="en")
    assert mine not in ids(language="de")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    today = datetime.now(UTC).date().isoformat()
    assert mine not in ids(since=tomorrow)
    assert mine in ids(since=today, until=today)
    assert mine not in ids(until="2000-01-01")

    everything = ids()
    total = search(api, server)["total"]
    assert total == len(everything) and mine in everything
    paged = []
    for offset in range(0, total, 2):
        page = search(api, server, limit=2, offset=offset)
        assert (page["limit"], page["offset"], page["total"]) == (2, offset, total)
        paged += [i["id"] for i in page["items"]]
    assert paged == everything  # newest first, no gaps, no repeats

    for bad in ({"limit": "0"}, {"limit": "many"}, {"offset": "-1"}, {"source": "fax"}, {"since": "yesterday"}):
        r = api.get(server.url("/api/history"), params=bad, timeout=10)
        assert r.status_code == 400, bad
        assert "error" in r.json()


def test_get_entry_and_stats(api, server, meeting):
    entry = api.get(server.url(f"/api/history/{meeting['history_id']}"), timeout=10).json()
    assert entry["text"] == meeting["text"] and len(entry["segments"]) == len(meeting["segments"])
    assert api.get(server.url("/api/history/987654321"), timeout=10).status_code == 404
    stats = api.get(server.url("/api/history/stats"), timeout=10).json()
    assert stats["entries"] >= 1 and stats["by_source"]["upload"] >= 1
    assert stats["by_day"][datetime.now(UTC).date().isoformat()] >= 1


# -- edits and deletes ------------------------------------------------------------------------------------------
def test_edit_text_and_search_follows(api, admin, server):
    marker = uuid.uuid4().hex[:10]
    item = {"text": f"zebra crossing memo {marker}", "created_at": "2023-03-04T05:06:07.089Z", "source": "api"}
    # Imported into the guests' shared history, which anonymous callers see and correct.
    r = admin.post(server.url("/api/history/import"), params={"owner": "guest"}, json=[item], timeout=30)
    assert r.status_code == 200 and r.json()["imported"] == 1
    [entry] = search(api, server, q=marker)["items"]
    assert entry["created_at"] == item["created_at"]

    r = api.patch(server.url(f"/api/history/{entry['id']}"), json={"text": f"giraffe parade memo {marker}"},
                  timeout=10)
    assert r.status_code == 200 and r.json()["text"] == f"giraffe parade memo {marker}"
    assert [i["id"] for i in search(api, server, q=f"giraffe {marker}")["items"]] == [entry["id"]]
    assert search(api, server, q=f"zebra {marker}")["total"] == 0
    assert api.patch(server.url(f"/api/history/{entry['id']}"), json={"txt": "x"}, timeout=10).status_code == 400

    # Deleting needs an account (guests share their history); the admin, who sees everything, deletes it.
    assert api.delete(server.url(f"/api/history/{entry['id']}"), timeout=10).status_code == 401
    assert admin.delete(server.url(f"/api/history/{entry['id']}"), timeout=10).json() == {"deleted": entry["id"]}
    assert search(api, server, q=marker)["total"] == 0


def test_delete_many(api, admin, server):
    marker = uuid.uuid4().hex[:10]
    items = [{"text": f"bulk {marker} {i}", "created_at": f"2022-01-0{i + 1}T00:00:00Z"} for i in range(3)]
    assert admin.post(server.url("/api/history/import"), params={"owner": "guest"}, json=items,
                      timeout=30).json()["imported"] == 3
    found = [i["id"] for i in search(api, server, q=marker)["items"]]
    assert len(found) == 3
    assert api.post(server.url("/api/history/delete"), json={"ids": found}, timeout=10).status_code == 401
    r = admin.post(server.url("/api/history/delete"), json={"ids": found[:2]}, timeout=10)
    assert r.json() == {"deleted": 2}
    assert [i["id"] for i in search(api, server, q=marker)["items"]] == found[2:]
    assert admin.post(server.url("/api/history/delete"), json={"ids": list(range(1001))},
                      timeout=10).status_code == 400
    admin.post(server.url("/api/history/delete"), json={"ids": found[2:]}, timeout=10)


# -- exports ---------------------------------------------------------------------------------------------------
def test_entry_exports(api, server, meeting):
    base = server.url(f"/api/history/{meeting['history_id']}/export")
    srt = api.get(base, params={"format": "srt"}, timeout=10)
    assert srt.status_code == 200
    assert srt.headers["Content-Disposition"] == 'attachment; filename="synthetic_meeting.srt"'
    lines = srt.text.splitlines()
    assert lines[0] == "1" and " --> " in lines[1] and "," in lines[1]
    assert srt.text.count(" --> ") == len([s for s in meeting["segments"] if s["text"].strip()])

    vtt = api.get(base, params={"format": "vtt"}, timeout=10)
    assert vtt.text.startswith("WEBVTT") and vtt.headers["Content-Type"].startswith("text/vtt")
    assert "\n00:00.000 --> " in vtt.text

    txt = api.get(base, params={"format": "txt"}, timeout=10)
    assert txt.headers["Content-Type"].startswith("text/plain")
    assert "payment" in txt.text.lower()

    as_json = api.get(base, params={"format": "json"}, timeout=10)
    assert as_json.json()["id"] == meeting["history_id"]
    assert api.get(base, params={"format": "docx"}, timeout=10).status_code == 400


def test_json_export_imports_into_a_fresh_server(api, server, meeting, start_server):
    r = api.get(server.url("/api/history/export"), params={"format": "json"}, timeout=60)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Content-Disposition"].startswith('attachment; filename="whisper-appliance-history-')
    exported = r.json()
    assert meeting["history_id"] in [e["id"] for e in exported]

    fresh = fresh_server(start_server)
    admin = login(fresh)
    assert fresh.session().get(fresh.url("/api/history"), timeout=10).json()["total"] == 0
    r = upload_file(admin, fresh, "/api/history/import?owner=guest", r.content, "history.json")
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == len(exported) and r.json()["skipped_duplicates"] == 0
    assert r.json()["errors"] == []

    copied = fresh.session().get(fresh.url("/api/history/export"), timeout=60).json()
    assert identity(copied) == identity(exported)
    original = next(e for e in exported if e["id"] == meeting["history_id"])
    # Other tests on the shared server may have stored the same words (e.g. a live dictation of this file).
    meeting_copy = next(e for e in copied if (e["created_at"], e["source"], e["text"])
                        == (original["created_at"], original["source"], original["text"]))
    assert meeting_copy["segments"] == original["segments"]

    again = upload_file(admin, fresh, "/api/history/import?owner=guest", json.dumps(exported).encode(),
                        "history.json")
    assert again.json()["imported"] == 0 and again.json()["skipped_duplicates"] == len(exported)


def test_csv_export_imports_into_a_fresh_server(api, server, meeting, start_server):
    as_json = api.get(server.url("/api/history/export"), params={"format": "json"}, timeout=60).json()
    r = api.get(server.url("/api/history/export"), params={"format": "csv"}, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert r.headers["Content-Disposition"].endswith('.csv"')
    assert r.text.splitlines()[0].startswith("id,created_at,source")

    fresh = fresh_server(start_server)
    admin = login(fresh)
    # No extension: the format is recognised from the content.
    result = upload_file(admin, fresh, "/api/history/import?owner=guest", r.content, "export")
    assert result.status_code == 200, result.text
    assert result.json()["imported"] == len(as_json) and result.json()["errors"] == []
    copied = fresh.session().get(fresh.url("/api/history/export"), timeout=60).json()
    assert identity(copied) == identity(as_json)
    by_text = {e["text"]: e for e in copied}
    original = next(e for e in as_json if e["id"] == meeting["history_id"])
    assert by_text[original["text"]]["segments"] == original["segments"]
    assert by_text[original["text"]]["duration"] == original["duration"]

    again = upload_file(admin, fresh, "/api/history/import?owner=guest", r.content, "history.csv")
    assert again.json()["skipped_duplicates"] == len(as_json)


def test_import_rejects_files_that_are_not_exports(server, admin):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    r = upload_file(admin, server, "/api/history/import", png, "picture.png")
    assert r.status_code == 400 and "error" in r.json()
    r = upload_file(admin, server, "/api/history/import", b"name,age\nbob,3\n", "people.csv")
    assert r.status_code == 400 and "created_at" in r.json()["error"]["message"]
    assert server.session().post(server.url("/api/history/import"), json=[], timeout=10).status_code == 401


# -- backup and restore ----------------------------------------------------------------------------------------
def test_backup_while_transcriptions_are_written(server, admin, tmp_path, meeting):
    before = search(admin, server)["total"]
    errors: list[str] = []
    done = threading.Event()

    def writer() -> None:
        s = server.session()
        try:
            for i in range(4):
                # A different prompt each time: a new cache key, so each one is transcribed and recorded.
                r = transcribe(s, server, GOFORWARD, initial_prompt=f"backup test {uuid.uuid4().hex} {i}")
                if r.status_code != 200:
                    errors.append(r.text)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    backups = []
    try:
        while not done.is_set() or not backups:
            r = admin.get(server.url("/api/admin/backup"), timeout=120)
            assert r.status_code == 200, r.text
            assert r.headers["Content-Type"] == "application/vnd.sqlite3"
            assert r.headers["Content-Disposition"].startswith('attachment; filename="whisper-appliance-')
            assert r.headers["Content-Disposition"].endswith('.db"')
            path = tmp_path / f"backup-{len(backups)}.db"
            path.write_bytes(r.content)
            backups.append(path)
            time.sleep(0.2)
    finally:
        thread.join(300)
    assert not errors
    after = search(admin, server)["total"]
    assert after == before + 4
    counts = []
    for path in backups:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
            counts.append(conn.execute("SELECT count(*) FROM history").fetchone()[0])
        path.unlink()
    assert all(before <= n <= after for n in counts)
    assert not [p.name for p in (server.data_dir / "tmp").glob("backup-*")]


def test_restore(start_server, tmp_path):
    srv = fresh_server(start_server)
    admin = login(srv)
    items = [{"text": f"restorable entry {i}", "created_at": f"2024-02-0{i + 1}T12:00:00Z", "source": "live"}
             for i in range(3)]
    assert admin.post(srv.url("/api/history/import"), params={"owner": "guest"}, json=items,
                      timeout=30).json()["imported"] == 3
    backup = admin.get(srv.url("/api/admin/backup"), timeout=60).content

    for junk, name in ((b"\x89PNG\r\n\x1a\n" + bytes(500), "photo.png"), (bytes(range(256)) * 8, "random.bin"),
                       (b"SQLite format 3\x00" + bytes(2000), "truncated.db"), (b"", "empty.db")):
        r = upload_file(admin, srv, "/api/admin/restore", junk, name)
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["message"]
    assert "not an SQLite database" in upload_file(admin, srv, "/api/admin/restore", b"\x89PNG\r\n", "p.png").text
    # Still serving, with its data.
    assert srv.session().get(srv.url("/api/history"), timeout=10).json()["total"] == 3
    assert srv.session().get(srv.url("/api/models"), timeout=10).status_code == 200

    ids = [i["id"] for i in search(admin, srv)["items"]]
    assert admin.post(srv.url("/api/history/delete"), json={"ids": ids}, timeout=10).json() == {"deleted": 3}
    assert search(admin, srv)["total"] == 0
    assert srv.session().post(srv.url("/api/admin/restore"), files={"file": ("b.db", backup)},
                              timeout=10).status_code == 401

    r = upload_file(admin, srv, "/api/admin/restore", backup, "whisper-appliance-backup.db")
    assert r.status_code == 200, r.text
    assert r.json()["restored"] is True and r.json()["entries"] == 3
    restored = search(admin, srv, limit=10)["items"]
    assert sorted((i["created_at"], i["text"]) for i in restored) == sorted(
        (i["created_at"].replace("Z", ".000Z"), i["text"]) for i in items)
    assert not [p.name for p in (srv.data_dir / "tmp").glob("restore-*")]


def test_restore_of_crafted_backups_keeps_the_data_and_never_deletes_files_outside(start_server, tmp_path):
    srv = fresh_server(start_server)
    admin = login(srv)
    assert admin.post(srv.url("/api/history/import"), params={"owner": "guest"}, timeout=30,
                      json=[{"text": "live data", "created_at": "2024-02-01T12:00:00Z"}]).json()["imported"] == 1
    backup = tmp_path / "backup.db"
    backup.write_bytes(admin.get(srv.url("/api/admin/backup"), timeout=60).content)
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    with sqlite3.connect(backup) as conn:  # a finished job whose upload path names a file elsewhere
        conn.execute("INSERT INTO jobs (id, created_at, updated_at, status, filename, upload_path, options) VALUES "
                     "('evil', '2024-01-01T00:00:00.000Z', '2024-01-01T00:00:00.000Z', 'failed', 'x.wav', ?, '{}')",
                     (str(victim),))
    with_trigger = tmp_path / "trigger.db"
    with_trigger.write_bytes(backup.read_bytes())
    with sqlite3.connect(with_trigger) as conn:
        conn.execute("CREATE TRIGGER wipe AFTER INSERT ON history BEGIN DELETE FROM history; END")

    r = upload_file(admin, srv, "/api/admin/restore", with_trigger.read_bytes(), "trigger.db")
    assert r.status_code == 400 and r.json()["error"]["code"] == "backup_schema_mismatch", r.text
    assert [i["text"] for i in search(admin, srv)["items"]] == ["live data"]

    r = upload_file(admin, srv, "/api/admin/restore", backup.read_bytes(), "backup.db")
    assert r.status_code == 200, r.text
    assert admin.delete(srv.url("/api/jobs/evil"), timeout=10).status_code == 200
    assert victim.read_text() == "root:x:0:0\n"
    assert admin.post(srv.url("/api/history/import"), params={"owner": "guest"}, timeout=30,
                      json=[{"text": "after", "created_at": "2024-02-02T12:00:00Z"}]).json()["imported"] == 1
    assert search(admin, srv)["total"] == 2
    assert len(list(srv.data_dir.glob("appliance.db.before-restore-*"))) == 1
