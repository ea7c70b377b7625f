"""The engine interface both Whisper implementations follow.

An engine wraps one loaded model. ``transcribe`` returns a lazy iterator of ``Segment`` records plus the
``TranscriptionInfo`` known up front (language, duration), in the style of faster-whisper: callers see each
segment as soon as it is decoded, which is what progress reporting, job preemption and streaming build on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import numpy as np

from ..records import LanguageDetection, Segment, TranscribeOptions, Transcript, TranscriptionInfo

ProgressCallback = Callable[[float], None]


class Engine(ABC):
    """One loaded model. At most ``parallel_calls`` calls may run on it at once (the scheduler keeps to that)."""

    engine_name: str = ""
    parallel_calls: int = 1

    def __init__(self, model_name: str, device: str, compute_type: str) -> None:
        self.model_name = model_name
        self.device = device
        self.compute_type = compute_type

    @abstractmethod
    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Decode 16 kHz mono float32 ``audio``; segments are produced lazily."""

    @abstractmethod
    def detect_language(self, audio: np.ndarray) -> LanguageDetection:
        """Most likely spoken language of the first 30 s, with the top candidates."""

    def close(self) -> None:  # noqa: B027 - optional hook: engines holding native memory override it
        """Release the model's memory. The engine is unusable afterwards."""

    @property
    def multilingual(self) -> bool:
        return not self.model_name.endswith(".en")


def iter_with_progress(segments: Iterator[Segment], info: TranscriptionInfo,
                       progress: ProgressCallback | None) -> Iterator[Segment]:
    """Pass segments through, reporting the fraction of audio done after each (1.0 at the end)."""
    for seg in segments:
        if progress is not None and info.duration > 0:
            progress(min(1.0, max(0.0, seg.end / info.duration)))
        yield seg
    if progress is not None:
        progress(1.0)


def transcribe_all(engine: Engine, audio: np.ndarray, options: TranscribeOptions,
                   progress: ProgressCallback | None = None) -> Transcript:
    """Run a whole transcription and collect it into a ``Transcript``."""
    segments, info = engine.transcribe(audio, options)
    return Transcript.from_segments(iter_with_progress(segments, info, progress), info)
