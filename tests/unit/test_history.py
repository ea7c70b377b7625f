"""HistoryStore on a real SQLite file: entries, full-text search, stats, export/import, cache and retention."""

from __future__ import annotations

import csv
import io
import json
import re
import types
from datetime import UTC, datetime, timedelta

import pytest

from whisper_appliance.core.concurrency import real_threading
from whisper_appliance.core.errors import ApplianceError, InvalidInput, NotFound
from whisper_appliance.core.identity import SYSTEM
from whisper_appliance.core.records import Segment, TranscribeOptions, Transcript, Word
from whisper_appliance.services.database import Database, format_timestamp
from whisper_appliance.services.history import (
    ENTRY_FIELDS,
    MAX_PREFIX_TERMS,
    MAX_QUERY_TERMS,
    SNIPPET_END,
    SNIPPET_START,
    HistoryStore,
    NewEntry,
    fts_query,
    make_options_key,
    parse_import,
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def store(db):
    return HistoryStore(db)


def _ago(**delta) -> str:
    return format_timestamp(datetime.now(UTC) - timedelta(**delta))


# --- entries ----------------------------------------------------------------------------------------------------

def test_add_and_get_round_trip_all_fields(store):
    segments = [Segment(id=0, start=0.0, end=1.5, text=" Hello", words=(Word(0.0, 0.5, " Hello", 0.9),)),
                Segment(id=1, start=1.5, end=3.0, text=" world.")]
    added = store.add(NewEntry(text="Hello world.", source="upload", filename="a.wav", language="en",
                               model="base", engine="faster-whisper", duration=3.0, processing_seconds=0.4,
                               segments=segments, audio_sha256="AB" * 32, metadata={"language_probability": 0.97},
                               options_key="k1"))
    assert TIMESTAMP.fullmatch(added.created_at)
    assert store.get(SYSTEM, added.id) == added
    assert added.audio_sha256 == "ab" * 32  # stored lower-case so cache lookups agree
    d = added.to_dict()
    assert list(d) == list(ENTRY_FIELDS)
    assert d["segments"][0]["words"][0]["word"] == " Hello"
    json.dumps(d)

    transcript = added.transcript()
    assert isinstance(transcript, Transcript)
    assert transcript.segments == tuple(segments)
    assert (transcript.text, transcript.language, transcript.duration) == ("Hello world.", "en", 3.0)
    assert transcript.language_probability == pytest.approx(0.97)


def test_add_with_keywords_and_explicit_created_at(store):
    entry = store.add(text="Imported.", source="api", created_at="2024-02-29T23:59:59.123456+02:00")
    assert entry.created_at == "2024-02-29T21:59:59.123Z"
    assert (entry.filename, entry.segments, entry.metadata) == (None, (), {})


@pytest.mark.parametrize("fields", [
    {"source": "radio"},
    {"audio_sha256": "not-a-hash"},
    {"duration": float("nan")},
    {"duration": -1},
    {"created_at": "yesterday"},
    {"segments": [{"text": "no times"}]},
    {"metadata": {"x": object()}},
    {"text": None},
])
def test_add_rejects_invalid_fields(store, fields):
    with pytest.raises(InvalidInput):
        store.add(**{"text": "x", "source": "upload", **fields})
    assert store.search(SYSTEM).total == 0


def test_get_update_delete_of_a_missing_entry_is_not_found(store):
    for call in (lambda: store.get(SYSTEM, 99), lambda: store.update_text(SYSTEM, 99, "x"), lambda: store.delete(SYSTEM, 99)):
        with pytest.raises(NotFound):
            call()


def test_update_text_keeps_search_in_sync(store):
    entry = store.add(text="The invoice was paid on Monday.", source="upload")
    store.add(text="Unrelated entry about Tuesday.", source="upload")
    updated = store.update_text(SYSTEM, entry.id, "The receipt was paid on Friday.")
    assert updated.text == "The receipt was paid on Friday." and updated.created_at == entry.created_at
    assert store.search(SYSTEM, "invoice").total == 0
    assert [h.entry.id for h in store.search(SYSTEM, "receipt").items] == [entry.id]
    assert store.search(SYSTEM, "friday").total == 1 and store.search(SYSTEM, "monday").total == 0


def test_update_text_rewrites_the_segments_so_subtitles_say_the_correction(store):
    from whisper_appliance.core.formats import render
    from whisper_appliance.core.records import Segment

    segments = [Segment(0, 1.0, 2.5, " The invoice was paid"), Segment(1, 2.5, 4.0, " on Monday.")]
    entry = store.add(text="The invoice was paid on Monday.", source="upload", segments=segments, duration=4.0)
    updated = store.update_text(SYSTEM, entry.id, "The receipt was paid on Friday.")
    assert [(s["start"], s["end"], s["text"]) for s in updated.segments] == [
        (1.0, 4.0, " The receipt was paid on Friday.")]
    srt = render(updated.transcript(), "srt")
    assert "receipt" in srt and "Friday" in srt and "invoice" not in srt and "00:00:01,000 --> 00:00:04,000" in srt
    assert store.update_text(SYSTEM, entry.id, "").segments == ()


def test_segments_keep_their_decoding_details_for_cached_verbose_json(store):
    seg = Segment(0, 0.0, 2.0, " Hello there.", avg_logprob=-0.2, words=(Word(0.0, 0.5, " Hello", 0.9),),
                  temperature=0.2, compression_ratio=1.1, tokens=(50364, 2425, 456))
    entry = store.add(text="Hello there.", source="upload", segments=[seg], duration=2.0)
    rebuilt = store.get(SYSTEM, entry.id).transcript().segments[0]
    assert (rebuilt.tokens, rebuilt.temperature, rebuilt.compression_ratio) == ((50364, 2425, 456), 0.2, 1.1)
    assert rebuilt.words == seg.words
    assert "tokens" not in seg.to_dict()  # the public shape (POST /transcribe) stays as it was


def test_delete_and_delete_many(store):
    ids = [store.add(text=f"note number {i} about apples", source="live").id for i in range(6)]
    store.delete(SYSTEM, ids[0])
    assert store.search(SYSTEM, "apples").total == 5
    with pytest.raises(NotFound):
        store.get(SYSTEM, ids[0])
    assert store.delete_many(SYSTEM, [ids[1], ids[2], 12345]) == 2
    assert store.delete_many(SYSTEM, []) == 0
    with pytest.raises(InvalidInput):
        store.delete_many(SYSTEM, ["1; DROP TABLE history"])
    assert sorted(h.entry.id for h in store.search(SYSTEM, "apples").items) == ids[3:]


# --- search -----------------------------------------------------------------------------------------------------

@pytest.fixture
def meeting(store, speech_dir):
    text = (speech_dir / "synthetic_meeting.txt").read_text().strip()
    entry = store.add(text=text, source="upload", filename="synthetic_meeting.wav", language="en", duration=26.3)
    store.add(text="A short note about the weather and payments.", source="live", language="en")
    store.add(text="Le café était très bon, merci.", source="api", language="fr")
    return entry


def test_finds_a_word_from_the_middle_of_a_long_text_with_a_snippet(store, meeting):
    page = store.search(SYSTEM, "budget")
    assert page.total == 1
    hit = page.items[0]
    assert hit.entry.id == meeting.id
    assert f"{SNIPPET_START}budget{SNIPPET_END}" in hit.snippet
    assert "<" not in hit.snippet  # markers are not HTML
    assert hit.to_dict()["snippet"] == hit.snippet


def test_ranks_by_relevance(store, meeting):
    page = store.search(SYSTEM, "payment")
    assert page.total == 1  # the exact word; "payments" only with a prefix
    page = store.search(SYSTEM, "payment*")
    assert page.total == 2
    # "payments" in a short note outweighs one "payment" in a long text under bm25
    assert page.items[0].entry.source == "live"
    assert all(SNIPPET_START in h.snippet for h in page.items)


def test_prefix_phrase_punctuation_and_diacritics(store, meeting):
    assert store.search(SYSTEM, "marke*").items[0].entry.id == meeting.id
    assert store.search(SYSTEM, "nearly finished, but").total == 1
    assert store.search(SYSTEM, '"mobile application"').total == 1
    assert store.search(SYSTEM, '"application mobile"').total == 0
    assert store.search(SYSTEM, "mobile-application").total == 1
    assert store.search(SYSTEM, "cafe").items[0].entry.language == "fr"
    assert store.search(SYSTEM, "TRÈS").total == 1
    assert store.search(SYSTEM, "meeting payment").total == 1  # all words must match
    assert store.search(SYSTEM, "synthetic_meeting").total == 1  # the filename is indexed too


@pytest.mark.parametrize("hostile", [
    '"', '""', '"payment', 'payment"', "NEAR(", "NEAR(payment budget", "*", "**", "-", "-payment", "payment -",
    "AND", "OR NOT", "(((", ")", "text:payment", "^payment", "'; DROP TABLE history; --", "\x00", "🙂", "{}",
    "payment*budget", "+", "*payment",
])
def test_hostile_queries_never_break_the_fts_syntax(store, meeting, hostile):
    page = store.search(SYSTEM, hostile)
    assert page.total >= 0
    assert store.search(SYSTEM).total == 3  # nothing was dropped


def test_punctuation_only_query_is_no_filter(store, meeting):
    for q in ("", "   ", "*", '"', "-", "!?.,"):
        assert store.search(SYSTEM, q).total == 3
        assert all(h.snippet is None for h in store.search(SYSTEM, q).items)


def test_operators_are_searched_as_words(store):
    store.add(text="Go NEAR the river or not.", source="api")
    store.add(text="Something else entirely.", source="api")
    assert store.search(SYSTEM, "NEAR(").total == 1
    assert store.search(SYSTEM, "OR NOT").total == 1
    assert store.search(SYSTEM, '-"river"').total == 1


def test_fts_query_is_pure_and_safe():
    assert fts_query(None) is None
    assert fts_query(" *-\"") is None
    assert fts_query("pay*") == '"pay"*'
    assert fts_query('hello "big world"* NEAR(') == '"hello" "big world"* "NEAR"'
    assert fts_query("mobile-app") == '"mobile app"'
    assert fts_query('a"b') == '"a b"'


def test_filters(store):
    store.add(text="alpha upload en", source="upload", language="en", created_at="2026-01-10T08:00:00Z")
    store.add(text="alpha live en", source="live", language="en", created_at="2026-01-11T23:59:59.999Z")
    store.add(text="alpha live de", source="live", language="de", created_at="2026-01-12T00:00:00Z")
    store.add(text="beta api en", source="api", language="en", created_at="2026-01-13T12:00:00Z")

    def texts(**kw):
        return sorted(h.entry.text for h in store.search(SYSTEM, **kw).items)

    assert texts(source="live") == ["alpha live de", "alpha live en"]
    assert texts(language="en", q="alpha") == ["alpha live en", "alpha upload en"]
    assert texts(since="2026-01-11") == ["alpha live de", "alpha live en", "beta api en"]
    assert texts(until="2026-01-11") == ["alpha live en", "alpha upload en"]  # the whole day
    assert texts(since="2026-01-11", until="2026-01-12") == ["alpha live de", "alpha live en"]
    assert texts(until="2026-01-12T00:00:00Z") == ["alpha live de", "alpha live en", "alpha upload en"]
    assert texts(since="2026-01-12T02:00:00+02:00", q="alpha") == ["alpha live de"]
    for bad in ({"since": "last week"}, {"until": "2026-13-01"}, {"source": "radio"}, {"limit": 0},
                {"limit": 501}, {"offset": -1}, {"limit": "10"}):
        with pytest.raises(InvalidInput):
            store.search(SYSTEM, **bad)


def test_the_many_prefix_terms_attack_is_refused_with_a_clear_code(store):
    store.add(text="alpha beta gamma", source="api")
    attack = " ".join(f"{chr(ord('a') + i % 26)}*" for i in range(300))
    with pytest.raises(InvalidInput) as caught:
        store.search(SYSTEM, attack)
    assert caught.value.code == "query_too_complex" and caught.value.status == 400
    with pytest.raises(InvalidInput, match="prefix terms"):
        store.search(SYSTEM, " ".join(["a*"] * (MAX_PREFIX_TERMS + 1)))
    with pytest.raises(InvalidInput, match="terms"):
        store.search(SYSTEM, " ".join(["alpha"] * (MAX_QUERY_TERMS + 1)))
    for too_long in ("x" * 1001, "y" * 101):
        with pytest.raises(InvalidInput) as caught:
            store.search(SYSTEM, too_long)
        assert caught.value.code == "query_too_long"
    # At the caps a search still answers, one-letter prefixes included (served by the FTS prefix index).
    assert store.search(SYSTEM, " ".join(["a*"] + ["b*"] * (MAX_PREFIX_TERMS - 1))).total == 1
    assert store.search(SYSTEM, " ".join(["alpha"] * MAX_QUERY_TERMS)).total == 1


@pytest.mark.parametrize("params", [
    {"until": "9999-12-31"}, {"until": "9999-12-31T23:59:59.9999Z"}, {"since": "0000-01-01"},
    {"since": "0001-01-01T00:00:00+01:00"}, {"until": "0001-01-01T00:00:00+05:00"}, {"since": "garbage"},
    {"until": "2026-02-30"}, {"since": "99999-01-01"}, {"since": ""},
])
def test_every_out_of_range_date_is_a_400(store, params):
    with pytest.raises(InvalidInput) as caught:
        store.search(SYSTEM, **params)
    assert caught.value.status == 400


def test_a_search_past_its_deadline_is_stopped_with_a_503(db):
    with db.write() as conn:
        conn.executemany("INSERT INTO history (created_at, source, text) VALUES (?, 'api', ?)",
                         [("2026-01-01T00:00:00.000Z", f"word{i} common text") for i in range(2000)])
    expired = HistoryStore(db, search_timeout_ms=0)  # expired before the first check: no clock race
    with pytest.raises(ApplianceError) as caught:
        expired.search(SYSTEM, "common")
    assert caught.value.code == "search_timeout" and caught.value.status == 503
    assert HistoryStore(db).search(SYSTEM, "common").total == 2000  # the connection is not left broken


def test_a_search_never_waits_for_a_writer_and_reads_a_committed_snapshot(store, db):
    store.add(text="committed alpha", source="api")
    writing, release, found = real_threading().Event(), real_threading().Event(), []

    def writer():
        with db.write() as conn:
            conn.execute("INSERT INTO history (created_at, source, text) VALUES "
                         "('2026-01-01T00:00:00.000Z', 'api', 'uncommitted alpha')")
            writing.set()
            release.wait(60)

    thread = real_threading().Thread(target=writer)
    thread.start()
    try:
        assert writing.wait(60)
        searcher = real_threading().Thread(target=lambda: found.append(store.search(SYSTEM, "alpha")))
        searcher.start()
        searcher.join(60)  # a hang guard only: with the shared connection the search waited for the writer
        assert found, "the search waited for the writer's lock"
        assert [h.entry.text for h in found[0].items] == ["committed alpha"]
    finally:
        release.set()
        thread.join()
    assert store.search(SYSTEM, "alpha").total == 2


def test_pagination_newest_first_with_total(store, db):
    with db.write():
        for i in range(120):
            store.add(text=f"entry {i} mentions pagination", source="api",
                      created_at=f"2026-03-01T00:{i // 60:02d}:{i % 60:02d}.000Z")
    pages = [store.search(SYSTEM, limit=50, offset=o) for o in (0, 50, 100)]
    assert [p.total for p in pages] == [120, 120, 120]
    assert [len(p.items) for p in pages] == [50, 50, 20]
    ids = [h.entry.id for p in pages for h in p.items]
    assert len(set(ids)) == 120
    stamps = [h.entry.created_at for p in pages for h in p.items]
    assert stamps == sorted(stamps, reverse=True)
    q_pages = [store.search(SYSTEM, "pagination", limit=500), store.search(SYSTEM, "pagination", limit=7, offset=113)]
    assert q_pages[0].total == 120 and len(q_pages[0].items) == 120 and len(q_pages[1].items) == 7
    assert store.search(SYSTEM, limit=10, offset=500).items == ()
    assert store.search(SYSTEM).to_dict()["total"] == 120


# --- stats, cache, retention ------------------------------------------------------------------------------------

def test_stats(store):
    store.add(text="a", source="upload", model="base", duration=1800, processing_seconds=60)
    store.add(text="b", source="upload", model="tiny.en", duration=1800, processing_seconds=120)
    store.add(text="c", source="live", model="base", created_at=_ago(days=2))
    store.add(text="d", source="job", created_at=_ago(days=40))
    stats = store.stats(SYSTEM)
    assert stats["entries"] == 4
    assert stats["audio_hours"] == pytest.approx(1.0)
    assert stats["processing_hours"] == pytest.approx(180 / 3600)
    assert stats["by_source"] == {"job": 1, "live": 1, "upload": 2}
    assert stats["by_model"] == {"base": 2, "tiny.en": 1, "unknown": 1}
    today = datetime.now(UTC).date()
    assert len(stats["by_day"]) == 30 and list(stats["by_day"]) == sorted(stats["by_day"])
    assert stats["by_day"][today.isoformat()] == 2
    assert stats["by_day"][(today - timedelta(days=2)).isoformat()] == 1
    assert sum(stats["by_day"].values()) == 3  # the 40-day-old entry is outside the window
    assert sum(store.stats(SYSTEM, days=60)["by_day"].values()) == 4


def test_find_cached(store):
    sha = "0f" * 32
    key = make_options_key(TranscribeOptions(language="en"))
    assert key == make_options_key(TranscribeOptions(language="en").cache_key())
    assert key != make_options_key(TranscribeOptions(language="de"))
    store.add(text="first", source="upload", audio_sha256=sha, model="base", engine="faster-whisper",
              options_key=key)
    newest = store.add(text="second", source="api", audio_sha256=sha, model="base", engine="faster-whisper",
                       options_key=key)
    store.add(text="no key", source="api", audio_sha256=sha, model="base", engine="faster-whisper")
    assert store.find_cached(sha, "base", "faster-whisper", key) == newest
    assert store.find_cached(sha.upper(), "base", "faster-whisper", key) == newest
    assert store.find_cached(sha, "base", "faster-whisper", None).text == "no key"
    assert store.find_cached(sha, "tiny.en", "faster-whisper", key) is None
    assert store.find_cached(sha, "base", "openai-whisper", key) is None
    assert store.find_cached("1f" * 32, "base", "faster-whisper", key) is None
    assert store.find_cached(sha, "base", "faster-whisper", make_options_key({"beam_size": 1})) is None


def test_purge_older_than(store):
    store.add(text="ancient", source="upload", created_at=_ago(days=10))
    store.add(text="recent", source="upload", created_at=_ago(days=1))
    store.add(text="now", source="upload")
    assert store.purge_older_than(5) == 1
    assert sorted(h.entry.text for h in store.search(SYSTEM).items) == ["now", "recent"]
    assert store.search(SYSTEM, "ancient").total == 0
    assert store.purge_older_than(5) == 0
    for bad in (0, -1, "5"):
        with pytest.raises(InvalidInput):
            store.purge_older_than(bad)


# --- export and import ------------------------------------------------------------------------------------------

ROWS = 12_000


@pytest.fixture
def big_store(store, db):
    """12,000 small rows written in one transaction, with a few rich ones among them."""
    base = datetime(2025, 6, 1, tzinfo=UTC)
    with db.write() as conn:
        conn.executemany(
            "INSERT INTO history (created_at, source, text, language, model, engine, duration, segments, "
            "audio_sha256, metadata) VALUES (?, ?, ?, 'en', 'base', 'faster-whisper', ?, ?, ?, ?)",
            ((format_timestamp(base + timedelta(seconds=i, microseconds=1000 * (i % 1000))),
              ("upload", "job", "live", "api")[i % 4], f"row {i} text", i / 10,
              json.dumps([{"id": 0, "start": 0.0, "end": 1.0, "text": f" row {i}"}]),
              f"{i:064x}" if i % 2 else None, json.dumps({"i": i}))
             for i in range(ROWS)))
    store.add(text='Tricky "quotes", commas,\nnew lines, tabs\t and ünïcödé — «»', source="upload",
              filename="weird, name.wav", duration=1.25, processing_seconds=0.5, options_key="k",
              segments=[Segment(0, 0.0, 1.25, " Tricky", words=(Word(0.0, 0.5, " Tricky", 0.5),))],
              metadata={"nested": {"list": [1, 2.5, None]}, "text": "x,y"})
    return store


def _without_ids(items):
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_is_streamed_and_round_trips_into_an_empty_database(big_store, tmp_path, fmt):
    chunks_iter = big_store.export_json(SYSTEM) if fmt == "json" else big_store.export_csv(SYSTEM)
    assert isinstance(chunks_iter, types.GeneratorType)
    chunks = list(chunks_iter)
    assert len(chunks) > 1 and all(isinstance(c, str) for c in chunks)
    data = "".join(chunks).encode("utf-8")
    if fmt == "json":
        assert len(json.loads(data)) == ROWS + 1
    else:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        assert rows[0] == list(ENTRY_FIELDS) and len(rows) == ROWS + 2

    items = parse_import(data, fmt)
    other = Database(tmp_path / "other.db")
    try:
        target = HistoryStore(other)
        result = target.import_entries(items, owner_id=None)
        assert (result.imported, result.skipped_duplicates, result.errors) == (ROWS + 1, 0, ())
        original = list(big_store.iter_export(SYSTEM))
        copied = list(target.iter_export(SYSTEM))
        assert len(original) == ROWS + 1
        assert _without_ids(copied) == _without_ids(original)  # same fields and the original timestamps
        assert target.search(SYSTEM, "tricky").total == 1 and target.search(SYSTEM, '"row 11999"').total == 1

        again = target.import_entries(parse_import(data, fmt), owner_id=None)
        assert (again.imported, again.skipped_duplicates) == (0, ROWS + 1)
        assert target.search(SYSTEM, limit=1).total == ROWS + 1
    finally:
        other.close()


def test_export_writes_to_a_file(big_store, tmp_path):
    path = tmp_path / "export.json"
    with open(path, "w", encoding="utf-8") as fp:
        fp.writelines(big_store.export_json(SYSTEM))
    assert len(json.loads(path.read_text(encoding="utf-8"))) == ROWS + 1


def test_export_of_an_empty_store(store):
    assert json.loads("".join(store.export_json(SYSTEM))) == []
    assert "".join(store.export_csv(SYSTEM)).splitlines() == [",".join(ENTRY_FIELDS)]


def test_import_reports_invalid_rows_and_keeps_the_valid_ones(store):
    items = [
        {"text": "good one", "created_at": "2025-01-01T00:00:00Z", "source": "live", "id": 77},
        {"created_at": "2025-01-01T00:00:00Z"},
        {"text": "no date"},
        {"text": "bad date", "created_at": "31/12/2024"},
        {"text": "bad source", "created_at": "2025-01-01T00:00:00Z", "source": "radio"},
        {"text": "bad duration", "created_at": "2025-01-01T00:00:00Z", "duration": "long"},
        "not an object",
        {"text": 42, "created_at": "2025-01-01T00:00:00Z"},
        {"text": "default source", "created_at": "2025-01-02"},
        {"text": "good one", "created_at": "2025-01-01T00:00:00.000Z", "source": "live"},  # duplicate in file
    ]
    result = store.import_entries(items, owner_id=None)
    assert (result.imported, result.skipped_duplicates) == (2, 1)
    assert [e.split(":")[0] for e in result.errors] == [f"row {n}" for n in (2, 3, 4, 5, 6, 7, 8)]
    assert "text" in result.errors[0] and "created_at" in result.errors[1] and "radio" in result.errors[3]
    entries = {h.entry.text: h.entry for h in store.search(SYSTEM).items}
    assert entries["good one"].created_at == "2025-01-01T00:00:00.000Z"
    assert entries["good one"].id != 77
    assert entries["default source"].source == "upload"
    assert entries["default source"].created_at == "2025-01-02T00:00:00.000Z"
    assert result.to_dict()["errors"] == list(result.errors)


def test_duplicate_identity_includes_source_and_audio_hash(store):
    base = {"text": "same words", "created_at": "2025-05-05T05:05:05.555Z"}
    result = store.import_entries([
        {**base, "source": "upload"},
        {**base, "source": "live"},
        {**base, "source": "upload", "audio_sha256": "aa" * 32},
        {**base, "source": "upload", "audio_sha256": "AA" * 32},
        {**base, "source": "upload", "created_at": "2025-05-05T05:05:05.5559Z"},
    ], owner_id=None)
    assert (result.imported, result.skipped_duplicates) == (3, 2)


def test_csv_export_disarms_formulas_and_the_import_round_trips_them(store, db):
    texts = ["=cmd|' /C calc'!A0", "+1", "-1", "@SUM(A1:A2)", "\tindented", "\rreturn", "'=quoted", "'tis", "plain"]
    for text in texts:
        store.add(text=text, source="upload", filename="=evil.wav")
    exported = "".join(store.export_csv(SYSTEM))
    rows = list(csv.DictReader(io.StringIO(exported, newline="")))
    assert all(not row["text"].startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows)
    assert {row["filename"] for row in rows} == {"'=evil.wav"}

    other = HistoryStore(Database(db.path.with_name("other.db")))
    try:
        result = other.import_entries(parse_import(exported.encode(), "csv"), owner_id=None)
        assert result.imported == len(texts) and not result.errors
        entries = [h.entry for h in other.search(SYSTEM, limit=50).items]
        assert sorted(e.text for e in entries) == sorted(texts)
        assert {e.filename for e in entries} == {"=evil.wav"}
    finally:
        other.db.close()


def test_csv_import_reports_bad_cells_by_row(store):
    data = (b"text,created_at,source,duration,segments\r\n"
            b"ok,2025-01-01T00:00:00Z,upload,1.5,\r\n"
            b"bad number,2025-01-01T00:00:00Z,upload,abc,\r\n"
            b"bad json,2025-01-01T00:00:00Z,upload,,[{\r\n"
            b",2025-01-01T00:00:00Z,live,,\r\n")
    result = store.import_entries(parse_import(data, "csv"), owner_id=None)
    assert result.imported == 2  # the empty text is a valid (silent) transcript
    assert [e.split(":")[0] for e in result.errors] == ["row 2", "row 3"]
    assert store.search(SYSTEM, "ok").items[0].entry.duration == 1.5


@pytest.mark.parametrize("data, fmt, message", [
    (b"{not json", "json", "not valid JSON"),
    (b'{"text": "x"}', "json", "array"),
    (b"\xff\xfe\x00garbage", "json", "UTF-8"),
    (b"a,b\r\n1,2\r\n", "csv", "text, created_at"),
    (b'text,created_at\r\n"unterminated,2025\r\n', "csv", "not valid CSV"),
    (b"[]", "xml", "unknown import format"),
])
def test_parse_import_rejects_unreadable_files(data, fmt, message):
    with pytest.raises(InvalidInput, match=message):
        parse_import(data, fmt)


def test_parse_import_accepts_a_wrapped_json_export_and_a_bom():
    assert parse_import(b'{"entries": [{"text": "x", "created_at": "2025-01-01"}]}', "json")[0]["text"] == "x"
    assert parse_import("\ufefftext,created_at\r\nx,2025-01-01\r\n".encode(), "csv")[0]["text"] == "x"
