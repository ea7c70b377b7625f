"""The live streaming policy, driven by scripted hypotheses and an energy VAD: no model, no network."""

from __future__ import annotations

import random

import numpy as np
import pytest

from whisper_appliance.core.errors import InvalidInput
from whisper_appliance.core.guards import find_repetition_loop
from whisper_appliance.core.records import SAMPLE_RATE, Segment, Word
from whisper_appliance.core.streaming import (
    PassRequest,
    PassResult,
    StreamingConfig,
    StreamingPolicy,
    agreed_prefix_length,
    committed_prefix_length,
    word_key,
)
from whisper_appliance.core.vad import VoiceActivityDetector

SR = SAMPLE_RATE


class EnergyVAD(VoiceActivityDetector):
    """Speech probability 1 for frames with any energy, 0 for digital silence."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._rest = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._rest, samples])
        n = audio.size // self.frame_samples
        self._rest = audio[n * self.frame_samples:]
        frames = audio[:n * self.frame_samples].reshape(n, self.frame_samples)
        return (np.sqrt((frames ** 2).mean(axis=1)) > 1e-3).astype(np.float32)


def speech(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def words_of(text: str, start: float, spacing: float = 0.4) -> list[Word]:
    return [Word(start + i * spacing, start + i * spacing + 0.3, " " + w, 0.9) for i, w in enumerate(text.split())]


def result(words: list[Word], *, no_speech_prob: float = 0.01, avg_logprob: float = -0.2) -> PassResult:
    if not words:
        return PassResult(segments=())
    seg = Segment(0, words[0].start, words[-1].end, "".join(w.word for w in words), avg_logprob=avg_logprob,
                  no_speech_prob=no_speech_prob, words=tuple(words))
    return PassResult(segments=(seg,), language="en", language_probability=1.0)


def make_policy(**overrides) -> StreamingPolicy:
    """A policy that ends utterances at the first pause (no holding of short first utterances) unless told."""
    return StreamingPolicy(StreamingConfig(**{"min_final_window_s": 0.0, **overrides}), vad=EnergyVAD())


def finals(events) -> list[str]:
    return [e.text for e in events if e.kind == "final"]


def after_two_partials(first: str, second: str) -> StreamingPolicy:
    """A policy that commits at once on agreement, after partial passes heard ``first`` (2 s) then ``second``."""
    policy = make_policy(agreement_after_s=0.0, agreement_margin_s=0.0)
    policy.push_audio(speech(2.0))
    policy.apply(policy.next_pass(), result(words_of(first, 0.0)), elapsed=0.1)
    policy.push_audio(speech(0.5))
    policy.apply(policy.next_pass(), result(words_of(second, 0.0)), elapsed=0.1)
    return policy


# -- pure helpers ---------------------------------------------------------------------------------------------


def test_word_key_ignores_case_and_punctuation():
    assert word_key(" Hello,") == word_key("hello") == "hello"
    assert word_key(" don't!") == "don't"
    assert word_key(" -") == ""


def test_agreed_prefix_is_the_shared_leading_words():
    assert agreed_prefix_length(["a", "b", "c"], ["a", "b", "x", "c"]) == 2
    assert agreed_prefix_length(["a"], ["b"]) == 0
    assert agreed_prefix_length([], ["a"]) == 0


@pytest.mark.parametrize("committed,hypothesis,expected", [
    (["the", "cat"], ["the", "cat", "sat"], 2),
    (["the", "cat"], ["a", "cat", "sat"], 2),           # first word re-decoded differently
    (["so", "the", "cat"], ["the", "cat", "sat"], 2),    # buffer start cut the first committed word
    (["the", "cat"], ["uh", "the", "cat", "sat"], 3),    # an extra word before them
    (["cat"], ["sat", "on"], 0),                         # nothing matches: drop nothing
    ([], ["a"], 0),
])
def test_committed_prefix_is_matched_by_text(committed, hypothesis, expected):
    assert committed_prefix_length(committed, hypothesis) == expected


def test_config_rejects_impossible_values():
    with pytest.raises(InvalidInput):
        StreamingConfig(max_utterance_s=40)
    with pytest.raises(InvalidInput):
        StreamingConfig(task="summarise")
    with pytest.raises(InvalidInput):
        StreamingConfig(sample_rate=8000)


# -- the policy -------------------------------------------------------------------------------------------------


def test_silence_runs_no_pass_and_gives_no_text():
    policy = make_policy()
    for _ in range(120):
        policy.push_audio(silence(0.25))
        assert policy.next_pass() is None
    assert policy.finish() is None
    assert policy.committed_text == ""
    assert policy.lag_seconds == 0.0
    assert policy.buffered_seconds < 1.0


def test_partial_passes_follow_speech_with_live_options():
    policy = make_policy()
    policy.push_audio(silence(1.0))
    policy.push_audio(speech(0.75))
    request = policy.next_pass()
    assert request is not None and not request.final
    # The buffer starts shortly before the speech, not at the stream start.
    assert 1.0 - policy.config.pre_roll_s - 0.04 <= request.offset <= 1.0
    assert request.end == pytest.approx(1.75)
    options = policy.options_for(request)
    assert options.temperature == 0.0 and options.word_timestamps and not options.condition_on_previous_text
    assert options.beam_size == 1
    assert options.fit_window  # live passes encode only their own audio, not 30 s
    events = policy.apply(request, result(words_of("hello there", 1.0)), elapsed=0.1)
    assert [(e.kind, e.text) for e in events] == [("partial", "hello there")]
    assert policy.committed_text == ""  # a short utterance commits nothing early


def test_agreement_commits_only_the_agreed_prefix():
    policy = make_policy(agreement_after_s=0.0, agreement_margin_s=0.0)
    policy.push_audio(speech(2.0))
    first = policy.next_pass()
    policy.apply(first, result(words_of("one two three four", 0.0)), elapsed=0.1)
    assert policy.committed_text == ""  # one hypothesis agrees with nothing yet
    policy.push_audio(speech(0.5))
    second = policy.next_pass()
    events = policy.apply(second, result(words_of("one two tree for five", 0.0)), elapsed=0.1)
    assert finals(events) == ["one two"]
    assert [e.text for e in events if e.kind == "partial"] == ["tree for five"]
    assert policy.committed_text == "one two"


def test_an_utterance_starts_committing_early_only_with_words_the_model_is_sure_of():
    policy = make_policy(agreement_after_s=0.0, agreement_margin_s=0.0, agreement_min_probability=0.5)
    policy.push_audio(speech(2.0))

    def unsure_start(text: str) -> list[Word]:
        words = words_of(text, 0.0)
        return [Word(w.start, w.end, w.word, 0.3 if i == 0 else 0.9) for i, w in enumerate(words)]

    policy.apply(policy.next_pass(), result(unsure_start("and we agreed")), elapsed=0.1)
    policy.push_audio(speech(0.5))
    events = policy.apply(policy.next_pass(), result(unsure_start("and we agreed to")), elapsed=0.1)
    assert finals(events) == [] and policy.committed_text == ""  # two passes agree, but on an unsure first word
    policy.push_audio(speech(0.5))
    events = policy.apply(policy.next_pass(), result(words_of("everyone agreed to meet", 0.0)), elapsed=0.1)
    policy.push_audio(speech(0.5))
    events = policy.apply(policy.next_pass(), result(words_of("everyone agreed to meet again", 0.0)), elapsed=0.1)
    assert finals(events) == ["everyone agreed to meet"]
    # Once an utterance has committed words, later agreed words commit whatever their probability.
    policy.push_audio(speech(0.5))
    unsure_tail = [*words_of("everyone agreed to meet", 0.0), Word(1.6, 1.9, " again", 0.2),
                   Word(2.0, 2.3, " next", 0.2)]
    events = policy.apply(policy.next_pass(), result(unsure_tail), elapsed=0.1)
    assert finals(events) == ["again"]


def test_a_new_sentence_inside_an_utterance_commits_early_only_with_words_the_model_is_sure_of():
    policy = after_two_partials("risk of delays.", "risk of delays. and")
    assert policy.committed_text == "risk of delays."
    unsure = [*words_of("risk of delays.", 0.0), Word(1.2, 1.5, " we", 0.3), Word(1.6, 1.9, " and", 0.4)]
    policy.push_audio(speech(0.5))
    policy.apply(policy.next_pass(), result(unsure), elapsed=0.1)
    policy.push_audio(speech(0.5))
    events = policy.apply(policy.next_pass(), result([*unsure, Word(2.0, 2.3, " agreed", 0.9)]), elapsed=0.1)
    assert finals(events) == [] and policy.committed_text == "risk of delays."  # two passes agree on them
    # A third pass in a row that hears the same unsure words commits them: a name is never "sure".
    policy.push_audio(speech(0.5))
    events = policy.apply(policy.next_pass(), result([*unsure, Word(2.0, 2.3, " agreed", 0.9)]), elapsed=0.1)
    assert finals(events) == ["we and agreed"]


def test_a_sentence_start_inside_the_agreed_words_needs_sure_words_too():
    # Recorded (synthetic meeting, buffer sliding): two passes agreed on "to reduce the risk of delays. and re
    # wanna read", "and re wanna read" being "Everyone agreed" at word probabilities under 0.5.
    policy = after_two_partials("the budget.", "the budget. to")
    assert policy.committed_text == "the budget."
    heard = [*words_of("the budget. to reduce delays.", 0.0), Word(2.0, 2.2, " and", 0.4), Word(2.3, 2.5, " re", 0.3)]
    policy.push_audio(speech(0.5))
    policy.apply(policy.next_pass(), result(heard), elapsed=0.1)
    policy.push_audio(speech(0.5))
    events = policy.apply(policy.next_pass(), result([*heard, Word(2.6, 2.9, " wanna", 0.9)]), elapsed=0.1)
    assert finals(events) == ["reduce delays."]  # not "and re": those wait for the final pass
    assert policy.committed_text == "the budget. to reduce delays."


def test_final_pass_at_utterance_end_commits_the_rest_minus_committed_text_despite_jitter():
    policy = after_two_partials("the quick brown", "the quick brown fox")
    assert policy.committed_text == "the quick brown"
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    assert final is not None and final.final
    assert policy.options_for(final).beam_size == 5
    # The final pass re-decodes everything with timestamps shifted by 0.3 s and different punctuation.
    events = policy.apply(final, result(words_of("The quick, brown fox jumps.", 0.3)), elapsed=0.2)
    assert finals(events) == ["fox jumps."]
    assert events[-1].kind == "partial" and events[-1].text == ""  # the partial is cleared
    assert policy.committed_text == "the quick brown fox jumps."
    assert policy.next_pass() is None


def test_early_final_pass_in_the_pause_commits_when_the_utterance_has_closed():
    policy = make_policy()
    policy.push_audio(speech(1.5))
    policy.apply(policy.next_pass(), result(words_of("hello", 0.0)), elapsed=0.1)
    policy.push_audio(silence(0.3))
    early = policy.next_pass()
    assert early is not None and early.final
    assert early.end == pytest.approx(1.5 + policy.config.speech_pad_s, abs=0.04)
    # Audio arrives while it runs: the VAD closes the utterance before the pass is applied.
    policy.push_audio(silence(0.3))
    events = policy.apply(early, result(words_of("hello world", 0.0)), elapsed=0.5)
    assert finals(events) == ["hello world"]
    assert policy.next_pass() is None  # no second final pass


def test_early_final_pass_overtaken_by_speech_commits_nothing():
    policy = make_policy()
    policy.push_audio(speech(1.5))
    policy.push_audio(silence(0.3))
    early = policy.next_pass()
    assert early is not None and early.final
    policy.push_audio(speech(1.0))  # the speaker went on
    events = policy.apply(early, result(words_of("hello world", 0.0)), elapsed=0.5)
    assert finals(events) == [] and policy.committed_text == ""
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    assert final.final and final.end > early.end
    assert finals(policy.apply(final, result(words_of("hello world again", 0.0)), elapsed=0.5)) == [
        "hello world again"]


def test_short_first_utterance_is_held_open_over_a_pause_and_decoded_with_the_next():
    policy = make_policy(min_final_window_s=4.0, hold_silence_s=1.5)
    policy.push_audio(speech(2.0))
    policy.push_audio(silence(1.0))  # longer than finalize_silence_s, shorter than hold_silence_s
    early = policy.next_pass()
    assert early.final
    assert finals(policy.apply(early, result(words_of("and so am i", 0.0)), elapsed=0.3)) == []
    assert policy.next_pass() is None
    policy.push_audio(speech(2.0))
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    # One pass hears both utterances: the first words are decoded with the context of the next.
    assert final.final and final.offset == 0.0
    assert final.end == pytest.approx(5.0 + policy.config.speech_pad_s, abs=0.04)
    heard = words_of("and so my fellow", 0.0) + words_of("americans ask not", 3.0)
    events = policy.apply(final, result(heard), elapsed=0.3)
    assert finals(events) == ["and so my fellow americans ask not"]


def test_short_utterance_alone_is_committed_after_the_hold_silence():
    policy = make_policy(min_final_window_s=4.0, hold_silence_s=1.5)
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(1.0))
    early = policy.next_pass()
    assert finals(policy.apply(early, result(words_of("yes", 0.0)), elapsed=0.1)) == []
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    assert final is not None and final.final
    assert finals(policy.apply(final, result(words_of("yes", 0.0)), elapsed=0.1)) == ["yes"]
    assert policy.lag_seconds == 0.0


def test_committed_audio_re_said_in_other_words_is_never_partial_or_committed_again():
    policy = after_two_partials("one two three four", "one two tree for five")
    assert policy.committed_text == "one two"  # committed up to 0.7 s
    policy.push_audio(speech(0.5))
    # The next pass hears the committed words as other words: the text match finds nothing to remove.
    events = policy.apply(policy.next_pass(), result(words_of("won too three four five six", 0.0)), elapsed=0.1)
    assert [e.text for e in events if e.kind == "partial"] == ["three four five six"]
    assert not any(w in policy.committed_text for w in ("won", "too"))


def test_a_word_after_the_committed_text_is_new_even_where_the_last_committed_word_ends_late():
    # Recorded (synthetic_meeting, webm): a partial committed "... decision about the" with "the" at 24.90-25.44 s;
    # the final pass placed "the" at 24.88-25.16 s and "marketing" at 25.16-25.42 s, inside the committed "the".
    policy = after_two_partials("decision about the marketing", "decision about the market")
    assert policy.committed_text == "decision about the"
    late = policy._committed[-1]
    policy._committed[-1] = Word(late.start, late.start + 0.9, late.word, late.probability)
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    assert final.final
    heard = [*words_of("decision about the", 0.0), Word(0.85, 1.05, " marketing", 0.97),
             Word(1.05, 1.5, " campaign.", 0.98)]
    assert finals(policy.apply(final, result(heard), elapsed=0.1)) == ["marketing campaign."]


def test_passes_hear_the_earlier_utterance_and_commit_only_the_new_words():
    policy = make_policy(context_s=10.0)
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(1.0))
    first = policy.next_pass()
    policy.apply(first, result(words_of("ask not", 0.1)), elapsed=0.1)
    policy.push_audio(silence(2.0))
    policy.push_audio(speech(1.5))
    partial = policy.next_pass()
    # Partial passes hear the context too, and show only the words after it.
    assert not partial.final and partial.offset == 0.0 and partial.prompt is None
    events = policy.apply(partial, result([*words_of("ask not", 0.1), *words_of("what", 4.0)]), elapsed=0.1)
    assert [(e.kind, e.text) for e in events] == [("partial", "what")]
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    # The final pass starts where the earlier utterance started, and is prompted with nothing said before that.
    assert final.final and final.offset == 0.0 and final.prompt is None
    # It re-says the context in other words, and hallucinates in the pause: only the new words are committed.
    heard = [*words_of("Ask knot,", 0.12), Word(2.5, 2.9, " you", 0.4), *words_of("what your country", 4.0)]
    assert finals(policy.apply(final, result(heard), elapsed=0.2)) == ["what your country"]
    assert policy.committed_text == "ask not what your country"


def test_context_is_limited_to_context_s_and_the_buffer_stays_bounded():
    policy = make_policy(context_s=3.0)
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(0.75))
    policy.apply(policy.next_pass(), result(words_of("early", 0.1)), elapsed=0.1)
    for _ in range(40):
        policy.push_audio(silence(0.25))
        assert policy.buffered_seconds <= 3.0 + 0.5
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    # The earlier utterance lies more than context_s before this one: the pass hears this utterance only.
    assert final.final and final.offset == pytest.approx(11.75 - policy.config.pre_roll_s, abs=0.04)
    assert final.prompt == "early"


def test_an_utterance_after_a_long_one_hears_its_committed_end_as_context():
    policy = make_policy(context_s=3.0)
    policy.push_audio(speech(8.0))
    policy.push_audio(silence(0.75))
    first = policy.next_pass()
    words = words_of("we met on monday. the plan was agreed. then we", 0.0, spacing=0.8)
    policy.apply(first, result(words), elapsed=0.1)
    policy.push_audio(speech(1.5))
    policy.push_audio(silence(0.75))
    second = policy.next_pass()
    # No utterance starts within 3 s before this one: the pass starts at the committed sentence start inside the
    # long one (between "agreed." ending at 5.9 s and "then" at 6.4 s), not at the new utterance alone.
    utterance_start = 8.75 - policy.config.pre_roll_s
    assert utterance_start - 3.0 <= second.offset < utterance_start
    assert 5.9 - 0.15 <= second.offset <= 6.4 + 0.15
    assert policy.committed_text.startswith(second.prompt) and second.prompt.startswith("we met on monday.")
    heard = words_of("then we", 5.6, spacing=0.8) + words_of("decided to go", 8.5)
    events = policy.apply(second, result(heard), elapsed=0.1)
    assert finals(events) == ["decided to go"]  # the committed words it heard again are not repeated


def test_prompt_holds_only_committed_text_before_the_buffer():
    policy = make_policy(agreement_after_s=0.0, agreement_margin_s=0.0, context_s=0.0)
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(0.75))
    first = policy.next_pass()
    assert first.final and first.prompt is None
    policy.apply(first, result(words_of("first sentence.", 0.0)), elapsed=0.1)
    policy.push_audio(speech(2.0))
    request = policy.next_pass()
    assert request.prompt == "first sentence."
    policy.apply(request, result(words_of("second one here", 1.75)), elapsed=0.1)
    policy.push_audio(speech(0.5))
    policy.apply(policy.next_pass(), result(words_of("second one here too", 1.75)), elapsed=0.1)
    assert policy.committed_text == "first sentence. second one here"
    policy.push_audio(speech(0.5))
    # "second one here" lies inside the buffer: it must not be in the prompt.
    assert policy.next_pass().prompt == "first sentence."


def test_prompt_is_limited_to_the_last_characters_on_a_word_boundary():
    policy = make_policy(prompt_chars=20, context_s=0.0)
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(0.75))
    words = words_of("alpha beta gamma delta epsilon zeta", 0.0, spacing=0.12)
    policy.apply(policy.next_pass(), result(words), elapsed=0.1)
    policy.push_audio(speech(1.0))
    prompt = policy.next_pass().prompt
    assert prompt == "delta epsilon zeta"


def test_repetition_loop_is_never_committed_and_drops_the_prompt():
    policy = make_policy(context_s=0.0)  # no context: the final pass is prompted with the earlier text
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(0.75))
    policy.apply(policy.next_pass(), result(words_of("before.", 0.0)), elapsed=0.1)
    policy.push_audio(speech(3.0))
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    assert final.prompt == "before."
    looped = words_of("we will go on and on and on and on and on and on and on", 1.75, spacing=0.15)
    events = policy.apply(final, result(looped), elapsed=0.1)
    assert finals(events) == ["we will go on and"]
    assert "on and on" not in policy.committed_text


def test_repetition_loop_in_a_partial_resets_the_prompt():
    policy = make_policy(context_s=0.0)
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(0.75))
    policy.apply(policy.next_pass(), result(words_of("before.", 0.0)), elapsed=0.1)
    policy.push_audio(speech(2.0))
    partial = policy.next_pass()
    assert partial.prompt == "before." and not partial.final
    events = policy.apply(partial, result(words_of("yes yes yes yes yes yes yes yes", 1.75, spacing=0.2)),
                          elapsed=0.1)
    assert finals(events) == []
    policy.push_audio(speech(0.5))
    assert policy.next_pass().prompt is None


def test_hallucination_on_low_speech_audio_is_dropped_by_the_policy():
    policy = make_policy()
    policy.push_audio(speech(1.0))
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    events = policy.apply(final, result(words_of("Thanks for watching!", 0.0), no_speech_prob=0.7,
                                        avg_logprob=-1.2), elapsed=0.1)
    assert finals(events) == [] and policy.committed_text == ""
    assert all(not e.text for e in events)


# -- the hallucination guards, fed pass results recorded from tiny.en (eval-live --record) -----------------------


def recorded(text: str, start: float, end: float, *, lp: float, ns: float, cr: float, window_start: float = 0.0,
             spacing: float | None = None) -> Segment:
    """A segment as the engine returned it in a recorded pass (times in stream seconds)."""
    n = len(text.split())
    step = spacing if spacing is not None else (end - start) / max(n, 1)
    words = tuple(Word(start + i * step, start + (i + 1) * step, " " + w, 0.6) for i, w in enumerate(text.split()))
    return Segment(0, start, end, " " + text, avg_logprob=lp, no_speech_prob=ns, compression_ratio=cr,
                   words=words, window_start=window_start)


def closed_utterance(seconds: float = 4.0, **config) -> tuple[StreamingPolicy, PassRequest]:
    """A policy whose first utterance (speech from 0 s to ``seconds``) has ended, and its final pass."""
    policy = make_policy(**config)
    policy.push_audio(speech(seconds))
    policy.push_audio(silence(0.75))
    final = policy.next_pass()
    assert final.final
    return policy, final


def test_the_tail_of_a_final_pass_decoded_as_a_window_of_its_own_is_never_committed():
    # Recorded (LJSpeech, 1 s pauses): after "... the true printed book." faster-whisper decoded the 0.14 s its
    # first window left, and said this there.
    policy, final = closed_utterance(4.0)
    real = recorded("Produced the block books which were the true printed book.", 0.1, 3.9, lp=-0.10, ns=0.01,
                    cr=1.14)
    tail = recorded("Thank you very much for watching, I'll see you in the next video," + " bye" * 60, 3.9, 4.04,
                    lp=-0.21, ns=0.55, cr=11.16, window_start=3.9)
    helps = recorded("helps.", 3.96, 4.1, lp=-0.94, ns=0.31, cr=0.43, window_start=3.95)  # no other sign
    events = policy.apply(final, PassResult((real, tail, helps), "en", 1.0), elapsed=0.2)
    assert finals(events) == [real.text.strip()]
    assert policy.dropped["compression"] == 1 and policy.dropped["tail"] == 1


def test_words_the_engine_places_in_a_pause_are_never_shown_or_committed():
    policy = make_policy()
    policy.push_audio(speech(2.0))
    policy.push_audio(silence(0.2))  # under quiet_tail_s: a partial pass still runs over the pause
    partial = policy.next_pass()
    assert not partial.final
    heard = words_of("it is of the first", 0.0) + [Word(2.12, 2.18, " that's", 0.3)]
    events = policy.apply(partial, result(heard), elapsed=0.1)
    assert [e.text for e in events if e.kind == "partial"] == ["it is of the first"]
    assert policy.dropped["outside_speech"] == 1


def test_a_failed_segment_over_speech_is_decoded_again_with_fallback_before_it_commits():
    # Recorded (continuous 5-minute stream): the end of a sonnet line at log probability -1.02.
    policy, final = closed_utterance(4.0)
    unsure = recorded("and tender churl makes waste in niggarding.", 0.0, 3.8, lp=-1.02, ns=0.17, cr=0.83)
    events = policy.apply(final, PassResult((unsure,), "en", 1.0), elapsed=0.3)
    assert finals(events) == []
    again = policy.next_pass()
    assert again.final and again.fallback and policy.options_for(again).temperature is None
    assert again.offset == final.offset and again.end == final.end
    retried = recorded("and tender churl makes waste in niggarding.", 0.2, 3.8, lp=-1.01, ns=0.17, cr=0.83)
    events = policy.apply(again, PassResult((retried,), "en", 1.0), elapsed=0.6)
    # Still unsure after the fallback, but over speech: kept, as offline transcription keeps its best attempt.
    assert finals(events) == ["and tender churl makes waste in niggarding."]
    assert policy.next_pass() is None


def test_a_window_that_repeats_itself_is_decoded_again_and_its_real_segments_kept():
    # Recorded (en_mfa_michaelandsickmichael): a window of real speech whose ratio (3.11) a loop at its end lifted.
    policy, final = closed_utterance(4.0)
    looped = recorded("we're just saying some words and here are some more words and here are some more words",
                      0.1, 3.9, lp=-0.18, ns=0.0, cr=3.11)
    assert finals(policy.apply(final, PassResult((looped,), "en", 1.0), elapsed=0.3)) == []
    again = policy.next_pass()
    assert again.fallback
    retried = recorded("we're just saying some words and here are some more words", 0.1, 3.9, lp=-0.2, ns=0.0,
                       cr=1.4)
    events = policy.apply(again, PassResult((retried,), "en", 1.0), elapsed=0.6)
    assert finals(events) == ["we're just saying some words and here are some more words"]


def test_a_failed_segment_without_speech_is_dropped_without_a_second_decode():
    policy, final = closed_utterance(2.0)
    real = recorded("That is all.", 0.1, 1.9, lp=-0.2, ns=0.02, cr=0.9)
    quiet = recorded("That's it.", 2.1, 2.45, lp=-1.23, ns=0.53, cr=0.56)  # recorded: 0.12 s of speech in it
    events = policy.apply(final, PassResult((real, quiet), "en", 1.0), elapsed=0.2)
    assert finals(events) == ["That is all."] and not final.fallback


def test_a_looping_segment_is_decoded_again_and_keeps_only_what_precedes_its_loop():
    policy, final = closed_utterance(4.0)
    loop = recorded("This is the first one, but it's the first one," + " it's the first one," * 20, 0.1, 3.9,
                    lp=-0.34, ns=0.36, cr=16.64)
    policy.apply(final, PassResult((loop,), "en", 1.0), elapsed=0.2)
    again = policy.next_pass()
    assert again.fallback
    events = policy.apply(again, PassResult((loop,), "en", 1.0), elapsed=0.2)
    assert finals(events) == ["This is the first one, but it's the first one,"]
    assert policy.dropped["loops"] == 1


def test_a_pass_that_re_says_the_committed_tail_commits_only_what_follows():
    policy, final = closed_utterance(2.0, context_s=0.0)  # the next pass does not hear the committed words
    policy.apply(final, result(words_of("see you in the office.", 0.0)), elapsed=0.1)
    policy.push_audio(speech(2.0))
    policy.push_audio(silence(0.75))
    second = policy.next_pass()
    # The pass hears only the new utterance but starts by repeating its prompt.
    heard = words_of("in the office. bring the slides", 2.75, spacing=0.25)
    events = policy.apply(second, result(heard), elapsed=0.1)
    assert finals(events) == ["bring the slides"]
    assert policy.dropped["echoes"] == 1


def test_a_loop_that_goes_on_from_the_committed_text_is_cut():
    policy, final = closed_utterance(3.0, context_s=0.0)
    policy.apply(final, result(words_of("we will see you in the next video", 0.0, spacing=0.35)), elapsed=0.1)
    policy.push_audio(speech(3.0))
    policy.push_audio(silence(0.75))
    second = policy.next_pass()
    heard = words_of("in the next video see you in the next video and now", 3.75, spacing=0.17)
    events = policy.apply(second, result(heard), elapsed=0.1)
    assert finals(events) == []  # "in the next video" is an echo, then the same words once more: a loop
    assert policy.dropped["echoes"] == 1 and policy.dropped["loops"] == 1


def test_adaptive_step_grows_when_passes_are_slower_than_real_time():
    policy = make_policy(min_step_s=0.5)
    policy.push_audio(speech(1.0))
    request = policy.next_pass()
    policy.apply(request, result(words_of("slow", 0.0)), elapsed=2.0)
    assert policy.step_seconds >= 2.0
    policy.push_audio(speech(1.0))
    assert policy.next_pass() is None  # 1 s of new audio is less than the grown step
    policy.push_audio(speech(1.0))
    assert policy.next_pass() is not None
    # ... and shrinks back when passes get fast again.
    for _ in range(20):
        policy.push_audio(speech(0.5))
        request = policy.next_pass()
        if request is not None:
            policy.apply(request, result(words_of("fast", 0.0)), elapsed=0.1)
    assert policy.step_seconds == pytest.approx(0.5)


def test_lag_is_the_audio_not_yet_heard_by_a_pass():
    policy = make_policy()
    policy.push_audio(speech(1.0))
    request = policy.next_pass()
    policy.push_audio(speech(2.0))  # arrived while the pass ran
    policy.apply(request, result(words_of("a", 0.0)), elapsed=2.0)
    assert policy.lag_seconds == pytest.approx(2.0, abs=0.01)


def test_stop_flushes_the_open_utterance_as_final():
    policy = make_policy()
    policy.push_audio(speech(2.0))
    policy.apply(policy.next_pass(), result(words_of("almost done", 0.0)), elapsed=0.1)
    request = policy.finish()
    assert request is not None and request.final
    events = policy.apply(request, result(words_of("almost done now", 0.0)), elapsed=0.1)
    assert finals(events) == ["almost done now"]
    assert policy.finish() is None
    with pytest.raises(InvalidInput):
        policy.push_audio(speech(0.5))


# -- long sessions: scripted "true" speech with jittered hypotheses --------------------------------------------


class ScriptedSpeaker:
    """A continuous talker: word i spans [i * spacing, i * spacing + 0.3] s; every 9th word ends a sentence.

    Each pass hears the words wholly inside its audio, with jittered times, and a partial pass now and then
    mis-hears the last word (which an agreement must then not commit).
    """

    def __init__(self, vocabulary: list[str], seed: int = 1, spacing: float = 0.4) -> None:
        self.vocabulary = vocabulary
        self.spacing = spacing
        self.rng = random.Random(seed)

    def word(self, i: int) -> str:
        text = self.vocabulary[i % len(self.vocabulary)]
        return text + "." if i % 9 == 8 else text

    def truth(self, until: float) -> list[str]:
        return [word_key(self.word(i)) for i in range(int((until - 0.3) / self.spacing) + 1)]

    def hear(self, request: PassRequest) -> PassResult:
        words = []
        i = max(0, int(request.offset / self.spacing))
        while i * self.spacing + 0.3 <= request.end:
            start = i * self.spacing
            if start >= request.offset - 0.05:
                jitter = self.rng.uniform(-0.08, 0.08)
                text = self.word(i)
                if not request.final and i * self.spacing + 0.3 > request.end - 0.4 and self.rng.random() < 0.5:
                    text = "mumble"
                words.append(Word(start + jitter, start + 0.3 + jitter, " " + text, 0.9))
            i += 1
        return result(words)


def few_words_in_random_order(count: int = 1000) -> list[str]:
    """Words of one short sentence in random order, as long as no loop appears (a speaker cycling one sentence
    over and over would be a repetition loop, and dropped as one)."""
    rng = random.Random(5)
    words: list[str] = []
    while len(words) < count:
        word = rng.choice("the cat sat on the mat and the dog ate it".split())
        if find_repetition_loop([*words[-30:], word], new_from=min(len(words), 30)) is None:
            words.append(word)
    return words


@pytest.mark.parametrize("vocabulary", [
    [f"w{i}" for i in range(1000)],                                   # every word distinct
    few_words_in_random_order(),                                      # many repeats, to tempt the text matcher
])
def test_long_session_keeps_the_buffer_bounded_and_commits_every_word_once(vocabulary):
    policy = make_policy(max_utterance_s=10.0, agreement_after_s=4.0)
    speaker = ScriptedSpeaker(vocabulary)
    history: list[str] = []
    longest_pass = 0.0
    for _ in range(int(120 / 0.25)):  # two minutes without a pause
        policy.push_audio(speech(0.25))
        request = policy.next_pass()
        if request is None:
            continue
        longest_pass = max(longest_pass, request.audio.size / SR)
        for event in policy.apply(request, speaker.hear(request), elapsed=0.3):
            if event.kind == "final":
                history.append(event.text)
        assert policy.buffered_seconds <= 10.0 + 1.0
    while (request := policy.finish()) is not None:
        for event in policy.apply(request, speaker.hear(request), elapsed=0.3):
            if event.kind == "final":
                history.append(event.text)

    assert longest_pass <= 10.0 + 1.0
    assert len(history) > 5  # committed along the way, not only at stop
    committed = [word_key(w) for w in policy.committed_text.split()]
    assert committed == speaker.truth(policy.audio_seconds)
    assert " ".join(history) == policy.committed_text


def test_a_long_utterance_slides_its_buffer_behind_the_committed_words():
    policy = make_policy(agreement_after_s=2.0, slide_context_s=4.0)  # (0 would keep 15-s passes: trims only)
    speaker = ScriptedSpeaker([f"w{i}" for i in range(1000)])
    lengths = []
    for _ in range(int(30 / 0.25)):  # half a minute without a pause
        policy.push_audio(speech(0.25))
        request = policy.next_pass()
        if request is not None:
            lengths.append((request.end, request.audio.size / SR))
            policy.apply(request, speaker.hear(request), elapsed=0.3)
    while (request := policy.finish()) is not None:
        policy.apply(request, speaker.hear(request), elapsed=0.3)
    # Once words commit, every pass hears about 4 s of them plus what is not committed yet (never the trim's 15 s).
    late = [length for end, length in lengths if end > 10]
    assert late and max(late) <= 4.0 + 1.0 + 2.5
    assert [word_key(w) for w in policy.committed_text.split()] == speaker.truth(policy.audio_seconds)


def test_commits_are_never_retracted_or_repeated_under_random_hypotheses():
    rng = random.Random(7)
    vocabulary = "alpha beta gamma delta epsilon".split()
    for trial in range(20):
        policy = make_policy(agreement_after_s=rng.choice([0.0, 2.0, 8.0]), agreement_margin_s=0.0,
                             max_utterance_s=6.0)
        previous = ""
        concatenated = []
        for step in range(80):
            policy.push_audio(speech(0.25) if rng.random() < 0.8 else silence(0.25))
            request = policy.next_pass() or (policy.finish() if step == 79 else None)
            while request is not None:
                n = int(request.audio.size / SR / 0.4)
                words = words_of(" ".join(rng.choice(vocabulary) for _ in range(n)), request.offset)
                for event in policy.apply(request, result(words), elapsed=rng.uniform(0.05, 1.0)):
                    if event.kind == "final":
                        assert event.text
                        concatenated.append(event.text)
                        assert policy.committed_text.startswith(previous), trial
                        previous = policy.committed_text
                request = policy.finish() if step == 79 else None
        assert " ".join(concatenated) == policy.committed_text


@pytest.mark.parametrize("seconds, frames", [(0.5, 1000), (3.0, 1000), (9.0, 1000), (9.01, 1100), (11.0, 1200),
                                             (20.3, 2200), (28.0, 2900), (29.0, None), (45.0, None)])
def test_fitted_encoder_window(seconds, frames):
    """Audio length + 1 s of padding, whole seconds, at least 10 s; None (the full 30 s) when that is no shorter."""
    from whisper_appliance.core.engines.faster import fitted_frames

    assert fitted_frames(int(seconds * SAMPLE_RATE)) == frames
