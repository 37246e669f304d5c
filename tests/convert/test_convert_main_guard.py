"""A script that calls convert() with reader processes but has no ``__main__`` guard.

Readers start by running the main script again (forkserver and spawn do),
which used to call convert() again in every reader: each died, and every
file was reported as lost to "out of memory" with exit status 0.  Now the
readers leave at once and the script gets one clear MainGuardError.
"""
from __future__ import annotations

import subprocess
import sys

from convert_helpers import cli_env, store_contents, write_buckets

SCRIPT = """\
from gradstore.convert import convert
report = convert([{src!r}], {dest!r}, jobs=2, display=None)
print("files failed:", report.files_failed)
"""

GUARDED = """\
from gradstore.convert import convert

if __name__ == "__main__":
    report = convert([{src!r}], {dest!r}, jobs=2, display=None)
    print("files failed:", report.files_failed)
"""


def _run(tmp_path, text: str, src, dest) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(text.format(src=str(src), dest=str(dest)))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=cli_env(), timeout=180, cwd=tmp_path)


def test_a_script_without_the_guard_gets_one_clear_error(tmp_path, src, dest):
    write_buckets(src, 3)
    before = sorted(p.name for p in src.iterdir())
    res = _run(tmp_path, SCRIPT, src, dest)
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert "files failed" not in res.stdout
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("gradstore.convert.readers.MainGuardError: "), res.stderr
    assert "script.py" in last and 'if __name__ == "__main__":' in last, last
    assert res.stderr.count("Traceback") == 1, res.stderr   # the script's, none from readers
    assert "out of memory" not in res.stderr and "LockedError" not in res.stderr
    assert sorted(p.name for p in src.iterdir()) == before
    assert not dest.exists() or store_contents(dest) == {}


def test_the_same_script_with_the_guard_converts(tmp_path, src, dest):
    expected = write_buckets(src, 3)
    res = _run(tmp_path, GUARDED, src, dest)
    assert res.returncode == 0, res.stderr
    assert "files failed: 0" in res.stdout
    assert sorted(store_contents(dest)) == sorted(expected)
