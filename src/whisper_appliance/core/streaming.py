"""The live-dictation streaming policy: what to decode when, and which words become final.

``StreamingPolicy`` is a pure object. It is fed 16 kHz mono float32 audio (``push_audio``) and the words of
the passes it asked for (``apply``); it never calls the model itself. Its decisions:

* Utterances come from the VAD: no pass ever runs on silence, and an utterance ends after
  ``finalize_silence_s`` of silence (or at ``finish``).
* While an utterance is open, *partial* passes (small beam) run over its buffer every ``step`` seconds of new
  audio; their words after the committed text are the ``partial`` event.
* When it ends, ONE *final* pass (large beam) runs over the whole utterance and its text is committed.
* Every pass also hears up to ``context_s`` of the audio before the utterance (earlier utterances, already
  committed): Whisper decodes a few seconds of speech alone much worse than the same words inside their context.
  The words a pass re-says are removed by text (committed-prefix matching, robust to jitter and re-wording) and
  by time (no word ending before the utterance, or centred inside committed audio, is new), so only what follows
  is partial or committed. With the encoder window fitted to the pass (``fit_window``) that context costs almost
  nothing.
* A short utterance with no such context (the first one of a session) is held open over pauses shorter than
  ``hold_silence_s`` until its final pass would hear ``min_final_window_s`` of audio: the first words are then
  decoded together with the next ones instead of alone.
* Words commit before the utterance ends once a pass hears ``agreement_after_s`` of audio (context included,
  so from the first words of an utterance in mid-session, and after a few seconds at a session's start, where
  tiny.en guesses without context): words that two consecutive passes agree on (LocalAgreement-2), ending at
  least ``agreement_margin_s`` before the audio end, are committed (a sentence's first words only with a word
  probability of at least ``agreement_min_probability``: that is where two passes agreed on "and we" for
  "Everyone"); at ``max_utterance_s`` a *trim* pass commits up to a segment boundary and the buffer is cut at a
  committed sentence end, keeping up to half of it (committed words, matched by text) as context for the next
  passes, so every pass costs a bounded amount.
* The prompt is committed text from BEFORE the pass's audio only (committed words still inside the audio made
  Whisper skip them).
* Hallucinations on low-speech audio and repetition loops are never committed.
* Pass time is measured: when passes are slower than the step, the step grows instead of the lag.

``run_pass`` is the one function that calls an engine; ``simulate`` drives policy and engine over a recorded
file at real-time pace (tests and the live benchmark).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from .engines.base import Engine
from .errors import InvalidInput
from .guards import (
    SpeechMap,
    committed_echo,
    find_repetition_loop,
    in_speech,
    is_hallucination,
    remainder_tail,
    repeated_phrase,
    signals_fail,
    window_repeats,
)
from .records import SAMPLE_RATE, TASKS, Segment, TranscribeOptions, Word
from .vad import SileroVoiceActivityDetector, VoiceActivityDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamingConfig:
    sample_rate: int = SAMPLE_RATE
    min_step_s: float = 0.5            # least new audio between two partial passes
    finalize_silence_s: float = 0.5    # silence that ends an utterance
    max_utterance_s: float = 15.0      # buffer length at which a trim pass commits and cuts the buffer
    agreement_after_s: float = 6.0     # LocalAgreement commits only in passes hearing at least this much audio
                                       # (context included; inf: never)
    agreement_margin_s: float = 0.5    # ... and only words ending this far before the buffer end
    agreement_min_probability: float = 0.5  # ... and a sentence's first words only when the model is this sure
    prompt_chars: int = 200
    partial_beam_size: int = 1
    final_beam_size: int = 5
    language: str | None = None        # None: detect on the first utterance, then keep it
    task: Literal["transcribe", "translate"] = "transcribe"
    vad_threshold: float = 0.5
    min_speech_s: float = 0.25         # utterances with less detected speech are dropped unheard
    pre_roll_s: float = 0.5            # audio kept before speech onset (Whisper mis-hears clipped word starts)
    speech_pad_s: float = 0.2          # audio kept after speech end (<= quiet_tail_s: the early final pass hears it)
    context_s: float = 6.0             # earlier audio every pass hears before its utterance (0: none)
    slide_context_s: float = 4.0       # committed audio a long utterance's passes keep hearing (0: all of it)
    min_final_window_s: float = 4.0    # a final pass hearing less audio than this waits for more speech ...
    hold_silence_s: float = 1.5        # ... unless the speaker has been silent this long
    min_partial_s: float = 0.5         # no partial pass before the utterance holds this much audio
    quiet_tail_s: float = 0.25         # no partial pass while the utterance has been silent this long
    fit_window: bool = True            # encode only the pass's audio, not 30 s (TranscribeOptions.fit_window)

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise InvalidInput(f"streaming works on {SAMPLE_RATE} Hz audio, not {self.sample_rate} Hz")
        if self.task not in TASKS:
            raise InvalidInput(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.min_step_s <= 0 or self.finalize_silence_s <= 0:
            raise InvalidInput("min_step_s and finalize_silence_s must be greater than 0")
        if not 2.0 <= self.max_utterance_s <= 28.0:
            # Whisper sees 30 s at most; the trim pass needs a margin to find a boundary.
            raise InvalidInput("max_utterance_s must lie between 2 and 28 seconds")
        if self.partial_beam_size < 1 or self.final_beam_size < 1:
            raise InvalidInput("beam sizes must be at least 1")
        if self.pre_roll_s < 0 or self.speech_pad_s < 0:
            raise InvalidInput("pre_roll_s and speech_pad_s must not be negative")
        if self.context_s < 0 or self.min_final_window_s < 0:
            raise InvalidInput("context_s and min_final_window_s must not be negative")
        if self.hold_silence_s < self.finalize_silence_s:
            raise InvalidInput("hold_silence_s must be at least finalize_silence_s")


@dataclass(frozen=True)
class PassRequest:
    audio: np.ndarray = field(repr=False)
    offset: float                      # stream time of audio[0], seconds
    prompt: str | None
    final: bool                        # the utterance's last pass: everything it hears is committed
    utterance_id: int
    trim: bool = False                 # buffer at max_utterance_s: commit up to a boundary, cut the buffer there
    fallback: bool = False             # decoded again with Whisper's temperature fallback (a segment failed)

    @property
    def end(self) -> float:
        return self.offset + self.audio.size / SAMPLE_RATE


@dataclass(frozen=True)
class PassResult:
    """One pass's segments with absolute (stream) times, and what the engine detected."""

    segments: tuple[Segment, ...]
    language: str | None = None
    language_probability: float = 0.0
    elapsed: float = 0.0               # seconds the engine took


@dataclass(frozen=True)
class StreamEvent:
    kind: Literal["partial", "final"]
    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()

    def to_dict(self, *, words: bool = False) -> dict:
        out: dict = {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}
        if words:
            out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words]
        return out


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers: text normalisation, alignment, agreement (the hallucination guards are in guards.py).

_NON_WORD = re.compile(r"[^\w']+")
_MAX_WINDOW_S = 28.0    # Whisper hears 30 s at once; a longer pass would be cut into windows without context
_HEARD_AGAIN_S = 0.05   # committed words ending this close before a pass's audio count as heard again (jitter)
_GAP_SLACK_S = 0.1      # word times are off by about this much: a cut between two words may move that far
_TRIM_MARGIN_S = 1.5    # a trim pass commits unagreed words only when they end this long before its audio end
_SPEECH_SLACK_S = 0.1   # a word counts as heard when its span widened by this overlaps a speech frame
_HISTORY_WORDS = 40     # committed words a pass is checked against for echoes and loops
_SLIDE_SLACK_S = 1.0    # a buffer slides only once it holds this much more committed audio than it keeps
_SENTENCE_START_WORDS = 3  # a sentence's first words, which commit early only when the model is sure of them
_FALLBACK_MIN_SPEECH_S = 0.5  # a segment failing Whisper's checks over this much speech is decoded again
_UNDECIDED = ("logprob", "compression")  # ... for these reasons (the others are not speech)


@dataclass(frozen=True)
class _Heard:
    words: list[Word]               # the words that passed the guards
    undecided: float | None         # start of the first failed segment that held speech (decode again)


def word_key(text: str) -> str:
    """A word as compared between hypotheses: lower case, no punctuation ("Hello," == "hello")."""
    return _NON_WORD.sub("", text.lower()).strip("'")


def ends_sentence(word: Word) -> bool:
    return word.word.rstrip().endswith((".", "?", "!"))


def join_words(words: Sequence[Word]) -> str:
    return "".join(w.word for w in words).strip()


def committed_prefix_length(committed: Sequence[str], hypothesis: Sequence[str]) -> int:
    """How many leading hypothesis words re-say ``committed`` (keys), matched by text, not by time.

    The prefix length k minimises the edit distance between ``committed`` and ``hypothesis[:k]``; on ties the
    shorter prefix wins, so an uncertain match repeats nothing rather than dropping a new word.
    """
    if not committed:
        return 0
    n, m = len(committed), len(hypothesis)
    prev = list(range(m + 1))  # distance of the empty committed list to hypothesis[:k]
    for i in range(1, n + 1):
        cur = [i] + [0] * m
        for k in range(1, m + 1):
            same = committed[i - 1] == hypothesis[k - 1]
            cur[k] = min(prev[k - 1] + (0 if same else 1), prev[k] + 1, cur[k - 1] + 1)
        prev = cur
    best = min(range(m + 1), key=lambda k: (prev[k], k))
    # A prefix that shares no word with the committed text is no match at all.
    if best and not set(committed) & set(hypothesis[:best]):
        return 0
    return best


def agreed_prefix_length(previous: Sequence[str], current: Sequence[str]) -> int:
    """LocalAgreement-2: the number of leading words two consecutive hypotheses share."""
    n = 0
    for a, b in zip(previous, current, strict=False):
        if a != b:
            break
        n += 1
    return n


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Utterance:
    id: int
    start: int                          # first buffered sample (stream index); moves forward on trims
    last_speech_end: int
    speech_samples: int = 0
    end: int | None = None              # set when the VAD closed it
    committed: list[Word] = field(default_factory=list)  # its committed words still inside the buffer
    previous_tail: list[str] | None = None               # last partial's uncommitted keys (for agreement)
    older_tail: list[str] | None = None                  # the one before it, when nothing committed since
    last_words: list[Word] = field(default_factory=list)  # last hypothesis, for trimming
    no_prompt: bool = False             # a repetition loop was seen: decode without prompt from now on
    trimmed: bool = False               # its buffer was cut (it has committed words before utt.start)
    speculated: int = -1                # last_speech_end for which an early final pass was asked
    fallback: bool = False              # its final pass is decoded again with temperature fallback


class StreamingPolicy:
    """Decides which passes to run over a live stream and what becomes partial or final text."""

    def __init__(self, config: StreamingConfig | None = None, vad: VoiceActivityDetector | None = None) -> None:
        self.config = config or StreamingConfig()
        self._vad = vad if vad is not None else SileroVoiceActivityDetector()
        self._vad.reset()
        self.language: str | None = self.config.language
        self._frame = self._vad.frame_samples
        self._neg_threshold = max(self.config.vad_threshold - 0.15, 0.01)
        self._sr = self.config.sample_rate

        self._audio = np.zeros(0, dtype=np.float32)
        self._buf_start = 0                # stream index of self._audio[0]
        self._total = 0                    # samples pushed
        self._probs = np.zeros(0, dtype=np.float32)  # VAD probability per frame since self._probs_start
        self._probs_start = 0              # frame index of self._probs[0]
        self._frames = 0
        self._in_speech = False
        self._floor = 0                    # no new utterance may start before this sample (previous one's end)
        self._anchors: deque[int] = deque()  # starts of closed utterances: where a pass's context may begin

        self._current: _Utterance | None = None
        self._pending: deque[_Utterance] = deque()   # closed utterances waiting for their final pass
        self._next_id = 0
        self._ended = False

        self._committed: list[Word] = []
        self._partial = ""
        self._last_pass_end = 0.0          # stream time up to which the last applied pass heard the audio
        self._pass_ema: float | None = None
        self._passes = 0
        self.dropped: Counter[str] = Counter()  # what the guards kept from partial and committed text, by guard

    # -- feeding -----------------------------------------------------------------------------------------------

    def push_audio(self, samples: np.ndarray) -> None:
        if self._ended:
            raise InvalidInput("the stream has finished; start a new one")
        samples = np.asarray(samples, dtype=np.float32).ravel()
        if samples.size == 0:
            return
        self._audio = np.concatenate([self._audio, samples])
        self._total += samples.size
        probs = self._vad.push(samples)
        self._probs = np.concatenate([self._probs, probs])
        for p in probs:
            self._on_frame(float(p))
        self._drop_unneeded_audio()

    def _on_frame(self, prob: float) -> None:
        cfg = self.config
        frame_start = self._frames * self._frame
        frame_end = frame_start + self._frame
        self._frames += 1
        speech = prob >= cfg.vad_threshold or (self._in_speech and prob >= self._neg_threshold)
        self._in_speech = speech
        cur = self._current
        if speech:
            if cur is None:
                start = max(frame_start - int(cfg.pre_roll_s * self._sr), self._floor, self._buf_start)
                cur = self._current = _Utterance(id=self._next_id, start=start, last_speech_end=frame_end)
                self._next_id += 1
            cur.speech_samples += self._frame
            cur.last_speech_end = frame_end
        elif cur is not None and frame_end - cur.last_speech_end >= self._silence_to_close(cur) * self._sr:
            self._close_current(frame_end)

    def _silence_to_close(self, utt: _Utterance) -> float:
        """Silence that ends ``utt``: longer while its final pass would hear too little audio to decode well."""
        cfg = self.config
        if cfg.min_final_window_s <= 0 or utt.committed or utt.trimmed:
            return cfg.finalize_silence_s
        end = min(utt.last_speech_end + int(cfg.speech_pad_s * self._sr), self._total)
        window = (end - self._window_start(utt, end)) / self._sr
        return cfg.finalize_silence_s if window >= cfg.min_final_window_s else cfg.hold_silence_s

    def _close_current(self, now_sample: int) -> None:
        cur = self._current
        assert cur is not None
        self._current = None
        end = min(cur.last_speech_end + int(self.config.speech_pad_s * self._sr), now_sample)
        self._floor = end
        if cur.speech_samples < self.config.min_speech_s * self._sr and not cur.committed:
            log.debug("utterance %d dropped: %.2f s of speech", cur.id, cur.speech_samples / self._sr)
            return
        cur.end = end
        self._pending.append(cur)
        self._anchors.append(cur.start)

    def _drop_unneeded_audio(self) -> None:
        """Keep audio from the oldest open utterance on (or a short pre-roll while nobody speaks), and the context
        its passes may hear: back to the earliest utterance start or committed word within ``context_s``."""
        oldest = self._pending[0] if self._pending else self._current
        if oldest is not None:
            keep_from = oldest.start
        else:
            keep_from = max(self._floor, self._total - int(self.config.pre_roll_s * self._sr) - self._frame)
        context_from = keep_from - int(self.config.context_s * self._sr)
        # Later utterances start later still: an anchor too old for the oldest one is too old for good.
        while self._anchors and self._anchors[0] < max(context_from, self._buf_start):
            self._anchors.popleft()
        if self._anchors:
            keep_from = min(keep_from, self._anchors[0])
        if oldest is None or not oldest.trimmed:
            first = next((w for w in self._committed[self._split_committed(context_from / self._sr):]
                          if w.start * self._sr >= context_from), None)
            if first is not None:  # a committed word boundary may begin the next pass (_committed_boundary)
                keep_from = min(keep_from, max(context_from, int((first.start - 1.0) * self._sr)))
        keep_from = max(keep_from, self._buf_start)
        if keep_from > self._buf_start:
            self._audio = self._audio[keep_from - self._buf_start:]
            self._buf_start = keep_from
        first_frame = keep_from // self._frame
        if first_frame > self._probs_start:
            self._probs = self._probs[first_frame - self._probs_start:]
            self._probs_start = first_frame

    # -- scheduling --------------------------------------------------------------------------------------------

    @property
    def step_seconds(self) -> float:
        """New audio needed between partial passes: grows when passes are slower than real time."""
        if self._pass_ema is None:
            return self.config.min_step_s
        return max(self.config.min_step_s, self._pass_ema)

    @property
    def _saturated(self) -> bool:
        """Passes take longer than the shortest step (queue wait included): compute is the bottleneck."""
        return self._pass_ema is not None and self._pass_ema > self.config.min_step_s

    def next_pass(self) -> PassRequest | None:
        """The pass worth running now, or None (silence, too little new audio, or nothing pending)."""
        if self._pending:
            return self._request(self._pending[0], final=True)
        cur = self._current
        if cur is None or self._ended:
            return None
        cfg = self.config
        length = (self._total - cur.start) / self._sr
        if length < cfg.min_partial_s or cur.speech_samples < cfg.min_speech_s * self._sr:
            return None
        if (self._total - cur.last_speech_end) / self._sr >= cfg.quiet_tail_s:
            # The speaker paused: run the final pass now, in the pause. If the VAD has closed the utterance by
            # the time it is applied (the usual case: a pass outlasts the rest of the silence), its words are
            # committed at once instead of after one more pass.
            if cur.speculated == cur.last_speech_end or self._saturated:
                # Saturated (several streams on one CPU): a pass overtaken by more speech is a pass another stream
                # waited for, so wait for the VAD to close the utterance instead.
                return None
            cur.speculated = cur.last_speech_end
            return self._request(cur, final=True)
        if self._total / self._sr - self._last_pass_end < self.step_seconds:
            return None
        return self._request(cur, final=False, trim=length >= cfg.max_utterance_s)

    def finish(self) -> PassRequest | None:
        """At stop: the next final pass over what is left; call again after applying it, until None."""
        if not self._ended:
            self._ended = True
            if self._current is not None:
                self._close_current(self._total)
        return self._request(self._pending[0], final=True) if self._pending else None

    def _request(self, utt: _Utterance, *, final: bool, trim: bool = False) -> PassRequest:
        if utt.end is not None:
            end = utt.end
        elif final:
            end = min(utt.last_speech_end + int(self.config.speech_pad_s * self._sr), self._total)
        else:
            end = self._total
        start = self._window_start(utt, end)
        audio = self._audio[start - self._buf_start:end - self._buf_start].copy()
        offset = start / self._sr
        return PassRequest(audio=audio, offset=offset, prompt=self._prompt(utt, offset), final=final,
                           utterance_id=utt.id, trim=trim, fallback=final and utt.fallback)

    def _window_start(self, utt: _Utterance, end: int) -> int:
        """First sample of a pass over ``utt`` ending at ``end``, keeping the window under 30 s: the start of the
        earliest earlier utterance within ``context_s`` (the context then begins in a pause), or else a committed
        word boundary within it (a sentence start where there is one), so that an utterance after a long one still
        has its context."""
        limit = max(utt.start - int(self.config.context_s * self._sr), end - int(_MAX_WINDOW_S * self._sr),
                    self._buf_start)
        for anchor in self._anchors:
            if anchor >= utt.start:
                break
            if anchor >= limit:
                return anchor
        if utt.trimmed:  # its passes already hear half a buffer of its own committed words
            return utt.start
        return self._committed_boundary(limit, utt.start) or utt.start

    def _committed_boundary(self, limit: int, before: int) -> int | None:
        """The earliest gap between committed words inside [limit, before), at a sentence start if one is there:
        at the frame the VAD found least speech-like."""
        lo, hi = limit / self._sr, before / self._sr
        i = self._split_committed(lo + _HEARD_AGAIN_S)
        words = self._committed
        candidates = [k for k in range(max(i, 1), len(words)) if words[k].start >= lo and words[k].end <= hi]
        if not candidates:
            return None
        sentences = [k for k in candidates if ends_sentence(words[k - 1])]
        k = (sentences or candidates)[0]
        cut = int(self._quietest(words[k - 1].end, words[k].start) * self._sr)
        return cut if limit <= cut < before else None

    def _split_committed(self, offset: float) -> int:
        """Index of the first committed word a pass starting at ``offset`` (stream seconds) can hear again."""
        i = len(self._committed)
        while i and self._committed[i - 1].end > offset - _HEARD_AGAIN_S:
            i -= 1
        return i

    def _prompt(self, utt: _Utterance, offset: float) -> str | None:
        if self.config.prompt_chars <= 0 or utt.no_prompt:
            return None
        before = self._committed[:self._split_committed(offset)]
        text = join_words(before)
        if len(text) > self.config.prompt_chars:
            text = text[-self.config.prompt_chars:]
            text = text.split(" ", 1)[1] if " " in text else text  # start on a word boundary
        return text or None

    def options_for(self, request: PassRequest) -> TranscribeOptions:
        cfg = self.config
        beam = cfg.final_beam_size if (request.final or request.trim) else cfg.partial_beam_size
        # No fallback by default: retries made some passes take seconds; a pass whose segment fails Whisper's
        # checks is decoded once more with it (``fallback``).
        temperature = None if request.fallback else 0.0
        return TranscribeOptions(language=self.language, task=cfg.task, beam_size=beam, temperature=temperature,
                                 initial_prompt=request.prompt, word_timestamps=True, vad_filter=False,
                                 condition_on_previous_text=False, fit_window=cfg.fit_window)

    # -- applying hypotheses -----------------------------------------------------------------------------------

    def apply(self, request: PassRequest, result: PassResult, elapsed: float) -> list[StreamEvent]:
        """Take a pass's hypothesis; return the events it causes (commits first, then the new partial)."""
        self._passes += 1
        self._pass_ema = elapsed if self._pass_ema is None else 0.7 * self._pass_ema + 0.3 * elapsed
        self._last_pass_end = max(self._last_pass_end, request.end)
        if self.language is None and result.language and request.final:
            self.language = result.language
            log.info("live stream language detected: %s (p=%.2f)", result.language, result.language_probability)

        utt = self._find(request.utterance_id)
        if utt is None:
            log.warning("pass for unknown utterance %d ignored", request.utterance_id)
            return []
        heard = self._heard(request, result)
        words = heard.words
        closed = bool(self._pending) and utt is self._pending[0]
        if heard.undecided is not None and request.final and closed and not request.fallback:
            # A segment that holds speech failed Whisper's own checks: decode the utterance again with Whisper's
            # temperature fallback before anything of it is committed (what offline transcription does). The
            # partial on screen stays as it is meanwhile.
            utt.fallback = True
            return []
        loop_at = find_repetition_loop([word_key(w.word) for w in words])
        if loop_at is not None:
            self._loop_dropped(utt, words[loop_at:])
            words = words[:loop_at]
        tail, tail_keys, looped = self._new_words(utt, request, words)
        looped = looped or loop_at is not None
        utt.last_words = tail
        # Only words before a failed segment that held speech may commit early: that audio is decoded again.
        commit_before = heard.undecided if heard.undecided is not None else math.inf

        events: list[StreamEvent] = []
        if request.final and closed and round(request.end * self._sr) >= (utt.end or 0):
            events += self._commit(utt, tail)
            self._pending.popleft()
            self._drop_unneeded_audio()
            events += self._set_partial([])
            return events

        if request.final:
            # An early final pass overtaken by new speech: it only refreshes the partial.
            return events + self._set_partial(tail)
        if not looped:  # no agreement with a looping pass
            n = self._agreed(utt, request, tail, tail_keys)
            if request.trim:
                n = max(n, self._trim_point(request, tail))
            while n and tail[n - 1].end > commit_before:
                n -= 1
            if n:
                events += self._commit(utt, tail[:n])
                tail, tail_keys = tail[n:], tail_keys[n:]
            utt.older_tail = None if n else utt.previous_tail
            utt.previous_tail = tail_keys
        if request.trim:
            self._cut_buffer(utt, request, tail)
        else:
            self._slide(utt, tail[0].start if tail else request.end)
        events += self._set_partial(tail)
        return events

    def _find(self, utterance_id: int) -> _Utterance | None:
        if self._pending and self._pending[0].id == utterance_id:
            return self._pending[0]
        if self._current is not None and self._current.id == utterance_id:
            return self._current
        return None

    def _new_words(self, utt: _Utterance, request: PassRequest,
                   words: list[Word]) -> tuple[list[Word], list[str], bool]:
        """The words of a pass after the committed text it says again (matched by text, by time, and as an echo),
        and whether they went on to loop over the committed text."""
        keys = [word_key(w.word) for w in words]
        # Committed words the pass heard again (context, or this utterance's earlier commits) are matched by text;
        # anything left that ends before the utterance's own audio is context the matcher missed (or a
        # hallucination in the pause before it), never new speech.
        known = [word_key(w.word) for w in self._committed[self._split_committed(request.offset):]]
        skip = committed_prefix_length(known, keys)
        own_start = utt.start / self._sr
        while skip < len(words) and words[skip].end <= own_start:
            skip += 1
        # A word centred well inside audio that is already committed re-says it in other words ("and we wanna read"
        # over a committed "Everyone agreed to meet"), which the text match cannot see: never new speech either.
        # (The slack keeps a short new word whose times jittered back over the last committed one.) Where the text
        # match reached the last committed word, what follows is new whatever its times say: a committed word's end
        # can lie well into the next one ("about the" ending at 25.44 s over "marketing" at 25.16-25.42 s).
        text_aligned = skip > 0 and bool(known) and keys[skip - 1] == known[-1]
        committed_end = self._committed[-1].end if self._committed else 0.0
        while (not text_aligned and skip < len(words)
               and (words[skip].start + words[skip].end) / 2 < committed_end - _GAP_SLACK_S):
            skip += 1
        tail, tail_keys = words[skip:], keys[skip:]
        # The last committed words said again, by a pass that does not hear them (Whisper repeating its prompt),
        # and a loop that goes on from the committed text.
        history = [word_key(w.word) for w in self._committed[-_HISTORY_WORDS:]]
        echo = committed_echo(history, tail_keys)
        if echo:
            self.dropped["echoes"] += 1
            log.info("utterance %d: dropped %r, the committed text said again", utt.id, join_words(tail[:echo]))
            tail, tail_keys = tail[echo:], tail_keys[echo:]
        loop_at = find_repetition_loop([*history, *tail_keys], new_from=len(history))
        again = repeated_phrase([*history, *tail_keys], new_from=len(history))
        if again is not None and (loop_at is None or again < loop_at):
            loop_at = again
        if loop_at is not None:
            cut = loop_at - len(history)
            self._loop_dropped(utt, tail[cut:])
            tail, tail_keys = tail[:cut], tail_keys[:cut]
        return tail, tail_keys, loop_at is not None

    def _loop_dropped(self, utt: _Utterance, words: Sequence[Word]) -> None:
        log.warning("repetition loop in utterance %d dropped: %r", utt.id, join_words(words)[:80])
        self.dropped["loops"] += 1
        utt.no_prompt = True       # the prompt is what a model that loops keeps repeating
        utt.previous_tail = None   # the next pass cannot agree with this one
        utt.older_tail = None

    def _heard(self, request: PassRequest, result: PassResult) -> _Heard:
        """A pass's words that pass the guards (guards.py): Whisper's signals per segment, the speaking rate, the
        phrase list, and the VAD: only words that overlap speech."""
        speech = self._speech_map()
        words: list[Word] = []
        undecided: float | None = None
        for seg in result.segments:
            held = speech.speech_seconds(seg.start, seg.end) or 0.0
            reason = signals_fail(seg)
            repeats = reason == "compression" or window_repeats(seg)
            if reason in _UNDECIDED and request.fallback and held >= _FALLBACK_MIN_SPEECH_S:
                # Decoded again with fallback and still unsure, or still repetitive, over real speech: kept, as
                # offline transcription keeps its best attempt. Its words still have to lie in speech, and the loop
                # guards cut what repeats ("words, words, words, words" is real speech; its ratio is 2.9).
                reason = None
            elif reason == "compression" and held >= _FALLBACK_MIN_SPEECH_S:
                reason = None  # shown meanwhile (loops cut), committed only after the decode with fallback
            if reason is None and remainder_tail(seg, request.offset, request.end):
                reason = "tail"
            if reason is None and is_hallucination(seg, speech.speech_ratio(seg.start, seg.end)):
                reason = "phrases"
            if reason is not None:
                self.dropped[reason] += 1
                log.info("dropped segment %r (%s: no_speech=%.2f, logprob=%.2f, compression=%.2f, %.2f s of speech)",
                         seg.text[:80], reason, seg.no_speech_prob, seg.avg_logprob, seg.compression_ratio, held)
                if reason in _UNDECIDED and held >= _FALLBACK_MIN_SPEECH_S and undecided is None:
                    undecided = seg.start
                continue
            if repeats and not request.fallback and undecided is None:
                # This segment or something in its decoding window repeats (the loop guards may not see it):
                # decode it again with fallback before committing from here on, but show its words meanwhile.
                undecided = seg.start
            seg_words = [w for w in (seg.words or (Word(seg.start, seg.end, seg.text, 0.0),)) if word_key(w.word)]
            kept = [w for w in seg_words if in_speech(w, speech, slack=_SPEECH_SLACK_S)]
            if len(kept) < len(seg_words):
                self.dropped["outside_speech"] += len(seg_words) - len(kept)
                log.info("dropped %r: outside speech", join_words([w for w in seg_words if w not in kept])[:80])
            words += kept
        return _Heard(words, undecided)

    def _speech_map(self) -> SpeechMap:
        return SpeechMap(self._probs, self._probs_start * self._frame / self._sr, self._frame / self._sr,
                         self._neg_threshold)

    def _agreed(self, utt: _Utterance, request: PassRequest, tail: list[Word], tail_keys: list[str]) -> int:
        cfg = self.config
        if utt.previous_tail is None or request.audio.size / self._sr < cfg.agreement_after_s:
            return 0
        n = agreed_prefix_length(utt.previous_tail, tail_keys)
        limit = request.end - cfg.agreement_margin_s
        while n and tail[n - 1].end > limit:
            n -= 1
        # A sentence's first words are where tiny.en mis-hears most ("and we" for "Everyone", agreed on by two
        # passes): those of every sentence that starts in the agreed words, also inside them ("delays. and re
        # wanna read" for "delays. Everyone agreed"), commit early only when the model is sure of them, else with
        # the final pass.
        # Three passes in a row agreeing on them are enough, though: a name ("Sarah opened by") is never sure.
        three = agreed_prefix_length(utt.older_tail, tail_keys[:n]) if utt.older_tail is not None else 0
        since_start = 0 if self._starts_sentence(utt) else _SENTENCE_START_WORDS
        for i in range(n):
            if i > 0 and ends_sentence(tail[i - 1]):
                since_start = 0
            unsure = tail[i].probability < cfg.agreement_min_probability
            if since_start < _SENTENCE_START_WORDS and unsure and i >= three:
                return i
            since_start += 1
        return n

    def _starts_sentence(self, utt: _Utterance) -> bool:
        """Whether the next committed word of ``utt`` begins a sentence: the utterance's first, or after a ".?!"."""
        if not utt.committed and not utt.trimmed:
            return True
        return not self._committed or ends_sentence(self._committed[-1])

    def _trim_point(self, request: PassRequest, tail: list[Word]) -> int:
        """Words to commit on a trim pass: through the last sentence end well before the buffer end, or else
        every word well before it. Only this one pass has heard them, so "well before" is ``_TRIM_MARGIN_S``: the
        last words before a cut are the ones Whisper gets wrong ("and re wanna read" for "Everyone agreed")."""
        limit = request.end - max(self.config.agreement_margin_s, _TRIM_MARGIN_S)
        before = 0
        sentence = 0
        for i, w in enumerate(tail):
            if w.end > limit:
                break
            before = i + 1
            if ends_sentence(w):
                sentence = i + 1
        return sentence or before

    def _cut_buffer(self, utt: _Utterance, request: PassRequest, tail: list[Word]) -> None:
        """Move the utterance start past its committed words, so every pass stays bounded."""
        if utt.committed:
            cut = self._cut_point(utt.committed, tail, request.end)
        elif not tail or request.audio.size / self._sr >= 28.0:
            # The VAD hears speech the model does not transcribe (or only loops): keep the last few seconds.
            cut = request.end - self.config.max_utterance_s / 3
        else:
            return
        cut_sample = max(utt.start, min(int(cut * self._sr), self._total))
        log.debug("utterance %d trimmed at %.2f s", utt.id, cut_sample / self._sr)
        utt.start = cut_sample
        utt.trimmed = True
        utt.committed = []
        utt.previous_tail = utt.older_tail = None
        self._drop_unneeded_audio()

    def _slide(self, utt: _Utterance, first_new: float) -> None:
        """Move the start of a long utterance's buffer up behind its committed words, keeping ``slide_context_s``
        of them before the first word not yet committed (at a sentence start where one is in reach): its next
        passes decode that context and the new words, not the whole utterance again, so they cost what a short
        utterance's do. The prompt still holds the committed text before the cut."""
        keep = self.config.slide_context_s
        committed = utt.committed
        if keep <= 0 or len(committed) < 2 or first_new - utt.start / self._sr <= keep + _SLIDE_SLACK_S:
            return
        boundaries = [i for i in range(1, len(committed)) if first_new - committed[i].start <= keep]
        if not boundaries:
            return
        sentences = [i for i in boundaries if ends_sentence(committed[i - 1])
                     and first_new - committed[i].start >= keep / 2]
        i = (sentences or boundaries)[0]
        cut = max(utt.start, min(int(self._quietest(committed[i - 1].end, committed[i].start) * self._sr),
                                 self._total))
        log.debug("utterance %d slid to %.2f s", utt.id, cut / self._sr)
        utt.start = cut
        utt.trimmed = True
        utt.committed = committed[i:]
        self._drop_unneeded_audio()

    def _cut_point(self, committed: list[Word], tail: list[Word], end: float) -> float:
        """Where to cut a buffer whose leading ``committed`` words are final.

        The cut keeps up to half of ``max_utterance_s`` (to ``end``), committed words included: the passes after
        it still hear the speech before their new words (a buffer starting at a sentence's last words makes the
        model guess them). Within that, at the earliest committed sentence end (a pass starting at a sentence
        start decodes like an utterance start; one starting mid-word makes words up), else at the earliest word
        boundary; and within the gap between two words, at the frame the VAD found least speech-like.
        """
        following = [*committed[1:], *tail[:1]]
        keep = self.config.max_utterance_s / 2
        boundaries = [i for i in range(len(following)) if end - following[i].start <= keep]
        if not boundaries:  # the words not yet committed alone are longer than that: cut after the committed ones
            return self._quietest(committed[-1].end, tail[0].start) if tail else committed[-1].end
        sentences = [i for i in boundaries if ends_sentence(committed[i])]
        i = (sentences or boundaries)[0]
        return self._quietest(committed[i].end, following[i].start)

    def _quietest(self, a: float, b: float) -> float:
        """The least speech-like frame around the gap between two words ending at ``a`` and starting at ``b``."""
        lo, hi = min(a, b) - _GAP_SLACK_S, max(a, b) + _GAP_SLACK_S
        first = max(int(lo * self._sr) // self._frame - self._probs_start, 0)
        last = min(int(hi * self._sr) // self._frame - self._probs_start + 1, self._probs.size)
        if last <= first:
            return (a + b) / 2
        quietest = first + int(np.argmin(self._probs[first:last]))
        return (self._probs_start + quietest) * self._frame / self._sr

    def _commit(self, utt: _Utterance, words: Sequence[Word]) -> list[StreamEvent]:
        if not words:
            return []
        words = list(words)
        if self._committed and not words[0].word.startswith(" "):
            first = words[0]
            words[0] = Word(first.start, first.end, " " + first.word, first.probability)
        self._committed += words
        utt.committed += words
        return [StreamEvent("final", join_words(words), words[0].start, words[-1].end, tuple(words))]

    def _set_partial(self, tail: Sequence[Word]) -> list[StreamEvent]:
        text = join_words(tail)
        if text == self._partial:
            return []
        self._partial = text
        if not tail:
            return [StreamEvent("partial", "", self._last_pass_end, self._last_pass_end)]
        return [StreamEvent("partial", text, tail[0].start, tail[-1].end, tuple(tail))]

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def committed_text(self) -> str:
        return join_words(self._committed)

    @property
    def committed_words(self) -> tuple[Word, ...]:
        return tuple(self._committed)

    @property
    def audio_seconds(self) -> float:
        return self._total / self._sr

    @property
    def buffered_seconds(self) -> float:
        return self._audio.size / self._sr

    @property
    def lag_seconds(self) -> float:
        """How far the transcript is behind the audio: 0 when nothing is waiting to be decoded."""
        oldest = self._pending[0] if self._pending else self._current
        if oldest is None:
            return 0.0
        heard = max(self._last_pass_end, oldest.start / self._sr)
        needed = self._total
        if not self._pending and self._current is not None:
            # The silence an utterance is held open over needs no pass.
            needed = min(needed, self._current.last_speech_end + int(self.config.speech_pad_s * self._sr))
        return max(0.0, needed / self._sr - heard)

    @property
    def passes(self) -> int:
        return self._passes


# ---------------------------------------------------------------------------------------------------------------
# Running passes, and the simulation harness.


def run_pass(engine: Engine, request: PassRequest, options: TranscribeOptions) -> PassResult:
    """Decode one pass; segment and word times come back in stream time (``request.offset`` added)."""
    started = time.perf_counter()
    segments, info = engine.transcribe(request.audio, options)
    shifted = []
    for seg in segments:
        words = tuple(Word(w.start + request.offset, w.end + request.offset, w.word, w.probability)
                      for w in seg.words)
        shifted.append(replace(seg, start=seg.start + request.offset, end=seg.end + request.offset, words=words,
                               window_start=seg.window_start + request.offset))
    return PassResult(segments=tuple(shifted), language=info.language,
                      language_probability=info.language_probability, elapsed=time.perf_counter() - started)


@dataclass(frozen=True)
class TimedEvent:
    at: float                 # wall seconds since the stream started
    event: StreamEvent
    heard_until: float        # stream time up to which the pass that caused it had audio


@dataclass(frozen=True)
class SimulationResult:
    events: tuple[TimedEvent, ...]
    text: str                                  # the committed transcript
    duration: float                            # seconds of audio streamed
    wall_seconds: float
    compute_seconds: float                     # time spent in passes
    passes: int
    commit_latencies: tuple[float, ...]        # per committed word: commit time - time its end was fed
    partial_latencies: tuple[float, ...]       # per partial: shown time - time its newest audio was fed
    first_partial_latency: float | None        # first partial shown - time its first word's start was fed
    max_lag: float
    language: str | None = None
    guards: tuple[tuple[str, int], ...] = ()   # what the policy's guards dropped, by guard (``dropped``)

    @property
    def real_time_factor(self) -> float:
        return self.compute_seconds / self.duration if self.duration else 0.0

    def summary(self) -> dict[str, float | None]:
        def pct(values: tuple[float, ...], q: float) -> float | None:
            return round(float(np.percentile(values, q)), 3) if values else None

        return {"duration_s": round(self.duration, 2), "passes": self.passes,
                "rtf": round(self.real_time_factor, 3), "max_lag_s": round(self.max_lag, 2),
                "commit_latency_p50_s": pct(self.commit_latencies, 50),
                "commit_latency_p95_s": pct(self.commit_latencies, 95),
                "partial_latency_p50_s": pct(self.partial_latencies, 50),
                "partial_latency_p95_s": pct(self.partial_latencies, 95),
                "first_partial_s": None if self.first_partial_latency is None else round(self.first_partial_latency, 3)}


PassObserver = Callable[[PassRequest, PassResult, list[StreamEvent]], None]
PassClock = Callable[[PassRequest, TranscribeOptions, PassResult], float]


def modelled_pass_seconds(request: PassRequest, options: TranscribeOptions, result: PassResult) -> float:
    """What a pass costs on the reference machine (tiny.en int8, one thread of this project's 2-core box; fitted
    to measurements there, within about 20 %): a fixed part, the encoder over the fitted window (at least 10 s,
    growing faster than linearly), and the decoder and word alignment per word. For ``simulate(pass_clock=...)``:
    the same schedule whatever else the machine runs, so policy changes can be compared on a shared CPU."""
    window = max(10.0, float(np.ceil(request.audio.size / SAMPLE_RATE + 1.0))) if options.fit_window else 30.0
    words = sum(len(s.words) or len(s.text.split()) for s in result.segments)
    per_word = 0.02 if options.beam_size <= 1 else 0.025
    seconds = 0.15 + 0.013 * window * (1 + window / 30) + per_word * words
    return seconds * (2.0 if options.temperature is None else 1.0)  # a fallback decodes at least twice


def simulate(engine: Engine, audio: np.ndarray, *, chunk_s: float = 0.25, realtime: bool = True,
             config: StreamingConfig | None = None, vad: VoiceActivityDetector | None = None,
             on_pass: PassObserver | None = None, pass_clock: PassClock | None = None) -> SimulationResult:
    """Stream ``audio`` (16 kHz mono float32) through a fresh policy and ``engine`` as a live client would.

    Chunks become available at real-time pace; a pass blocks the loop, and the audio that arrived meanwhile is
    pushed after it, as in a live session. ``realtime=False`` keeps the same schedule on a virtual clock (idle
    waits skipped, pass times still counted), so results match a real-time run but finish sooner; with
    ``pass_clock`` (``modelled_pass_seconds``) a pass counts what that says instead of what it took. ``on_pass``
    sees every pass with its result and the events it caused (the evaluation records them).
    """
    if pass_clock is not None and realtime:
        raise InvalidInput("a modelled pass clock needs realtime=False")
    audio = np.asarray(audio, dtype=np.float32).ravel()
    policy = StreamingPolicy(config, vad)
    chunk = max(1, int(round(chunk_s * SAMPLE_RATE)))
    n = audio.size
    duration = n / SAMPLE_RATE
    origin = time.perf_counter()
    virtual = 0.0

    def clock() -> float:
        return time.perf_counter() - origin if realtime else virtual

    def arrival(t: float) -> float:
        """Wall time at which the audio up to stream time ``t`` had been fed."""
        t = min(max(t, 0.0), duration)
        return min(math.ceil(t * SAMPLE_RATE / chunk - 1e-9) * chunk, n) / SAMPLE_RATE

    events: list[TimedEvent] = []
    compute = 0.0
    max_lag = 0.0

    def run(request: PassRequest) -> None:
        nonlocal compute, virtual, max_lag
        nonlocal fed
        options = policy.options_for(request)
        result = run_pass(engine, request, options)
        compute += result.elapsed
        took = result.elapsed if pass_clock is None else pass_clock(request, options, result)
        virtual += took
        # A live session keeps receiving audio while a pass runs: push it before the pass is applied.
        if not finishing:
            fed = feed(fed)
        at = clock()
        caused = policy.apply(request, result, took)
        if on_pass is not None:
            on_pass(request, result, caused)
        events.extend(TimedEvent(at, e, request.end) for e in caused)
        max_lag = max(max_lag, policy.lag_seconds)

    def feed(done: int) -> int:
        nonlocal max_lag
        available = min(n, int(clock() * SAMPLE_RATE) // chunk * chunk)
        if available > done:
            policy.push_audio(audio[done:available])
            max_lag = max(max_lag, policy.lag_seconds)
        return max(done, available)

    fed = 0
    finishing = False
    while fed < n:
        fed = feed(fed)
        request = policy.next_pass()
        if request is not None:
            run(request)
            continue
        if fed >= n:
            break
        next_chunk = (fed // chunk + 1) * chunk / SAMPLE_RATE
        if realtime:
            time.sleep(max(0.0, next_chunk - clock()))
        else:
            virtual = max(virtual, next_chunk)
    finishing = True
    while (request := policy.finish()) is not None:
        run(request)

    commit_latencies = tuple(te.at - arrival(w.end) for te in events if te.event.kind == "final"
                             for w in te.event.words)
    partials = [te for te in events if te.event.kind == "partial" and te.event.text]
    partial_latencies = tuple(te.at - arrival(te.heard_until) for te in partials)
    first_partial = (partials[0].at - arrival(partials[0].event.start)) if partials else None
    return SimulationResult(events=tuple(events), text=policy.committed_text, duration=duration,
                            wall_seconds=clock(), compute_seconds=compute, passes=policy.passes,
                            commit_latencies=commit_latencies, partial_latencies=partial_latencies,
                            first_partial_latency=first_partial, max_lag=max_lag, language=policy.language,
                            guards=tuple(sorted(policy.dropped.items())))
