"""Transcription history: the entries the server stores, their full-text search, export/import and the result cache.

Owns the ``history`` table (schema in database.py) and everything read from or written to it:

* ``HistoryStore.add/get/update_text/delete/delete_many`` for single entries;
* ``search`` over an FTS5 index (kept in sync by triggers) with filters, pagination and highlighted snippets;
* ``stats`` for the history page, ``usage_by_owner`` for the admin's per-user figures, ``purge_older_than`` for
  retention;
* streamed export (JSON array or CSV, no row cap) and validated import that keeps the original timestamps;
* ``find_cached``: the stored result for the same audio, model, engine and decoding options (never an edited one).

Ownership: every entry has an owner (``owner_id``; none for the guests' shared history). Every read and change
takes the ``Principal`` asking first and sees only what ``owner_condition`` (database.py) lets it see: another
owner's entry is "not found", exactly like a missing one, so ids do not leak. An admin sees every entry and may
narrow any listing to one owner (``OwnerFilter``).

Snippet markers: matched terms are wrapped in ``SNIPPET_START`` (U+0002) and ``SNIPPET_END`` (U+0003), control
characters that never occur in transcripts (they are stripped from stored text) and are not HTML; the web page
splits on them and renders the pieces as text.

Import identity: an entry is a duplicate of a stored one of the same owner when ``created_at`` (normalised to
milliseconds), ``text``, ``source`` and ``audio_sha256`` (null equals null) are all equal. Imported ids and owners
are not kept: each imported entry gets a new id and the owner the importer chose.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..core.errors import ApplianceError, InvalidInput, NotFound
from ..core.formats import spreadsheet_cell, spreadsheet_value
from ..core.identity import OwnerFilter, Principal
from ..core.records import Segment, TranscribeOptions, Transcript
from .database import (
    Database,
    days_ago,
    format_timestamp,
    normalize_timestamp,
    owner_condition,
    parse_timestamp,
    utc_now,
)

log = logging.getLogger(__name__)

SOURCES = ("upload", "job", "live", "api")
SNIPPET_START = "\u0002"
SNIPPET_END = "\u0003"
SNIPPET_ELLIPSIS = "…"
SNIPPET_TOKENS = 24
MAX_PAGE = 500
# Bounds on one search query: each term is one more FTS5 phrase lookup, and a prefix term walks every indexed
# term with that beginning (q="a* b* c* ..." once held the database for 15 s).
MAX_QUERY_TERMS = 32
MAX_PREFIX_TERMS = 8
MAX_QUERY_LENGTH = 1000
MAX_TERM_LENGTH = 100
DEFAULT_SEARCH_TIMEOUT_MS = 10_000
DEFAULT_MAX_TEXT_LENGTH = 1_000_000
EXPORT_BATCH = 500
IMPORT_BATCH = 500
CHUNK_CHARS = 64 * 1024
_MARKERS = str.maketrans("", "", SNIPPET_START + SNIPPET_END)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    created_at: str
    source: str
    filename: str | None
    text: str
    language: str | None
    model: str | None
    engine: str | None
    duration: float | None
    processing_seconds: float | None
    segments: tuple[dict[str, Any], ...] = ()
    audio_sha256: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    options_key: str | None = None
    owner_id: int | None = None  # None: the guests' shared history
    edited_at: str | None = None  # when its text was last corrected

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["segments"] = [dict(s) for s in self.segments]
        out["metadata"] = dict(self.metadata)
        return out

    def transcript(self) -> Transcript:
        """The entry as a core Transcript, for the subtitle and text writers."""
        return Transcript(text=self.text, language=self.language or "",
                          language_probability=float(self.metadata.get("language_probability") or 0.0),
                          duration=float(self.duration or 0.0),
                          segments=tuple(Segment.from_dict(s) for s in self.segments))


ENTRY_FIELDS = tuple(f.name for f in fields(HistoryEntry))
MAX_ID = 2 ** 63 - 1  # SQLite's INTEGER range: larger ids cannot exist
MAX_STATS_DAYS = 3660  # ten years of daily counts
_COLUMNS = ", ".join(f"h.{name}" for name in ENTRY_FIELDS)


@dataclass(frozen=True)
class NewEntry:
    """What a caller supplies to store an entry. ``created_at`` None means now; import passes the original."""

    text: str
    source: str
    filename: str | None = None
    language: str | None = None
    model: str | None = None
    engine: str | None = None
    duration: float | None = None
    processing_seconds: float | None = None
    segments: Sequence[Segment | Mapping[str, Any]] = ()
    audio_sha256: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    options_key: str | None = None
    created_at: str | datetime | None = None
    owner_id: int | None = None
    edited_at: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NewEntry:
        """An imported item: requires ``text`` and ``created_at``; ``source`` defaults to 'upload'; ``id`` and
        ``owner_id`` ignored (the importer chooses the owner)."""
        if not isinstance(data, Mapping):
            raise InvalidInput("not an object")
        for name in ("text", "created_at"):
            if data.get(name) is None:
                raise InvalidInput(f"missing required field {name!r}")
        known = {f.name for f in fields(cls)} - {"owner_id"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values.setdefault("source", "upload")
        return cls(**values)


@dataclass(frozen=True)
class SearchHit:
    entry: HistoryEntry
    snippet: str | None  # the text around the matches, terms wrapped in SNIPPET_START/SNIPPET_END

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry.to_dict(), "snippet": self.snippet}


@dataclass(frozen=True)
class SearchPage:
    items: tuple[SearchHit, ...]
    total: int
    limit: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"items": [h.to_dict() for h in self.items], "total": self.total, "limit": self.limit,
                "offset": self.offset}


@dataclass(frozen=True)
class ImportResult:
    imported: int
    skipped_duplicates: int
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": list(self.errors)}


# --- pure helpers -----------------------------------------------------------------------------------------------

_CHUNK = re.compile(r'"([^"]*)"(\*?)|(\S+)')
_WORD = re.compile(r"\w+")


def fts_query(text: str | None) -> str | None:
    """Turn what a person typed into a safe FTS5 query; None when nothing searchable is left.

    Every whitespace-separated word (or "quoted phrase") becomes one quoted FTS5 phrase of its word characters,
    so operators (AND, NEAR(, -, ^, :) and stray quotes are searched as plain words or dropped, never parsed.
    Punctuation inside a word joins its parts into a phrase ("mobile-app" matches "mobile app"). A trailing
    ``*`` makes the last word a prefix. All phrases must match (implicit AND).
    """
    if not text:
        return None
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidInput(f"the search query is longer than {MAX_QUERY_LENGTH} characters", code="query_too_long")
    terms, prefixes = [], 0
    for m in _CHUNK.finditer(text):
        if m.group(3) is not None:
            chunk, prefix = m.group(3), m.group(3).endswith("*")
        else:
            chunk, prefix = m.group(1), bool(m.group(2))
        words = _WORD.findall(chunk)
        if words:
            phrase = " ".join(words)
            if len(phrase) > MAX_TERM_LENGTH:
                raise InvalidInput(f"a search term is longer than {MAX_TERM_LENGTH} characters",
                                   code="query_too_long")
            prefixes += prefix
            terms.append('"' + phrase + '"' + ("*" if prefix else ""))
    if len(terms) > MAX_QUERY_TERMS:
        raise InvalidInput(f"the search has {len(terms)} terms; at most {MAX_QUERY_TERMS} are allowed",
                           code="query_too_complex")
    if prefixes > MAX_PREFIX_TERMS:
        raise InvalidInput(f"the search has {prefixes} prefix terms (ending in *); at most {MAX_PREFIX_TERMS} are "
                           "allowed", code="query_too_complex")
    return " ".join(terms) or None


def make_options_key(options: TranscribeOptions | Mapping[str, Any]) -> str:
    """A stable key for decoding options (sha256 of canonical JSON), for the result cache."""
    data = options.cache_key() if isinstance(options, TranscribeOptions) else dict(options)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _optional_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value or None


def _optional_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{name} must be a number of seconds (0 or more)")
    return float(value)


def _json_text(name: str, value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name} is not JSON-serialisable: {exc}") from None


def _check_text(text: Any, max_length: int) -> str:
    """A history text: a string of at most ``max_length`` characters (HISTORY_MAX_TEXT_LENGTH), else 413."""
    if not isinstance(text, str):
        raise InvalidInput("text must be a string")
    if len(text) > max_length:
        raise InvalidInput(f"the text has {len(text):,} characters; a history entry holds at most {max_length:,}",
                           code="text_too_long", status=413)
    return text


def _row_values(new: NewEntry, max_text_length: int = DEFAULT_MAX_TEXT_LENGTH) -> dict[str, Any]:
    """Validate a NewEntry and turn it into column values."""
    _check_text(new.text, max_text_length)
    if new.source not in SOURCES:
        raise InvalidInput(f"source {new.source!r} is not one of {', '.join(SOURCES)}")
    if new.created_at is None:
        created_at = utc_now()
    elif isinstance(new.created_at, datetime):
        created_at = format_timestamp(new.created_at)
    else:
        try:
            created_at = normalize_timestamp(new.created_at)
        except (TypeError, ValueError):
            raise InvalidInput(f"created_at {new.created_at!r} is not an ISO-8601 datetime") from None
    if isinstance(new.segments, (str, bytes)) or not isinstance(new.segments, Sequence):
        raise InvalidInput("segments must be a list")
    segments = []
    for seg in new.segments:
        if isinstance(seg, Segment):
            segments.append(seg.to_dict(decoding=True))
        elif isinstance(seg, Mapping):
            try:
                Segment.from_dict(seg)  # the shape transcript() will need later
            except (KeyError, TypeError, ValueError):
                raise InvalidInput("each segment needs numeric start and end and a text") from None
            segments.append(dict(seg))
        else:
            raise InvalidInput("each segment must be an object")
    if not isinstance(new.metadata, Mapping):
        raise InvalidInput("metadata must be an object")
    owner_id = new.owner_id
    if owner_id is not None and (isinstance(owner_id, bool) or not isinstance(owner_id, int)):
        raise InvalidInput("owner_id must be a user id")
    edited_at = None
    if new.edited_at is not None:
        try:
            edited_at = normalize_timestamp(new.edited_at)
        except (TypeError, ValueError):
            raise InvalidInput(f"edited_at {new.edited_at!r} is not an ISO-8601 datetime") from None
    sha = _optional_str("audio_sha256", new.audio_sha256)
    if sha is not None:
        sha = sha.lower()
        if not _SHA256.fullmatch(sha):
            raise InvalidInput("audio_sha256 must be 64 hexadecimal digits")
    return {
        "created_at": created_at,
        "source": new.source,
        "filename": _optional_str("filename", new.filename),
        "text": new.text.translate(_MARKERS),
        "language": _optional_str("language", new.language),
        "model": _optional_str("model", new.model),
        "engine": _optional_str("engine", new.engine),
        "duration": _optional_seconds("duration", new.duration),
        "processing_seconds": _optional_seconds("processing_seconds", new.processing_seconds),
        "segments": _json_text("segments", segments),
        "audio_sha256": sha,
        "metadata": _json_text("metadata", dict(new.metadata)),
        "options_key": _optional_str("options_key", new.options_key),
        "owner_id": owner_id,
        "edited_at": edited_at,
    }


def _entry(row: sqlite3.Row) -> HistoryEntry:
    return HistoryEntry(
        id=row["id"], created_at=row["created_at"], source=row["source"], filename=row["filename"],
        text=row["text"], language=row["language"], model=row["model"], engine=row["engine"],
        duration=row["duration"], processing_seconds=row["processing_seconds"],
        segments=tuple(json.loads(row["segments"])), audio_sha256=row["audio_sha256"],
        metadata=json.loads(row["metadata"]), options_key=row["options_key"], owner_id=row["owner_id"],
        edited_at=row["edited_at"])


_PROGRESS_STEPS = 1000  # SQLite virtual-machine steps between deadline checks


@contextmanager
def _deadline(conn: sqlite3.Connection, timeout_ms: int) -> Iterator[None]:
    """Abort what ``conn`` runs once ``timeout_ms`` have passed: a 503 ``search_timeout``."""
    deadline = time.monotonic() + timeout_ms / 1000
    expired = []

    def check() -> int:
        if time.monotonic() >= deadline:
            expired.append(True)
            return 1
        return 0

    conn.set_progress_handler(check, _PROGRESS_STEPS)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if not expired:
            raise
        log.warning("history search stopped after %d ms", timeout_ms)
        raise ApplianceError(f"the search took longer than {timeout_ms} ms and was stopped; narrow it down",
                             code="search_timeout", status=503) from exc
    finally:
        conn.set_progress_handler(None, 0)


def _lower_bound(text: str) -> str:
    return format_timestamp(_parse_filter("since", text))


def _upper_bound(text: str) -> str:
    """Exclusive bound: a date covers that whole day; a datetime is included (to the millisecond)."""
    moment = _parse_filter("until", text)
    step = timedelta(days=1) if _is_date(text) else timedelta(milliseconds=1)
    try:
        return format_timestamp(moment + step)
    except OverflowError:
        raise InvalidInput(f"until={text!r} is out of range (the last day is 9999-12-30)",
                           code="invalid_date") from None


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


def _parse_filter(name: str, text: str) -> datetime:
    try:
        return parse_timestamp(text)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}={text!r} is not an ISO-8601 date or datetime in range",
                           code="invalid_date") from None


def _page_bounds(limit: int, offset: int) -> tuple[int, int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_ID:
        raise InvalidInput("offset must be 0 or more (and fit in 64 bits)")
    return limit, offset


def _check_id(entry_id: int) -> None:
    """Ids outside SQLite's INTEGER range cannot exist (and would overflow the driver): a plain 404."""
    if not 0 < entry_id <= MAX_ID:
        raise NotFound(f"history entry {entry_id} not found")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    return spreadsheet_cell(str(value))


_CSV_NUMBERS = {"duration", "processing_seconds"}
_CSV_JSON = {"segments", "metadata"}


def _from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells are strings: empty -> absent, numbers and JSON columns decoded (left as is when they do not
    parse, so that row validation reports them)."""
    item: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "" and key != "text":
            continue
        value = spreadsheet_value(value)  # a cell the export guarded against formulas
        if key in _CSV_NUMBERS:
            try:
                item[key] = float(value)
            except ValueError:
                item[key] = value
        elif key in _CSV_JSON:
            try:
                item[key] = json.loads(value)
            except ValueError:
                item[key] = value
        else:
            item[key] = value
    return item


def parse_import(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """Parse an export file (``json``: an array of entries or {"entries": [...]}; ``csv``: header + rows).

    Only the file's structure is checked here (InvalidInput if it cannot be read at all); each item is
    validated by ``HistoryStore.import_entries``, which reports bad rows by number (1-based, header not counted).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the import file is not UTF-8 text") from None
    if fmt == "json":
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"the import file is not valid JSON: {exc}") from None
        if isinstance(parsed, dict) and isinstance(parsed.get("entries"), list):
            parsed = parsed["entries"]
        if not isinstance(parsed, list):
            raise InvalidInput("a JSON import must be an array of entries")
        return parsed
    if fmt == "csv":
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
            header = reader.fieldnames or []
            missing = [name for name in ("text", "created_at") if name not in header]
            if missing:
                raise InvalidInput(f"the CSV header lacks the column(s) {', '.join(missing)}")
            return [_from_csv_row(row) for row in reader]
        except csv.Error as exc:
            raise InvalidInput(f"the import file is not valid CSV: {exc}") from None
    raise InvalidInput(f"unknown import format {fmt!r} (use json or csv)")


# --- the store --------------------------------------------------------------------------------------------------

class HistoryStore:
    def __init__(self, db: Database, *, search_timeout_ms: int = DEFAULT_SEARCH_TIMEOUT_MS,
                 max_text_length: int = DEFAULT_MAX_TEXT_LENGTH) -> None:
        self.db = db
        self.search_timeout_ms = search_timeout_ms
        self.max_text_length = max_text_length

    # single entries

    def add(self, entry: NewEntry | None = None, /, **values: Any) -> HistoryEntry:
        """Store one entry (a NewEntry, or its fields as keywords) and return it with its id."""
        if entry is None:
            entry = NewEntry(**values)
        elif values:
            raise TypeError("pass a NewEntry or keyword fields, not both")
        row = _row_values(entry, self.max_text_length)
        with self.db.write() as conn:
            new_id = _insert(conn, row)
            return self._get(conn, new_id)

    def count(self) -> int:
        """Entries of every owner."""
        with self.db.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM history").fetchone()[0])

    def get(self, viewer: Principal, entry_id: int) -> HistoryEntry:
        with self.db.read() as conn:
            return self._get(conn, entry_id, viewer)

    def update_text(self, viewer: Principal, entry_id: int, text: str) -> HistoryEntry:
        """Replace an entry's text (a correction); the search index follows through the update trigger.

        The segments said the old words, and subtitles are written from segments: they become one segment with
        the corrected text over the time the old ones spanned (which words moved where is not known). The entry
        is marked edited, so it is never served as the cached result of its audio again.
        """
        text = _check_text(text, self.max_text_length).translate(_MARKERS)
        with self.db.write() as conn:
            current = self._get(conn, entry_id, viewer)
            segments: list[dict[str, Any]] = []
            if current.segments and text.strip():
                first, last = Segment.from_dict(current.segments[0]), Segment.from_dict(current.segments[-1])
                segments = [Segment(id=0, start=first.start, end=last.end, text=" " + text.strip()).to_dict()]
            conn.execute("UPDATE history SET text = ?, segments = ?, edited_at = ? WHERE id = ?",
                         (text, _json_text("segments", segments), utc_now(), entry_id))
            return self._get(conn, entry_id)

    def delete(self, viewer: Principal, entry_id: int) -> None:
        """Delete one entry (and, by cascade, the job whose result it was)."""
        with self.db.write() as conn:
            self._get(conn, entry_id, viewer)
            conn.execute("DELETE FROM history WHERE id = ?", (entry_id,))

    def delete_many(self, viewer: Principal, ids: Iterable[int]) -> int:
        """Delete the given entries in one transaction; unknown (or unseen) ids are ignored. Returns how many."""
        ids = list(ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InvalidInput("ids must be whole numbers")
        condition, params = owner_condition(viewer)
        where = f" AND {condition}" if condition else ""
        with self.db.write() as conn:
            return conn.execute(f"DELETE FROM history WHERE id IN (SELECT value FROM json_each(?)){where}",
                                (json.dumps(ids), *params)).rowcount

    @staticmethod
    def _get(conn: sqlite3.Connection, entry_id: int, viewer: Principal | None = None) -> HistoryEntry:
        """The entry, or 404 when it does not exist or ``viewer`` may not see it (the same answer)."""
        _check_id(entry_id)
        row = conn.execute(f"SELECT {_COLUMNS} FROM history AS h WHERE h.id = ?", (entry_id,)).fetchone()
        if row is None or (viewer is not None and not viewer.sees(row["owner_id"])):
            raise NotFound(f"history entry {entry_id} not found")
        return _entry(row)

    # ownership

    def hand_over(self, from_owner: int, to_owner: int | None) -> int:
        """Give every entry of one owner to another (a deleted user's, handed on); returns how many."""
        with self.db.write() as conn:
            return conn.execute("UPDATE history SET owner_id = ? WHERE owner_id = ?", (to_owner, from_owner)).rowcount

    def delete_owned_by(self, owner: int) -> int:
        """Delete every entry of one owner (with the jobs whose results they were); returns how many."""
        with self.db.write() as conn:
            return conn.execute("DELETE FROM history WHERE owner_id = ?", (owner,)).rowcount

    def usage_by_owner(self) -> dict[int | None, dict[str, float]]:
        """Per owner (None: guests): entries, audio hours and the bytes their texts, segments and metadata take."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT owner_id, count(*), coalesce(sum(duration), 0), "
                "coalesce(sum(length(CAST(text AS BLOB)) + length(CAST(segments AS BLOB)) "
                "+ length(CAST(metadata AS BLOB))), 0) FROM history GROUP BY owner_id").fetchall()
        return {r[0]: {"entries": r[1], "audio_hours": r[2] / 3600, "storage_bytes": r[3]} for r in rows}

    # search and statistics

    def search(self, viewer: Principal, q: str | None = None, *, source: str | None = None,
               language: str | None = None, since: str | None = None, until: str | None = None, limit: int = 50,
               offset: int = 0, owner: OwnerFilter | None = None) -> SearchPage:
        """Entries matching the filters: by bm25 relevance with snippets when ``q`` has words, else newest first.

        ``since`` is inclusive; ``until`` includes a given datetime, or the whole day of a given date.
        """
        limit, offset = _page_bounds(limit, offset)
        where, params = [], []
        condition, owner_params = owner_condition(viewer, owner, "h.owner_id")
        if condition is not None:
            where.append(condition)
            params.extend(owner_params)
        if source is not None:
            if source not in SOURCES:
                raise InvalidInput(f"source {source!r} is not one of {', '.join(SOURCES)}")
            where.append("h.source = ?")
            params.append(source)
        if language is not None:
            where.append("h.language = ?")
            params.append(language)
        if since is not None:
            where.append("h.created_at >= ?")
            params.append(_lower_bound(since))
        if until is not None:
            where.append("h.created_at < ?")
            params.append(_upper_bound(until))
        match = fts_query(q)
        if match is not None:
            where.insert(0, "history_fts MATCH ?")
            params.insert(0, match)
            origin = "history_fts JOIN history AS h ON h.id = history_fts.rowid"
            snippet = "snippet(history_fts, 0, ?, ?, ?, ?)"
            snippet_params = [SNIPPET_START, SNIPPET_END, SNIPPET_ELLIPSIS, SNIPPET_TOKENS]
            # Text matches weigh more than filename matches; newest first among equals.
            order = "bm25(history_fts, 1.0, 0.5), h.created_at DESC, h.id DESC"
        else:
            origin, snippet, snippet_params = "history AS h", "NULL", []
            order = "h.created_at DESC, h.id DESC"
        condition = ("WHERE " + " AND ".join(where)) if where else ""
        # A read-only connection of its own, so a long search never holds the lock writers need; one read
        # transaction, so the count and the page come from one snapshot; and a deadline.
        with self.db.reader() as conn:
            conn.execute("BEGIN")
            try:
                with _deadline(conn, self.search_timeout_ms):
                    total = conn.execute(f"SELECT count(*) FROM {origin} {condition}", params).fetchone()[0]
                    rows = conn.execute(
                        f"SELECT {_COLUMNS}, {snippet} AS snippet FROM {origin} {condition} ORDER BY {order} "
                        f"LIMIT ? OFFSET ?", [*snippet_params, *params, limit, offset]).fetchall()
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        return SearchPage(items=tuple(SearchHit(_entry(r), r["snippet"]) for r in rows), total=total,
                          limit=limit, offset=offset)

    def stats(self, viewer: Principal, days: int = 30, *, owner: OwnerFilter | None = None) -> dict[str, Any]:
        """Totals, counts by source and by model, and entries per UTC day over the last ``days`` days, of the
        entries ``viewer`` sees."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_STATS_DAYS:
            raise InvalidInput(f"days must be between 1 and {MAX_STATS_DAYS}")
        today = datetime.now(UTC).date()
        first = today - timedelta(days=days - 1)
        condition, params = owner_condition(viewer, owner)
        where = f"WHERE {condition}" if condition else ""
        also = f"AND {condition}" if condition else ""
        with self.db.read() as conn:
            entries, audio, processing = conn.execute(
                "SELECT count(*), coalesce(sum(duration), 0), coalesce(sum(processing_seconds), 0) "
                f"FROM history {where}", params).fetchone()
            by_source = dict(conn.execute(
                f"SELECT source, count(*) FROM history {where} GROUP BY source ORDER BY source", params).fetchall())
            by_model = dict(conn.execute(
                f"SELECT coalesce(model, 'unknown'), count(*) FROM history {where} GROUP BY 1 ORDER BY 1",
                params).fetchall())
            per_day = dict(conn.execute(
                f"SELECT substr(created_at, 1, 10), count(*) FROM history WHERE created_at >= ? {also} GROUP BY 1",
                (first.isoformat(), *params)).fetchall())
        by_day = {(first + timedelta(days=i)).isoformat(): 0 for i in range(days)}
        by_day.update({day: n for day, n in per_day.items() if day in by_day})
        return {"entries": entries, "audio_hours": audio / 3600, "processing_hours": processing / 3600,
                "by_source": by_source, "by_model": by_model, "by_day": by_day}

    # result cache and retention

    def find_cached(self, audio_sha256: str, model: str, engine: str,
                    options_key: str | None) -> HistoryEntry | None:
        """The newest unedited entry (of any owner) for the same audio, model, engine and decoding options.

        The caller must not hand another owner's entry out as it is (TranscriptionService copies it)."""
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM history AS h WHERE h.audio_sha256 = ? AND h.model = ? AND h.engine = ? "
                "AND h.options_key IS ? AND h.edited_at IS NULL ORDER BY h.id DESC LIMIT 1",
                ((audio_sha256 or "").lower(), model, engine, options_key)).fetchone()
        return _entry(row) if row is not None else None

    def purge_older_than(self, days: int) -> int:
        """Delete entries (of every owner) created more than ``days`` days ago; returns how many."""
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise InvalidInput("days must be 1 or more (0 would delete everything)")
        with self.db.write() as conn:
            count = conn.execute("DELETE FROM history WHERE created_at < ?", (days_ago(days),)).rowcount
        if count:
            log.info("retention: deleted %d history entries older than %d days", count, days)
        return count

    # export and import

    def iter_export(self, viewer: Principal, *, owner: OwnerFilter | None = None) -> Iterator[dict[str, Any]]:
        """Every entry ``viewer`` sees, as a dict, oldest first, read in batches from one snapshot; writers are
        not blocked."""
        condition, params = owner_condition(viewer, owner, "h.owner_id")
        where = f"WHERE {condition}" if condition else ""
        with self.db.reader() as conn:
            cur = conn.execute(f"SELECT {_COLUMNS} FROM history AS h {where} ORDER BY h.id", params)
            while rows := cur.fetchmany(EXPORT_BATCH):
                for row in rows:
                    yield _entry(row).to_dict()

    def export_json(self, viewer: Principal, *, owner: OwnerFilter | None = None) -> Iterator[str]:
        """A JSON array of the entries, as text chunks (``fp.writelines(store.export_json(...))`` for a file)."""
        buffer = ["["]
        size, sep = 1, "\n"
        for item in self.iter_export(viewer, owner=owner):
            piece = sep + json.dumps(item, ensure_ascii=False)
            buffer.append(piece)
            size += len(piece)
            sep = ",\n"
            if size >= CHUNK_CHARS:
                yield "".join(buffer)
                buffer, size = [], 0
        buffer.append("\n]\n")
        yield "".join(buffer)

    def export_csv(self, viewer: Principal, *, owner: OwnerFilter | None = None) -> Iterator[str]:
        """CSV with one column per entry field (segments and metadata as JSON), as text chunks."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(ENTRY_FIELDS)
        for item in self.iter_export(viewer, owner=owner):
            writer.writerow([_csv_cell(item[name]) for name in ENTRY_FIELDS])
            if out.tell() >= CHUNK_CHARS:
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()

    def import_entries(self, items: Iterable[Mapping[str, Any]], *, owner_id: int | None) -> ImportResult:
        """Store imported entries for ``owner_id`` (None: the guests) with their original timestamps, skipping
        duplicates (see module docstring).

        Invalid items are reported as ``row N: why`` (1-based) and the rest are still imported.
        """
        imported = skipped = 0
        errors: list[str] = []
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal imported, skipped
            # The batch is built before taking the lock: nothing inside the transaction waits on the caller.
            with self.db.write() as conn:
                for row in batch:
                    if _is_duplicate(conn, row):
                        skipped += 1
                    else:
                        _insert(conn, row)
                        imported += 1
            batch.clear()

        for number, item in enumerate(items, 1):
            try:
                batch.append({**_row_values(NewEntry.from_dict(item), self.max_text_length), "owner_id": owner_id})
            except InvalidInput as exc:
                errors.append(f"row {number}: {exc.message}")
            except TypeError as exc:
                errors.append(f"row {number}: {exc}")
            if len(batch) >= IMPORT_BATCH:
                flush()
        if batch:
            flush()
        log.info("history import: %d imported, %d duplicates skipped, %d invalid", imported, skipped, len(errors))
        return ImportResult(imported=imported, skipped_duplicates=skipped, errors=tuple(errors))


def _insert(conn: sqlite3.Connection, row: dict[str, Any]) -> int:
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    return int(conn.execute(f"INSERT INTO history ({names}) VALUES ({marks})", list(row.values())).lastrowid)


def _is_duplicate(conn: sqlite3.Connection, row: dict[str, Any]) -> bool:
    # INDEXED BY: without ANALYZE statistics the planner prefers the (far less selective) source index.
    return conn.execute(
        "SELECT 1 FROM history INDEXED BY history_created_at WHERE created_at = ? AND text = ? AND source = ? "
        "AND audio_sha256 IS ? AND owner_id IS ? LIMIT 1",
        (row["created_at"], row["text"], row["source"], row["audio_sha256"], row["owner_id"])).fetchone() is not None
