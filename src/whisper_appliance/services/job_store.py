"""Persistent records of asynchronous transcription jobs (the ``jobs`` table); the job runner is built on top.

Owns the job lifecycle as stored state, so that jobs survive a restart:

    queued -> processing -> completed | failed | cancelled
    processing -> queued        (reset by ``unfinished()`` after a restart)
    queued -> completed | failed | cancelled   (a cache hit, an undecodable upload, a cancel before start)
    failed -> queued            (retry)

Status changes only through the named methods, each a conditional UPDATE, so a runner racing a user's cancel
gets ``Conflict`` instead of overwriting it. A completed job references its history entry with
``ON DELETE CASCADE``: deleting the entry deletes the job, since its result is gone.

Every job has an owner (none for a guest's job). ``list`` shows a principal only what ``owner_condition``
(database.py) lets it see; single reads are unfiltered here and checked by ``JobQueue``, which answers another
owner's job as "not found".
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.errors import Conflict, InvalidInput, NotFound
from ..core.identity import OwnerFilter, Principal
from .database import Database, owner_condition, utc_now

log = logging.getLogger(__name__)

STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
UNFINISHED = ("queued", "processing")
TERMINAL = ("completed", "failed", "cancelled")
MAX_PAGE = 500

# Fields ``update`` may change; status, attempts and timestamps belong to the lifecycle methods.
UPDATABLE = ("filename", "upload_path", "options", "duration", "progress", "eta_seconds")


@dataclass(frozen=True)
class Job:
    id: str
    created_at: str
    updated_at: str
    status: str
    filename: str | None
    upload_path: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    duration: float | None = None
    progress: float = 0.0
    eta_seconds: float | None = None
    error: str | None = None
    history_id: int | None = None
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    owner_id: int | None = None  # None: a guest's job

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["options"] = dict(self.options)
        return out


_COLUMNS = ", ".join(f.name for f in fields(Job))


def _job(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in row.keys()}
    values["options"] = json.loads(values["options"])
    return Job(**values)


def _check_progress(progress: Any) -> float:
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
        raise InvalidInput("progress must be a number from 0 to 1")
    return float(progress)


def _check_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{name} must be a number of seconds (0 or more)")
    return float(value)


def _check_text(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value


def _options_json(options: Any) -> str:
    if not isinstance(options, Mapping):
        raise InvalidInput("options must be an object")
    try:
        return json.dumps(dict(options), ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"options are not JSON-serialisable: {exc}") from None


_VALIDATORS = {
    "filename": lambda v: _check_text("filename", v),
    "upload_path": lambda v: _check_text("upload_path", v),
    "options": _options_json,
    "duration": lambda v: _check_seconds("duration", v),
    "progress": _check_progress,
    "eta_seconds": lambda v: _check_seconds("eta_seconds", v),
}


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, filename: str | None, upload_path: str | None, options: Mapping[str, Any] | None = None, *,
               duration: float | None = None, job_id: str | None = None, owner_id: int | None = None) -> Job:
        """A new queued job of ``owner_id`` (None: a guest); ``job_id`` defaults to a fresh uuid4 hex."""
        job_id = job_id or uuid.uuid4().hex
        now = utc_now()
        values = (job_id, now, now, "queued", _check_text("filename", filename),
                  _check_text("upload_path", upload_path), _options_json(options or {}),
                  _check_seconds("duration", duration), owner_id)
        with self.db.write() as conn:
            try:
                conn.execute("INSERT INTO jobs (id, created_at, updated_at, status, filename, upload_path, options, "
                             "duration, owner_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            except sqlite3.IntegrityError:
                raise Conflict(f"job {job_id} already exists") from None
            return self._get(conn, job_id)

    def get(self, job_id: str) -> Job:
        with self.db.read() as conn:
            return self._get(conn, job_id)

    def list(self, viewer: Principal, status: str | None = None, limit: int = 100, offset: int = 0, *,
             owner: OwnerFilter | None = None) -> list[Job]:
        """The jobs ``viewer`` sees (see database.owner_condition), newest first, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 2 ** 62:
            raise InvalidInput("offset must be between 0 and 2**62")
        conditions, params = (["status = ?"], [status]) if status else ([], [])
        visible, owner_params = owner_condition(viewer, owner)
        if visible is not None:
            conditions.append(visible)
            params.extend(owner_params)
        condition = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs {condition} ORDER BY created_at DESC, rowid DESC "
                                "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each status, of every owner (every status present, 0 when none)."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        return {**dict.fromkeys(STATUSES, 0), **{status: n for status, n in rows}}

    def queued_load(self) -> tuple[int, float]:
        """Unfinished (queued or running) jobs of every owner: how many, and their seconds of audio."""
        with self.db.read() as conn:
            n, seconds = conn.execute("SELECT count(*), coalesce(sum(duration), 0) FROM jobs "
                                      "WHERE status IN ('queued', 'processing')").fetchone()
        return int(n), float(seconds)

    def counts_by_owner(self) -> dict[int | None, dict[str, int]]:
        """Per owner (None: guests), the number of jobs in each status."""
        out: dict[int | None, dict[str, int]] = {}
        with self.db.read() as conn:
            for owner, status, n in conn.execute("SELECT owner_id, status, count(*) FROM jobs GROUP BY 1, 2"):
                out.setdefault(owner, dict.fromkeys(STATUSES, 0))[status] = n
        return out

    def unfinished_of(self, owner: int) -> list[str]:
        """Ids of one owner's queued and running jobs."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT id FROM jobs WHERE owner_id = ? AND status IN ('queued', 'processing')",
                                (owner,)).fetchall()
        return [r[0] for r in rows]

    def hand_over(self, from_owner: int, to_owner: int | None) -> int:
        with self.db.write() as conn:
            return conn.execute("UPDATE jobs SET owner_id = ? WHERE owner_id = ?", (to_owner, from_owner)).rowcount

    def delete_owned_by(self, owner: int) -> list[Job]:
        """Remove one owner's job records (completed ones went with their history entries); returns them so the
        caller can remove stored uploads."""
        with self.db.write() as conn:
            rows = conn.execute(f"DELETE FROM jobs WHERE owner_id = ? RETURNING {_COLUMNS}", (owner,)).fetchall()
        return [_job(r) for r in rows]

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change descriptive fields (see ``UPDATABLE``); status moves only through the lifecycle methods."""
        unknown = set(changes) - set(UPDATABLE)
        if unknown:
            raise InvalidInput(f"job fields that cannot be updated: {', '.join(sorted(unknown))}")
        values = {name: _VALIDATORS[name](value) for name, value in changes.items()}
        assignments = "".join(f", {name} = ?" for name in values)
        with self.db.write() as conn:
            cur = conn.execute(f"UPDATE jobs SET updated_at = ?{assignments} WHERE id = ?",
                               [utc_now(), *values.values(), job_id])
            if cur.rowcount == 0:
                raise NotFound(f"job {job_id} not found")
            return self._get(conn, job_id)

    def mark_processing(self, job_id: str) -> Job:
        """A run starts: queued -> processing, attempts + 1, started_at now, progress and error cleared."""
        now = utc_now()
        return self._transition(job_id, ("queued",), "processing",
                                "attempts = attempts + 1, started_at = ?, finished_at = NULL, progress = 0, "
                                "eta_seconds = NULL, error = NULL", [now])

    def complete(self, job_id: str, history_id: int) -> Job:
        now = utc_now()
        try:
            return self._transition(job_id, UNFINISHED, "completed",
                                    "history_id = ?, progress = 1, eta_seconds = 0, finished_at = ?, error = NULL",
                                    [history_id, now])
        except sqlite3.IntegrityError:
            raise InvalidInput(f"history entry {history_id} does not exist") from None

    def fail(self, job_id: str, error: str) -> Job:
        now = utc_now()
        return self._transition(job_id, UNFINISHED, "failed", "error = ?, eta_seconds = NULL, finished_at = ?",
                                [str(error), now])

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (the runner sees it through ``progress()`` returning False).

        Cancelling a cancelled job returns it unchanged; a completed or failed job cannot be cancelled.
        """
        now = utc_now()
        try:
            return self._transition(job_id, UNFINISHED, "cancelled", "eta_seconds = NULL, finished_at = ?", [now])
        except Conflict:
            job = self.get(job_id)
            if job.status == "cancelled":
                return job
            raise

    def retry(self, job_id: str) -> Job:
        """Queue a failed job again."""
        return self._transition(job_id, ("failed",), "queued",
                                "error = NULL, progress = 0, eta_seconds = NULL, finished_at = NULL", [])

    def delete(self, job_id: str) -> Job:
        """Remove the record; returns it so the caller can remove the stored upload."""
        with self.db.write() as conn:
            job = self._get(conn, job_id)
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return job

    def unfinished(self) -> list[Job]:
        """Jobs to resume at start-up, oldest first; jobs left 'processing' by a dead process become 'queued'.

        Call it once before the runner starts: a job that is really running would be reset too.
        """
        with self.db.write() as conn:
            reset = conn.execute("UPDATE jobs SET status = 'queued', progress = 0, eta_seconds = NULL, "
                                 "updated_at = ? WHERE status = 'processing'", (utc_now(),)).rowcount
            rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status = 'queued' "
                                "ORDER BY created_at, rowid").fetchall()
        if reset:
            log.info("%d interrupted job(s) queued again", reset)
        return [_job(r) for r in rows]

    def progress(self, job_id: str, progress: float, eta_seconds: float | None = None) -> bool:
        """Record progress of a running job. False when it is no longer processing (cancelled: stop work)."""
        progress = _check_progress(progress)
        eta_seconds = _check_seconds("eta_seconds", eta_seconds)
        with self.db.write() as conn:
            cur = conn.execute("UPDATE jobs SET progress = ?, eta_seconds = ?, updated_at = ? "
                               "WHERE id = ? AND status = 'processing'", (progress, eta_seconds, utc_now(), job_id))
            if cur.rowcount:
                return True
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NotFound(f"job {job_id} not found")
            return False

    def _transition(self, job_id: str, allowed_from: tuple[str, ...], status: str, assignments: str,
                    params: list[Any]) -> Job:
        marks = ", ".join("?" for _ in allowed_from)
        with self.db.write() as conn:
            cur = conn.execute(f"UPDATE jobs SET status = ?, updated_at = ?, {assignments} "
                               f"WHERE id = ? AND status IN ({marks})",
                               [status, utc_now(), *params, job_id, *allowed_from])
            job = self._get(conn, job_id)
            if cur.rowcount == 0:
                raise Conflict(f"job {job_id} is {job.status}; it cannot become {status}")
        return job

    @staticmethod
    def _get(conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return _job(row)
