"""core/wer.py: normalisation (numbers spelled out, punctuation gone) and word error rate."""

from __future__ import annotations

import pytest

from whisper_appliance.core.wer import normalize, number_to_words, ordinal_words, word_error_rate, word_errors


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (9, "nine"), (10, "ten"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"),
    (99, "ninety nine"), (100, "one hundred"), (105, "one hundred five"), (1000, "one thousand"),
    (1961, "one thousand nine hundred sixty one"), (2_000_017, "two million seventeen"),
    (10 ** 12, "one trillion"), (10 ** 15, "one zero zero zero zero zero zero zero zero zero zero zero zero zero "
                                           "zero zero"),
])
def test_number_to_words(n, words):
    assert number_to_words(n) == words


@pytest.mark.parametrize("n, words", [
    (1, "first"), (2, "second"), (3, "third"), (5, "fifth"), (8, "eighth"), (9, "ninth"), (12, "twelfth"),
    (20, "twentieth"), (21, "twenty first"), (100, "one hundredth"), (4, "fourth"),
])
def test_ordinal_words(n, words):
    assert ordinal_words(n) == words


@pytest.mark.parametrize("text, expected", [
    ("Go forward 10 meters.", "go forward ten meters"),
    ("10 of clubs", "ten of clubs"),
    ("9", "nine"),
    ("the 2nd time, the 21st century", "the second time the twenty first century"),
    ("1,000 people", "one thousand people"),
    ("$5", "five dollars"),
    ("It costs $1,250.50!", "it costs one thousand two hundred fifty point five zero dollars"),
    ("50% off", "fifty percent off"),
    ("3.5 miles", "three point five miles"),
    ("twenty-one", "twenty one"),
    ("about 1455, in 1400 and 1905", "about fourteen fifty five in fourteen hundred and nineteen oh five"),
    ("1,455 pages, 2024 and 1099", "one thousand four hundred fifty five pages two thousand twenty four and "
                                   "one thousand ninety nine"),
    ("  And so,   my fellow\nAmericans; ask NOT... ", "and so my fellow americans ask not"),
    ("Don't \"quote\" me — ok?", "dont quote me ok"),
    ("Grüße, Café!", "grüße café"),
    ("", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_reference_words_and_whisper_digits_compare_equal():
    assert word_error_rate("go forward ten meters", " Go forward 10 meters.") == 0.0
    assert word_error_rate("eight of spades four of clubs seven of hearts",
                           "8 of spades, 4 of clubs, 7 of hearts.") == 0.0


def test_word_error_rate_counts_errors():
    # one substitution and one deletion over four reference words
    assert word_error_rate("the cat sat down", "the dog sat") == pytest.approx(0.5)
    # insertions can push WER above 1
    assert word_error_rate("yes", "no no no") == pytest.approx(3.0)
    assert word_error_rate("Hello, world!", "hello world") == 0.0


def test_word_errors_counts_and_insertion_runs():
    errors = word_errors("it is of the first importance", "it is of the first one and thats it importance")
    assert (errors.reference_words, errors.substitutions, errors.deletions, errors.insertions) == (6, 0, 0, 4)
    assert errors.insertion_runs == (("one", "and", "thats", "it"),)
    assert errors.rate == pytest.approx(4 / 6) and errors.inserted_in_runs == 4
    assert errors.flanked_runs == errors.insertion_runs
    # Two inserted words are not a run; a substitution is not an insertion.
    assert word_errors("a b c d", "a x y b c e d").insertion_runs == ()
    assert word_errors("", "thank you for watching").insertion_runs == (("thank", "you", "for", "watching"),)
    assert word_errors("some words", "").deletions == 2


def test_a_misheard_phrase_that_came_out_longer_is_an_insertion_run_but_not_a_flanked_one():
    # Recorded in CI (live WebM, tiny.en): 'Everyone agreed' heard as 'and we want to read'.
    errors = word_errors("of delays everyone agreed to meet again", "of delays and we want to read to meet again")
    assert errors.insertion_runs and errors.flanked_runs == ()
    # A hallucination into a pause has heard words on both sides, or the end of the text.
    errors = word_errors("two lines of the poem", "two lines well see you in the next one of the poem")
    assert errors.flanked_runs == (("well", "see", "you", "in", "the", "next", "one"),)
    assert word_errors("the end", "the end thank you for watching").flanked_runs == (
        ("thank", "you", "for", "watching"),)


def test_word_errors_by_characters_for_languages_without_spaces():
    errors = word_errors("今日は", "今日わ", characters=True)
    assert (errors.reference_words, errors.substitutions) == (3, 1)


def test_word_error_rate_on_empty_texts():
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("...", "") == 0.0
    assert word_error_rate("", "something") == 1.0
    assert word_error_rate("something here", "") == 1.0


def test_real_reference(speech_dir):
    ref = (speech_dir / "jfk.txt").read_text()
    hyp = ("And so my fellow Americans, ask not what your country can do for you, "
           "ask what you can do for your country.")
    assert word_error_rate(ref, hyp) == 0.0
    assert word_error_rate(ref, hyp.replace("country", "county", 1)) == pytest.approx(1 / 22)
