"""Fixtures shared by the store's crash and concurrency tests, and a guard against leaked processes."""
from __future__ import annotations

import multiprocessing
import signal
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


def pytest_configure(config):
    """A run started in the background by a shell without job control inherits SIGINT
    ignored, and so would every command the Ctrl-C tests start (an ignored signal
    survives exec): give this process Python's own handler, which exec resets."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="run the fuzz suite (tests/fuzz) for minutes instead of seconds")


@pytest.fixture
def long_run(request) -> bool:
    """True under ``pytest --long``: property tests draw many more examples."""
    return request.config.getoption("--long")


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Fail a test that leaves a child process of this one running.

    A worker left waiting for tasks is joined by multiprocessing when
    pytest exits, so the run would print its results and then never end.
    The guard waits a little for children that are on their way out, then
    kills the rest (so the run can still end) and fails the test.
    """
    before = {p.pid for p in multiprocessing.active_children()}
    yield
    leaked = [p for p in multiprocessing.active_children() if p.pid not in before]
    for p in leaked:
        p.join(timeout=10)
    alive = [p for p in leaked if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, f"the test left child processes running: {[p.name for p in alive]}"


def pytest_unconfigure(config):
    """Last resort: a child process still running now (started by a fixture, say) would
    keep this process waiting for it at exit after the results are printed; kill it."""
    for p in multiprocessing.active_children():
        p.kill()
        p.join(timeout=10)
