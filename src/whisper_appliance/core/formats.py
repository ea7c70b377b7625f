"""Every output format of a transcript: json, txt, srt, vtt, tsv. ``render`` is the only place format logic lives.

One writer per format, as in openai-whisper's ``utils.py``, over a ``Transcript`` record. Choices:

* Cue text (srt, vtt) is one line: all whitespace, newlines included, collapses to single spaces, because a blank
  line would end a cue early. ``max_line_width`` then wraps it at word boundaries (a longer word keeps its own
  line); ``max_line_count`` splits a segment into several cues of at most that many lines, timed by the words'
  own timestamps when the segment has them, otherwise in proportion to the characters.
* SRT has no escape mechanism, so a run of ``--`` followed by ``>`` in text becomes ``->`` (``-->`` would be read
  as a timing line). VTT escapes ``&``, ``<`` and ``>`` as entities, which also disarms ``-->``.
* Segments whose text is empty produce no cue (an empty cue is invalid SRT); cues are numbered 1, 2, ... over
  what is written.
* txt writes one segment per line; tsv is ``start<TAB>end<TAB>text`` in integer milliseconds with a header row,
  tabs/newlines in text become spaces; json is ``Transcript.to_dict()``, compact, UTF-8 (not ASCII-escaped).
* Spreadsheet cells (tsv here, the history CSV export) go through ``spreadsheet_cell``: one starting with ``=``,
  ``+``, ``-``, ``@``, TAB or CR would be run as a formula by Excel or LibreOffice, so it gets a leading ``'``
  (as does one already starting with ``'``, so that ``spreadsheet_value`` undoes it exactly on import).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import InvalidInput
from .records import Segment, Transcript


@dataclass(frozen=True)
class OutputFormat:
    name: str
    content_type: str
    extension: str


FORMATS: dict[str, OutputFormat] = {
    "json": OutputFormat("json", "application/json", "json"),
    "txt": OutputFormat("txt", "text/plain; charset=utf-8", "txt"),
    "srt": OutputFormat("srt", "application/x-subrip; charset=utf-8", "srt"),
    "vtt": OutputFormat("vtt", "text/vtt; charset=utf-8", "vtt"),
    "tsv": OutputFormat("tsv", "text/tab-separated-values; charset=utf-8", "tsv"),
}


def format_timestamp(seconds: float, *, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """``3725.5`` -> ``"01:02:05.500"``; hours appear when non-zero or asked for, and may exceed 99."""
    milliseconds = round(seconds * 1000.0)
    if milliseconds < 0:
        raise ValueError(f"timestamps cannot be negative, got {seconds}")
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1_000)
    hours_part = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


def render(transcript: Transcript, fmt: str, *, max_line_width: int | None = None,
           max_line_count: int | None = None) -> str:
    """The transcript as text in format ``fmt`` (a key of ``FORMATS``). Unknown format -> InvalidInput."""
    name = fmt.strip().lower() if isinstance(fmt, str) else fmt
    if name not in FORMATS:
        raise InvalidInput(f"unknown output format {fmt!r}; accepted formats: {', '.join(FORMATS)}")
    for option, value in (("max_line_width", max_line_width), ("max_line_count", max_line_count)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidInput(f"{option} must be a positive integer, got {value!r}")
    if max_line_count is not None and max_line_width is None:
        raise InvalidInput("max_line_count needs max_line_width (lines are only counted once text is wrapped)")
    return _WRITERS[name](transcript, _Layout(max_line_width, max_line_count))


# ---------------------------------------------------------------------------------------------------------------
# Cue layout shared by the subtitle writers


@dataclass(frozen=True)
class _Layout:
    max_line_width: int | None = None
    max_line_count: int | None = None


@dataclass(frozen=True)
class _Cue:
    start: float
    end: float
    lines: tuple[str, ...]


@dataclass(frozen=True)
class _Token:
    text: str
    start: float | None
    end: float | None


# What makes a spreadsheet read a cell as a formula (OWASP "CSV injection"), plus the escape mark itself.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_cell(text: str) -> str:
    """``text`` as a spreadsheet shows it literally: ``'`` before a cell a spreadsheet would run as a formula."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def spreadsheet_value(cell: str) -> str:
    """Undo ``spreadsheet_cell`` (a lone leading ``'`` before anything else is the text's own and stays)."""
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_STARTS):
        return cell[1:]
    return cell


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _tokens(segment: Segment) -> list[_Token]:
    if segment.words:
        tokens = [_Token(_one_line(w.word), w.start, w.end) for w in segment.words]
        tokens = [t for t in tokens if t.text]
        if tokens:
            return tokens
    return [_Token(word, None, None) for word in segment.text.split()]


def _wrap(tokens: list[_Token], width: int | None) -> list[list[_Token]]:
    """Greedy word wrap; a token longer than ``width`` gets a line of its own rather than being cut."""
    if width is None:
        return [tokens]
    lines: list[list[_Token]] = []
    current: list[_Token] = []
    length = 0
    for token in tokens:
        added = len(token.text) + (1 if current else 0)
        if current and length + added > width:
            lines.append(current)
            current, length = [], 0
            added = len(token.text)
        current.append(token)
        length += added
    if current:
        lines.append(current)
    return lines


def _cues(transcript: Transcript, layout: _Layout) -> Iterator[_Cue]:
    for segment in transcript.segments:
        tokens = _tokens(segment)
        if not tokens:
            continue
        lines = _wrap(tokens, layout.max_line_width)
        per_cue = layout.max_line_count or len(lines)
        groups = [lines[i:i + per_cue] for i in range(0, len(lines), per_cue)]
        if len(groups) == 1:
            yield _Cue(segment.start, segment.end, tuple(_line_text(line) for line in lines))
            continue
        total_chars = sum(len(t.text) for t in tokens)
        duration = segment.end - segment.start
        done = 0
        for group in groups:
            chars = sum(len(t.text) for line in group for t in line)
            first, last = group[0][0], group[-1][-1]
            start = first.start if first.start is not None else segment.start + duration * done / total_chars
            done += chars
            end = last.end if last.end is not None else segment.start + duration * done / total_chars
            yield _Cue(start, end, tuple(_line_text(line) for line in group))


def _line_text(line: list[_Token]) -> str:
    return " ".join(t.text for t in line)


def _srt_escape(text: str) -> str:
    return re.sub(r"-{2,}>", "->", text)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------------------------
# Writers


def _write_txt(transcript: Transcript, layout: _Layout) -> str:
    if not transcript.segments:
        text = transcript.text.strip()
        return text + "\n" if text else ""
    lines = [_one_line(s.text) for s in transcript.segments]
    return "".join(line + "\n" for line in lines if line)


def _write_srt(transcript: Transcript, layout: _Layout) -> str:
    out = []
    for number, cue in enumerate(_cues(transcript, layout), start=1):
        start = format_timestamp(cue.start, always_include_hours=True, decimal_marker=",")
        end = format_timestamp(cue.end, always_include_hours=True, decimal_marker=",")
        text = "\n".join(_srt_escape(line) for line in cue.lines)
        out.append(f"{number}\n{start} --> {end}\n{text}\n\n")
    return "".join(out)


def _write_vtt(transcript: Transcript, layout: _Layout) -> str:
    out = ["WEBVTT\n\n"]
    for cue in _cues(transcript, layout):
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        out.append(f"{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}\n{text}\n\n")
    return "".join(out)


def _write_tsv(transcript: Transcript, layout: _Layout) -> str:
    out = ["start\tend\ttext\n"]
    for segment in transcript.segments:
        text = _one_line(segment.text)
        if text:
            out.append(f"{round(1000 * segment.start)}\t{round(1000 * segment.end)}\t{spreadsheet_cell(text)}\n")
    return "".join(out)


def _write_json(transcript: Transcript, layout: _Layout) -> str:
    return json.dumps(transcript.to_dict(), ensure_ascii=False)


_WRITERS: dict[str, Callable[[Transcript, _Layout], str]] = {
    "json": _write_json, "txt": _write_txt, "srt": _write_srt, "vtt": _write_vtt, "tsv": _write_tsv,
}
