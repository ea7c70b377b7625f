"""JobQueue and its LocalJobRunner around a fake engine: ordering, cancellation, progress, resume, cache and file clean-up.

The scheduler, job store, history store and transcription service are the real ones on a temporary SQLite file;
only the engine (and the model manager handing it out) is fake, and it produces one segment per second of audio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from whisper_appliance.core.config import Settings
from whisper_appliance.core.errors import ApplianceError, AudioDecodeError, Conflict, NotFound
from whisper_appliance.core.identity import GUEST, SYSTEM
from whisper_appliance.core.records import TranscribeOptions
from whisper_appliance.services.database import Database
from whisper_appliance.services.history import HistoryStore
from whisper_appliance.services.job_runner import LocalJobRunner
from whisper_appliance.services.job_store import JobStore
from whisper_appliance.services.jobs import JobQueue, estimate_eta, jobs_dir
from whisper_appliance.services.scheduler import InferenceScheduler, Priority
from whisper_appliance.services.transcription import TranscriptionService, spool_upload

from .fakes import SR, FakeModels, RecordingEvents, SegmentEngine

FAIL_SECONDS = 2.0  # the fake engine fails on audio of exactly this length


def fails(audio: np.ndarray) -> bool:
    return abs(len(audio) / SR - FAIL_SECONDS) < 1e-6


class Env:
    def __init__(self, tmp: Path, delay: float = 0.01) -> None:
        self.tmp = tmp
        self.settings = Settings(data_dir=tmp / "data")
        self.db = Database(self.settings.data_dir / "appliance.db")
        self.store = JobStore(self.db)
        self.history = HistoryStore(self.db)
        self.engine = SegmentEngine(delay, fail_on=fails)
        self.models = FakeModels(self.engine)
        self.scheduler = InferenceScheduler(self.models)
        self.scheduler.start()
        self.transcription = TranscriptionService(self.settings, self.models, self.scheduler, self.history)
        self.events = RecordingEvents()
        self.queue = self.new_queue()
        self._n = 0

    def new_queue(self) -> JobQueue:
        directory = jobs_dir(self.settings.data_dir)
        runner = LocalJobRunner(self.store, self.transcription, self.scheduler, self.events, directory)
        queue = JobQueue(self.store, self.transcription, runner, self.events, directory)
        queue.start()
        return queue

    def wav(self, seconds: float, name: str | None = None) -> Path:
        """A distinct WAV of ``seconds`` (each call different noise, so the result cache never mixes them)."""
        self._n += 1
        rng = np.random.default_rng(self._n)
        path = self.tmp / (name or f"audio{self._n}.wav")
        sf.write(path, (rng.standard_normal(int(seconds * SR)) * 0.01).astype(np.float32), SR)
        return path

    def submit(self, path: Path, options: TranscribeOptions | None = None, **kwargs: Any):
        with open(path, "rb") as f:
            spooled = spool_upload(f, self.settings.data_dir / "tmp", path.name, 10 * 1024 ** 2)
        try:
            kwargs.setdefault("owner", GUEST)
            return self.queue.submit(spooled, options or TranscribeOptions(), **kwargs)
        finally:
            spooled.path.unlink(missing_ok=True)  # what TranscriptionService.spooled does after the request

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
             timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.queue.get(SYSTEM, job_id)
            if view.status in statuses:
                return view
            time.sleep(0.005)
        raise AssertionError(f"job {job_id} still {self.queue.get(SYSTEM, job_id).status} after {timeout} s")

    def job_files(self, *, settle: float = 1.0) -> list[Path]:
        """Files under DATA_DIR/jobs; waits up to ``settle`` s for them to go (removal follows the status)."""
        jobs_dir = self.settings.data_dir / "jobs"
        deadline = time.monotonic() + settle
        while True:
            files = sorted(jobs_dir.iterdir()) if jobs_dir.exists() else []
            if not files or time.monotonic() >= deadline:
                return files
            time.sleep(0.005)

    def close(self) -> None:
        self.queue.stop()
        self.scheduler.stop()
        self.db.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def block_scheduler(scheduler: InferenceScheduler) -> threading.Event:
    """Occupy the inference thread until the returned gate is set."""
    gate = threading.Event()
    ticket = scheduler.submit(lambda engine: gate.wait(10), Priority.LIVE, label="blocker")
    deadline = time.monotonic() + 5
    while scheduler.position(ticket) != 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    return gate


# -- pure helpers ---------------------------------------------------------------------------------------------
def test_job_files_have_a_fixed_extension_whatever_the_client_named_them(env):
    gate = block_scheduler(env.scheduler)
    try:
        names = ("talk.MP3", "list.m3u8", "../../etc/passwd", "x.tar;rm -rf")
        ids = []
        for n, name in enumerate(names):
            with open(env.wav(1.0 + n), "rb") as f:
                spooled = spool_upload(f, env.settings.data_dir / "tmp", name, 10 * 1024 ** 2)
            ids.append(env.queue.submit(spooled, TranscribeOptions(), owner=GUEST).job_id)
            spooled.path.unlink()
        stored = sorted(p.name for p in env.job_files(settle=0))
        assert stored == sorted(f"{job_id}.audio" for job_id in ids)
    finally:
        gate.set()


def test_eta_extrapolates_processing_time():
    assert estimate_eta(2.0, 0.5) == 2.0
    assert estimate_eta(1.0, 0.25) == 3.0
    assert estimate_eta(5.0, 0.0) is None
    assert estimate_eta(5.0, 1.0) == 0.0


# -- running --------------------------------------------------------------------------------------------------
def test_job_completes_into_history_and_its_file_is_deleted(env):
    gate = block_scheduler(env.scheduler)
    try:
        view = env.submit(env.wav(3.0, "talk.wav"), output="srt")
        assert view.status == "queued"
        assert [p.name for p in env.job_files(settle=0)] == [f"{view.job_id}.audio"]
        assert not list((env.settings.data_dir / "tmp").iterdir()), "the request's temp file is not the job's"
    finally:
        gate.set()
    done = env.wait(view.job_id)
    assert done.status == "completed"
    assert done.progress == 1.0 and done.eta_seconds == 0.0
    entry = env.history.get(SYSTEM, done.history_id)
    assert entry.source == "job" and entry.filename == "talk.wav"
    assert entry.text == "word0 word1 word2"
    assert done.result["text"] == "word0 word1 word2" and done.result["cached"] is False
    assert env.job_files() == []
    finished = env.queue.result(SYSTEM, view.job_id)
    assert finished.output == "srt" and len(finished.result.transcript.segments) == 3


def test_progress_is_monotonic_up_to_one_and_the_final_status_is_published(env):
    view = env.submit(env.wav(12.0))
    env.wait(view.job_id)
    # The terminal event is published just after the store records completion: give it a moment to arrive.
    deadline = time.monotonic() + 5
    while env.events.for_job(view.job_id)[-1]["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.01)
    events = env.events.for_job(view.job_id)
    progress = [e["progress"] for e in events if e["status"] == "processing"]
    assert len(progress) >= 3
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert events[-1]["status"] == "completed" and events[-1]["history_id"] is not None
    stored = env.store.get(view.job_id)
    assert stored.progress == 1.0 and stored.attempts == 1


def test_short_job_submitted_later_finishes_first(env):
    env.engine.delay = 0.02
    long = env.submit(env.wav(40.0))
    # Let the long job start, so the short one has to overtake it between segments.
    deadline = time.monotonic() + 5
    while env.queue.get(SYSTEM, long.job_id).progress == 0.0 and time.monotonic() < deadline:
        time.sleep(0.002)
    short = env.submit(env.wav(3.0))
    short_done = env.wait(short.job_id)
    assert env.queue.get(SYSTEM, long.job_id).status == "processing"
    long_done = env.wait(long.job_id)
    assert short_done.status == long_done.status == "completed"
    assert short_done.history_id < long_done.history_id


def test_waiting_jobs_report_their_queue_position(env):
    gate = block_scheduler(env.scheduler)
    try:
        long = env.submit(env.wav(8.0))
        short = env.submit(env.wav(2.5))
        assert env.queue.get(SYSTEM, short.job_id).queue_position == 1
        assert env.queue.get(SYSTEM, long.job_id).queue_position == 2
        assert env.queue.counts()["queued"] == 2
    finally:
        gate.set()
    assert env.wait(long.job_id).queue_position is None
    assert env.queue.counts() == {"queued": 0, "processing": 0, "completed": 2, "failed": 0, "cancelled": 0}


def test_cancel_a_queued_job(env):
    gate = block_scheduler(env.scheduler)
    try:
        view = env.submit(env.wav(5.0))
        cancelled, deleted = env.queue.cancel(SYSTEM, view.job_id)
        assert cancelled.status == "cancelled" and deleted is False
        assert env.job_files() == []
    finally:
        gate.set()
    time.sleep(0.3)
    assert env.queue.get(SYSTEM, view.job_id).status == "cancelled"
    assert env.engine.segments_made == 0
    assert env.history.search(SYSTEM).total == 0
    assert env.events.for_job(view.job_id)[-1]["status"] == "cancelled"


def test_cancel_a_running_job_stops_it_at_the_next_segment(env):
    env.engine.delay = 0.05
    view = env.submit(env.wav(60.0))
    env.wait(view.job_id, ("processing",))
    deadline = time.monotonic() + 5
    while env.queue.get(SYSTEM, view.job_id).progress == 0.0 and time.monotonic() < deadline:
        time.sleep(0.005)
    cancelled, _ = env.queue.cancel(SYSTEM, view.job_id)
    assert cancelled.status == "cancelled"
    assert env.job_files() == []
    time.sleep(0.5)
    assert env.engine.segments_made < 60
    assert env.queue.get(SYSTEM, view.job_id).status == "cancelled"
    assert env.history.search(SYSTEM).total == 0
    # The inference thread is free again.
    assert env.wait(env.submit(env.wav(1.0)).job_id).status == "completed"


def test_deleting_a_finished_job_removes_its_record_but_not_its_history(env):
    view = env.wait(env.submit(env.wav(1.0)).job_id)
    gone, deleted = env.queue.cancel(SYSTEM, view.job_id)
    assert deleted is True and gone.status == "completed"
    with pytest.raises(NotFound):
        env.queue.get(SYSTEM, view.job_id)
    assert env.history.get(SYSTEM, view.history_id).text == "word0"


def test_result_is_409_until_finished_and_gone_with_its_history_entry(env):
    gate = block_scheduler(env.scheduler)
    try:
        view = env.submit(env.wav(2.5))
        with pytest.raises(ApplianceError) as err:
            env.queue.result(SYSTEM, view.job_id)
        assert err.value.status == 409 and err.value.code == "job_not_finished"
    finally:
        gate.set()
    done = env.wait(view.job_id)
    assert env.queue.result(SYSTEM, view.job_id).result.history_id == done.history_id
    env.history.delete(SYSTEM, done.history_id)
    with pytest.raises(NotFound, match="history entry"):
        env.queue.result(SYSTEM, view.job_id)


def test_engine_failure_fails_the_job_with_a_message_and_deletes_the_file(env):
    view = env.submit(env.wav(FAIL_SECONDS))
    done = env.wait(view.job_id)
    assert done.status == "failed"
    assert done.error["code"] == "job_failed" and "refuses this audio" in done.error["message"]
    assert env.job_files() == []
    with pytest.raises(ApplianceError) as err:
        env.queue.result(SYSTEM, view.job_id)
    assert err.value.status == 409


def test_identical_upload_completes_at_once_from_the_cache(env):
    audio = env.wav(4.0)
    first = env.wait(env.submit(audio).job_id)
    made = env.engine.segments_made
    second = env.submit(audio)
    assert second.status == "completed" and second.cached is True
    assert second.history_id == first.history_id
    assert env.engine.segments_made == made
    assert env.job_files() == []
    assert env.queue.get(SYSTEM, second.job_id).result["cached"] is True
    # Other options are another result.
    third = env.submit(audio, TranscribeOptions(beam_size=1))
    assert third.status == "queued" and third.cached is False
    env.wait(third.job_id)


def test_not_audio_is_refused_before_a_job_exists(env):
    bogus = env.tmp / "notes.wav"
    bogus.write_bytes(b"this is not audio at all " * 100)
    with pytest.raises(AudioDecodeError):
        env.submit(bogus)
    assert env.store.list(SYSTEM) == []
    assert env.job_files() == []


# -- restarts -------------------------------------------------------------------------------------------------
def test_unfinished_jobs_resume_after_a_restart(env):
    env.queue.stop()
    jobs_dir = env.settings.data_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    options = {"transcribe": {"language": "en", "beam_size": 1}, "output": "txt", "audio_sha256": ""}

    def stored_job(job_id: str, seconds: float | None) -> None:
        path = jobs_dir / f"{job_id}.wav"
        if seconds is not None:
            env.wav(seconds).rename(path)
        env.store.create(f"{job_id}.wav", str(path), options, duration=seconds, job_id=job_id)

    stored_job("interrupted", 3.0)
    env.store.mark_processing("interrupted")  # the process died while it ran
    stored_job("waiting", 2.5)
    stored_job("lost", None)  # its file vanished with the crash
    (jobs_dir / "0123abcd.mp3").write_bytes(b"left by a crash after its job completed")

    queue = env.queue = env.new_queue()
    interrupted, waiting, lost = (env.wait(j) for j in ("interrupted", "waiting", "lost"))
    assert interrupted.status == "completed" and interrupted.result["text"] == "word0 word1 word2"
    assert env.store.get("interrupted").attempts == 2
    assert waiting.status == "completed" and queue.result(SYSTEM, "waiting").output == "txt"
    assert lost.status == "failed" and "missing" in lost.error["message"]
    assert env.job_files() == []


def test_restore_waits_for_unfinished_jobs_holds_new_ones_off_and_reloads_the_queue(env):
    gate = block_scheduler(env.scheduler)
    try:
        view = env.submit(env.wav(3.0))
        with pytest.raises(Conflict) as err, env.queue.suspended():
            pass
        assert err.value.code == "jobs_running" and err.value.status == 409
    finally:
        gate.set()
    assert env.wait(view.job_id).status == "completed"

    jobs_dir = env.settings.data_dir / "jobs"
    with env.queue.suspended():
        with pytest.raises(Conflict) as err:
            env.submit(env.wav(1.0))
        assert err.value.code == "restore_in_progress"
        # What a restored database may hold: a job that was queued when the backup was taken.
        restored = jobs_dir / "from-backup.wav"
        env.wav(2.5).rename(restored)
        env.store.create("from-backup.wav", str(restored), {"transcribe": {"language": "en"}, "output": "json",
                                                              "audio_sha256": ""}, duration=2.5, job_id="from-backup")
    assert env.wait("from-backup").status == "completed"  # resumed by the reloaded queue
    assert env.wait(env.submit(env.wav(1.5)).job_id).status == "completed"  # and new jobs are taken again


def test_restore_waits_for_a_job_whose_transcription_is_done_but_not_yet_stored(env, monkeypatch):
    """The job's status may read 'completed' a moment before the watcher lets go of it: a restore then waits."""
    storing, release = threading.Event(), threading.Event()
    record = env.transcription.record

    def slow_record(*args: Any, **kwargs: Any):
        storing.set()
        release.wait(5)
        return record(*args, **kwargs)

    monkeypatch.setattr(env.transcription, "record", slow_record)
    view = env.submit(env.wav(1.0))
    assert storing.wait(5)
    threading.Timer(0.2, release.set).start()
    started = time.monotonic()
    with env.queue.suspended():
        assert time.monotonic() - started >= 0.15  # it waited for the storing rather than refusing
        assert env.store.get(view.job_id).status == "completed"


def test_a_submission_still_being_checked_keeps_a_restore_off(env, monkeypatch):
    """A submission past the restore check but not yet queued counts as unfinished (no job slips into a restore)."""
    import whisper_appliance.services.jobs as jobs_module

    decoding, release = threading.Event(), threading.Event()
    decode = jobs_module.decode_audio

    def slow_decode(*args: Any, **kwargs: Any):
        decoding.set()
        release.wait(5)
        return decode(*args, **kwargs)

    monkeypatch.setattr(jobs_module, "decode_audio", slow_decode)
    submitted: list[Any] = []
    thread = threading.Thread(target=lambda: submitted.append(env.submit(env.wav(1.0))))
    thread.start()
    try:
        assert decoding.wait(5)
        with pytest.raises(Conflict) as err, env.queue.suspended():
            pass
        assert err.value.code == "jobs_running"
    finally:
        release.set()
        thread.join(5)
    assert env.wait(submitted[0].job_id).status == "completed"
    with env.queue.suspended():
        pass


def arrays_reachable(root: object, depth: int = 6) -> list[np.ndarray]:
    """numpy arrays reachable from ``root`` through attributes, containers and function closures."""
    found: list[np.ndarray] = []
    seen: set[int] = set()

    def walk(obj: object, level: int) -> None:
        if id(obj) in seen or level > depth or isinstance(obj, (str, bytes, int, float, type)):
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            found.append(obj)
            return
        children: list[object] = []
        if isinstance(obj, dict):
            children += list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children += list(obj)
        if callable(obj) and getattr(obj, "__closure__", None):
            children += [cell.cell_contents for cell in obj.__closure__]
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            children += list(vars(obj).values())
        for child in children:
            walk(child, level + 1)

    walk(root, 0)
    return found


def test_queued_jobs_hold_no_decoded_audio(env):
    gate = block_scheduler(env.scheduler)
    try:
        ids = [env.submit(env.wav(seconds)).job_id for seconds in (3.0, 4.0, 5.0)]
        queued = [t for t in env.scheduler._queue if t.label.startswith("job:")]
        assert len(queued) == 3
        assert arrays_reachable(queued) == []
        assert arrays_reachable(env.queue.runner._active) == []
        # The stored duration still orders them, shortest first.
        assert [env.queue.get(SYSTEM, i).queue_position for i in ids] == [1, 2, 3]
    finally:
        gate.set()
    assert all(env.wait(i).status == "completed" for i in ids)


def test_a_restart_decodes_no_job_up_front(env, monkeypatch):
    import whisper_appliance.services.job_runner as job_runner

    env.queue.stop()
    jobs_dir = env.settings.data_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    options = {"transcribe": {"language": "en", "beam_size": 1}, "output": "txt", "audio_sha256": ""}
    ids = []
    for n, seconds in enumerate((3.0, 4.0)):
        path = jobs_dir / f"job{n}.audio"
        env.wav(seconds).rename(path)
        ids.append(env.store.create(f"job{n}.wav", str(path), options, duration=seconds, job_id=f"job{n}").id)
    decoded: list[object] = []
    real = job_runner.decode_audio
    monkeypatch.setattr(job_runner, "decode_audio", lambda *a, **k: decoded.append(a) or real(*a, **k))
    gate = block_scheduler(env.scheduler)
    try:
        env.queue = env.new_queue()
        deadline = time.monotonic() + 5
        while len([t for t in env.scheduler._queue if t.label.startswith("job:")]) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)  # the resume thread queues them
        assert decoded == []
        assert arrays_reachable(list(env.scheduler._queue)) == []
    finally:
        gate.set()
    assert all(env.wait(i).status == "completed" for i in ids)
    assert len(decoded) == 2  # each decoded once, when its turn came


def test_a_full_job_queue_is_a_503_with_retry_after_and_stores_nothing(env):
    gate = block_scheduler(env.scheduler)
    env.transcription.settings = env.settings.replace(max_queued_jobs=1)
    first = env.submit(env.wav(1.0))
    with pytest.raises(ApplianceError) as refused:
        env.submit(env.wav(1.0))
    assert (refused.value.status, refused.value.code) == (503, "job_queue_full")
    assert refused.value.headers["Retry-After"]
    assert [job.id for job in env.store.unfinished()] == [first.job_id]
    gate.set()
    assert env.wait(first.job_id).status == "completed"
    assert env.submit(env.wav(1.0)).status == "queued"  # a place is free again


def test_queued_audio_seconds_are_capped(env):
    gate = block_scheduler(env.scheduler)
    env.transcription.settings = env.settings.replace(max_queued_audio_seconds=5)
    first = env.submit(env.wav(3.0))
    with pytest.raises(ApplianceError) as refused:
        env.submit(env.wav(3.0))  # 3 + 3 s > 5 s
    assert (refused.value.status, refused.value.code) == (503, "job_queue_full")
    assert "MAX_QUEUED_AUDIO_SECONDS" in refused.value.message
    assert env.submit(env.wav(1.5)).status == "queued"  # 3 + 1.5 s fits
    assert sorted(p.suffix for p in env.job_files(settle=0)) == [".audio", ".audio"]
    gate.set()
    env.wait(first.job_id)
