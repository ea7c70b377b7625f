"""The default engine: faster-whisper (CTranslate2), int8 on CPU and float16 on CUDA.

Segments are converted into our records one by one as faster-whisper decodes them, so callers keep its
laziness: the first segment is available before the last one is decoded.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..records import LanguageDetection, Segment, TranscribeOptions, TranscriptionInfo, Word
from .base import Engine

log = logging.getLogger(__name__)

# Whisper's usual fallback schedule, used when TranscribeOptions.temperature is None.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TOP_LANGUAGES = 5
FRAMES_PER_SECOND = 100          # Whisper's mel frames
FULL_WINDOW_FRAMES = 3000        # the 30 s every Whisper encoder call is padded to
FIT_MARGIN_S = 1.0               # padding kept after the audio when the window is fitted to it ...
FIT_MIN_S = 10                   # ... and the shortest fitted window: shorter ones made tiny.en loop on short
                                 # utterances ("Go forward 10 meters. Go forward 10 meters. ...")


def to_segment(seg: Any, index: int) -> Segment:
    """A faster-whisper ``Segment`` as our record (ids counted from 0 by us, whatever the engine did)."""
    words = tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in seg.words or ())
    return Segment(id=index, start=float(seg.start), end=float(seg.end), text=seg.text,
                   avg_logprob=float(seg.avg_logprob), no_speech_prob=float(seg.no_speech_prob), words=words,
                   temperature=float(seg.temperature or 0.0), compression_ratio=float(seg.compression_ratio),
                   tokens=tuple(int(t) for t in seg.tokens), window_start=float(seg.seek) / FRAMES_PER_SECOND)


def fitted_frames(samples: int, sample_rate: int = 16_000) -> int | None:
    """Encoder frames for audio of ``samples`` with ``fit_window``: its length plus ``FIT_MARGIN_S``, rounded up
    to whole seconds (fewer distinct shapes for the encoder), at least ``FIT_MIN_S``; None when that is the full
    window anyway."""
    seconds = max(math.ceil(samples / sample_rate + FIT_MARGIN_S), FIT_MIN_S)
    frames = seconds * FRAMES_PER_SECOND
    return frames if frames < FULL_WINDOW_FRAMES else None


def temperature_option(temperature: float | None) -> float | tuple[float, ...]:
    """None -> the fallback schedule; a number -> exactly that, with no fallback."""
    return FALLBACK_TEMPERATURES if temperature is None else float(temperature)


def _fitting_model_class() -> type:
    """faster-whisper's ``WhisperModel`` with an encoder window that can be cut to the audio's length.

    faster-whisper pads every window's features to 30 s before ``encode``; this subclass cuts them to
    ``encoder_frames`` there (the padding only, never audio). CTranslate2's Whisper encoder takes any length up
    to 30 s and costs a fraction for short ones (tiny.en on 2 cores: 0.27 s for 30 s, 0.04 s for 12 s); the
    decoder, word alignment and language detection all work from that shorter output.

    ``encoder_frames`` belongs to the calling thread: the model's workers run calls from several threads at once.
    """
    from faster_whisper import WhisperModel

    class FittingWhisperModel(WhisperModel):  # type: ignore[misc]
        _window = threading.local()

        @property
        def encoder_frames(self) -> int | None:
            """Set by the engine before every use on this thread (None: the full 30 s)."""
            return getattr(self._window, "frames", None)

        @encoder_frames.setter
        def encoder_frames(self, frames: int | None) -> None:
            self._window.frames = frames

        def encode(self, features: np.ndarray) -> Any:
            frames = self.encoder_frames
            if frames is not None and features.shape[-1] > frames:
                features = features[..., :frames]
            return super().encode(features)

    return FittingWhisperModel


class FasterWhisperEngine(Engine):
    engine_name = "faster-whisper"

    def __init__(self, model_name: str, path: Path, *, device: str, compute_type: str, cpu_threads: int,
                 workers: int = 1) -> None:
        super().__init__(model_name, device, compute_type)
        self.path = Path(path)
        self.cpu_threads = cpu_threads
        # One set of weights; each of the ``workers`` runs one call at a time with ``cpu_threads`` threads.
        self.parallel_calls = max(1, workers)
        self._model: Any = _fitting_model_class()(str(self.path), device=device, compute_type=compute_type,
                                                  cpu_threads=cpu_threads, num_workers=self.parallel_calls)
        log.info("faster-whisper loaded %s from %s (%s, %s, %d workers x %d threads)", model_name, self.path, device,
                 compute_type, self.parallel_calls, cpu_threads)

    @property
    def multilingual(self) -> bool:
        return bool(self._loaded().model.is_multilingual)

    def _loaded(self) -> Any:
        if self._model is None:
            raise RuntimeError(f"engine for {self.model_name} is closed")
        return self._model

    def _language(self, options: TranscribeOptions) -> str | None:
        if not self.multilingual:
            if options.language not in (None, "en"):
                log.debug("%s is English-only: language %r replaced by 'en'", self.model_name, options.language)
            return "en"
        return options.language

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> tuple[Iterator[Segment], TranscriptionInfo]:
        model = self._loaded()
        if options.task not in ("transcribe", "translate"):
            raise InvalidInput(f"task must be 'transcribe' or 'translate', not {options.task!r}")
        audio = np.asarray(audio, dtype=np.float32)
        frames = fitted_frames(audio.size) if options.fit_window else None
        # Every use of the model says which window it wants before touching the encoder: work items of several
        # calls interleave on the scheduler's thread (a job's segments, then a live pass, then the job again).
        model.encoder_frames = frames
        segments, info = model.transcribe(
            audio,
            language=self._language(options),
            task=options.task,
            beam_size=options.beam_size,
            temperature=temperature_option(options.temperature),
            initial_prompt=options.initial_prompt or None,
            word_timestamps=options.word_timestamps,
            vad_filter=options.vad_filter,
            condition_on_previous_text=options.condition_on_previous_text,
            without_timestamps=options.without_timestamps,
        )
        record = TranscriptionInfo(language=info.language, language_probability=float(info.language_probability),
                                   duration=float(info.duration))
        return self._segments(model, segments, frames), record

    @staticmethod
    def _segments(model: Any, segments: Iterator[Any], frames: int | None) -> Iterator[Segment]:
        """faster-whisper's lazy segments as our records, each decoded with this call's encoder window."""
        index = 0
        while True:
            model.encoder_frames = frames
            seg = next(segments, None)
            if seg is None:
                return
            yield to_segment(seg, index)
            index += 1

    def detect_language(self, audio: np.ndarray) -> LanguageDetection:
        model = self._loaded()
        if not self.multilingual:
            return LanguageDetection("en", 1.0, (("en", 1.0),))
        model.encoder_frames = None
        language, probability, all_probs = model.detect_language(np.asarray(audio, dtype=np.float32))
        top = sorted(((lang, float(p)) for lang, p in all_probs), key=lambda lp: lp[1], reverse=True)
        return LanguageDetection(language, float(probability), tuple(top[:TOP_LANGUAGES]))

    def close(self) -> None:
        if self._model is not None:
            log.info("faster-whisper releasing %s", self.model_name)
            # Dropping the last reference frees CTranslate2's memory; unload_model would only move it.
            self._model = None
            gc.collect()
