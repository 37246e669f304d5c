"""Fixtures for the converter tests: real source files written into tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")


@pytest.fixture
def src(tmp_path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


@pytest.fixture
def dest(tmp_path) -> Path:
    return tmp_path / "run.gs"
