"""Stores for the report engine's tests: several tasks' worth of keys, made here."""
from __future__ import annotations

import pytest
from report_helpers import write_store


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "run.gs")
