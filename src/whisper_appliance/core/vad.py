"""Voice activity detection: Silero VAD as bundled in the faster-whisper wheel (works offline).

Two uses:

* ``SileroVoiceActivityDetector`` is incremental: fed audio a chunk at a time, it returns one speech
  probability per completed 32 ms frame (512 samples at 16 kHz), carrying the network's recurrent state and
  frame context across calls, so a live stream costs the same per second whatever its length.
* ``speech_timestamps(audio)`` is the offline form: faster-whisper's ``get_speech_timestamps`` over a whole
  array, returned in seconds.

``VoiceActivityDetector`` is the small interface the streaming policy needs; unit tests give it a fake.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np

from .records import SAMPLE_RATE

log = logging.getLogger(__name__)

FRAME_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
_CONTEXT_SAMPLES = 64  # Silero v5+/v6 prepend the previous frame's last 64 samples to each frame


class VoiceActivityDetector(ABC):
    """Speech probability per fixed-size frame of a 16 kHz mono stream."""

    frame_samples: int = FRAME_SAMPLES

    @abstractmethod
    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append audio; return the speech probabilities (float32, 0..1) of the frames it completed."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the stream: the next ``push`` starts a new one."""


class SileroVoiceActivityDetector(VoiceActivityDetector):
    """Incremental Silero VAD over faster-whisper's bundled ONNX model (``faster_whisper.vad.get_vad_model``)."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        # The model object is cached by faster-whisper and only holds an ONNX session, so sessions can share it;
        # the recurrent state lives here, per stream.
        self._session = get_vad_model().session
        self.reset()

    def reset(self) -> None:
        self._state_h = np.zeros((1, 1, 128), dtype=np.float32)
        self._state_c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).ravel()
        audio = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n_frames = audio.size // FRAME_SAMPLES
        self._pending = audio[n_frames * FRAME_SAMPLES:].copy()
        if n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        frames = audio[:n_frames * FRAME_SAMPLES].reshape(n_frames, FRAME_SAMPLES)
        contexts = np.empty((n_frames, _CONTEXT_SAMPLES), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -_CONTEXT_SAMPLES:]
        batch = np.concatenate([contexts, frames], axis=1)
        out, self._state_h, self._state_c = self._session.run(
            None, {"input": batch, "h": self._state_h, "c": self._state_c})
        self._context = frames[-1, -_CONTEXT_SAMPLES:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)[:n_frames]


def speech_timestamps(audio: np.ndarray, *, threshold: float = 0.5, min_silence_s: float = 0.5,
                      speech_pad_s: float = 0.2) -> list[tuple[float, float]]:
    """(start, end) seconds of each speech region in a whole 16 kHz array (faster-whisper's Silero VAD)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(threshold=threshold, min_silence_duration_ms=int(min_silence_s * 1000),
                         speech_pad_ms=int(speech_pad_s * 1000))
    chunks = get_speech_timestamps(np.asarray(audio, dtype=np.float32).ravel(), options, sampling_rate=SAMPLE_RATE)
    return [(c["start"] / SAMPLE_RATE, c["end"] / SAMPLE_RATE) for c in chunks]
