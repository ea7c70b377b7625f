"""Shared fixtures for all three test layers (unit, integration, e2e).

Markers are applied by folder: tests/unit -> unit, tests/integration -> integration, tests/e2e -> e2e, so each
layer runs alone with ``-m unit`` etc.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_appliance.core.wer import word_errors

ROOT = Path(__file__).resolve().parents[1]
SPEECH_DIR = (ROOT / ".." / "shared" / "speech").resolve()
MODELS_DIR = ROOT / "models"


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not SPEECH_DIR.is_dir():
        pytest.fail(f"test speech not found at {SPEECH_DIR} (the shared/ folder beside the checkout)")
    return SPEECH_DIR


def reference_text(name: str) -> str:
    return (SPEECH_DIR / f"{name}.txt").read_text().strip()


def hallucinated_runs(offline: str, live: str) -> tuple[tuple[str, ...], ...]:
    """Word runs the live text has and the offline text of the same audio does not: three or more words made
    from nothing between words heard right, or five or more anywhere. Real-time runs differ from offline in
    tiny.en's misheard phrases, which can come out a word or three longer ('Everyone agreed' as 'and we want
    to read', seen in CI); a hallucinated phrase such as 'we'll see you in the next video' does not need that."""
    return word_errors(offline, live).flanked_runs + word_errors(offline, live, min_run=5).insertion_runs
