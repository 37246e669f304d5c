"""Fixtures shared by the store's crash and concurrency tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import crash_writer as cw  # noqa: E402


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch directory on tmpfs when there is one (see crash_writer.scratch_dir)."""
    d, cleanup = cw.scratch_dir(tmp_path)
    yield d
    cleanup()


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="run the fuzz suite (tests/fuzz) for minutes instead of seconds")


@pytest.fixture
def long_run(request) -> bool:
    """True under ``pytest --long``: property tests draw many more examples."""
    return request.config.getoption("--long")
