"""The SQLite layer: pragmas, migrations from every version, backup/restore, concurrency and crash durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from whisper_appliance.core.concurrency import real_threading
from whisper_appliance.core.errors import ApplianceError, InvalidInput
from whisper_appliance.core.identity import SYSTEM
from whisper_appliance.services.database import (
    LATEST_VERSION,
    MIGRATIONS,
    Database,
    expected_tables,
    split_statements,
)
from whisper_appliance.services.history import HistoryStore

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "data" / "appliance.db")
    yield database
    database.close()


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master "
                                   "WHERE name NOT LIKE 'sqlite_stat%'").fetchall())  # PRAGMA optimize's
    finally:
        conn.close()


def _fts_ok(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO history_fts(history_fts, rank) VALUES ('integrity-check', 1)")


# --- connection and schema ---------------------------------------------------------------------------------------

def test_new_database_is_created_with_its_directory_and_latest_schema(db):
    assert db.path.is_file()
    assert db.version == LATEST_VERSION
    assert db.integrity_check() == "ok"
    with db.read() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"history", "history_fts", "jobs"} <= tables
    assert {"history_created_at", "history_source", "history_language", "history_cache"} <= indexes


def test_split_statements_keeps_trigger_bodies_and_quoted_semicolons_whole():
    script = """
        CREATE TABLE a (x TEXT DEFAULT 'x;y');
        -- a comment; with a semicolon
        CREATE TRIGGER t AFTER INSERT ON a BEGIN
            INSERT INTO a VALUES ('in;side');
            DELETE FROM a WHERE 0;
        END;
    """
    statements = list(split_statements(script))
    assert len(statements) == 2
    assert statements[1].startswith("-- a comment") and statements[1].endswith("END;")
    with pytest.raises(ValueError):
        list(split_statements("CREATE TABLE b (x TEXT DEFAULT 'unterminated;"))


def test_every_migration_step_is_a_real_change():
    previous = expected_tables(0)
    schemas = []
    for version in range(1, LATEST_VERSION + 1):
        conn = sqlite3.connect(":memory:")
        for step in range(1, version + 1):
            for statement in split_statements(MIGRATIONS[step - 1].sql):
                conn.execute(statement)
        schemas.append(sorted(conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()))
        conn.close()
        assert expected_tables(version) >= previous
        previous = expected_tables(version)
    assert len({str(s) for s in schemas}) == LATEST_VERSION  # no step leaves the schema unchanged
    assert LATEST_VERSION >= 2


SEED_TEXT = "The payment system still needs more testing, said Sarah."


def _seed(conn: sqlite3.Connection, version: int) -> None:
    """Rows that are valid at ``version``, written with plain SQL as that version's code would have."""
    if version >= 1:
        conn.execute("INSERT INTO history (created_at, source, filename, text, language, model, engine, duration, "
                     "processing_seconds, segments, audio_sha256, metadata) VALUES "
                     "('2025-01-02T03:04:05.678Z', 'upload', 'old.wav', ?, 'en', 'base', 'faster-whisper', "
                     "12.5, 1.25, '[{\"id\": 0, \"start\": 0.0, \"end\": 2.0, \"text\": \" hi\"}]', ?, "
                     "'{\"k\": 1}')", (SEED_TEXT, "ab" * 32))
        conn.execute("INSERT INTO history (created_at, source, text) VALUES ('2025-01-03T00:00:00.000Z', 'live', "
                     "'Second entry about the budget.')")
    if version >= 3:
        conn.execute("UPDATE history SET options_key = 'opts' WHERE filename = 'old.wav'")
    if version >= 4:
        conn.execute("INSERT INTO jobs (id, created_at, updated_at, status, filename, history_id) VALUES "
                     "('j1', '2025-01-02T03:04:00.000Z', '2025-01-02T03:04:05.000Z', 'completed', 'old.wav', 1)")
    if version >= 5:
        conn.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES "
                     "('alice', 'scrypt$x', 'user', '2025-01-01T00:00:00.000Z')")
        conn.execute("UPDATE history SET owner_id = 1 WHERE filename = 'old.wav'")
        conn.execute("UPDATE jobs SET owner_id = 1")


@pytest.mark.parametrize("start", range(LATEST_VERSION + 1))
def test_migrates_from_every_earlier_version_and_keeps_the_data(tmp_path, start):
    path = tmp_path / "appliance.db"
    old = Database(path, migrate=False)
    assert old.migrate(target=start) == start
    with old.write() as conn:
        _seed(conn, start)
    old.close()

    db = Database(path)
    try:
        assert db.version == LATEST_VERSION
        assert db.integrity_check() == "ok"
        store = HistoryStore(db)
        if start >= 1:
            page = store.search(SYSTEM, "payment")
            assert page.total == 1  # rows written before the FTS step are indexed too
            entry = page.items[0].entry
            assert (entry.text, entry.created_at, entry.filename, entry.duration) == (
                SEED_TEXT, "2025-01-02T03:04:05.678Z", "old.wav", 12.5)
            assert entry.segments[0]["text"] == " hi" and entry.metadata == {"k": 1}
            assert entry.options_key == ("opts" if start >= 3 else None)
            # Entries from before accounts have no owner: the guests' shared history, as they were shared before.
            assert entry.owner_id == (1 if start >= 5 else None) and entry.edited_at is None
            assert store.search(SYSTEM, "budget").total == 1
        else:
            assert store.search(SYSTEM).total == 0
        with db.read() as conn:
            jobs = conn.execute("SELECT id, history_id FROM jobs").fetchall()
        assert [tuple(r) for r in jobs] == ([("j1", 1)] if start >= 4 else [])
    finally:
        db.close()
    fresh = tmp_path / "fresh.db"
    Database(fresh).close()
    assert _schema(path) == _schema(fresh)  # migrating from any version ends at exactly the fresh schema


def test_refuses_a_database_from_a_newer_version(tmp_path):
    path = tmp_path / "appliance.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(ApplianceError, match="newer"):
        Database(path)


def test_write_rolls_back_on_error_and_nests(db):
    store = HistoryStore(db)
    with pytest.raises(RuntimeError):
        with db.write():
            store.add(text="inside a failed transaction", source="api")
            raise RuntimeError("boom")
    assert store.search(SYSTEM).total == 0
    with db.write():
        store.add(text="one", source="api")
        store.add(text="two", source="api")
    assert store.search(SYSTEM).total == 2


# --- concurrency ------------------------------------------------------------------------------------------------

def test_concurrent_writers_from_real_threads_all_land(db):
    store = HistoryStore(db)
    threading = real_threading()
    errors: list[BaseException] = []
    per_thread, threads = 150, 4

    def writer(n: int) -> None:
        try:
            for i in range(per_thread):
                store.add(text=f"thread {n} entry {i}", source="api")
                if i % 25 == 0:
                    store.search(SYSTEM, f"thread {n}", limit=5)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert store.search(SYSTEM).total == per_thread * threads
    for n in range(threads):
        assert store.search(SYSTEM, f'"thread {n} entry"').total == per_thread
    assert db.integrity_check() == "ok"


# --- backup and restore -----------------------------------------------------------------------------------------

def test_backup_is_consistent_while_another_thread_keeps_writing(db, tmp_path):
    store = HistoryStore(db)
    for i in range(200):
        store.add(text=f"before the backup {i}", source="upload")
    stop = real_threading().Event()
    errors: list[BaseException] = []

    def keep_writing() -> None:
        try:
            i = 0
            while not stop.is_set():
                store.add(text=f"written during the backup {i} " + "word " * 50, source="job")
                i += 1
        except BaseException as exc:
            errors.append(exc)

    writer = real_threading().Thread(target=keep_writing)
    writer.start()
    try:
        backups = [db.backup_to(tmp_path / "backups" / f"b{i}.db") for i in range(3)]
    finally:
        stop.set()
        writer.join()
    assert errors == []
    total = store.search(SYSTEM).total
    for path in backups:
        Database.validate_file(path)
        with open(path, "rb") as fh:
            assert fh.read(20)[18:20] == b"\x01\x01"  # a self-contained file, not WAL
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            _fts_ok(conn)
            ids = [r[0] for r in conn.execute("SELECT id FROM history ORDER BY id")]
        finally:
            conn.close()
        # One writer, increasing ids: a snapshot is exactly a prefix 1..n, never a torn set.
        assert ids == list(range(1, len(ids) + 1))
        assert 200 <= len(ids) <= total
        assert not path.with_name(path.name + ".part").exists()


def _png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + \
        chunk(b"IEND", b"")


def test_validate_file_rejects_what_is_not_an_appliance_database(db, tmp_path):
    store = HistoryStore(db)
    for i in range(300):
        store.add(text=f"entry {i} " + "filler " * 40, source="upload")
    good = db.backup_to(tmp_path / "good.db")
    Database.validate_file(good)

    random_file = tmp_path / "random.db"
    random_file.write_bytes(os.urandom(8192))
    png = tmp_path / "picture.png"
    png.write_bytes(_png_bytes())
    empty_sqlite = tmp_path / "empty.db"
    sqlite3.connect(empty_sqlite).execute("CREATE TABLE other (x)").connection.close()
    versioned_but_empty = tmp_path / "versioned.db"
    conn = sqlite3.connect(versioned_but_empty)
    conn.execute("CREATE TABLE history (id INTEGER)")
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    too_new = tmp_path / "new.db"
    too_new.write_bytes(good.read_bytes())
    conn = sqlite3.connect(too_new)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    truncated = tmp_path / "truncated.db"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    cases = {random_file: "not an SQLite", png: "not an SQLite", empty_sqlite: "no schema version",
             versioned_but_empty: "missing tables", too_new: "newer", truncated: "damaged|not a readable",
             tmp_path / "missing.db": "no such file"}
    for path, message in cases.items():
        with pytest.raises(InvalidInput, match=message):
            Database.validate_file(path)
    assert not (tmp_path / "random.db-wal").exists() and not (tmp_path / "good.db-shm").exists()


def test_restore_rejects_bad_files_and_leaves_the_live_database_alone(db, tmp_path):
    store = HistoryStore(db)
    store.add(text="keep me", source="upload")
    png = tmp_path / "picture.png"
    png.write_bytes(_png_bytes())
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    for bad in (png, junk):
        with pytest.raises(InvalidInput):
            db.restore_from(bad)
    assert [h.entry.text for h in store.search(SYSTEM).items] == ["keep me"]
    assert not db.path.with_name(db.path.name + ".restore").exists()
    assert db.integrity_check() == "ok"


def test_restore_swaps_in_a_valid_backup(db, tmp_path):
    store = HistoryStore(db)
    store.add(text="from before the backup about payments", source="upload")
    backup = db.backup_to(tmp_path / "backup.db")
    store.add(text="written after the backup", source="live")

    saved = db.restore_from(backup)

    assert [h.entry.text for h in store.search(SYSTEM).items] == ["from before the backup about payments"]
    assert store.search(SYSTEM, "payment*").total == 1
    assert db.version == LATEST_VERSION and db.integrity_check() == "ok"
    entry = store.add(text="a new entry after the restore", source="api")
    assert store.get(SYSTEM, entry.id).text == "a new entry after the restore"
    conn = sqlite3.connect(saved)  # the replaced database is kept, with the later entry
    try:
        assert conn.execute("SELECT count(*) FROM history").fetchone()[0] == 2
    finally:
        conn.close()


def test_restore_of_an_old_version_backup_is_migrated(db, tmp_path):
    old_path = tmp_path / "old.db"
    old = Database(old_path, migrate=False)
    old.migrate(target=1)
    with old.write() as conn:
        _seed(conn, 1)
    old.close()

    db.restore_from(old_path)

    assert db.version == LATEST_VERSION
    store = HistoryStore(db)
    assert store.search(SYSTEM, "payment").items[0].entry.created_at == "2025-01-02T03:04:05.678Z"


def test_the_full_text_index_has_prefix_indexes(db):
    with db.read() as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'history_fts'").fetchone()[0]
    assert "prefix='1 2 3'" in sql


def _crafted_backup(db: Database, tmp_path: Path, name: str, *sql: str) -> Path:
    """A real backup of ``db`` with ``sql`` run on it afterwards, as a hostile uploader could."""
    path = db.backup_to(tmp_path / name)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in sql:
            conn.execute(statement)
    finally:
        conn.close()
    return path


def _live_texts(db: Database) -> list[str]:
    return [h.entry.text for h in HistoryStore(db).search(SYSTEM).items]


def test_restore_refuses_a_backup_carrying_a_trigger_and_keeps_the_old_data(db, tmp_path):
    store = HistoryStore(db)
    store.add(text="keep me", source="upload")
    crafted = _crafted_backup(db, tmp_path, "trigger.db",
                              "CREATE TRIGGER wipe AFTER INSERT ON history BEGIN DELETE FROM history; END",
                              "CREATE VIEW leak AS SELECT * FROM users")
    with pytest.raises(InvalidInput, match="schema.*trigger wipe") as caught:
        db.restore_from(crafted)
    assert caught.value.code == "backup_schema_mismatch"
    store.add(text="written after the refused restore", source="api")
    assert sorted(_live_texts(db)) == ["keep me", "written after the refused restore"]
    triggers = {r[0] for r in db._connection().execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert "wipe" not in triggers
    assert not list(db.path.parent.glob("*.before-restore*"))


def test_restore_refuses_tables_with_the_right_names_but_wrong_columns(db, tmp_path):
    HistoryStore(db).add(text="keep me", source="upload")
    crafted = _crafted_backup(db, tmp_path, "columns.db", "ALTER TABLE jobs DROP COLUMN error",
                              "ALTER TABLE history ADD COLUMN payload BLOB")
    with pytest.raises(InvalidInput, match="schema") as caught:
        db.restore_from(crafted)
    assert caught.value.code == "backup_schema_mismatch" and caught.value.status == 400
    assert _live_texts(db) == ["keep me"]


def test_restore_refuses_rows_the_appliance_could_not_read(db, tmp_path):
    HistoryStore(db).add(text="keep me", source="upload")
    for name, sql in (("json.db", "UPDATE history SET segments = '[not json'"),
                      ("type.db", "UPDATE history SET text = x'00ff'")):
        crafted = _crafted_backup(db, tmp_path, name, sql)
        with pytest.raises(InvalidInput) as caught:
            db.restore_from(crafted)
        assert caught.value.code == "backup_invalid_rows"
    assert _live_texts(db) == ["keep me"]


def test_restore_that_fails_migration_is_never_swapped_in(db, tmp_path, monkeypatch):
    import whisper_appliance.services.database as database

    HistoryStore(db).add(text="keep me", source="upload")
    old_path = tmp_path / "old.db"
    old = Database(old_path, migrate=False)
    old.migrate(target=LATEST_VERSION - 1)
    old.close()
    broken = (*MIGRATIONS[:-1], database.Migration("a step that fails", "SELECT * FROM no_such_table"))
    monkeypatch.setattr(database, "MIGRATIONS", broken)

    with pytest.raises(InvalidInput, match="could not be migrated") as caught:
        db.restore_from(old_path)

    assert caught.value.code == "backup_migration_failed"
    assert _live_texts(db) == ["keep me"] and db.version == LATEST_VERSION
    db.close()
    reopened = Database(db.path)  # the server can start again on the data it kept
    try:
        assert _live_texts(reopened) == ["keep me"]
    finally:
        reopened.close()


def test_restored_job_paths_never_point_outside_the_jobs_directory(db, tmp_path):
    from whisper_appliance.services.job_store import JobStore
    from whisper_appliance.services.jobs import remove_upload

    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir()
    store = JobStore(db)
    outside = store.create("a.wav", str(victim))
    inside = store.create("b.wav", "/elsewhere/" + "x.wav")
    own = store.create("c.wav", str(jobs / "placeholder"))
    with db.write() as conn:
        conn.execute("UPDATE jobs SET upload_path = ? WHERE id = ?", (f"/old/data/jobs/{own.id}.wav", own.id))
    backup = db.backup_to(tmp_path / "jobs.db")

    db.restore_from(backup, jobs_dir=jobs)

    paths = {job.id: job.upload_path for job in store.list(SYSTEM, None, 50, 0)}
    assert paths[outside.id] is None and paths[inside.id] is None
    assert paths[own.id] == str(jobs / f"{own.id}.wav")
    remove_upload(str(victim), jobs)  # every unlink checks the directory
    remove_upload(str(jobs / ".." / "passwd"), jobs)
    assert victim.read_text() == "root:x:0:0\n"
    mine = jobs / f"{own.id}.wav"
    mine.write_bytes(b"RIFF")
    remove_upload(str(mine), jobs)
    assert not mine.exists()


def test_each_restore_keeps_its_own_timestamped_copy_of_the_replaced_database(db, tmp_path):
    store = HistoryStore(db)
    store.add(text="first", source="upload")
    backup = db.backup_to(tmp_path / "backup.db")
    store.add(text="second", source="upload")
    first = db.restore_from(backup)
    store.add(text="third", source="upload")
    second = db.restore_from(backup)
    assert first != second and first.exists() and second.exists()
    assert ".before-restore-" in first.name
    counts = []
    for saved in (first, second):
        conn = sqlite3.connect(saved)
        try:
            counts.append(conn.execute("SELECT count(*) FROM history").fetchone()[0])
        finally:
            conn.close()
    assert counts == [2, 2]


def test_read_only_connections_run_with_trusted_schema_off(db):
    with db.reader() as conn:
        assert conn.execute("PRAGMA trusted_schema").fetchone()[0] == 0


# --- durability -------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from whisper_appliance.services.database import Database
    from whisper_appliance.services.history import HistoryStore
    store = HistoryStore(Database(sys.argv[1]))
    i = 0
    while True:
        entry = store.add(text=f"run {sys.argv[2]} entry {i} " + "payload " * 20, source="api")
        print(entry.id, flush=True)
        i += 1
""")


def test_every_returned_entry_survives_sigkill(tmp_path):
    path = tmp_path / "appliance.db"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    acknowledged: set[int] = set()
    for run, kill_after in enumerate((40, 150, 7, 300)):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(run)], stdout=subprocess.PIPE,
                                env=env, text=True)
        try:
            seen = 0
            while seen < kill_after:
                line = proc.stdout.readline()
                assert line, "the writer stopped before it was killed"
                acknowledged.add(int(line))
                seen += 1
            proc.send_signal(signal.SIGKILL)
            # Ids printed after our last read but before the kill also came back from add().
            for line in proc.stdout.read().splitlines(keepends=True):
                if line.endswith("\n"):
                    acknowledged.add(int(line))
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL

    db = Database(path)
    try:
        assert db.integrity_check() == "ok"
        with db.read() as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM history")}
    finally:
        db.close()
    assert len(acknowledged) >= 40 + 150 + 7 + 300
    assert acknowledged <= stored
