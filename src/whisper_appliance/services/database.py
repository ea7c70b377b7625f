"""The appliance's SQLite database: one file in DATA_DIR, its connection, the schema and its migrations.

Owns:

* the one read-write connection and the one lock that serialises every use of it (``write()`` / ``read()``),
  plus short-lived read-only connections for long streamed reads (``reader()``);
* the schema, as an ordered list of migration steps tracked by ``PRAGMA user_version``;
* integrity checks, consistent online backups and restoring a backup file in place;
* the timestamp format stored in every table (UTC ISO-8601, milliseconds, ``Z``), which sorts as text;
* ``owner_condition``: the one rule for which rows (history, jobs) a principal sees.

``HistoryStore`` (history.py), ``JobStore`` (job_store.py) and ``Accounts`` (accounts.py) are built on this class
and never open connections of their own.

Durability: WAL with ``synchronous=NORMAL``. A commit has been written to the WAL file (the OS page cache) before
the call returns, so a crash of the process (kill -9, out-of-memory) loses nothing that was committed and never
corrupts the file; only an OS crash or power cut can lose the last few commits. ``FULL`` would add an fsync to
every commit, including the job-progress ticks written several times a second; pass ``synchronous="FULL"`` to
trade that for power-cut durability.

Threads: the lock comes from ``concurrency.real_threading()`` because OS worker threads write too. Code holding
it must never yield to the eventlet hub (no network or green I/O inside ``write()``): green threads share one OS
thread, so the re-entrant lock would not keep them apart.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from ..core.concurrency import real_threading
from ..core.errors import ApplianceError, InvalidInput, disk_full, is_disk_full
from ..core.identity import OwnerFilter, Principal

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
SQLITE_MAGIC = b"SQLite format 3\x00"


# --- timestamps -------------------------------------------------------------------------------------------------

def format_timestamp(moment: datetime) -> str:
    """UTC ISO-8601 with milliseconds and 'Z' (2026-11-21T10:00:00.123Z); naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now() -> str:
    return format_timestamp(datetime.now(UTC))


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO-8601 date or datetime into an aware UTC datetime (naive means UTC). ValueError if invalid."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not an ISO-8601 date or datetime")
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 lies before year 1 in UTC
        raise ValueError(f"{text!r} is out of range") from None


def normalize_timestamp(text: str) -> str:
    """Any accepted ISO-8601 form -> the stored form (sub-millisecond digits are dropped)."""
    return format_timestamp(parse_timestamp(text))


def days_ago(days: float) -> str:
    return format_timestamp(datetime.now(UTC) - timedelta(days=days))


# --- schema -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Migration:
    """One schema step; step N (1-based) brings ``user_version`` from N-1 to N in one transaction."""

    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration("history table", """
        -- AUTOINCREMENT: ids appear in URLs, so a deleted entry's id is never handed to a new one.
        CREATE TABLE history (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at         TEXT NOT NULL,
            source             TEXT NOT NULL,
            filename           TEXT,
            text               TEXT NOT NULL,
            language           TEXT,
            model              TEXT,
            engine             TEXT,
            duration           REAL,
            processing_seconds REAL,
            segments           TEXT NOT NULL DEFAULT '[]',
            audio_sha256       TEXT,
            metadata           TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX history_created_at ON history(created_at);
        CREATE INDEX history_source ON history(source);
        CREATE INDEX history_language ON history(language);
        CREATE INDEX history_audio_sha256 ON history(audio_sha256);
    """),
    Migration("full-text search over history (FTS5, external content, kept in sync by triggers)", """
        CREATE VIRTUAL TABLE history_fts USING fts5(
            text, filename, content='history', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER history_fts_insert AFTER INSERT ON history BEGIN
            INSERT INTO history_fts(rowid, text, filename) VALUES (new.id, new.text, new.filename);
        END;
        CREATE TRIGGER history_fts_delete AFTER DELETE ON history BEGIN
            INSERT INTO history_fts(history_fts, rowid, text, filename)
            VALUES ('delete', old.id, old.text, old.filename);
        END;
        CREATE TRIGGER history_fts_update AFTER UPDATE OF text, filename ON history BEGIN
            INSERT INTO history_fts(history_fts, rowid, text, filename)
            VALUES ('delete', old.id, old.text, old.filename);
            INSERT INTO history_fts(rowid, text, filename) VALUES (new.id, new.text, new.filename);
        END;
        -- Index the rows written before this step.
        INSERT INTO history_fts(history_fts) VALUES ('rebuild');
    """),
    Migration("result cache key on history", """
        ALTER TABLE history ADD COLUMN options_key TEXT;
        CREATE INDEX history_cache ON history(audio_sha256, model, engine, options_key);
        -- The cache index starts with audio_sha256, so the single-column index is redundant.
        DROP INDEX history_audio_sha256;
    """),
    Migration("persistent transcription jobs", """
        -- A completed job points at its history entry; deleting the entry deletes the job (its result is gone).
        CREATE TABLE jobs (
            id          TEXT PRIMARY KEY,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            status      TEXT NOT NULL,
            filename    TEXT,
            upload_path TEXT,
            options     TEXT NOT NULL DEFAULT '{}',
            duration    REAL,
            progress    REAL NOT NULL DEFAULT 0,
            eta_seconds REAL,
            error       TEXT,
            history_id  INTEGER REFERENCES history(id) ON DELETE CASCADE,
            attempts    INTEGER NOT NULL DEFAULT 0,
            started_at  TEXT,
            finished_at TEXT
        );
        CREATE INDEX jobs_status ON jobs(status, created_at);
        CREATE INDEX jobs_created_at ON jobs(created_at);
        -- Without it every history delete would scan jobs to apply the cascade.
        CREATE INDEX jobs_history_id ON jobs(history_id);
    """),
    Migration("user accounts, their credentials, and owners of history entries and jobs", """
        CREATE TABLE users (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
            password_hash TEXT NOT NULL,
            role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
            created_at    TEXT NOT NULL,
            last_login_at TEXT,
            disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
        );
        -- Login sessions, tokens from POST /api/auth/token and personal API tokens: only SHA-256 digests.
        CREATE TABLE credentials (
            id           TEXT PRIMARY KEY,
            user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            kind         TEXT NOT NULL CHECK (kind IN ('session', 'access', 'personal')),
            label        TEXT,
            scope        TEXT NOT NULL CHECK (scope IN ('transcribe', 'admin')),
            digest       TEXT NOT NULL UNIQUE,
            created_at   TEXT NOT NULL,
            last_used_at TEXT,
            expires_at   TEXT
        );
        CREATE INDEX credentials_user ON credentials(user_id, kind);
        -- No owner: the guests' shared history, which is where every entry written before accounts goes. No ON
        -- DELETE action: a user's records are deleted or handed over explicitly before the user goes.
        ALTER TABLE history ADD COLUMN owner_id INTEGER REFERENCES users(id);
        -- An edited entry no longer says what its audio says: never a result-cache hit.
        ALTER TABLE history ADD COLUMN edited_at TEXT;
        CREATE INDEX history_owner ON history(owner_id, created_at);
        ALTER TABLE jobs ADD COLUMN owner_id INTEGER REFERENCES users(id);
        CREATE INDEX jobs_owner ON jobs(owner_id, created_at);
    """),
    Migration("prefix indexes for full-text search (fast 'pay*' queries)", """
        -- FTS5 options are fixed at creation: rebuild the index with prefix indexes of 1 to 3 characters, so a
        -- prefix term reads one index entry instead of walking every term with that beginning. The triggers on
        -- history name the table and keep working.
        DROP TABLE history_fts;
        CREATE VIRTUAL TABLE history_fts USING fts5(
            text, filename, content='history', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2', prefix='1 2 3'
        );
        INSERT INTO history_fts(history_fts) VALUES ('rebuild');
    """),
)

LATEST_VERSION = len(MIGRATIONS)


def owner_condition(viewer: Principal, owner: OwnerFilter | None = None,
                    column: str = "owner_id") -> tuple[str | None, list[int | None]]:
    """The SQL condition (and its parameter) that limits rows to what ``viewer`` may see.

    An admin sees every row, or only ``owner``'s; anyone else sees their own rows (guests: the rows without an
    owner). ``IS`` compares NULL like a value, so one form serves users and guests.
    """
    if viewer.is_admin:
        if owner is None:
            return None, []
        return f"{column} IS ?", [owner.user_id]
    return f"{column} IS ?", [viewer.user_id]


def split_statements(script: str) -> Iterator[str]:
    """Split an SQL script into complete statements (trigger bodies and quoted ';' stay whole)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if _has_sql(buffer):
                yield buffer.strip()
            buffer = ""
    if _has_sql(buffer):
        raise ValueError(f"incomplete SQL statement: {buffer.strip()[:80]!r}")


def _has_sql(text: str) -> bool:
    lines = (line.split("--", 1)[0] for line in text.splitlines())
    return bool("".join(lines).strip(" \t\n;"))


def apply_migration(conn: sqlite3.Connection, version: int) -> None:
    """Run step ``version`` (1-based) and record it; the caller owns the transaction."""
    for statement in split_statements(MIGRATIONS[version - 1].sql):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {int(version)}")


@cache
def expected_tables(version: int) -> frozenset[str]:
    """The tables a database at ``version`` has, found by building one in memory (no second list to maintain)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for step in range(1, version + 1):
            apply_migration(conn, step)
        return _table_names(conn)
    finally:
        conn.close()


@cache
def expected_schema(version: int) -> frozenset[tuple[str, str, str, str]]:
    """Every schema object (tables, columns, indexes, triggers, views) a database at ``version`` has, as
    (type, name, table, SQL) rows of sqlite_master, found by building one in memory."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for step in range(1, version + 1):
            apply_migration(conn, step)
        return _schema(conn)
    finally:
        conn.close()


def _schema(conn: sqlite3.Connection) -> frozenset[tuple[str, str, str, str]]:
    # sqlite_stat* tables are planner statistics (PRAGMA optimize), not schema.
    rows = conn.execute("SELECT type, name, tbl_name, COALESCE(sql, '') FROM sqlite_master "
                        "WHERE name NOT LIKE 'sqlite_stat%'").fetchall()
    return frozenset((r[0], r[1], r[2], " ".join(r[3].split())) for r in rows)


def _table_names(conn: sqlite3.Connection) -> frozenset[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return frozenset(r[0] for r in rows)


def _read_only_uri(path: Path) -> str:
    return path.absolute().as_uri() + "?mode=ro"


# --- the database -----------------------------------------------------------------------------------------------

class Database:
    """The SQLite file, its one read-write connection and the lock around it."""

    def __init__(self, path: Path | str, *, migrate: bool = True, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._lock = real_threading().RLock()
        self._conn: sqlite3.Connection | None = None
        self._open()
        if migrate:
            self.migrate()

    # connections

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise ApplianceError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # trusted_schema stays ON here only: the full-text index is kept in sync by this schema's own
            # triggers, and SQLite (3.40) refuses a trigger writing to an FTS5 table when it is OFF. What this
            # connection opens is always a schema this appliance built (a restore checks it object by object).
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ApplianceError(f"database {self.path} is closed")
        return self._conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one IMMEDIATE transaction, committed on success, rolled back on error.

        Nested use joins the outer transaction.
        """
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if is_disk_full(exc):
                    raise disk_full("the database change", exc) from exc
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The shared connection for short reads (under the lock, so it sees a stable state)."""
        with self._lock:
            yield self._connection()

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A separate read-only connection for long reads (exports, backups) that must not block writers.

        With WAL each statement on it reads one consistent snapshot while the main connection keeps committing.
        """
        conn = sqlite3.connect(_read_only_uri(self.path), uri=True, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA trusted_schema = OFF")
            yield conn
        finally:
            conn.close()

    def size_bytes(self) -> int:
        """The database file with its write-ahead log, on disk."""
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    # SQLite's advice: gather planner statistics the last queries showed a need for.
                    self._conn.execute("PRAGMA optimize")
                finally:
                    self._conn.close()
                    self._conn = None

    # schema

    @property
    def version(self) -> int:
        with self.read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self, target: int | None = None) -> int:
        """Apply the missing steps up to ``target`` (default: latest), one transaction each. Returns the version."""
        target = LATEST_VERSION if target is None else target
        if not 0 <= target <= LATEST_VERSION:
            raise ValueError(f"no schema version {target} (latest is {LATEST_VERSION})")
        with self._lock:
            current = self.version
            if current > LATEST_VERSION:
                raise ApplianceError(
                    f"{self.path} has schema version {current}, newer than this appliance knows "
                    f"({LATEST_VERSION}); upgrade the appliance or restore an older backup",
                    code="database_too_new")
            for version in range(current + 1, target + 1):
                with self.write() as conn:
                    apply_migration(conn, version)
                log.info("database %s migrated to version %d: %s", self.path, version,
                         MIGRATIONS[version - 1].description)
            return max(current, target)

    # health, backup, restore

    def integrity_check(self) -> str:
        """'ok', or what SQLite (or the full-text index check) reports as wrong."""
        with self.write() as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            result = "\n".join(str(r[0]) for r in rows)
            if result != "ok":
                return result
            return _fts_check(conn)

    def backup_to(self, dest: Path | str) -> Path:
        """Write a consistent copy of the database to ``dest`` while other threads keep writing.

        The copy is one self-contained file (rollback journal, not WAL), written beside ``dest`` and renamed
        into place, so ``dest`` is never a half-written database.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.unlink(missing_ok=True)
        with self.reader() as source:
            target = sqlite3.connect(tmp, isolation_level=None)
            try:
                # pages=-1 (the default) copies everything in one step inside one read transaction: a snapshot.
                source.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")
            except BaseException:
                target.close()
                tmp.unlink(missing_ok=True)
                raise
            target.close()
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        log.info("database backed up to %s", dest)
        return dest

    @staticmethod
    def validate_file(path: Path | str) -> None:
        """Check that ``path`` is a database this appliance can restore; InvalidInput says why not."""
        path = Path(path)
        with _open_candidate(path) as conn:
            _check_candidate(conn, path.name)

    def restore_from(self, path: Path | str, *, jobs_dir: Path | None = None) -> Path:
        """Replace the live database with the backup at ``path``; returns where the old one was saved.

        The candidate is copied (SQLite backup API) beside the live file and the copy is validated: integrity,
        full-text index, and a schema identical to the one this appliance's migrations build at its version
        (so no trigger, view or odd column of the upload survives). The copy is then migrated to the latest
        version and its job paths recomputed under ``jobs_dir``, all before anything is swapped: a file that
        fails any of that leaves the live database untouched. The current database is saved to
        ``<name>.before-restore-<UTC time>`` (earlier copies are kept); then, with the connection closed, the
        old -wal/-shm are removed (a stale WAL would be replayed onto the new file), the copy is renamed over
        the live file, and the result is reopened.
        """
        path = Path(path)
        staged = self.path.with_name(self.path.name + ".restore")
        staged.unlink(missing_ok=True)
        try:
            with _open_candidate(path) as source:
                target = sqlite3.connect(staged, isolation_level=None)
                try:
                    target.execute("PRAGMA trusted_schema = OFF")
                    source.backup(target)
                    target.execute("PRAGMA journal_mode = DELETE")
                    _check_candidate(target, path.name)
                    fts = _fts_check(target)
                    if fts != "ok":
                        raise InvalidInput(f"{path.name} is damaged ({fts})")
                    _migrate_staged(target, path.name)
                    if jobs_dir is not None:
                        _sanitize_job_paths(target, jobs_dir)
                finally:
                    target.close()
            with self._lock:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
                saved = self.backup_to(self.path.with_name(f"{self.path.name}.before-restore-{stamp}"))
                self.close()
                for suffix in ("-wal", "-shm"):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
                os.replace(staged, self.path)
                _fsync_dir(self.path.parent)
                self._open()
                self.migrate()
        except sqlite3.DatabaseError as exc:
            raise InvalidInput(f"{path.name} could not be restored: {exc}") from exc
        finally:
            staged.unlink(missing_ok=True)
        log.warning("database restored from %s (previous database saved as %s)", path, saved)
        return saved


def _migrate_staged(conn: sqlite3.Connection, name: str) -> None:
    """Bring a staged restore copy to the latest schema, one transaction per step; InvalidInput if a step fails."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for version in range(current + 1, LATEST_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            apply_migration(conn, version)
        except sqlite3.DatabaseError as exc:
            conn.execute("ROLLBACK")
            raise InvalidInput(f"{name} could not be migrated to schema version {version}: {exc}",
                               code="backup_migration_failed") from exc
        conn.execute("COMMIT")


@contextmanager
def _open_candidate(path: Path) -> Iterator[sqlite3.Connection]:
    """Open a file offered as a backup, read-only; anything that is not a readable database is InvalidInput."""
    if not path.is_file():
        raise InvalidInput(f"{path.name}: no such file")
    with open(path, "rb") as fh:
        if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise InvalidInput(f"{path.name} is not an SQLite database")
    # A read-only open of a WAL-mode file creates -wal/-shm beside it; remove the ones we created.
    sidecars = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
    existed = {p for p in sidecars if p.exists()}
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            conn.execute("PRAGMA trusted_schema = OFF")
            yield conn
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise InvalidInput(f"{path.name} is not a readable SQLite database: {exc}") from exc
    finally:
        for p in sidecars:
            if p not in existed:
                p.unlink(missing_ok=True)


def _check_candidate(conn: sqlite3.Connection, name: str) -> None:
    """Integrity ok, a schema version this appliance knows, and the tables that version has."""
    check = "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
    if check != "ok":
        raise InvalidInput(f"{name} is damaged (integrity check: {check[:200]})")
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > LATEST_VERSION:
        raise InvalidInput(f"{name} has schema version {version}, newer than this appliance ({LATEST_VERSION})")
    if version < 1:
        raise InvalidInput(f"{name} is not a Whisper Appliance database (no schema version)")
    missing = expected_tables(version) - _table_names(conn)
    if missing:
        raise InvalidInput(f"{name} is not a Whisper Appliance database "
                           f"(missing tables: {', '.join(sorted(missing))})")
    # The whole schema must be exactly what this appliance's migrations build at that version: a trigger, view,
    # index or column the upload adds (or changes) would otherwise be kept and run on the live database.
    found, expected = _schema(conn), expected_schema(version)
    if found != expected:
        extra = sorted(f"{kind} {obj}" for kind, obj, _, _ in found - expected)
        changed = sorted(f"{kind} {obj}" for kind, obj, _, _ in expected - found)
        raise InvalidInput(f"{name} does not have this appliance's schema (unexpected: {', '.join(extra) or 'none'}; "
                           f"missing or different: {', '.join(changed) or 'none'})", code="backup_schema_mismatch")
    # Rows the code would fail to read: JSON columns that do not parse, text columns holding other types.
    checks = [("history", "typeof(text) != 'text' OR typeof(created_at) != 'text' "
                          "OR NOT json_valid(segments) OR NOT json_valid(metadata)")]
    if "jobs" in expected_tables(version):
        checks.append(("jobs", "typeof(id) != 'text' OR NOT json_valid(options)"))
    for table, condition in checks:
        bad = conn.execute(f"SELECT count(*) FROM {table} WHERE {condition}").fetchone()[0]
        if bad:
            raise InvalidInput(f"{name} has {bad} unreadable row(s) in {table}", code="backup_invalid_rows")


def _sanitize_job_paths(conn: sqlite3.Connection, jobs_dir: Path) -> None:
    """Paths in restored job rows are never trusted: each becomes ``jobs_dir/<its file name>`` when that name is
    the job's own upload name (``<id><extension>``), else NULL."""
    for job_id, stored in conn.execute("SELECT id, upload_path FROM jobs WHERE upload_path IS NOT NULL").fetchall():
        name = Path(str(stored)).name
        safe = (isinstance(job_id, str) and job_id.isalnum() and name.startswith(job_id)
                and re.fullmatch(r"(\.[a-z0-9]{1,10})?", name[len(job_id):]) is not None)
        conn.execute("UPDATE jobs SET upload_path = ? WHERE id = ?",
                     (str(jobs_dir / name) if safe else None, job_id))


def _fts_check(conn: sqlite3.Connection) -> str:
    """FTS5's own check that the index matches the history table ('ok' when there is no index yet)."""
    if "history_fts" not in _table_names(conn):
        return "ok"
    try:
        conn.execute("INSERT INTO history_fts(history_fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        return f"full-text index: {exc}"
    return "ok"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
