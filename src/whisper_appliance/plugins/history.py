"""The history REST API over ``HistoryStore``, and database backup/restore.

Routes:

* ``GET /api/history`` (search, filters, pagination), ``GET/PATCH/DELETE /api/history/<id>``,
  ``POST /api/history/delete`` (many), ``GET /api/history/<id>/export``, ``GET /api/history/stats``;
* ``GET /api/history/export`` (streamed JSON or CSV, every entry), ``POST /api/history/import``;
* ``GET /api/admin/backup`` (a consistent SQLite copy), ``POST /api/admin/restore``.

Every route takes the caller's principal to the store, which shows only the caller's entries (the guests' shared
ones for anonymous callers; every entry to an admin, who may add ``?user=<name|guest>``); another owner's entry is
404. Reads follow ``REQUIRE_AUTH``; edits need full access (or a guest, on guest entries); deleting needs an
account; importing, backup and restore need an admin.
Database calls run off the event loop (``concurrency.wait_blocking``): the store's lock is a real OS lock that
an inference thread may hold while it records a result. Nothing here returns HTML: transcripts are data.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request, stream_with_context
from flask_socketio import SocketIO

from ..core import concurrency
from ..core.errors import InvalidInput
from ..core.formats import FORMATS
from ..core.identity import GUEST_NAME
from ..core.options import parse_int
from ..http import (
    appliance,
    body_limit,
    current_principal,
    download_name,
    formatted_response,
    owner_filter,
    request_json,
    require_access,
    require_account,
    require_admin,
    require_history_change,
    uploaded_file,
)
from ..services.history import parse_import

log = logging.getLogger(__name__)

bp = Blueprint("history", __name__)

MAX_DELETE_IDS = 1000
MAX_REPORTED_IMPORT_ERRORS = 100
ENTRY_EXPORT_FORMATS = tuple(FORMATS)  # json is the stored entry itself, the others the core writers
BACKUP_CHUNK = 1024 * 1024
SQLITE_CONTENT_TYPE = "application/vnd.sqlite3"


def _query_int(name: str, default: int) -> int:
    return parse_int(name, request.args.get(name), default=default)


def _query_text(name: str) -> str | None:
    # ASCII whitespace only: str.strip() would also eat U+0085 and friends, and a date that is only such a
    # character must be a 400, not "no date" (found by schemathesis).
    value = request.args.get(name, "").strip(" \t\r\n")
    return value or None


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _attachment(resp: Response, filename: str) -> Response:
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return concurrency.wait_blocking(fn, *args, **kwargs)


# -- entries -------------------------------------------------------------------------------------------------------
@bp.get("/api/history")
@require_access
def search() -> Response:
    page = _blocking(appliance().history.search, current_principal(), _query_text("q"), source=_query_text("source"),
                     language=_query_text("language"), since=_query_text("since"), until=_query_text("until"),
                     limit=_query_int("limit", 50), offset=_query_int("offset", 0), owner=owner_filter())
    return jsonify(page.to_dict())


@bp.get("/api/history/stats")
@require_access
def stats() -> Response:
    return jsonify(_blocking(appliance().history.stats, current_principal(), _query_int("days", 30),
                             owner=owner_filter()))


@bp.get("/api/history/<int:entry_id>")
@require_access
def get_entry(entry_id: int) -> Response:
    return jsonify(_blocking(appliance().history.get, current_principal(), entry_id).to_dict())


@bp.patch("/api/history/<int:entry_id>")
@require_history_change
def edit_entry(entry_id: int) -> Response:
    text = request_json().get("text")
    if not isinstance(text, str):
        raise InvalidInput("'text' must be a string", code="invalid_request")
    return jsonify(_blocking(appliance().history.update_text, current_principal(), entry_id, text).to_dict())


@bp.delete("/api/history/<int:entry_id>")
@require_account
def delete_entry(entry_id: int) -> Response:
    _blocking(appliance().history.delete, current_principal(), entry_id)
    return jsonify({"deleted": entry_id})


@bp.post("/api/history/delete")
@require_account
def delete_entries() -> Response:
    ids = request_json().get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInput("'ids' must be a list of entry ids (whole numbers)", code="invalid_request")
    if len(ids) > MAX_DELETE_IDS:
        raise InvalidInput(f"at most {MAX_DELETE_IDS} ids per request, got {len(ids)}", code="too_many_ids")
    return jsonify({"deleted": _blocking(appliance().history.delete_many, current_principal(), ids)})


@bp.get("/api/history/<int:entry_id>/export")
@require_access
def export_entry(entry_id: int) -> Response:
    fmt = (request.args.get("format") or "txt").strip().lower()
    if fmt not in ENTRY_EXPORT_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(ENTRY_EXPORT_FORMATS)}, got {fmt!r}",
                           code="invalid_option")
    entry = _blocking(appliance().history.get, current_principal(), entry_id)
    filename = entry.filename or f"transcript-{entry.id}"
    if fmt == "json":
        return _attachment(jsonify(entry.to_dict()), download_name(filename, "json"))
    return formatted_response(entry.transcript(), fmt, filename)


# -- export and import of the whole history ------------------------------------------------------------------------
_EXPORTS = {"json": "application/json; charset=utf-8", "csv": "text/csv; charset=utf-8"}


@bp.get("/api/history/export")
@require_access
def export_all() -> Response:
    fmt = (request.args.get("format") or "json").strip().lower()
    if fmt not in _EXPORTS:
        raise InvalidInput(f"format must be json or csv, got {fmt!r}", code="invalid_option")
    history, viewer, owner = appliance().history, current_principal(), owner_filter()
    chunks = history.export_json(viewer, owner=owner) if fmt == "json" else history.export_csv(viewer, owner=owner)
    # Streamed from one read snapshot with no row cap, each chunk read and formatted off the event loop; closing
    # the response closes the reader connection.
    resp = Response(stream_with_context(concurrency.iterate_blocking(chunks)), content_type=_EXPORTS[fmt])
    return _attachment(resp, f"whisper-appliance-history-{_stamp()}.{fmt}")


def _import_format(filename: str | None, data: bytes) -> str:
    """json or csv: the ``format`` field wins, then the file extension, then the first character."""
    chosen = (request.form.get("format") or "").strip().lower()
    if chosen:
        if chosen not in ("json", "csv"):
            raise InvalidInput(f"format must be json or csv, got {chosen!r}", code="invalid_option")
        return chosen
    suffix = Path(filename or "").suffix.lower()
    if suffix in (".json", ".csv"):
        return suffix[1:]
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head[:1] in (b"[", b"{") else "csv"


def _import_owner() -> int | None:
    """Whose history imported entries join: ``?owner=<username|guest>``, by default the importing admin's."""
    name = (request.args.get("owner") or "").strip()
    if not name:
        return current_principal().user_id
    if name == GUEST_NAME:
        return None
    user = appliance().accounts.find_user(name)
    if user is None:
        raise InvalidInput(f"no user {name!r} to import for", code="unknown_user")
    return user.id


@bp.post("/api/history/import")
@body_limit("max_import_size")
@require_admin
def import_entries() -> Response:
    if request.files or request.mimetype == "multipart/form-data":
        storage = uploaded_file("file", what="export file")
        data = storage.read()
        items = parse_import(data, _import_format(storage.filename, data))
    elif request.is_json:
        items = parse_import(request.get_data(), "json")
    else:
        raise InvalidInput("send the export file as multipart/form-data in the field 'file', or a JSON array "
                           "of entries with Content-Type: application/json", code="missing_file")
    if not items:
        raise InvalidInput("the import file holds no entries", code="empty_import")
    result = _blocking(appliance().history.import_entries, items, owner_id=_import_owner())
    if result.imported == 0 and result.skipped_duplicates == 0:
        shown = "; ".join(result.errors[:5])
        raise InvalidInput(f"no entry in the file could be imported: {shown}", code="invalid_import")
    body = result.to_dict()
    body["error_count"] = len(result.errors)
    body["errors"] = body["errors"][:MAX_REPORTED_IMPORT_ERRORS]
    return jsonify(body)


# -- backup and restore ----------------------------------------------------------------------------------------------
def _tmp_dir() -> Path:
    directory = Path(appliance().settings.data_dir) / "tmp"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@bp.get("/api/admin/backup")
@require_admin
def backup() -> Response:
    fd, name = tempfile.mkstemp(prefix="backup-", suffix=".db", dir=_tmp_dir())
    os.close(fd)
    path = Path(name)
    try:
        _blocking(appliance().database.backup_to, path)
        size = path.stat().st_size
        fh = open(path, "rb")
    finally:
        # The open handle keeps the data readable; unlinking now means nothing is left behind, whether the
        # client reads to the end, disconnects, or the process dies mid-download.
        path.unlink(missing_ok=True)

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := fh.read(BACKUP_CHUNK):
                yield chunk
        finally:
            fh.close()

    resp = Response(chunks(), content_type=SQLITE_CONTENT_TYPE, headers={"Content-Length": str(size)})
    resp.call_on_close(fh.close)  # also when the body was never started
    log.info("database backup (%d bytes) downloaded by %s", size, request.remote_addr)
    return _attachment(resp, f"whisper-appliance-{_stamp()}.db")


@bp.post("/api/admin/restore")
@body_limit("max_upload_size")
@require_admin
def restore() -> Response:
    a = appliance()
    storage = uploaded_file("file", what="backup file")
    fd, name = tempfile.mkstemp(prefix="restore-", suffix=".db", dir=_tmp_dir())
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(storage.stream, out, BACKUP_CHUNK)
        if path.stat().st_size == 0:
            raise InvalidInput("the uploaded backup file is empty", code="empty_file")
        _blocking(a.database.validate_file, path)
        # The job queue's stop/start join threads and read the database: all of it runs off the event loop.
        saved = _blocking(a.restore, path)
    finally:
        path.unlink(missing_ok=True)
    entries = _blocking(a.history.count)
    log.warning("database restored from an upload by %s (%d history entries)", request.remote_addr, entries)
    return jsonify({"restored": True, "entries": entries, "previous_saved_as": saved.name})


def init_app(app: Flask, socketio: SocketIO) -> None:
    app.register_blueprint(bp)
