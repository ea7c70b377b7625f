"""Typed records that cross module boundaries: what engines produce and what callers ask for.

They are small frozen dataclasses so they can be shared between threads, compared in tests and turned into
JSON with ``to_dict()``. Engines yield ``Segment`` records lazily; ``Transcript`` is the collected whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

SAMPLE_RATE = 16_000
TASKS = ("transcribe", "translate")
Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "word": self.word,
                "probability": round(self.probability, 4)}


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()
    # Fields useful for OpenAI's verbose_json; engines fill them when they know them.
    temperature: float = 0.0
    compression_ratio: float = 0.0
    tokens: tuple[int, ...] = ()
    # Where the decoding window this segment came from starts (seconds, on the same clock as ``start``). Whisper
    # decodes a window, then what its last segment left as a window of its own; the live guards judge a segment
    # of such a short remainder differently. Not part of the public shape.
    window_start: float = 0.0

    def to_dict(self, *, words: bool = True, decoding: bool = False) -> dict[str, Any]:
        """The public shape; ``decoding`` adds temperature, compression ratio and tokens (stored in history, so a
        cached result can still answer verbose_json in full)."""
        out: dict[str, Any] = {
            "id": self.id, "start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
            "avg_logprob": round(self.avg_logprob, 4), "no_speech_prob": round(self.no_speech_prob, 4),
        }
        if words and self.words:
            out["words"] = [w.to_dict() for w in self.words]
        if decoding:
            out.update(temperature=self.temperature, compression_ratio=round(self.compression_ratio, 4),
                       tokens=list(self.tokens))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        return cls(id=int(d.get("id", 0)), start=float(d["start"]), end=float(d["end"]), text=str(d["text"]),
                   avg_logprob=float(d.get("avg_logprob", 0.0)), no_speech_prob=float(d.get("no_speech_prob", 0.0)),
                   words=tuple(Word(float(w["start"]), float(w["end"]), str(w["word"]),
                                    float(w.get("probability", 0.0))) for w in d.get("words") or ()),
                   temperature=float(d.get("temperature", 0.0)),
                   compression_ratio=float(d.get("compression_ratio", 0.0)),
                   tokens=tuple(int(t) for t in d.get("tokens") or ()))


@dataclass(frozen=True)
class TranscriptionInfo:
    """What an engine knows before decoding the first segment."""

    language: str
    language_probability: float
    duration: float


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    duration: float
    segments: tuple[Segment, ...] = ()

    @classmethod
    def from_segments(cls, segments: Iterable[Segment], info: TranscriptionInfo) -> Transcript:
        segs = tuple(segments)
        return cls(text=join_text(s.text for s in segs), language=info.language,
                   language_probability=info.language_probability, duration=info.duration, segments=segs)

    def to_dict(self, *, words: bool = True) -> dict[str, Any]:
        return {"text": self.text, "language": self.language,
                "language_probability": round(self.language_probability, 4),
                "duration": round(self.duration, 3),
                "segments": [s.to_dict(words=words) for s in self.segments]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transcript:
        return cls(text=str(d.get("text", "")), language=str(d.get("language") or ""),
                   language_probability=float(d.get("language_probability") or 0.0),
                   duration=float(d.get("duration") or 0.0),
                   segments=tuple(Segment.from_dict(s) for s in d.get("segments") or ()))


def join_text(parts: Iterable[str]) -> str:
    """Join segment texts the way Whisper emits them (each usually starts with a space)."""
    return "".join(parts).strip()


@dataclass(frozen=True)
class TranscribeOptions:
    """Decoding options shared by both engines.

    ``temperature=None`` means Whisper's usual fallback schedule (0.0, 0.2, ... 1.0); a number means exactly
    that temperature and no fallback (what live passes want: retries made some passes take seconds).

    ``fit_window`` (faster-whisper only; openai-whisper's encoder accepts nothing but 30 s) encodes only as much
    of Whisper's 30-second window as audio shorter than that needs, plus a margin, instead of 30 s of padding:
    live passes over a few seconds of speech then cost a fraction of a full window.
    """

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    temperature: float | None = None
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad_filter: bool = False
    condition_on_previous_text: bool = True
    without_timestamps: bool = False
    fit_window: bool = False

    def replace(self, **changes: Any) -> TranscribeOptions:
        return replace(self, **changes)

    def cache_key(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LanguageDetection:
    language: str
    probability: float
    top: tuple[tuple[str, float], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"language": self.language, "probability": round(self.probability, 4),
                "top": [{"language": lang, "probability": round(p, 4)} for lang, p in self.top]}
