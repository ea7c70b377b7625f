"""ModelManager with the real engines: load tiny.en, switch to base, report resident memory around the switch."""

from __future__ import annotations

import logging
import weakref

import psutil
import pytest

from whisper_appliance.core.audio import decode_audio
from whisper_appliance.core.config import Settings
from whisper_appliance.core.engines import transcribe_all
from whisper_appliance.core.records import TranscribeOptions
from whisper_appliance.core.wer import word_error_rate
from whisper_appliance.services.model_manager import ModelManager

from ..conftest import MODELS_DIR, reference_text

log = logging.getLogger(__name__)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


@pytest.fixture(scope="module")
def jfk(speech_dir):
    return decode_audio(speech_dir / "jfk.mp3")


def test_load_then_switch_releases_the_old_model(jfk, capsys):
    manager = ModelManager(Settings(models_dir=MODELS_DIR, model_downloads=False, whisper_model="tiny.en",
                                    device="cpu"))
    seen = []
    manager.add_listener(lambda s: seen.append((s.state, s.name)))
    before = rss_mb()
    status = manager.load()
    assert status.state == "ready" and status.name == "tiny.en" and status.compute_type == "int8", status
    assert status.device == "cpu" and status.generation == 1 and status.source in ("models_dir", "bundled")
    with manager.use() as engine:
        text = transcribe_all(engine, jfk, TranscribeOptions(language="en")).text
        tiny_model = weakref.ref(engine._model)  # the faster-whisper model inside the engine
    del engine
    assert word_error_rate(reference_text("jfk"), text) == 0.0
    with_tiny = rss_mb()

    status = manager.load("base")
    assert status.state == "ready" and status.name == "base" and status.generation == 2, status
    assert tiny_model() is None  # the old model was released, not kept beside the new one
    with manager.use() as engine:
        assert engine.model_name == "base"
        text = transcribe_all(engine, jfk, TranscribeOptions(language="en")).text
    assert word_error_rate(reference_text("jfk"), text) <= 0.05
    with_base = rss_mb()
    # Switching back and forth must not accumulate models: RSS stays near the single-model level.
    assert manager.load("tiny.en").generation == 3
    assert manager.load("base").generation == 4
    with_base_again = rss_mb()

    manager.unload()
    after_unload = rss_mb()
    assert manager.status().state == "unloaded"
    assert ("loading", "base") in seen and seen[-2] == ("ready", "base")
    report = (f"RSS MB: start {before:.0f}, tiny.en loaded+used {with_tiny:.0f}, switched to base+used "
              f"{with_base:.0f}, base again after tiny.en {with_base_again:.0f}, after unload {after_unload:.0f}")
    log.warning(report)
    with capsys.disabled():
        print("\n" + report)


def test_openai_engine_through_the_manager(jfk):
    manager = ModelManager(Settings(models_dir=MODELS_DIR, model_downloads=False, whisper_model="tiny.en",
                                    whisper_engine="openai-whisper", device="cpu"))
    status = manager.load()
    assert status.state == "ready" and status.engine == "openai-whisper" and status.compute_type == "float32", status
    with manager.use() as engine:
        text = transcribe_all(engine, jfk, TranscribeOptions(language="en", temperature=0.0)).text
    assert word_error_rate(reference_text("jfk"), text) == 0.0
    manager.unload()
