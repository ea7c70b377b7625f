"""The default engine: faster-whisper (CTranslate2), int8 on CPU and float16 on CUDA.

Segments are converted into our records one by one as faster-whisper decodes them, so callers keep its
laziness: the first segment is available before the last one is decoded.
"""

from __future__ import annotations

import gc
import logging
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


def to_segment(seg: Any, index: int) -> Segment:
    """A faster-whisper ``Segment`` as our record (ids counted from 0 by us, whatever the engine did)."""
    words = tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in seg.words or ())
    return Segment(id=index, start=float(seg.start), end=float(seg.end), text=seg.text,
                   avg_logprob=float(seg.avg_logprob), no_speech_prob=float(seg.no_speech_prob), words=words,
                   temperature=float(seg.temperature or 0.0), compression_ratio=float(seg.compression_ratio),
                   tokens=tuple(int(t) for t in seg.tokens))


def temperature_option(temperature: float | None) -> float | tuple[float, ...]:
    """None -> the fallback schedule; a number -> exactly that, with no fallback."""
    return FALLBACK_TEMPERATURES if temperature is None else float(temperature)


class FasterWhisperEngine(Engine):
    engine_name = "faster-whisper"

    def __init__(self, model_name: str, path: Path, *, device: str, compute_type: str, cpu_threads: int) -> None:
        super().__init__(model_name, device, compute_type)
        from faster_whisper import WhisperModel

        self.path = Path(path)
        self.cpu_threads = cpu_threads
        # num_workers=1: the scheduler runs one call at a time on this model.
        self._model: Any = WhisperModel(str(self.path), device=device, compute_type=compute_type,
                                        cpu_threads=cpu_threads, num_workers=1)
        log.info("faster-whisper loaded %s from %s (%s, %s, %d threads)", model_name, self.path, device,
                 compute_type, cpu_threads)

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
        segments, info = model.transcribe(
            np.asarray(audio, dtype=np.float32),
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
        return (to_segment(seg, i) for i, seg in enumerate(segments)), record

    def detect_language(self, audio: np.ndarray) -> LanguageDetection:
        model = self._loaded()
        if not self.multilingual:
            return LanguageDetection("en", 1.0, (("en", 1.0),))
        language, probability, all_probs = model.detect_language(np.asarray(audio, dtype=np.float32))
        top = sorted(((lang, float(p)) for lang, p in all_probs), key=lambda lp: lp[1], reverse=True)
        return LanguageDetection(language, float(probability), tuple(top[:TOP_LANGUAGES]))

    def close(self) -> None:
        if self._model is not None:
            log.info("faster-whisper releasing %s", self.model_name)
            # Dropping the last reference frees CTranslate2's memory; unload_model would only move it.
            self._model = None
            gc.collect()
