"""Both engines with the real bundled models (tiny.en, base) on real speech from ../shared/speech.

Each model/engine/compute combination is loaded once for the module (``engines`` fixture) and closed at the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whisper_appliance.core.audio import decode_audio
from whisper_appliance.core.config import Settings
from whisper_appliance.core.engines import create_engine, transcribe_all
from whisper_appliance.core.engines.convert import read_ct2_variables
from whisper_appliance.core.model_store import ModelStore
from whisper_appliance.core.records import SAMPLE_RATE, TranscribeOptions
from whisper_appliance.core.wer import normalize, word_error_rate

from ..conftest import MODELS_DIR, reference_text

GREEDY_EXACT = TranscribeOptions(beam_size=5, temperature=0.0, language="en")


@pytest.fixture(scope="module")
def store() -> ModelStore:
    # The project's MODELS_DIR: bundled models are installed there once (as `models setup` does).
    return ModelStore(Settings(models_dir=MODELS_DIR, model_downloads=False))


@pytest.fixture(scope="module")
def engines(store):
    """engines(model, engine, compute_type) -> a loaded engine, cached for the module."""
    cache = {}

    def get(model: str, engine: str = "faster-whisper", compute_type: str = "auto"):
        key = (model, engine, compute_type)
        if key not in cache:
            resolved = store.resolve(model, engine)
            cache[key] = create_engine(engine, model, resolved.path, device="cpu", compute_type=compute_type)
        return cache[key]

    yield get
    for engine in cache.values():
        engine.close()


@pytest.fixture(scope="module")
def audio(speech_dir):
    cache = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = decode_audio(next(speech_dir.glob(f"{name}.*[!t]")))  # .wav/.mp3, not .txt
        return cache[name]

    return get


@pytest.mark.parametrize("model", ["tiny.en", "base"])
@pytest.mark.parametrize("clip", ["jfk", "synthetic_meeting"])
def test_faster_whisper_word_error_rate(engines, audio, model, clip):
    transcript = transcribe_all(engines(model), audio(clip), TranscribeOptions(language="en"))
    wer = word_error_rate(reference_text(clip), transcript.text)
    assert wer <= 0.05, f"{model} on {clip}: WER {wer:.1%}: {transcript.text!r}"
    assert transcript.language == "en" and transcript.duration == pytest.approx(len(audio(clip)) / SAMPLE_RATE)


@pytest.mark.parametrize("model", ["tiny.en", "base"])
@pytest.mark.parametrize("clip", ["jfk", "synthetic_meeting"])
def test_engines_give_identical_text_in_float32(engines, audio, model, clip):
    faster = transcribe_all(engines(model, "faster-whisper", "float32"), audio(clip), GREEDY_EXACT)
    reference = transcribe_all(engines(model, "openai-whisper", "float32"), audio(clip), GREEDY_EXACT)
    assert faster.text == reference.text
    assert faster.text  # not trivially equal
    assert [round(s.start, 1) for s in faster.segments] == [round(s.start, 1) for s in reference.segments]


def test_converted_checkpoint_matches_ct2_weights(store):
    import torch

    resolved = store.resolve("tiny.en", "openai-whisper")
    assert resolved.path == MODELS_DIR / "tiny.en.pt"
    assert store.resolve("tiny.en", "openai-whisper").source == "models_dir"  # cached conversion reused
    checkpoint = torch.load(resolved.path, map_location="cpu", weights_only=True)
    assert checkpoint["dims"] == {"n_mels": 80, "n_vocab": 51864, "n_audio_ctx": 1500, "n_audio_state": 384,
                                  "n_audio_head": 6, "n_audio_layer": 4, "n_text_ctx": 448, "n_text_state": 384,
                                  "n_text_head": 6, "n_text_layer": 4}
    ct2 = read_ct2_variables(MODELS_DIR / "tiny.en" / "model.bin").variables
    state = checkpoint["model_state_dict"]
    fused = ct2["decoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    np.testing.assert_array_equal(state["decoder.blocks.2.attn.value.weight"].numpy(), fused[2 * 384:])
    kv = ct2["decoder/layer_1/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(state["decoder.blocks.1.cross_attn.key.weight"].numpy(), kv[:384])
    assert "decoder.blocks.0.attn.key.bias" not in state
    assert checkpoint["alignment_heads"][0] == [1, 0]


def _ffmpeg(src: Path, dest: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dest)], check=True)
    return dest


def test_containers_and_codecs_give_the_same_text(engines, speech_dir, tmp_path):
    src = speech_dir / "jfk.mp3"
    variants = {
        "mp3": src,
        "wav": _ffmpeg(src, tmp_path / "jfk.wav", "-ar", "44100"),
        "webm": _ffmpeg(src, tmp_path / "jfk.webm", "-c:a", "libopus", "-b:a", "64k"),
        "m4a": _ffmpeg(src, tmp_path / "jfk.m4a", "-c:a", "aac", "-b:a", "96k"),
    }
    engine = engines("tiny.en")
    texts = {fmt: normalize(transcribe_all(engine, decode_audio(path), GREEDY_EXACT).text)
             for fmt, path in variants.items()}
    assert len(set(texts.values())) == 1, texts
    assert word_error_rate(reference_text("jfk"), texts["mp3"]) == 0.0


@pytest.mark.parametrize("engine_name", ["faster-whisper", "openai-whisper"])
def test_progress_increases_and_ends_at_one(engines, audio, engine_name):
    seen: list[float] = []
    compute = "auto" if engine_name == "faster-whisper" else "float32"
    transcript = transcribe_all(engines("tiny.en", engine_name, compute), audio("synthetic_meeting"),
                                TranscribeOptions(language="en"), seen.append)
    assert seen[-1] == 1.0
    assert seen == sorted(seen) and all(0.0 <= p <= 1.0 for p in seen)
    assert len(seen) == len(transcript.segments) + 1
    if engine_name == "faster-whisper":
        assert 0.0 < seen[0] < 1.0  # lazily decoded: progress before the end


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    path = tmp_path_factory.mktemp("de") / "german.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-w", str(path),
                    "Guten Morgen. Heute besprechen wir den Haushalt für das nächste Jahr und die neuen Mitarbeiter "
                    "in der Abteilung. Bitte schicken Sie mir die Unterlagen bis Freitag."], check=True)
    return decode_audio(path)


@pytest.mark.parametrize("engine_name", ["faster-whisper", "openai-whisper"])
def test_detect_language_on_base(engines, audio, german, engine_name):
    compute = "auto" if engine_name == "faster-whisper" else "float32"
    engine = engines("base", engine_name, compute)
    english = engine.detect_language(audio("jfk"))
    assert english.language == "en" and english.probability > 0.5
    assert english.top[0][0] == "en" and len(english.top) == 5
    assert [p for _, p in english.top] == sorted((p for _, p in english.top), reverse=True)
    assert engine.detect_language(german).language == "de"


def test_english_only_model_detects_english(engines, german):
    detection = engines("tiny.en").detect_language(german)
    assert (detection.language, detection.probability) == ("en", 1.0)


def test_multilingual_transcribe_detects_language_when_not_given(engines, german):
    transcript = transcribe_all(engines("base"), german, TranscribeOptions())
    assert transcript.language == "de" and transcript.language_probability > 0.5


@pytest.mark.parametrize("engine_name", ["faster-whisper", "openai-whisper"])
def test_word_timestamps(engines, audio, engine_name):
    compute = "auto" if engine_name == "faster-whisper" else "float32"
    transcript = transcribe_all(engines("tiny.en", engine_name, compute), audio("jfk"),
                                GREEDY_EXACT.replace(word_timestamps=True))
    words = [w for s in transcript.segments for w in s.words]
    assert normalize("".join(w.word for w in words)) == normalize(transcript.text)
    for seg in transcript.segments:
        for w in seg.words:
            assert seg.start - 0.01 <= w.start <= w.end <= seg.end + 0.01
    starts = [w.start for w in words]
    assert starts == sorted(starts) and words[-1].end <= 11.1


@pytest.mark.parametrize("engine_name", ["faster-whisper", "openai-whisper"])
def test_vad_filter_skips_silence_and_keeps_original_times(engines, audio, engine_name):
    compute = "auto" if engine_name == "faster-whisper" else "float32"
    silence = np.zeros(6 * SAMPLE_RATE, dtype=np.float32)
    padded = np.concatenate([silence, audio("jfk"), silence])
    transcript = transcribe_all(engines("tiny.en", engine_name, compute), padded,
                                GREEDY_EXACT.replace(vad_filter=True))
    assert word_error_rate(reference_text("jfk"), transcript.text) <= 0.05
    assert transcript.duration == pytest.approx(len(padded) / SAMPLE_RATE)
    assert transcript.segments[0].start >= 5.0  # times are in the original audio, silence included
    assert transcript.segments[-1].end <= 6 + 11 + 0.5


def test_vad_filter_on_pure_silence_gives_no_segments(engines):
    transcript = transcribe_all(engines("tiny.en", "openai-whisper", "float32"), np.zeros(5 * SAMPLE_RATE, np.float32),
                                GREEDY_EXACT.replace(vad_filter=True))
    assert transcript.segments == () and transcript.text == ""


def test_fixed_temperature_is_passed_without_fallback(engines, audio):
    transcript = transcribe_all(engines("tiny.en"), audio("jfk"), TranscribeOptions(language="en", temperature=0.0))
    assert all(s.temperature == 0.0 for s in transcript.segments)
    assert word_error_rate(reference_text("jfk"), transcript.text) == 0.0


def test_openai_engine_is_not_imported_by_faster_path():
    code = ("import sys; sys.path.insert(0, 'src'); from whisper_appliance.core.engines import create_engine; "
            "e = create_engine('faster-whisper', 'tiny.en', 'models/tiny.en', device='cpu'); "
            "sys.exit(1 if 'torch' in sys.modules or 'whisper' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=MODELS_DIR.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- fitted encoder window (live passes) --------------------------------------------------------------------------
def test_fitted_window_gives_the_same_words_on_short_audio(engines, audio):
    engine = engines("tiny.en")
    clip = audio("jfk")  # 11 s: a 12 s window instead of 30 s
    full = transcribe_all(engine, clip, GREEDY_EXACT.replace(word_timestamps=True))
    fitted = transcribe_all(engine, clip, GREEDY_EXACT.replace(word_timestamps=True, fit_window=True))
    assert normalize(fitted.text) == normalize(full.text)
    assert word_error_rate(reference_text("jfk"), fitted.text) == 0.0
    words = [w for s in fitted.segments for w in s.words]
    assert words and words[-1].end <= 11.1 and [w.start for w in words] == sorted(w.start for w in words)


def test_fitted_window_does_not_leak_into_interleaved_full_window_calls(engines, audio):
    """A stepped job (full window) interleaved with fitted live passes on the same model, as the scheduler does."""
    engine = engines("tiny.en")
    long_clip = np.concatenate([audio("synthetic_meeting"), audio("synthetic_meeting")])  # two 30 s windows
    alone = transcribe_all(engine, long_clip, GREEDY_EXACT)
    segments, _info = engine.transcribe(long_clip, GREEDY_EXACT)
    interleaved = []
    short = audio("jfk")[: 4 * SAMPLE_RATE]
    for seg in segments:
        interleaved.append(seg)
        live = transcribe_all(engine, short, GREEDY_EXACT.replace(fit_window=True, beam_size=1))
        assert "fellow americans" in normalize(live.text)
    assert [s.text for s in interleaved] == [s.text for s in alone.segments]


def test_openai_whisper_ignores_fit_window(engines, audio):
    engine = engines("tiny.en", "openai-whisper", "float32")
    fitted = transcribe_all(engine, audio("jfk"), GREEDY_EXACT.replace(fit_window=True))
    assert word_error_rate(reference_text("jfk"), fitted.text) == 0.0


# -- two workers (INFERENCE_WORKERS) ------------------------------------------------------------------------------
def test_two_workers_run_a_full_window_job_and_fitted_passes_at_once(store, audio):
    """Calls from two threads at once on one model: each keeps its own encoder window and its own words."""
    import threading

    resolved = store.resolve("tiny.en", "faster-whisper")
    engine = create_engine("faster-whisper", "tiny.en", resolved.path, device="cpu", cpu_threads=2, workers=2)
    try:
        assert engine.parallel_calls == 2 and engine.cpu_threads == 1
        long_clip = np.concatenate([audio("synthetic_meeting"), audio("synthetic_meeting")])
        short = audio("jfk")[: 4 * SAMPLE_RATE]
        live_options = GREEDY_EXACT.replace(fit_window=True, beam_size=1)
        alone_job = transcribe_all(engine, long_clip, GREEDY_EXACT)
        alone_live = transcribe_all(engine, short, live_options)
        job_result: list = []
        live_results: list = []

        def job() -> None:
            job_result.append(transcribe_all(engine, long_clip, GREEDY_EXACT))

        thread = threading.Thread(target=job)
        thread.start()
        while thread.is_alive():
            live_results.append(transcribe_all(engine, short, live_options))
        thread.join()
        assert live_results, "the live passes ran while the job did"
        assert [s.text for s in job_result[0].segments] == [s.text for s in alone_job.segments]
        assert {r.text for r in live_results} == {alone_live.text}
    finally:
        engine.close()


def test_openai_whisper_takes_one_call_at_a_time(engines):
    assert engines("tiny.en", "openai-whisper", "float32").parallel_calls == 1
