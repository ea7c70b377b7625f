"""The hallucination guards (core/guards.py), fed segments recorded from tiny.en live passes on real speech.

The recorded segments come from ``eval-live --record`` runs over LJSpeech sentences with pauses between them
(the stream times, texts, log probabilities, no-speech probabilities and compression ratios are the engine's).
"""

from __future__ import annotations

import numpy as np
import pytest

from whisper_appliance.core.guards import (
    SpeechMap,
    committed_echo,
    compression_ratio,
    find_repetition_loop,
    in_speech,
    is_hallucination,
    remainder_tail,
    repeated_phrase,
    signals_fail,
    speech_words,
    window_repeats,
    words_per_second,
)
from whisper_appliance.core.records import Segment, Word

FRAME = 0.032


def speech_map(regions: list[tuple[float, float]], until: float, *, start: float = 0.0) -> SpeechMap:
    """A VAD verdict with probability 0.9 inside ``regions`` (stream seconds) and 0.05 elsewhere."""
    times = start + FRAME * np.arange(int((until - start) / FRAME))
    probs = np.full(times.size, 0.05, dtype=np.float32)
    for a, b in regions:
        probs[(times + FRAME > a) & (times < b)] = 0.9
    return SpeechMap(probs, start, FRAME, 0.35)


def segment(text: str, start: float, end: float, *, lp: float = -0.2, ns: float = 0.02, cr: float = 1.2,
            words: list[tuple[str, float, float, float]] | None = None) -> Segment:
    ws = tuple(Word(a, b, w, p) for w, a, b, p in words or ())
    return Segment(0, start, end, text, avg_logprob=lp, no_speech_prob=ns, compression_ratio=cr, words=ws)


# Recorded: the final pass over "... casting, setting or printing beautiful letters." (speech ends at 23.2 s, the
# pass audio at 23.46 s). faster-whisper decoded the 0.38 s its first segment left as a window of its own.
THATS_IT = segment(" That's it.", 23.08, 23.44, lp=-1.23, ns=0.53, cr=0.56,
                   words=[(" That's", 23.08, 23.44, 0.37), (" it.", 23.44, 23.44, 0.63)])
# Recorded: the 0.14 s after "... the true printed book." (speech ends at 29.8 s); 220 words in the original.
BYE_TEXT = " Thank you very much for watching, I'll see you in the next video," + " bye" * 60
BYE_BYE = segment(BYE_TEXT, 29.93, 30.07, lp=-0.21, ns=0.55, cr=11.16,
                  words=[(" " + w, 29.93 + 0.002 * i, 29.932 + 0.002 * i, 0.5)
                         for i, w in enumerate(BYE_TEXT.split())])
# Recorded: 0.16 s after "... the art of printing." (speech ends at 38.9 s): a plausible ratio, an impossible rate.
NEXT_TEXT = " Thank you for watching, and I'll see you in the next video."
NEXT_VIDEO = segment(NEXT_TEXT, 38.92, 39.08, lp=-0.78, ns=0.46, cr=1.38,
                     words=[(" " + w, 38.92 + 0.012 * i, 38.93 + 0.012 * i, 0.4)
                            for i, w in enumerate(NEXT_TEXT.split())])
# Recorded: a real first segment of the same pass.
REAL = segment(" Produced the block books which were the immediate predecessors of the true printed book.",
               24.27, 29.93, lp=-0.10, ns=0.01, cr=1.14,
               words=[(" Produced", 24.6, 25.1, 0.9), (" the", 25.1, 25.2, 0.99), (" block", 25.2, 25.5, 0.98),
                      (" books", 25.5, 26.0, 0.97), (" book.", 29.5, 29.93, 0.99)])


def test_signals_catch_the_recorded_tails_and_pass_the_real_segment():
    assert signals_fail(THATS_IT) == "logprob"
    assert signals_fail(BYE_BYE) == "compression"
    assert signals_fail(NEXT_VIDEO) == "rate"  # its ratio (1.38) and log probability (-0.78) pass
    assert signals_fail(REAL) is None


def test_compression_ratio_is_the_segment_texts_own():
    looping = segment(" see you in the next video" * 6, 10.0, 16.0, cr=1.3)
    assert compression_ratio(looping.text) > 2.4
    assert signals_fail(looping) == "compression" and not window_repeats(looping)
    # Recorded (en_mfa_michaelandsickmichael): real speech in a window whose ratio (2.57) was lifted by a loop
    # elsewhere in it: the window is decoded again, the segment itself is not dropped.
    real = segment(" This is me talking really slow and slightly lower in intensity", 8.33, 11.79, lp=-0.40, cr=2.57)
    assert signals_fail(real) is None and window_repeats(real)
    assert compression_ratio("") == 0.0


@pytest.mark.parametrize("ns,lp,expected", [
    (0.9, -1.5, "no_speech"), (0.9, -0.5, None), (0.1, -1.1, "logprob"), (0.5, -0.99, None)])
def test_no_speech_counts_only_with_a_low_log_probability(ns, lp, expected):
    assert signals_fail(segment(" Hello there.", 0.0, 1.0, lp=lp, ns=ns)) == expected


def test_a_short_later_window_of_a_pass_is_its_tail():
    # Recorded: the pass heard 12.78-22.63 s; faster-whisper decoded 22.12-22.63 s as a window of its own.
    helps = segment(" helps.", 22.12, 22.36, lp=-0.94, ns=0.31, cr=0.43)
    helps = Segment(0, helps.start, helps.end, helps.text, avg_logprob=-0.94, no_speech_prob=0.31,
                    compression_ratio=0.43, window_start=22.12)
    assert remainder_tail(helps, 12.78, 22.63)
    assert signals_fail(helps) is None  # nothing else would have caught it
    # The first window, and a later window over 2.3 s of audio (recorded: real speech there), are not tails.
    first = Segment(0, 12.9, 22.1, " and a help to the shapeliness of the letters themselves.", window_start=12.78)
    assert not remainder_tail(first, 12.78, 22.63)
    later = Segment(0, 285.2, 287.4, " and tender churl makes waste in niggarding.", window_start=285.16)
    assert not remainder_tail(later, 274.38, 287.5)


def test_speaking_rate_needs_enough_words_to_judge():
    fast = segment(" a b c d e", 1.0, 1.2, words=[(f" {c}", 1.0 + 0.04 * i, 1.04 + 0.04 * i, 0.9)
                                                  for i, c in enumerate("abcde")])
    assert words_per_second(fast) == pytest.approx(25.0)
    short = segment(" Yes. No.", 1.0, 1.1, words=[(" Yes.", 1.0, 1.05, 0.9), (" No.", 1.05, 1.1, 0.9)])
    assert words_per_second(short) == 0.0 and signals_fail(short) is None


def test_words_are_kept_only_where_the_vad_heard_speech():
    speech = speech_map([(20.9, 23.2), (24.8, 29.8)], until=31.0)
    assert in_speech(Word(22.68, 23.08, " letters.", 0.99), speech, slack=0.1)
    assert in_speech(Word(23.25, 23.3, " it", 0.9), speech, slack=0.1)           # jitter just past the end
    assert not in_speech(Word(23.44, 23.44, " it.", 0.63), speech, slack=0.1)    # 0.24 s after it
    assert not in_speech(Word(24.0, 24.3, " So", 0.9), speech, slack=0.1)        # inside the pause
    assert in_speech(Word(21.34, 21.34, " setting", 0.97), speech, slack=0.1)    # zero length, inside speech
    kept = speech_words([w for s in (REAL, BYE_BYE) for w in s.words], speech, slack=0.1)
    assert [w.word for w in kept] == [w.word for w in REAL.words]


def test_words_before_the_vad_evidence_keep_the_benefit_of_the_doubt():
    speech = speech_map([(5.0, 6.0)], until=8.0, start=4.0)  # the buffer starts at 4 s
    assert in_speech(Word(2.0, 2.5, " context", 0.9), speech, slack=0.1)
    assert speech.speech_ratio(2.0, 2.5) == 1.0
    assert speech.speech_ratio(5.0, 6.0) == pytest.approx(1.0, abs=0.05)
    assert speech.speech_ratio(6.5, 7.5) == 0.0
    assert speech.last_speech_end() == pytest.approx(6.0, abs=FRAME)


@pytest.mark.parametrize("text,cut", [
    ("and that is what i am going to show you and that is what i am going to show you", 10),  # 10 words twice
    ("we will see you soon see you soon see you soon see you soon", 5),
    ("i think that we should go go go go go go go", 6),                 # one word seven times
    ("bye bye bye bye bye bye bye bye bye bye", 1),
    ("this is the first one but its the first one but its the first one", 7),
    # Said again with a word changed, dropped or added (recorded: en_mfa_michaelandsickmichael):
    ("and here are some more words words words words and here are some more words words words", 9),
    ("theres nothing going on here at all theres nothing going on here at al", 7),
    ("so this is the sick corpus i have a cold so this is the sick corpus i have cold", 10),
])
def test_loops_of_any_length_are_cut_after_their_first_occurrence(text, cut):
    assert find_repetition_loop(text.split()) == cut


@pytest.mark.parametrize("text", [
    "no no no said the man",
    "some more words words words words um and",          # real speech in the corpus (en_mfa_acoustic_corpus)
    "montreal uh uh uh uh uh uh forced aligner",         # en_mfa_mfa_uhuh
    "thank you thank you",
    "break break break on thy cold grey stones o sea",
    "i think that we should go and i think that it would help",   # a phrase again, later: not a loop
    "were just saying some words and heres some more words words words words",  # real (en_mfa_acoustic_corpus)
    "from fairest creatures we desire increase that thereby beautys rose might never die",
])
def test_repeats_people_really_say_are_not_loops(text):
    assert find_repetition_loop(text.split()) is None


def test_a_loop_going_on_from_the_committed_words_is_cut_where_the_new_words_start():
    committed = "and i will see you in the next video".split()
    new = "see you in the next video see you in".split()
    keys = committed + new
    assert find_repetition_loop(keys, new_from=len(committed)) == len(committed)
    # A loop wholly inside the committed words is not the new words' concern.
    assert find_repetition_loop("a b c a b c d e f".split(), new_from=6) is None


def test_six_words_said_again_after_other_words_are_a_repeat():
    # Recorded (diar_pyannote_sample): a fallback decode went back over text it had already said, all committed.
    committed = ("well there isnt that much difference at least you know they all call me a yankee down here so i dont "
                 "hear that in new jersey now").split()
    new = "well there isnt that much difference at least know you know".split()
    assert repeated_phrase(committed + new, new_from=len(committed)) == len(committed)
    assert repeated_phrase("a b c d e f g h a b c d e".split()) is None   # five words again: could be speech
    new_part = "we met on monday the plan was agreed and then on friday the plan was agreed".split()
    assert repeated_phrase(new_part) is None
    looping = "and here are some more words and i should be all thanks and here are some more words".split()
    assert repeated_phrase(looping) == 12


def test_a_pass_that_starts_by_re_saying_the_committed_tail_is_an_echo():
    committed = "it is of the first importance".split()
    assert committed_echo(committed, "of the first importance that the letter".split()) == 4
    assert committed_echo(committed, "first importance that".split()) == 0      # two words: could be speech
    assert committed_echo(committed, "that the letter used".split()) == 0
    assert committed_echo([], "a b c".split()) == 0


def test_phrase_list_is_only_a_last_resort_on_low_speech():
    quiet = {"no_speech_prob": 0.5, "avg_logprob": -0.9}
    for text in (" Thank you.", " Thanks for watching!", " [BLANK_AUDIO]", " ♪♪", " Subtitles by the Amara.org community",
                 " See you in the next one.", " you"):
        assert is_hallucination(Segment(0, 0.0, 1.0, text, **quiet), speech_ratio=0.2), text
    spoken = Segment(0, 0.0, 1.0, " Thank you.", no_speech_prob=0.05, avg_logprob=-0.2)
    assert not is_hallucination(spoken, speech_ratio=1.0)


def test_hallucination_phrases_are_dropped_only_on_low_speech():
    quiet = dict(no_speech_prob=0.7, avg_logprob=-0.9)
    for text in (" Thank you for watching!", " Thanks for watching.", " you", " Subtitles by the Amara.org community",
                 " [BLANK_AUDIO]", " ♪ ♪", " (music)"):
        assert is_hallucination(Segment(0, 0.0, 1.0, text, **quiet), speech_ratio=0.2), text
    spoken = Segment(0, 0.0, 1.0, " Thank you for watching!", no_speech_prob=0.02, avg_logprob=-0.2)
    assert not is_hallucination(spoken, speech_ratio=1.0)
    # Whisper's own silence rule drops anything.
    assert is_hallucination(Segment(0, 0.0, 1.0, " Hello there", no_speech_prob=0.9, avg_logprob=-1.5), 1.0)
    assert not is_hallucination(Segment(0, 0.0, 1.0, " Hello there", no_speech_prob=0.5, avg_logprob=-0.5), 0.4)
