"""The composition root: every service of one server process, built, started and stopped here and nowhere else.

``Appliance.build(settings)`` creates the ModelManager, the inference scheduler, the database with its history and
job stores, the transcription pipeline, the job queue and its runner, live sessions, history retention, auth and
metrics, accounts, each given the services it depends on. Building starts nothing: ``start()`` starts the scheduler's
lanes, resumes unfinished jobs, starts retention and loads the configured model in the background; ``stop()``
ends all of that in reverse order. Operations that span services (a database restore) live here too.
Nothing here imports Flask.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import Settings
from ..core.engines import resolve_workers
from ..core.identity import Principal
from .accounts import Accounts, TokenThrottle
from .auth import AuthFile
from .database import Database
from .events import EventBus
from .history import HistoryStore
from .job_runner import LocalJobRunner
from .job_store import STATUSES, JobStore
from .jobs import JobQueue, jobs_dir, remove_upload
from .live import LiveSessions
from .metrics import Metrics
from .model_manager import ModelManager
from .retention import RetentionTask
from .scheduler import InferenceScheduler
from .transcription import TranscriptionService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeletedUser:
    user_id: int
    username: str
    entries: int  # history entries deleted, or handed over
    jobs: int
    transferred_to: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"deleted": self.user_id, "username": self.username, "entries": self.entries, "jobs": self.jobs,
                "transferred_to": self.transferred_to}


@dataclass
class Appliance:
    settings: Settings
    models: ModelManager
    scheduler: InferenceScheduler
    database: Database
    history: HistoryStore
    job_store: JobStore
    auth_file: AuthFile
    accounts: Accounts
    metrics: Metrics
    events: EventBus
    transcription: TranscriptionService
    jobs: JobQueue
    live: LiveSessions
    retention: RetentionTask
    started_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings, *, models: ModelManager | None = None) -> Appliance:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        models = models or ModelManager(settings)
        scheduler = InferenceScheduler(models, lanes=resolve_workers(settings.inference_workers))
        database = Database(settings.data_dir / "appliance.db")
        history = HistoryStore(database, search_timeout_ms=settings.search_timeout_ms,
                               max_text_length=settings.history_max_text_length)
        job_store = JobStore(database)
        auth_file = AuthFile(settings.data_dir)
        accounts = Accounts(database, auth_file, admin_password=settings.admin_password, api_keys=settings.api_keys,
                            allow_registration=settings.allow_registration,
                            token_throttle=TokenThrottle(settings.auth_token_failure_limit))
        accounts.bootstrap()
        metrics = Metrics()
        events = EventBus()
        transcription = TranscriptionService(settings, models, scheduler, history, metrics)
        directory = jobs_dir(settings.data_dir)
        runner = LocalJobRunner(job_store, transcription, scheduler, events, directory)
        jobs = JobQueue(job_store, transcription, runner, events, directory)
        live = LiveSessions(settings, models, scheduler, transcription, events)
        retention = RetentionTask(history.purge_older_than, settings.history_retention_days)
        app = cls(settings=settings, models=models, scheduler=scheduler, database=database, history=history,
                  job_store=job_store, auth_file=auth_file, accounts=accounts, metrics=metrics, events=events, transcription=transcription,
                  jobs=jobs, live=live, retention=retention)
        models.add_listener(lambda status: events.publish("model_status", status.to_dict(), coalesce="model"))
        metrics.bind_live_state(queue_depth=lambda: scheduler.depth().to_dict(), live_sessions=live.count,
                                model_state=lambda: models.status().state, jobs=jobs.counts)
        return app

    def start(self, *, load_model: bool = True) -> None:
        self.transcription.clean_tmp()  # before serving: nothing in it belongs to a request of this process
        self.scheduler.start()
        self.retention.start()
        if load_model:
            try:
                self.models.load(self.settings.whisper_model, self.settings.whisper_engine, wait=False)
            except Exception:  # degraded mode: the server still starts and /health says why
                log.exception("could not start loading model %s", self.settings.whisper_model)
        # After the load has begun: resumed jobs are queued at once (nothing is decoded up front) and must find
        # the model "loading" (they wait for it), not "unloaded" (they would fail).
        self.jobs.start()

    def stop(self) -> None:
        """End everything ``start`` began (safe on an appliance that was never started)."""
        self.retention.stop()
        # The job queue first: its unfinished jobs stay queued in the store when the scheduler then cancels them.
        self.jobs.stop()
        self.scheduler.stop()
        self.models.unload()
        self.database.close()

    def restore(self, path: Path) -> Path:
        """Swap in a database backup: only while no job is unfinished (409); the job queue then reloads from it.
        Returns where the previous database was saved. Blocking: call it off the event loop."""
        with self.jobs.suspended():
            saved = self.database.restore_from(path, jobs_dir=self.jobs.jobs_dir)
            self.accounts.after_restore(str(saved))
            return saved

    def delete_user(self, actor: Principal, user_id: int, *, transfer_to: int | None) -> DeletedUser:
        """Delete an account with its history and jobs, or with them handed to ``transfer_to``, in one
        transaction. Its unfinished jobs are cancelled first when they go with it. Blocking: off the event loop."""
        user = self.accounts.check_deletable(actor, user_id, transfer_to)
        if transfer_to is None:
            self.jobs.cancel_unfinished_of(user.id)
        with self.database.write():
            if transfer_to is not None:
                entries = self.history.hand_over(user.id, transfer_to)
                jobs = self.job_store.hand_over(user.id, transfer_to)
            else:
                entries = self.history.delete_owned_by(user.id)
                removed = self.job_store.delete_owned_by(user.id)
                jobs = len(removed)
            self.accounts.delete_user(user)
        if transfer_to is None:
            for job in removed:
                remove_upload(job.upload_path, self.jobs.jobs_dir)
        log.info("user %r deleted by %r: %d history entries and %d jobs %s", user.username, actor.username, entries,
                 jobs, f"handed to user {transfer_to}" if transfer_to is not None else "deleted")
        return DeletedUser(user_id=user.id, username=user.username, entries=entries, jobs=jobs,
                           transferred_to=transfer_to)

    def usage(self) -> dict[str, Any]:
        """Per account (and for the guests): history entries, audio hours, storage and jobs by status."""
        history = self.history.usage_by_owner()
        jobs = self.job_store.counts_by_owner()
        empty = {"entries": 0, "audio_hours": 0.0, "storage_bytes": 0}

        def figures(owner: int | None) -> dict[str, Any]:
            return {**empty, **history.get(owner, {}), "jobs": jobs.get(owner, dict.fromkeys(STATUSES, 0))}

        users = [{**user.to_dict(), **figures(user.id)} for user in self.accounts.list_users()]
        totals = {"entries": self.history.count(), "audio_hours": sum(h["audio_hours"] for h in history.values()),
                  "storage_bytes": sum(int(h["storage_bytes"]) for h in history.values()),
                  "database_bytes": self.database.size_bytes(), "users": len(users)}
        return {"users": users, "guest": figures(None), "totals": totals}

    @property
    def uptime_seconds(self) -> float:
        return time.time() - self.started_at
