"""core/formats.py: golden output for every writer, timestamps, escaping and line wrapping."""

from __future__ import annotations

import json

import pytest

from whisper_appliance.core.errors import InvalidInput
from whisper_appliance.core.formats import (
    FORMATS,
    OutputFormat,
    format_timestamp,
    render,
    spreadsheet_cell,
    spreadsheet_value,
)
from whisper_appliance.core.records import Segment, Transcript, Word


def transcript(*segments: Segment, text: str | None = None) -> Transcript:
    joined = "".join(s.text for s in segments).strip()
    return Transcript(text=joined if text is None else text, language="en", language_probability=0.99,
                      duration=segments[-1].end if segments else 0.0, segments=segments)


TWO = transcript(Segment(0, 0.0, 2.5, " Hello world."), Segment(1, 2.5, 5.0049, " How are you?"))
EMPTY = transcript()


# ---------------------------------------------------------------------------------------------------------------
# format_timestamp


@pytest.mark.parametrize("seconds, kwargs, expected", [
    (0, {}, "00:00.000"),
    (0, {"always_include_hours": True}, "00:00:00.000"),
    (1.5, {"always_include_hours": True, "decimal_marker": ","}, "00:00:01,500"),
    (59.9995, {}, "01:00.000"),            # rounds up across the minute
    (3599.9995, {}, "01:00:00.000"),       # ... and across the hour, which then appears
    (1.0004, {}, "00:01.000"),
    (3725.5, {}, "01:02:05.500"),
    (360_000.0, {"decimal_marker": ","}, "100:00:00,000"),
    (-0.0, {}, "00:00.000"),
])
def test_format_timestamp(seconds, kwargs, expected):
    assert format_timestamp(seconds, **kwargs) == expected


def test_format_timestamp_rejects_negative():
    with pytest.raises(ValueError):
        format_timestamp(-1.0)


# ---------------------------------------------------------------------------------------------------------------
# writers, golden


def test_txt():
    assert render(TWO, "txt") == "Hello world.\nHow are you?\n"


def test_srt():
    assert render(TWO, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello world.\n\n"
        "2\n00:00:02,500 --> 00:00:05,005\nHow are you?\n\n"
    )


def test_vtt():
    assert render(TWO, "vtt") == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:02.500\nHello world.\n\n"
        "00:02.500 --> 00:05.005\nHow are you?\n\n"
    )


@pytest.mark.parametrize("text, cell", [
    ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"), ("+1+1", "'+1+1"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tcmd", "'\tcmd"), ("\rcmd", "'\rcmd"), ("'=already", "''=already"),
    ("'tis", "''tis"), ("plain = text", "plain = text"), ("", ""), ("1+1", "1+1"),
])
def test_spreadsheet_cells_never_start_a_formula_and_round_trip(text, cell):
    assert spreadsheet_cell(text) == cell
    assert spreadsheet_value(cell) == text


def test_spreadsheet_value_keeps_an_apostrophe_that_is_the_texts_own():
    assert spreadsheet_value("'tis the season") == "'tis the season"


def test_tsv_text_cannot_start_a_formula():
    t = transcript(Segment(0, 0.0, 1.0, "=1+2"), Segment(1, 1.0, 2.0, " -minus"))
    assert render(t, "tsv") == "start\tend\ttext\n0\t1000\t'=1+2\n1000\t2000\t'-minus\n"


def test_tsv():
    assert render(TWO, "tsv") == "start\tend\ttext\n0\t2500\tHello world.\n2500\t5005\tHow are you?\n"


def test_json():
    out = render(TWO, "json")
    assert json.loads(out) == TWO.to_dict()
    assert out == (
        '{"text": "Hello world. How are you?", "language": "en", "language_probability": 0.99, "duration": 5.005, '
        '"segments": [{"id": 0, "start": 0.0, "end": 2.5, "text": " Hello world.", "avg_logprob": 0.0, '
        '"no_speech_prob": 0.0}, {"id": 1, "start": 2.5, "end": 5.005, "text": " How are you?", '
        '"avg_logprob": 0.0, "no_speech_prob": 0.0}]}'
    )


@pytest.mark.parametrize("fmt, expected", [
    ("txt", ""), ("srt", ""), ("vtt", "WEBVTT\n\n"), ("tsv", "start\tend\ttext\n"),
    ("json", '{"text": "", "language": "en", "language_probability": 0.99, "duration": 0.0, "segments": []}'),
])
def test_empty_transcript(fmt, expected):
    assert render(EMPTY, fmt) == expected


def test_txt_without_segments_uses_the_text():
    assert render(transcript(text="Just text."), "txt") == "Just text.\n"


def test_cue_over_100_hours():
    t = transcript(Segment(0, 360_000.0, 360_001.9995, " Late."))
    assert render(t, "srt") == "1\n100:00:00,000 --> 100:00:02,000\nLate.\n\n"
    assert render(t, "vtt") == "WEBVTT\n\n100:00:00.000 --> 100:00:02.000\nLate.\n\n"
    assert render(t, "tsv") == "start\tend\ttext\n360000000\t360002000\tLate.\n"


def test_rounding_at_three_quarters_of_a_millisecond():
    t = transcript(Segment(0, 0.9995, 9.9995, " x"))
    assert "00:00:01,000 --> 00:00:10,000" in render(t, "srt")
    assert "00:01.000 --> 00:10.000" in render(t, "vtt")


def test_arrow_in_text_cannot_end_a_cue():
    t = transcript(Segment(0, 0.0, 1.0, " a --> b ---> c <b>&"))
    assert render(t, "srt") == "1\n00:00:00,000 --> 00:00:01,000\na -> b -> c <b>&\n\n"
    assert render(t, "vtt") == "WEBVTT\n\n00:00.000 --> 00:01.000\na --&gt; b ---&gt; c &lt;b&gt;&amp;\n\n"


def test_newlines_and_blank_lines_in_text_collapse():
    t = transcript(Segment(0, 0.0, 1.0, " one\n\ntwo\r\n three\tfour "))
    assert render(t, "srt") == "1\n00:00:00,000 --> 00:00:01,000\none two three four\n\n"
    assert render(t, "txt") == "one two three four\n"
    assert render(t, "tsv") == "start\tend\ttext\n0\t1000\tone two three four\n"


def test_empty_segments_make_no_cue_and_numbering_stays_consecutive():
    t = transcript(Segment(0, 0.0, 1.0, " a"), Segment(1, 1.0, 2.0, "  "), Segment(2, 2.0, 3.0, " b"))
    assert render(t, "srt") == ("1\n00:00:00,000 --> 00:00:01,000\na\n\n"
                                "2\n00:00:02,000 --> 00:00:03,000\nb\n\n")


def test_unicode():
    t = transcript(Segment(0, 0.0, 1.5, " Grüße, 世界! Ça va? 😀"))
    assert render(t, "srt") == "1\n00:00:00,000 --> 00:00:01,500\nGrüße, 世界! Ça va? 😀\n\n"
    assert render(t, "vtt") == "WEBVTT\n\n00:00.000 --> 00:01.500\nGrüße, 世界! Ça va? 😀\n\n"
    assert "世界" in render(t, "json")  # not \\u-escaped


LONG = transcript(Segment(0, 10.0, 20.0, " The quick brown fox jumps over the lazy dog again and again."))


def test_max_line_width_wraps_at_word_boundaries():
    assert render(LONG, "srt", max_line_width=20) == (
        "1\n00:00:10,000 --> 00:00:20,000\n"
        "The quick brown fox\njumps over the lazy\ndog again and again.\n\n"
    )
    assert render(LONG, "vtt", max_line_width=12) == (
        "WEBVTT\n\n00:10.000 --> 00:20.000\n"
        "The quick\nbrown fox\njumps over\nthe lazy dog\nagain and\nagain.\n\n"
    )


def test_word_longer_than_width_keeps_its_own_line():
    t = transcript(Segment(0, 0.0, 1.0, " a supercalifragilistic b"))
    assert render(t, "srt", max_line_width=5) == (
        "1\n00:00:00,000 --> 00:00:01,000\na\nsupercalifragilistic\nb\n\n")


def test_max_line_count_splits_cues_in_proportion_without_words():
    # Lines hold 16/16/17 characters of words (spaces not counted): the first cue gets 32/49 of the 10 s.
    out = render(LONG, "srt", max_line_width=20, max_line_count=2)
    assert out == (
        "1\n00:00:10,000 --> 00:00:16,531\nThe quick brown fox\njumps over the lazy\n\n"
        "2\n00:00:16,531 --> 00:00:20,000\ndog again and again.\n\n"
    )


def test_max_line_count_uses_word_timestamps():
    words = tuple(Word(float(i), i + 0.5, f" w{i}", 0.9) for i in range(6))
    t = transcript(Segment(0, 0.0, 6.0, "".join(w.word for w in words), words=words))
    assert render(t, "vtt", max_line_width=5, max_line_count=2) == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:03.500\nw0 w1\nw2 w3\n\n"
        "00:04.000 --> 00:05.500\nw4 w5\n\n"
    )


def test_render_rejects_unknown_format_and_bad_options():
    with pytest.raises(InvalidInput, match="accepted formats: json, txt, srt, vtt, tsv"):
        render(TWO, "docx")
    with pytest.raises(InvalidInput, match="max_line_width"):
        render(TWO, "srt", max_line_width=0)
    with pytest.raises(InvalidInput, match="needs max_line_width"):
        render(TWO, "srt", max_line_count=2)


def test_format_name_is_case_insensitive():
    assert render(TWO, " SRT ") == render(TWO, "srt")


def test_formats_table():
    assert set(FORMATS) == {"json", "txt", "srt", "vtt", "tsv"}
    assert FORMATS["vtt"] == OutputFormat("vtt", "text/vtt; charset=utf-8", "vtt")
    assert FORMATS["json"].content_type == "application/json"
    assert FORMATS["srt"].content_type.startswith("application/x-subrip")
    assert FORMATS["tsv"].content_type.startswith("text/tab-separated-values")
    assert all(f.name == key and f.extension == key for key, f in FORMATS.items())
