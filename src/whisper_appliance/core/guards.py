"""Defences against text Whisper says without speech: what keeps hallucinations out of live dictation.

Committed live text is never retracted, so everything here errs towards dropping words. Each defence is a pure
function over a pass's segments and words, independent of any phrase Whisper happens to say:

* ``SpeechMap`` / ``in_speech``: a word counts only if its time span (widened by a little slack for Whisper's
  timing jitter) overlaps audio the VAD judged speech. Words Whisper places in a pause or after the last speech
  frame are dropped, whatever they say.
* ``signals_fail``: Whisper's own signals for one segment: the gzip compression ratio of its text (openai-whisper
  falls back above 2.4), its average log probability (below -1.0) and no-speech probability (above 0.6 with a low
  log probability: silence), plus a speaking rate no person reaches (words crammed into a fraction of a second,
  which is how a tail decoded from a few hundred milliseconds of silence looks).
* ``remainder_tail``: a segment from the short window Whisper decodes after its first one, over what the first
  decode left of the audio (see below).
* ``find_repetition_loop``: an n-gram of any length repeated back to back, within a pass and across its
  segments; ``repeated_phrase``: six words said again after other words; ``committed_echo``: a pass that starts
  by saying the most recently committed words again.
* ``is_hallucination``: the classic non-speech phrases, matched only when another sign says low speech; a last
  resort behind the general defences above.

faster-whisper decodes a window, then decodes what its last segment left of the audio as a window of its own:
after the last word of a final pass that is often 0.1-0.5 s of near-silence, and Whisper fills it with "Thank you
for watching, I'll see you in the next video" at a log probability of -1.2 or a compression ratio of 11, or with a
single "helps." that no other signal flags. ``remainder_tail`` drops those; most also fail ``signals_fail`` and lie
outside speech.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .records import Segment, Word

# Whisper's own thresholds (openai-whisper's transcribe() defaults, also faster-whisper's).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# No speaker says more than about 6 words a second; a segment claiming this many, over at least this many words,
# was not heard but made up (its words share one timestamp at the end of the window).
MAX_WORDS_PER_SECOND = 10.0
MIN_WORDS_FOR_RATE = 4
REMAINDER_MAX_S = 1.0  # a later decoding window shorter than this is the tail of a pass: see ``remainder_tail``
FUZZY_LOOP_MIN = 6     # phrases this long said again with one word in six changed are loops too
REPEAT_MIN_WORDS = 6   # ... and said again after other words (``repeated_phrase``)


@dataclass(frozen=True)
class SpeechMap:
    """The VAD's verdict on a stretch of the stream: one speech probability per frame from ``start`` on."""

    probs: np.ndarray
    start: float                # stream time of probs[0], seconds
    frame_s: float
    threshold: float            # a frame at or above this probability is speech

    def speech_seconds(self, start: float, end: float) -> float | None:
        """Seconds of speech frames inside [start, end]; None when the span lies outside what the map covers."""
        first = int(np.floor((start - self.start) / self.frame_s))
        last = int(np.ceil((end - self.start) / self.frame_s))
        if last <= 0 or first >= self.probs.size:
            return None
        frames = self.probs[max(first, 0):max(min(last, self.probs.size), max(first, 0) + 1)]
        return float(np.count_nonzero(frames >= self.threshold)) * self.frame_s

    def speech_ratio(self, start: float, end: float) -> float:
        """Share of [start, end] that is speech (1.0 where the map has no evidence: the model's scores decide)."""
        seconds = self.speech_seconds(start, end)
        if seconds is None:
            return 1.0
        return min(1.0, seconds / max(end - start, self.frame_s))

    def last_speech_end(self) -> float | None:
        frames = np.flatnonzero(self.probs >= self.threshold)
        return None if frames.size == 0 else self.start + (int(frames[-1]) + 1) * self.frame_s


def in_speech(word: Word, speech: SpeechMap, *, slack: float) -> bool:
    """Whether ``word`` (widened by ``slack`` on both sides) overlaps at least one speech frame.

    Words outside the map (context audio already dropped from the buffer) keep the benefit of the doubt.
    """
    seconds = speech.speech_seconds(word.start - slack, word.end + slack)
    return seconds is None or seconds > 0


def speech_words(words: Sequence[Word], speech: SpeechMap, *, slack: float) -> list[Word]:
    return [w for w in words if in_speech(w, speech, slack=slack)]


# ---------------------------------------------------------------------------------------------------------------
# Whisper's signals, per segment


def compression_ratio(text: str) -> float:
    """gzip compression ratio of a text, as openai-whisper computes it (repetitive text compresses well)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def words_per_second(segment: Segment) -> float:
    words = segment.words or ()
    if len(words) < MIN_WORDS_FOR_RATE:
        return 0.0
    span = max(words[-1].end - words[0].start, segment.end - segment.start, 0.05)
    return len(words) / span


def signals_fail(segment: Segment) -> str | None:
    """Why Whisper's own signals say this segment was not heard, or None when they do not.

    The compression ratio is the segment text's own. The engine's is its whole window's, shared by every segment
    of it: real speech that says "words, words, words" next to one looping segment lifts it for all of them, so it
    is a reason to decode again (``window_repeats``), not to drop each segment.
    """
    if compression_ratio(segment.text.strip()) > COMPRESSION_RATIO_THRESHOLD:
        return "compression"
    if segment.no_speech_prob > NO_SPEECH_THRESHOLD and segment.avg_logprob < LOGPROB_THRESHOLD:
        return "no_speech"
    if segment.avg_logprob < LOGPROB_THRESHOLD:
        return "logprob"
    if words_per_second(segment) > MAX_WORDS_PER_SECOND:
        return "rate"
    return None


def window_repeats(segment: Segment) -> bool:
    """Whether the window this segment was decoded in repeats itself (the engine's compression ratio over it):
    something in it loops, though maybe not this segment."""
    return segment.compression_ratio > COMPRESSION_RATIO_THRESHOLD


def remainder_tail(segment: Segment, pass_start: float, pass_end: float) -> bool:
    """Whether ``segment`` comes from a window Whisper started after the pass's first one, over less than
    ``REMAINDER_MAX_S`` of audio: the tail its first decode left, where it makes words up.

    In live passes (one window of audio) every real word lies in the first window; the remainder is what came
    after its last timestamp, usually the speech pad and the end of the last word. Measured on the corpus: each
    segment of such a remainder under 1 s was a hallucination ("That's it.", "helps.", "Thank you for watching"),
    while remainders of 2 s and more held real speech.
    """
    later_window = segment.window_start > pass_start + 0.01
    return later_window and pass_end - segment.window_start < REMAINDER_MAX_S


# ---------------------------------------------------------------------------------------------------------------
# Loops


def _is_loop(n: int, repeats: int) -> bool:
    """Back-to-back repeats that people do not say: a word 7 times ("uh uh uh uh uh uh" and "words words words
    words" are in the corpus as real speech), two words 4 times, a phrase of three or more words twice."""
    if n == 1:
        return repeats >= 7
    if n == 2:
        return repeats >= 4
    return repeats >= 2


def _primitive(gram: Sequence[str]) -> bool:
    """Not itself a shorter gram repeated ("uh uh uh" is the 1-gram "uh", judged as such)."""
    n = len(gram)
    return not any(n % d == 0 and list(gram) == list(gram[:d]) * (n // d) for d in range(1, n // 2 + 1))


def _edit_distance(a: Sequence[str], b: Sequence[str], limit: int) -> int:
    """Word edit distance, or ``limit + 1`` as soon as it must exceed ``limit``."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j - 1] + (x != y), prev[j] + 1, cur[j - 1] + 1)
        if min(cur) > limit:
            return limit + 1
        prev = cur
    return prev[-1]


def _near_repeat(keys: Sequence[str], start: int, n: int) -> bool:
    """A phrase of ``FUZZY_LOOP_MIN`` words or more said again at once with one word in ``FUZZY_LOOP_MIN``
    changed, added or left out: how Whisper often loops over real speech ("and here are some more words, words,
    words, words. And here are some more words, words, words."). Shorter phrases must repeat exactly: "some
    words and here are some more words" is real speech."""
    if n < FUZZY_LOOP_MIN:
        return False
    gram = keys[start:start + n]
    allowed = n // FUZZY_LOOP_MIN
    for m in (n, n - 1, n + 1):
        nxt = keys[start + n:start + n + m]
        if len(nxt) == m and nxt[0] == gram[0] and _edit_distance(gram, nxt, allowed) <= allowed:
            return True
    return False


def find_repetition_loop(keys: Sequence[str], *, new_from: int = 0, max_ngram: int = 40) -> int | None:
    """Index where a repetition loop's second occurrence starts (the first was probably really said), or None.

    Any n-gram length up to ``max_ngram`` words, back to back within ``keys`` (a pass's segments joined), exactly
    or, for phrases of ``FUZZY_LOOP_MIN`` words or more, nearly. Words before ``new_from`` are already committed: a
    loop that began there is reported from ``new_from`` on, and one that ended there is no concern of the new
    words. Linear in ``len(keys)`` per n-gram length (it runs on every pass).
    """
    size = len(keys)
    best: int | None = None
    for n in range(1, min(max_ngram, (size + 1) // 2) + 1):
        # same[i]: for how many positions from i on a word equals the word n later (a copy of length n at i
        # means same[i] >= n; k copies, same[i] >= (k - 1) * n).
        same = [0] * (size + 1)
        for i in range(size - n - 1, -1, -1):
            same[i] = same[i + 1] + 1 if keys[i] and keys[i] == keys[i + n] else 0
        for start in range(0, size - 2 * n + 2):
            cut = max(start + n, new_from)
            if best is not None and cut >= best:
                break
            if same[start] >= n:
                repeats = 1 + same[start] // n
                if start + repeats * n <= new_from or not _is_loop(n, repeats):
                    continue
            elif not (same[start] and start + 2 * n > new_from and _near_repeat(keys, start, n)):
                continue
            if not _primitive(keys[start:start + n]):
                continue
            best = cut
            break
    return best


def repeated_phrase(keys: Sequence[str], *, new_from: int = 0, min_words: int = REPEAT_MIN_WORDS) -> int | None:
    """Where the words from ``new_from`` on first say again a phrase of ``min_words`` words that ``keys`` already
    held, anywhere before: a decode that went back and said earlier text a second time, with other words between
    (which ``find_repetition_loop`` does not see), or None.

    Recorded: a fallback decode of the end of a conversation said "... so I don't hear that in New Jersey now.
    Well there isn't that much difference, at least you know they all call me a Yankee down here" again after
    having said it, all of it committed already. People rarely say six words again within a few sentences.
    """
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(keys) - min_words + 1):
        gram = tuple(keys[i:i + min_words])
        if i >= new_from and gram in seen:
            return i
        seen.setdefault(gram, i)
    return None


def committed_echo(committed: Sequence[str], keys: Sequence[str], *, min_words: int = 3) -> int:
    """How many leading ``keys`` say the last committed words again (at least ``min_words`` of them), else 0.

    Whisper repeats its prompt (the committed text) on audio it cannot make out; text matching of the words a pass
    re-hears covers only the committed words inside its own audio.
    """
    longest = 0
    for k in range(min_words, min(len(committed), len(keys)) + 1):
        if list(keys[:k]) == list(committed[-k:]):
            longest = k
    return longest


# ---------------------------------------------------------------------------------------------------------------
# The phrase list: a last resort


_NON_WORD = re.compile(r"[^\w']+")
_HALLUCINATIONS = re.compile(
    r"^(?:"
    r"(?:thank you|thanks) (?:so much |very much )?(?:for watching|for listening|for viewing)(?: and .*)?"
    r"|thank you(?: very much| so much)?|thanks"
    r"|you|bye|okay|so"
    r"|(?:subtitles|captions|subtitled|transcribed|translated|transcription) by.*"
    r"|please subscribe.*|like and subscribe.*|(?:we'll |i'll )?see you (?:next time|in the next (?:video|one))"
    r"|(?:blank audio|blank_audio|silence|music|applause|inaudible|no speech)"
    r"|"  # nothing but music notes, brackets or punctuation
    r")$")
_ANNOTATION = re.compile(r"^\s*(?:[\[(].*[\])]|[♪♫♬♩\s.…-]+)\s*$")


def is_hallucination(segment: Segment, speech_ratio: float) -> bool:
    """Whether a segment is one of the phrases Whisper says on non-speech, given that some sign says low speech.

    ``speech_ratio`` is the share of the segment's audio the VAD judged speech. Whisper's own silence rule
    (no_speech_prob > 0.6 with avg_logprob < -1) drops anything; the usual phrases ("Thanks for watching",
    "you", "[BLANK_AUDIO]", music notes, "Subtitles by ...") are dropped when any sign says low speech.
    """
    if segment.no_speech_prob > NO_SPEECH_THRESHOLD and segment.avg_logprob < LOGPROB_THRESHOLD:
        return True
    text = segment.text.strip()
    low_speech = segment.no_speech_prob > 0.3 or segment.avg_logprob < -0.8 or speech_ratio < 0.5
    if not low_speech:
        return False
    if _ANNOTATION.match(text):
        return True
    normalised = " ".join(_NON_WORD.sub(" ", text.lower().replace("_", " ")).split())
    return bool(_HALLUCINATIONS.match(normalised))
