"""JobStore on a real SQLite file: lifecycle, restart recovery and the link to history entries."""

from __future__ import annotations

import re

import pytest

from whisper_appliance.core.errors import Conflict, InvalidInput, NotFound
from whisper_appliance.core.identity import SYSTEM
from whisper_appliance.services.database import Database
from whisper_appliance.services.history import HistoryStore
from whisper_appliance.services.job_store import JobStore

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def jobs(db):
    return JobStore(db)


@pytest.fixture
def history(db):
    return HistoryStore(db)


def _new(jobs, name="talk.mp3"):
    return jobs.create(name, f"/data/jobs/{name}", {"language": "en", "beam_size": 5})


def test_create_and_get(jobs):
    job = _new(jobs)
    assert re.fullmatch(r"[0-9a-f]{32}", job.id)
    assert job.status == "queued" and job.attempts == 0 and job.progress == 0.0
    assert TIMESTAMP.fullmatch(job.created_at) and job.updated_at == job.created_at
    assert job.options == {"language": "en", "beam_size": 5}
    assert (job.history_id, job.started_at, job.finished_at, job.error, job.duration) == (None,) * 5
    assert jobs.get(job.id) == job
    d = job.to_dict()
    assert d["id"] == job.id and d["options"] == {"language": "en", "beam_size": 5}
    with pytest.raises(NotFound):
        jobs.get("0" * 32)
    with pytest.raises(Conflict):
        jobs.create("again.mp3", None, job_id=job.id)
    with pytest.raises(InvalidInput):
        jobs.create("x.mp3", None, {"bad": float("nan")})


def test_lifecycle_to_completed(jobs, history):
    job = _new(jobs)
    running = jobs.mark_processing(job.id)
    assert running.status == "processing" and running.attempts == 1
    assert TIMESTAMP.fullmatch(running.started_at)
    jobs.update(job.id, duration=3600.0)
    assert jobs.progress(job.id, 0.25, eta_seconds=90) is True
    assert (jobs.get(job.id).progress, jobs.get(job.id).eta_seconds) == (0.25, 90.0)
    entry = history.add(text="the result", source="job", duration=3600.0)
    done = jobs.complete(job.id, entry.id)
    assert done.status == "completed" and done.history_id == entry.id and done.progress == 1.0
    assert done.finished and TIMESTAMP.fullmatch(done.finished_at)
    assert done.duration == 3600.0 and done.attempts == 1
    for call in (lambda: jobs.mark_processing(job.id), lambda: jobs.cancel(job.id),
                 lambda: jobs.fail(job.id, "late"), lambda: jobs.complete(job.id, entry.id)):
        with pytest.raises(Conflict):
            call()
    assert jobs.progress(job.id, 0.5) is False
    assert jobs.get(job.id) == done


def test_complete_needs_an_existing_history_entry(jobs):
    job = _new(jobs)
    jobs.mark_processing(job.id)
    with pytest.raises(InvalidInput):
        jobs.complete(job.id, 424242)
    assert jobs.get(job.id).status == "processing"


def test_fail_and_retry_counts_attempts(jobs):
    job = _new(jobs)
    jobs.mark_processing(job.id)
    failed = jobs.fail(job.id, "ffmpeg could not decode the file")
    assert failed.status == "failed" and failed.error == "ffmpeg could not decode the file"
    assert failed.finished_at is not None
    queued = jobs.retry(job.id)
    assert queued.status == "queued" and queued.error is None and queued.finished_at is None
    assert jobs.mark_processing(job.id).attempts == 2
    with pytest.raises(Conflict):
        jobs.retry(job.id)


def test_cancel(jobs):
    queued, running = _new(jobs, "a.mp3"), _new(jobs, "b.mp3")
    jobs.mark_processing(running.id)
    assert jobs.cancel(queued.id).status == "cancelled"
    assert jobs.cancel(running.id).status == "cancelled"
    assert jobs.cancel(running.id).status == "cancelled"  # idempotent
    assert jobs.progress(running.id, 0.9) is False  # the runner learns it should stop
    assert jobs.get(running.id).progress == 0.0
    with pytest.raises(Conflict):
        jobs.mark_processing(queued.id)
    with pytest.raises(NotFound):
        jobs.cancel("missing")
    with pytest.raises(NotFound):
        jobs.progress("missing", 0.1)


def test_update_only_whitelisted_fields_with_valid_values(jobs):
    job = _new(jobs)
    changed = jobs.update(job.id, filename="renamed.mp3", options={"task": "translate"}, duration=12.5)
    assert (changed.filename, changed.options, changed.duration) == ("renamed.mp3", {"task": "translate"}, 12.5)
    assert changed.status == "queued"
    for bad in ({"status": "completed"}, {"attempts": 5}, {"history_id": 1}, {"progress": 1.5},
                {"progress": -0.1}, {"eta_seconds": -3}, {"duration": "long"}, {"options": ["x"]}):
        with pytest.raises(InvalidInput):
            jobs.update(job.id, **bad)
    with pytest.raises(NotFound):
        jobs.update("missing", filename="x")
    with pytest.raises(InvalidInput):
        jobs.progress(job.id, 2)


def test_list_filters_and_pages_newest_first(jobs):
    created = [_new(jobs, f"{i}.mp3") for i in range(5)]
    jobs.mark_processing(created[1].id)
    jobs.cancel(created[3].id)
    assert [j.id for j in jobs.list(SYSTEM)] == [j.id for j in reversed(created)]
    assert [j.id for j in jobs.list(SYSTEM, limit=2, offset=1)] == [created[3].id, created[2].id]
    assert [j.id for j in jobs.list(SYSTEM, status="processing")] == [created[1].id]
    assert {j.id for j in jobs.list(SYSTEM, status="queued")} == {created[0].id, created[2].id, created[4].id}
    assert jobs.counts() == {"queued": 3, "processing": 1, "completed": 0, "failed": 0, "cancelled": 1}
    for bad in ({"status": "done"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
        with pytest.raises(InvalidInput):
            jobs.list(SYSTEM, **bad)


def test_unfinished_after_a_restart_requeues_interrupted_jobs(tmp_path):
    path = tmp_path / "restart.db"
    db = Database(path)
    store, entries = JobStore(db), HistoryStore(db)
    queued, interrupted, done, failed, cancelled = (_new(store, f"{i}.mp3") for i in range(5))
    store.mark_processing(interrupted.id)
    store.progress(interrupted.id, 0.6, 30)
    store.mark_processing(done.id)
    store.complete(done.id, entries.add(text="done", source="job").id)
    store.fail(failed.id, "bad audio")
    store.cancel(cancelled.id)
    db.close()  # the process dies; a new one opens the same file

    db = Database(path)
    try:
        store = JobStore(db)
        resumable = store.unfinished()
        assert [j.id for j in resumable] == [queued.id, interrupted.id]  # oldest first
        again = store.get(interrupted.id)
        assert again.status == "queued" and again.progress == 0.0 and again.eta_seconds is None
        assert again.attempts == 1  # the interrupted run counts; the next one makes it 2
        assert store.mark_processing(interrupted.id).attempts == 2
        assert {store.get(j.id).status for j in (done, failed, cancelled)} == {"completed", "failed", "cancelled"}
    finally:
        db.close()


def test_deleting_the_history_entry_deletes_the_finished_job(jobs, history):
    kept, gone, purged = _new(jobs, "kept.mp3"), _new(jobs, "gone.mp3"), _new(jobs, "purged.mp3")
    unrelated = _new(jobs, "queued.mp3")
    for job in (kept, gone, purged):
        jobs.mark_processing(job.id)
    entry_kept = history.add(text="kept", source="job")
    entry_gone = history.add(text="gone", source="job")
    entry_old = history.add(text="old", source="job", created_at="2020-01-01T00:00:00Z")
    jobs.complete(kept.id, entry_kept.id)
    jobs.complete(gone.id, entry_gone.id)
    jobs.complete(purged.id, entry_old.id)

    history.delete(SYSTEM, entry_gone.id)
    with pytest.raises(NotFound):
        jobs.get(gone.id)
    assert history.purge_older_than(365) == 1
    with pytest.raises(NotFound):
        jobs.get(purged.id)
    assert jobs.get(kept.id).history_id == entry_kept.id
    assert jobs.get(unrelated.id).status == "queued"
    history.delete_many(SYSTEM, [entry_kept.id])
    assert [j.id for j in jobs.list(SYSTEM)] == [unrelated.id]


def test_delete_returns_the_record(jobs):
    job = _new(jobs)
    assert jobs.delete(job.id) == job
    with pytest.raises(NotFound):
        jobs.get(job.id)
    with pytest.raises(NotFound):
        jobs.delete(job.id)
