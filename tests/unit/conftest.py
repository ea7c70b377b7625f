"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from whisper_appliance.services.database import Database


@pytest.fixture
def db(tmp_path):
    """A real SQLite database file, migrated to the latest schema."""
    database = Database(tmp_path / "appliance.db")
    yield database
    database.close()
