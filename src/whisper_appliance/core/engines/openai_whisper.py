"""The reference engine: OpenAI's own ``whisper`` package (PyTorch), float32 on CPU and float16 on CUDA.

torch and whisper are imported here only, and this module is imported only when this engine is chosen.
Weights are a ``.pt`` checkpoint: OpenAI's own file, or one converted from the CTranslate2 model (convert.py),
which also carries the alignment heads used for word timestamps.

Differences from faster-whisper, by necessity:
* ``whisper.transcribe`` is not lazy. The returned iterator runs the whole transcription when first advanced
  and then yields its segments, so progress jumps from 0 to 1 for this engine.
* Voice activity filtering is not part of openai-whisper. With ``vad_filter`` we cut the silence out with the
  Silero VAD that ships with faster-whisper, transcribe the speech alone and map the timestamps back.
* Without a language, the language is detected first (as faster-whisper does) so that ``TranscriptionInfo``
  carries a probability.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from ..errors import InvalidInput
from ..records import SAMPLE_RATE, LanguageDetection, Segment, TranscribeOptions, TranscriptionInfo, Word
from .base import Engine
from .faster import TOP_LANGUAGES, temperature_option

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def load_checkpoint(model_name: str, path: Path, device: str) -> Whisper:
    """Build the model from a checkpoint: ``{"dims", "model_state_dict"}`` and optionally ``alignment_heads``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    heads = checkpoint.get("alignment_heads")
    if heads:
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    elif model_name in whisper._ALIGNMENT_HEADS:
        # OpenAI's own checkpoints do not carry them; the whisper package keeps them per model name.
        model.set_alignment_heads(whisper._ALIGNMENT_HEADS[model_name])
    del checkpoint
    return model.to(device).eval()


MEL_FRAMES_PER_SECOND = 100  # whisper's "seek" counts mel frames


def _to_segment(d: dict[str, Any], index: int, time_map: Any = None) -> Segment:
    def t(value: float, is_end: bool = False) -> float:
        return float(value) if time_map is None else float(time_map.get_original_time(value, is_end=is_end))

    words = tuple(Word(t(w["start"]), t(w["end"], True), w["word"], float(w.get("probability", 0.0)))
                  for w in d.get("words") or ())
    return Segment(id=index, start=t(d["start"]), end=t(d["end"], True), text=d["text"],
                   avg_logprob=float(d.get("avg_logprob", 0.0)), no_speech_prob=float(d.get("no_speech_prob", 0.0)),
                   words=words, temperature=float(d.get("temperature", 0.0)),
                   compression_ratio=float(d.get("compression_ratio", 0.0)),
                   tokens=tuple(int(x) for x in d.get("tokens", ())),
                   window_start=t(float(d.get("seek", 0)) / MEL_FRAMES_PER_SECOND))


class OpenAIWhisperEngine(Engine):
    engine_name = "openai-whisper"

    def __init__(self, model_name: str, path: Path, *, device: str, compute_type: str, cpu_threads: int) -> None:
        super().__init__(model_name, device, compute_type)
        if compute_type not in ("float32", "float16"):
            raise InvalidInput(f"openai-whisper computes in float32 or float16, not {compute_type}")
        if compute_type == "float16" and device != "cuda":
            raise InvalidInput("openai-whisper supports float16 only on CUDA; use float32 on the CPU")
        self.path = Path(path)
        self.cpu_threads = cpu_threads
        if device == "cpu" and cpu_threads > 0:
            # torch's thread pool is process-wide; this engine is the only torch user in the process.
            torch.set_num_threads(cpu_threads)
        self._model: Whisper | None = load_checkpoint(model_name, self.path, device)
        log.info("openai-whisper loaded %s from %s (%s, %s, %d threads)", model_name, self.path, device,
                 compute_type, cpu_threads)

    @property
    def multilingual(self) -> bool:
        return bool(self._loaded().is_multilingual)

    def _loaded(self) -> Whisper:
        if self._model is None:
            raise RuntimeError(f"engine for {self.model_name} is closed")
        return self._model

    def _detect(self, model: Whisper, audio: np.ndarray) -> tuple[str, float, list[tuple[str, float]]]:
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), n_mels=model.dims.n_mels)
        with torch.no_grad():
            _, probs = whisper.detect_language(model, mel.to(model.device))
        ranked = sorted(((lang, float(p)) for lang, p in probs.items()), key=lambda lp: lp[1], reverse=True)
        return ranked[0][0], ranked[0][1], ranked

    def detect_language(self, audio: np.ndarray) -> LanguageDetection:
        model = self._loaded()
        if not model.is_multilingual:
            return LanguageDetection("en", 1.0, (("en", 1.0),))
        language, probability, ranked = self._detect(model, np.asarray(audio, dtype=np.float32))
        return LanguageDetection(language, probability, tuple(ranked[:TOP_LANGUAGES]))

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> tuple[Iterator[Segment], TranscriptionInfo]:
        model = self._loaded()
        if options.task not in ("transcribe", "translate"):
            raise InvalidInput(f"task must be 'transcribe' or 'translate', not {options.task!r}")
        audio = np.asarray(audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        speech, time_map = audio, None
        if options.vad_filter:
            speech, time_map = _speech_only(audio)

        if not model.is_multilingual:
            language, probability = "en", 1.0
        elif options.language:
            language, probability = options.language, 1.0
        elif len(speech) == 0:
            language, probability = "en", 0.0
        else:
            language, probability, _ = self._detect(model, speech)
        info = TranscriptionInfo(language=language, language_probability=probability, duration=duration)
        return self._segments(model, speech, options, language, time_map), info

    def _segments(self, model: Whisper, audio: np.ndarray, options: TranscribeOptions, language: str,
                  time_map: Any) -> Iterator[Segment]:
        if len(audio) == 0:
            return
        temperature = temperature_option(options.temperature)
        # whisper drops beam_size for sampled temperatures and best_of for greedy ones; best_of=5 matches
        # faster-whisper. beam_size 1 means greedy decoding, as in faster-whisper.
        result = whisper.transcribe(
            model, audio, verbose=None, language=language, task=options.task, temperature=temperature,
            beam_size=options.beam_size if options.beam_size > 1 else None, best_of=5, initial_prompt=options.initial_prompt or None,
            word_timestamps=options.word_timestamps,
            condition_on_previous_text=options.condition_on_previous_text,
            without_timestamps=options.without_timestamps, fp16=self.compute_type == "float16",
        )
        for index, seg in enumerate(result["segments"]):
            yield _to_segment(seg, index, time_map)

    def close(self) -> None:
        if self._model is not None:
            log.info("openai-whisper releasing %s", self.model_name)
            self._model = None
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()


def _speech_only(audio: np.ndarray) -> tuple[np.ndarray, Any]:
    """Silero VAD (from faster-whisper): the speech concatenated, and the map back to original times."""
    from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps

    chunks = get_speech_timestamps(audio, VadOptions())
    if not chunks:
        return np.zeros(0, dtype=np.float32), None
    pieces, _ = collect_chunks(audio, chunks)
    return np.concatenate(pieces).astype(np.float32), SpeechTimestampsMap(chunks, SAMPLE_RATE)
