"""Budgets of the fuzz suite: short and derandomized by default, long under ``pytest --long``."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

# Stores are small and written often: tmpfs when there is one.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None
LONG_EXAMPLES = 3000


def budget(long_run: bool, short: int) -> settings:
    """``short`` examples, the same ones every run (CI reproduces failures); under --long,
    LONG_EXAMPLES random ones (minutes)."""
    phases = [p for p in Phase if long_run or p is not Phase.explain]  # explain re-runs a lot
    return settings(max_examples=LONG_EXAMPLES if long_run else short, derandomize=not long_run,
                    database=None, deadline=None, print_blob=long_run, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
