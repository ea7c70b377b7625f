"""Word error rate scoring: text normalisation so that spelled-out references and Whisper's digits compare equal.

Pure functions. ``normalize`` lowercases, spells numbers as words ("10" -> "ten", "2nd" -> "second",
"1,000" -> "one thousand", "$5" -> "five dollars", "10%" -> "ten percent", "3.5" -> "three point five", and
years as they are read: "1455" -> "fourteen fifty five"),
turns hyphens into spaces ("twenty-one" -> "twenty one"), drops other punctuation and collapses whitespace.
``word_error_rate`` scores two texts after normalising both, with ``jiwer`` doing the alignment; ``word_errors``
gives the counts behind it and the runs of inserted words (hallucinations look like that).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import jiwer

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
_CURRENCIES = {"$": "dollars", "£": "pounds", "€": "euros"}

# "$1,000.50", "2nd", "10%", "3.5": a number with optional currency sign, grouping, decimals, ordinal or percent.
_NUMBER = re.compile(r"(?P<cur>[$£€])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
                     r"(?:(?P<ord>st|nd|rd|th)\b|(?P<pct>%))?")


def number_to_words(n: int) -> str:
    """Cardinal English words for a non-negative integer: 1961 -> 'one thousand nine hundred sixty one'."""
    if n < 0:
        raise ValueError(f"expected a non-negative integer, got {n}")
    if n >= 10 ** 15:
        return " ".join(_ONES[int(d)] for d in str(n))  # too long to be read as a quantity; say the digits
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{number_to_words(high)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """21 -> 'twenty first', 100 -> 'one hundredth'."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(n: int) -> str:
    """A year as it is read: 1455 -> 'fourteen fifty five', 1400 -> 'fourteen hundred', 1905 -> 'nineteen oh five'."""
    century, rest = divmod(n, 100)
    if rest == 0:
        return f"{number_to_words(century)} hundred"
    return f"{number_to_words(century)} {'oh ' if rest < 10 else ''}{number_to_words(rest)}"


def _spell_number(match: re.Match[str]) -> str:
    plain = match["int"]
    integer = int(plain.replace(",", ""))
    if match["ord"]:
        return f" {ordinal_words(integer)} "
    if len(plain) == 4 and 1100 <= integer <= 1999 and not (match["frac"] or match["pct"] or match["cur"]):
        # Four bare digits from 1100 to 1999 are years in speech ("about 1455"), read in pairs.
        return f" {year_words(integer)} "
    words = number_to_words(integer)
    if match["frac"]:
        # Leading zeros in the integer part ("007") are read like any other number; decimals digit by digit.
        words += " point " + " ".join(_ONES[int(d)] for d in match["frac"])
    if match["pct"]:
        words += " percent"
    if match["cur"]:
        words += " " + _CURRENCIES[match["cur"]]
    return f" {words} "


def normalize(text: str) -> str:
    """Lowercase, numbers spelled as words, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NUMBER.sub(_spell_number, text)
    text = text.replace("%", " percent ")
    # Hyphens and slashes separate words ("twenty-one", "and/or"); apostrophes join them ("don't" -> "dont").
    text = re.sub(r"[-‐‑–—/]", " ", text)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` after ``normalize`` on both (0.0 = identical).

    An empty reference scores 0.0 against an empty hypothesis and 1.0 against anything else (WER is undefined
    there; every word would be an insertion).
    """
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


@dataclass(frozen=True)
class WordErrors:
    """How a hypothesis differs from a reference, word by word (after ``normalize``).

    ``insertion_runs`` are the hypothesis words that align with nothing in the reference, one tuple per run of
    at least ``min_run`` adjacent such words: what a hallucination into a pause looks like. ``flanked_runs`` are
    those of them with a matched word (or the edge of the text) on both sides: text made from nothing between
    words heard right. A misheard phrase that came out longer than it was ('Everyone agreed' as 'and we want to
    read') is an insertion run too, but one beside substitutions.
    """

    reference_words: int
    substitutions: int
    deletions: int
    insertions: int
    insertion_runs: tuple[tuple[str, ...], ...] = ()
    flanked_runs: tuple[tuple[str, ...], ...] = ()

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """WER, with ``word_error_rate``'s convention for an empty reference."""
        if not self.reference_words:
            return 0.0 if not self.insertions else 1.0
        return self.errors / self.reference_words

    @property
    def inserted_in_runs(self) -> int:
        return sum(len(run) for run in self.insertion_runs)


def word_errors(reference: str, hypothesis: str, *, min_run: int = 3, characters: bool = False) -> WordErrors:
    """Substitutions, deletions and insertions of ``hypothesis`` against ``reference``, and the insertion runs.

    ``characters`` scores characters instead of words (spaces removed): for languages written without spaces
    between words, such as Japanese.
    """
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    if characters:
        ref, hyp = list("".join(ref)), list("".join(hyp))
    if not ref or not hyp:
        runs = (tuple(hyp),) if len(hyp) >= min_run else ()
        return WordErrors(len(ref), 0, len(ref), len(hyp), runs, runs)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    chunks = out.alignments[0]
    runs: list[tuple[str, ...]] = []
    flanked: list[tuple[str, ...]] = []
    for i, chunk in enumerate(chunks):
        if chunk.type == "insert" and chunk.hyp_end_idx - chunk.hyp_start_idx >= min_run:
            run = tuple(hyp[chunk.hyp_start_idx:chunk.hyp_end_idx])
            runs.append(run)
            before = chunks[i - 1].type if i > 0 else "equal"
            after = chunks[i + 1].type if i + 1 < len(chunks) else "equal"
            if before == after == "equal":
                flanked.append(run)
    return WordErrors(len(ref), out.substitutions, out.deletions, out.insertions, tuple(runs), tuple(flanked))
