"""services/model_manager.py with a fake engine factory (no model): switching, failures, threads, listeners."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from whisper_appliance.core.config import Settings
from whisper_appliance.core.engines.base import Engine
from whisper_appliance.core.errors import InvalidInput, ModelUnavailable
from whisper_appliance.core.model_store import ModelStore
from whisper_appliance.core.records import LanguageDetection, TranscriptionInfo
from whisper_appliance.services.model_manager import ModelManager, ModelStatus

SRC = Path(__file__).resolve().parents[2] / "src"


class FakeEngine(Engine):
    engine_name = "faster-whisper"

    def __init__(self, name: str, path: Path, log: list[str]) -> None:
        super().__init__(name, "cpu", "int8")
        self.path = path
        self.log = log
        self.closed = False
        log.append(f"load {name}")

    def transcribe(self, audio, options):
        if self.closed:
            raise RuntimeError("used after close")
        return iter(()), TranscriptionInfo("en", 1.0, len(audio) / 16000)

    def detect_language(self, audio):
        return LanguageDetection("en", 1.0)

    def close(self) -> None:
        self.closed = True
        self.log.append(f"close {self.model_name}")


class FakeFactory:
    """Builds FakeEngines; a name in ``fail`` raises, ``gate`` (an Event) holds a load until set."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.fail: set[str] = set()
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def __call__(self, engine, model_name, path, *, device, compute_type, cpu_threads, workers):
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if model_name in self.fail:
            raise RuntimeError(f"weights of {model_name} are broken")
        with self.lock:
            return FakeEngine(model_name, path, self.log)


@pytest.fixture
def store(tmp_path) -> ModelStore:
    models = tmp_path / "models"
    for name in ("tiny.en", "base", "small"):
        (models / name).mkdir(parents=True)
        (models / name / "model.bin").write_bytes(b"w")
        (models / name / "config.json").write_text("{}")
        (models / name / "tokenizer.json").write_text("{}")
    return ModelStore(Settings(models_dir=models, model_downloads=False))


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


@pytest.fixture
def manager(store, factory) -> ModelManager:
    return ModelManager(Settings(models_dir=store.models_dir, model_downloads=False, whisper_model="tiny.en"),
                        store=store, engine_factory=factory)


def test_starts_unloaded_and_use_says_why(manager):
    assert manager.status().state == "unloaded"
    with pytest.raises(ModelUnavailable, match="no model is loaded") as err:
        with manager.use():
            pass
    assert err.value.status == 503 and "Retry-After" in err.value.headers


def test_load_reports_ready_with_source_and_generation(manager, store):
    status = manager.load()
    assert status.state == "ready" and status.name == "tiny.en" and status.engine == "faster-whisper"
    assert status.source == "models_dir" and status.path == str(store.models_dir / "tiny.en")
    assert status.generation == 1 == manager.generation
    assert status.load_seconds is not None and status.error is None
    with manager.use() as engine:
        assert engine.model_name == "tiny.en"
    assert manager.status().to_dict()["state"] == "ready"


def test_loading_the_ready_model_again_is_a_no_op(manager, factory):
    manager.load("tiny.en")
    assert manager.load("tiny.en").generation == 1
    assert factory.log == ["load tiny.en"]


def test_switch_closes_old_model_before_loading_new(manager, factory):
    manager.load("tiny.en")
    status = manager.load("base")
    assert status.state == "ready" and status.name == "base" and status.generation == 2
    assert factory.log == ["load tiny.en", "close tiny.en", "load base"]


def test_requests_during_a_switch_wait_then_get_the_new_model(manager, factory):
    manager.load("tiny.en")
    factory.gate = threading.Event()
    manager.load("base", wait=False)
    assert manager.status().state == "loading"
    got: list[str] = []

    def request():
        with manager.use(timeout=10) as engine:
            engine.transcribe(np.zeros(16000, np.float32), None)
            got.append(engine.model_name)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # let them block on the loading model (ordering aid, not a timed assertion)
    assert got == []
    factory.gate.set()
    for t in threads:
        t.join(10)
    assert got == ["base"] * 4


def test_switch_waits_for_calls_in_flight(manager, factory):
    manager.load("tiny.en")
    in_use = threading.Event()
    finish = threading.Event()
    seen_closed = []

    def long_call():
        with manager.use() as engine:
            in_use.set()
            finish.wait(10)
            seen_closed.append(engine.closed)

    t = threading.Thread(target=long_call)
    t.start()
    assert in_use.wait(10)
    manager.load("base", wait=False)
    time.sleep(0.1)
    assert "close tiny.en" not in factory.log  # the switch is waiting for the call in flight
    finish.set()
    t.join(10)
    assert seen_closed == [False]
    deadline = time.monotonic() + 10
    while manager.status().state != "ready" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.status().name == "base"
    assert factory.log == ["load tiny.en", "close tiny.en", "load base"]


def test_use_times_out_while_loading(manager, factory):
    factory.gate = threading.Event()
    manager.load("tiny.en", wait=False)
    with pytest.raises(ModelUnavailable, match="still loading"):
        with manager.use(timeout=0.05):
            pass
    factory.gate.set()


def test_failed_load_is_an_error_and_previous_model_is_not_kept(manager, factory):
    manager.load("tiny.en")
    factory.fail.add("base")
    status = manager.load("base")
    assert status.state == "error" and status.name == "base"
    assert "weights of base are broken" in status.error
    assert status.generation == 1
    assert factory.log == ["load tiny.en", "close tiny.en"]
    with pytest.raises(ModelUnavailable, match="failed to load: .*weights of base are broken"):
        with manager.use():
            pass
    # A later good load recovers.
    factory.fail.clear()
    assert manager.load("base").state == "ready"


def test_model_not_available_offline_is_an_error_state(manager):
    status = manager.load("medium")
    assert status.state == "error"
    assert "not available offline" in status.error and "available: " in status.error


def test_invalid_names_are_rejected_before_loading(manager):
    with pytest.raises(InvalidInput):
        manager.load("../../etc")
    with pytest.raises(InvalidInput):
        manager.load("tiny.en", "whisper.cpp")
    assert manager.status().state == "unloaded"


def test_listeners_see_loading_then_ready(manager):
    seen: list[ModelStatus] = []
    manager.add_listener(seen.append)
    manager.add_listener(lambda s: 1 / 0)  # a broken listener is logged and does not stop loading
    manager.load("base")
    states = [s.state for s in seen]
    assert states[0] == "loading" and states[-1] == "ready"
    assert "error" not in states
    assert seen[-1].name == "base"


def test_unload_releases_the_model(manager, factory):
    manager.load("tiny.en")
    manager.unload()
    assert manager.status().state == "unloaded"
    assert factory.log[-1] == "close tiny.en"
    with pytest.raises(ModelUnavailable):
        with manager.use():
            pass


def test_cancel_download_without_a_load_returns_false(manager):
    assert manager.cancel_download() is False


def test_concurrent_use_and_load_from_many_threads(manager, factory):
    manager.load("tiny.en")
    names = ["tiny.en", "base", "small"]
    errors: list[BaseException] = []
    used: list[str] = []

    def user(i):
        try:
            for _ in range(20):
                with manager.use(timeout=10) as engine:
                    assert not engine.closed  # never handed a closed engine
                    used.append(engine.model_name)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    def switcher(i):
        try:
            for j in range(5):
                manager.load(names[(i + j) % 3])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=switcher, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(used) == 8 * 20
    final = manager.status()
    assert final.state == "ready"
    # Exactly one engine alive: every load except the last was closed, in order.
    loads = [e for e in factory.log if e.startswith("load")]
    closes = [e for e in factory.log if e.startswith("close")]
    assert len(loads) == len(closes) + 1
    assert final.generation == len(loads)


def test_importing_engines_and_manager_does_not_import_torch():
    code = ("import sys; import whisper_appliance.core.engines, whisper_appliance.services.model_manager, "
            "whisper_appliance.core.model_store, whisper_appliance.cli; "
            "bad = [m for m in ('torch', 'whisper', 'faster_whisper', 'ctranslate2') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
