"""Parse user-supplied decoding options (form fields, CLI, job records) into ``TranscribeOptions``.

One parser for every entry point, so ``POST /transcribe``, ``POST /api/jobs``, the OpenAI-compatible API and
the CLI accept the same values and reject the same mistakes with the same message (HTTP 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import parse_bool
from .errors import InvalidInput
from .languages import LANGUAGE_NAMES
from .records import TASKS, TranscribeOptions

# Whisper's language codes, so a typo is a clear 400 instead of a model error.
LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_NAMES)
MAX_PROMPT_CHARS = 2000


def parse_language(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto", "detect"):
        return None
    if text not in LANGUAGES:
        raise InvalidInput(f"language {value!r} is not a Whisper language code (e.g. en, de, fr) or 'auto'",
                           code="invalid_language")
    return text


def _number(name: str, value: Any, kind: type, lo: float, hi: float) -> Any:
    try:
        number = kind(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be a number between {lo} and {hi}, got {value!r}",
                           code="invalid_option") from None
    if not lo <= number <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi}, got {value!r}", code="invalid_option")
    return number


def parse_int(name: str, value: Any, *, default: int | None = None, lo: int | None = None,
              hi: int | None = None) -> int | None:
    """A whole-number field (query string, form); empty -> ``default``; outside [lo, hi] -> 400."""
    if value is None or str(value).strip() == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, got {value!r}", code="invalid_option") from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        bounds = (f"between {lo} and {hi}" if lo is not None and hi is not None
                  else f"{lo} or more" if lo is not None else f"{hi} or less")
        raise InvalidInput(f"{name} must be {bounds}, got {number}", code="invalid_option")
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return parse_bool(str(value))
    except ValueError:
        raise InvalidInput(f"{name} must be true or false, got {value!r}", code="invalid_option") from None


def parse_options(fields: Mapping[str, Any], base: TranscribeOptions | None = None) -> TranscribeOptions:
    """Build options from string fields; absent or empty fields keep ``base``'s values."""
    opts = base or TranscribeOptions()
    changes: dict[str, Any] = {}

    def given(name: str) -> bool:
        value = fields.get(name)
        return value is not None and str(value).strip() != ""

    if "language" in fields:
        changes["language"] = parse_language(fields.get("language"))
    if given("task"):
        task = str(fields["task"]).strip().lower()
        if task not in TASKS:
            raise InvalidInput(f"task must be one of {', '.join(TASKS)}, got {fields['task']!r}",
                               code="invalid_option")
        changes["task"] = task
    if given("beam_size"):
        changes["beam_size"] = _number("beam_size", fields["beam_size"], int, 1, 10)
    if given("temperature"):
        changes["temperature"] = _number("temperature", fields["temperature"], float, 0.0, 1.0)
    if given("initial_prompt"):
        prompt = str(fields["initial_prompt"])
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"initial_prompt is longer than {MAX_PROMPT_CHARS} characters", code="invalid_option")
        changes["initial_prompt"] = prompt
    for name in ("word_timestamps", "vad_filter", "condition_on_previous_text"):
        if given(name):
            changes[name] = _flag(name, fields[name])
    return opts.replace(**changes) if changes else opts


def check_language_for_model(options: TranscribeOptions, model_name: str) -> None:
    """English-only models (``*.en``) cannot transcribe or translate other languages."""
    if model_name.endswith(".en"):
        if options.language not in (None, "en"):
            raise InvalidInput(f"the loaded model {model_name} is English-only; language {options.language!r} "
                               "needs a multilingual model", code="invalid_language")
        if options.task == "translate":
            raise InvalidInput(f"the loaded model {model_name} is English-only and cannot translate",
                               code="invalid_option")
