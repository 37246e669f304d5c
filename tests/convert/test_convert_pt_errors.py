""".pt files that torch.load(weights_only=True) refuses: one whole line saying why."""
from __future__ import annotations

import os
import re
import sys

import torch
from convert_helpers import error_lines, run_cli, store_contents, write_buckets


class _CallsSystem:
    """Pickles as a call of os.system: a module torch's unpickler blocks outright."""

    def __reduce__(self):
        return (os.system, ("echo should never run",))


class _CallsExit:
    def __reduce__(self):
        return (sys.exit, (3,))


class _Plain:
    """Pickles as a GLOBAL of this module: not on torch's allow-list."""


def test_refused_pickles_get_one_whole_line_naming_what_was_refused(src, dest):
    expected = write_buckets(src, 1)
    torch.save({"a": torch.zeros(3), "x": _CallsSystem()}, src / "R_1_E_0_S_0_B_0.pt")
    torch.save({"a": torch.zeros(3), "x": _CallsExit()}, src / "R_2_E_0_S_0_B_0.pt")
    torch.save({"a": torch.zeros(3), "x": _Plain()}, src / "R_3_E_0_S_0_B_0.pt")
    res = run_cli(src, dest, "-q")
    assert res.returncode == 1, res.stderr
    assert "should never run" not in res.stdout
    errors = error_lines(res.stderr)
    assert len(errors) == len(res.stderr.strip().splitlines()) == 3, res.stderr
    wanted = {
        "R_1_E_0_S_0_B_0.pt": r"GLOBAL \w+\.system whose module \w+ is blocked",
        "R_2_E_0_S_0_B_0.pt": r"GLOBAL sys\.exit whose module sys is blocked",
        "R_3_E_0_S_0_B_0.pt": r"GLOBAL [\w.]*_Plain was not an allowed global by default",
    }
    for name, reason in wanted.items():
        [line] = [e for e in errors if name in e]
        assert re.search(r"not a file of tensors: torch\.load\(weights_only=True\) refused it "
                         rf"\(({'Unsupported global: ' if 'Plain' in reason else ''})?"
                         rf"[^()]*{reason}\)$", line), line
        assert "..." not in line and "PyTorch 2.6" not in line, line
    assert set(store_contents(dest)) == set(expected)
