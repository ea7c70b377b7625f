"""Who sees what: the store filters (history, jobs), the job queue's 404s, the result-cache rules and live sessions.

Everything here is the real store on a temporary SQLite file; only the model is fake (tests/unit/fakes.py).
Principals are built as the web layer builds them: two accounts, an admin, the guest.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_appliance.core.config import Settings
from whisper_appliance.core.errors import NotFound
from whisper_appliance.core.identity import ADMIN, GUEST, SCOPES, SYSTEM, TRANSCRIBE, OwnerFilter, Principal
from whisper_appliance.core.records import TranscribeOptions
from whisper_appliance.services.database import Database
from whisper_appliance.services.history import HistoryStore, make_options_key, parse_import
from whisper_appliance.services.job_runner import LocalJobRunner
from whisper_appliance.services.job_store import JobStore
from whisper_appliance.services.jobs import JobQueue, jobs_dir
from whisper_appliance.services.live import Chunk, LiveSessions
from whisper_appliance.services.scheduler import InferenceScheduler
from whisper_appliance.services.transcription import TranscriptionService, spool_upload

from .fakes import SR, FakeModels, InlineScheduler, RecordingEvents, SegmentEngine


def person(user_id: int, name: str, role: str = "user", scope: str = ADMIN) -> Principal:
    scopes = frozenset(SCOPES) if scope == ADMIN else frozenset({TRANSCRIBE})
    return Principal(user_id=user_id, username=name, role=role, scopes=scopes, credential_id=f"c-{name}")


ALICE, BOB, BOSS = person(1, "alice"), person(2, "bob"), person(3, "boss", "admin")
BOSS_KEY = person(3, "boss", "admin", TRANSCRIBE)  # an admin's transcribe token: only the admin's own records


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "appliance.db")
    with database.write() as conn:
        for user in (ALICE, BOB, BOSS):
            conn.execute("INSERT INTO users (id, username, password_hash, role, created_at) VALUES (?, ?, 'x', ?, "
                         "'2030-01-01T00:00:00.000Z')", (user.user_id, user.username, user.role))
    yield database
    database.close()


@pytest.fixture
def history(db):
    store = HistoryStore(db)
    for owner, text in ((ALICE, "alice budget meeting"), (ALICE, "alice lunch notes"), (BOB, "bob budget call"),
                        (GUEST, "guest budget question")):
        store.add(text=text, source="upload", owner_id=owner.user_id, duration=60.0,
                  segments=[{"start": 0.0, "end": 2.0, "text": text}])
    return store


def texts(page) -> list[str]:
    return sorted(hit.entry.text for hit in page.items)


# --- history store filters --------------------------------------------------------------------------------------

def test_search_shows_each_principal_only_their_own_entries(history):
    assert texts(history.search(ALICE)) == ["alice budget meeting", "alice lunch notes"]
    assert texts(history.search(BOB, "budget")) == ["bob budget call"]
    assert texts(history.search(GUEST, "budget")) == ["guest budget question"]
    assert history.search(BOSS_KEY).total == 0  # a transcribe token reads its own account's history only
    assert history.search(BOSS).total == 4
    assert texts(history.search(BOSS, "budget", owner=OwnerFilter(BOB.user_id))) == ["bob budget call"]
    assert texts(history.search(BOSS, owner=OwnerFilter(None))) == ["guest budget question"]
    assert history.search(ALICE, owner=OwnerFilter(BOB.user_id)).total == 2  # only admins may narrow to another


def test_another_owners_entry_is_not_found_for_every_single_entry_operation(history):
    bob_entry = history.search(BOB).items[0].entry
    for viewer in (ALICE, GUEST, BOSS_KEY):
        with pytest.raises(NotFound) as err:
            history.get(viewer, bob_entry.id)
        assert str(bob_entry.id) in err.value.message and "not found" in err.value.message
        with pytest.raises(NotFound):
            history.update_text(viewer, bob_entry.id, "hijacked")
        with pytest.raises(NotFound):
            history.delete(viewer, bob_entry.id)
        assert history.delete_many(viewer, [bob_entry.id]) == 0
    assert history.get(BOB, bob_entry.id).text == "bob budget call"
    with pytest.raises(NotFound):  # the same answer as for an id that does not exist
        history.get(BOB, 999_999)
    assert history.get(BOSS, bob_entry.id).text == "bob budget call"
    assert history.update_text(BOSS, bob_entry.id, "fixed by the admin").text == "fixed by the admin"


def test_stats_and_exports_cover_only_what_the_principal_sees(history):
    assert history.stats(ALICE)["entries"] == 2 and history.stats(GUEST)["entries"] == 1
    assert history.stats(BOSS)["entries"] == 4
    assert history.stats(BOSS, owner=OwnerFilter(ALICE.user_id))["audio_hours"] == pytest.approx(2 / 60)
    exported = parse_import("".join(history.export_json(BOB)).encode(), "json")
    assert [e["text"] for e in exported] == ["bob budget call"] and exported[0]["owner_id"] == BOB.user_id
    rows = parse_import("".join(history.export_csv(GUEST)).encode(), "csv")
    assert [r["text"] for r in rows] == ["guest budget question"]
    assert len(list(history.iter_export(BOSS))) == 4


def test_delete_many_removes_only_the_callers_entries(history):
    ids = [h.entry.id for h in history.search(BOSS).items]
    assert history.delete_many(ALICE, ids) == 2
    assert history.search(BOSS).total == 2 and history.search(ALICE).total == 0


def test_imports_join_the_chosen_owner_and_ignore_owners_in_the_file(history):
    items = [{"text": "imported", "created_at": "2025-01-01T00:00:00Z", "owner_id": BOB.user_id}]
    assert history.import_entries(items, owner_id=ALICE.user_id).imported == 1
    assert "imported" in texts(history.search(ALICE)) and "imported" not in texts(history.search(BOB))


def test_usage_by_owner_and_hand_over(history):
    usage = history.usage_by_owner()
    assert usage[ALICE.user_id]["entries"] == 2 and usage[None]["entries"] == 1
    assert usage[ALICE.user_id]["storage_bytes"] > len("alice budget meeting")
    assert history.hand_over(ALICE.user_id, BOB.user_id) == 2
    assert history.search(BOB).total == 3 and history.search(ALICE).total == 0
    assert history.delete_owned_by(BOB.user_id) == 3
    assert history.search(BOSS).total == 1


# --- the result cache -------------------------------------------------------------------------------------------

def test_a_cache_hit_is_an_entry_of_the_requester_and_never_an_edited_one(db, tmp_path):
    history = HistoryStore(db)
    models = FakeModels(name="tiny.en", engine_name="faster-whisper")
    transcription = TranscriptionService(Settings(data_dir=tmp_path), models, InlineScheduler(SegmentEngine()),
                                         history)
    options = TranscribeOptions()
    original = history.add(text="the original words", source="upload", owner_id=ALICE.user_id, model="tiny.en",
                           engine="faster-whisper", audio_sha256="ab" * 32, options_key=make_options_key(options),
                           metadata={"job_id": "alice-secret-job", "language_probability": 0.9})

    own = transcription.cached("ab" * 32, options, ALICE, source="upload", filename="again.wav")
    assert own.history_id == original.id and own.cached  # one's own result: the same entry

    hit = transcription.cached("ab" * 32, options, BOB, source="api", filename="bob.wav")
    assert hit.cached and hit.history_id != original.id and hit.transcript.text == "the original words"
    copy = history.get(BOB, hit.history_id)
    assert (copy.owner_id, copy.source, copy.filename) == (BOB.user_id, "api", "bob.wav")
    assert "alice-secret-job" not in str(copy.to_dict()) and copy.metadata["cached"] is True
    with pytest.raises(NotFound):
        history.get(BOB, original.id)
    assert transcription.cached("ab" * 32, options, BOB, source="api", filename="x").history_id == copy.id

    guest = transcription.cached("ab" * 32, options, GUEST, source="upload", filename="g.wav")
    assert history.get(GUEST, guest.history_id).owner_id is None

    # Edits: an edited entry is never served; the newest unedited one (Bob's copy here) still is.
    history.update_text(ALICE, original.id, "alice corrected this")
    assert history.get(ALICE, original.id).edited_at is not None
    for entry_id in (copy.id, guest.history_id):
        history.update_text(SYSTEM, entry_id, "edited too")
    assert transcription.cached("ab" * 32, options, ALICE, source="upload", filename="x") is None
    assert transcription.cached("ab" * 32, TranscribeOptions(beam_size=1), ALICE, source="upload",
                                filename="x") is None  # other options: another result


# --- jobs -------------------------------------------------------------------------------------------------------

class Jobs:
    def __init__(self, tmp: Path, db: Database) -> None:
        self.tmp = tmp
        self.settings = Settings(data_dir=tmp / "data")
        self.store = JobStore(db)
        self.history = HistoryStore(db)
        self.models = FakeModels(SegmentEngine())
        self.scheduler = InferenceScheduler(self.models)
        self.scheduler.start()
        self.transcription = TranscriptionService(self.settings, self.models, self.scheduler, self.history)
        self.events = RecordingEvents()
        directory = jobs_dir(self.settings.data_dir)
        runner = LocalJobRunner(self.store, self.transcription, self.scheduler, self.events, directory)
        self.queue = JobQueue(self.store, self.transcription, runner, self.events, directory)
        self.queue.start()
        self._n = 0

    def submit(self, owner: Principal, seconds: float = 1.0, *, seed: int | None = None):
        self._n += 1
        rng = np.random.default_rng(seed if seed is not None else self._n)
        path = self.tmp / f"audio{self._n}.wav"
        sf.write(path, (rng.standard_normal(int(seconds * SR)) * 0.01).astype(np.float32), SR)
        with open(path, "rb") as f:
            spooled = spool_upload(f, self.settings.data_dir / "tmp", path.name, 10 * 1024 ** 2)
        try:
            return self.queue.submit(spooled, TranscribeOptions(), owner=owner)
        finally:
            spooled.path.unlink(missing_ok=True)

    def wait(self, job_id: str):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            view = self.queue.get(SYSTEM, job_id)
            if view.status in ("completed", "failed", "cancelled"):
                return view
            time.sleep(0.005)
        raise AssertionError(f"job {job_id} did not finish")

    def close(self) -> None:
        self.queue.stop()
        self.scheduler.stop()


@pytest.fixture
def jobs(tmp_path, db):
    j = Jobs(tmp_path, db)
    yield j
    j.close()


def test_jobs_are_their_owners_and_others_are_not_found(jobs):
    alices = jobs.wait(jobs.submit(ALICE).job_id)
    guests = jobs.wait(jobs.submit(GUEST).job_id)
    assert alices.status == guests.status == "completed"
    entry = jobs.history.get(ALICE, alices.history_id)
    assert entry.owner_id == ALICE.user_id and entry.source == "job"
    assert jobs.history.get(GUEST, guests.history_id).owner_id is None

    assert [v.job_id for v in jobs.queue.list(ALICE)] == [alices.job_id]
    assert [v.job_id for v in jobs.queue.list(GUEST)] == [guests.job_id]
    assert jobs.queue.list(BOB) == []
    assert {v.job_id for v in jobs.queue.list(BOSS)} == {alices.job_id, guests.job_id}
    assert [v.job_id for v in jobs.queue.list(BOSS, owner=OwnerFilter(None))] == [guests.job_id]
    for viewer in (BOB, GUEST, BOSS_KEY):
        with pytest.raises(NotFound, match=alices.job_id):
            jobs.queue.get(viewer, alices.job_id)
        with pytest.raises(NotFound):
            jobs.queue.result(viewer, alices.job_id)
        with pytest.raises(NotFound):
            jobs.queue.cancel(viewer, alices.job_id)
    assert jobs.queue.result(ALICE, alices.job_id).result.history_id == alices.history_id
    assert jobs.queue.get(BOSS, alices.job_id).status == "completed"
    assert jobs.store.counts_by_owner()[ALICE.user_id]["completed"] == 1


def test_a_cached_job_result_is_an_entry_of_the_requester(jobs):
    first = jobs.wait(jobs.submit(ALICE, seed=7).job_id)
    second = jobs.submit(BOB, seed=7)  # the same audio
    assert second.status == "completed" and second.cached
    assert second.history_id != first.history_id
    assert jobs.history.get(BOB, second.history_id).owner_id == BOB.user_id
    with pytest.raises(NotFound):
        jobs.history.get(BOB, first.history_id)


def test_cancelling_an_accounts_unfinished_jobs(jobs):
    jobs.models.engine.delay = 0.05
    running = jobs.submit(ALICE, 30.0)
    other = jobs.submit(BOB, 1.0)
    assert jobs.queue.cancel_unfinished_of(ALICE.user_id) == 1
    assert jobs.wait(running.job_id).status == "cancelled"
    assert jobs.wait(other.job_id).status == "completed"


# --- live sessions ----------------------------------------------------------------------------------------------

def test_live_sessions_are_saved_to_the_history_of_whoever_opened_them(db, tmp_path):
    history = HistoryStore(db)
    settings = Settings(data_dir=tmp_path)
    models = FakeModels(name="tiny.en", engine_name="faster-whisper")
    scheduler = InlineScheduler(SegmentEngine(model_name="tiny.en"))
    live = LiveSessions(settings, models, scheduler, TranscriptionService(settings, models, scheduler, history))
    session = live.open("sid-a", {"format": "pcm16"}, ALICE)
    assert session.principal == ALICE
    saved = live.save(session, "alice dictated this")
    assert history.get(ALICE, saved).owner_id == ALICE.user_id
    with pytest.raises(NotFound):
        history.get(BOB, saved)
    live.close("sid-a", save=False)

    wav = tmp_path / "rec.wav"
    sf.write(wav, np.zeros(SR, dtype=np.float32), SR)
    result = live.transcribe_recording(Chunk(data=wav.read_bytes()), GUEST)
    assert history.get(GUEST, result.history_id).owner_id is None
