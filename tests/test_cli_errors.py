"""Both commands end every mistake and every Ctrl-C with one line: real subprocesses.

- counts (-j, --ranks, --steps, ...) must be whole numbers in range: one line, status 2;
- Ctrl-C at any moment, while the heavy modules import too, prints one line
  ("interrupted") and exits with status 130.  SIGINT goes to the whole process
  group, as a terminal sends it, so reader processes and a forkserver get it too.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gradstore

REPO = Path(gradstore.__file__).resolve().parent.parent


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=_env(), timeout=180)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """About 70 MiB of synthetic gradients: a report of it takes seconds."""
    path = tmp_path_factory.mktemp("cli") / "run.gs"
    res = _run("gradstore", "synth", path, "--ranks", "1", "--steps", "2")
    assert res.returncode == 0, res.stderr
    return path


SOURCE_NUMEL = 512


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """48 .pt buckets of 1,024 small tensors (2 MiB): a conversion of them takes seconds
    (about 4 s here: per-tensor work, not bytes, so that it outlasts the longest delay)."""
    torch = pytest.importorskip("torch")
    src = tmp_path_factory.mktemp("src")
    g = torch.Generator().manual_seed(0)
    for s in range(48):
        torch.save({f"layers.{i}.weight": torch.randn(SOURCE_NUMEL, generator=g) for i in range(1024)},
                   src / f"R_0_E_0_S_{s}_B_0.pt")
    return src


# -- counts ------------------------------------------------------------------------------

@pytest.mark.parametrize("module, args, option", [
    ("gradstore", ["report", "{store}", "-j", "-3"], "-j/--jobs"),
    ("gradstore", ["report", "{store}", "-j", "0"], "-j/--jobs"),
    ("gradstore", ["report", "{store}", "--jobs", "two"], "-j/--jobs"),
    ("gradstore", ["synth", "{new}", "--ranks", "-1"], "--ranks"),
    ("gradstore", ["synth", "{new}", "--steps", "0"], "--steps"),
    ("gradstore", ["synth", "{new}", "--epochs", "-2"], "--epochs"),
    ("gradstore", ["synth", "{new}", "--hidden", "0"], "--hidden"),
    ("gradstore", ["synth", "{new}", "--layers", "-1"], "--layers"),
    ("gradstore", ["synth", "{new}", "--seed", "-1"], "--seed"),
    ("gradstore.convert", ["{store}", "{new}", "-j", "-1"], "-j/--jobs"),
    ("gradstore", ["convert", "{store}", "{new}", "--jobs", "1.5"], "-j/--jobs"),
])
def test_bad_counts_are_one_line_and_status_2(store, tmp_path, module, args, option):
    new = tmp_path / "new.gs"
    res = _run(module, *[a.format(store=store, new=new) for a in args])
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"argument {option}:" in lines[0], res.stderr
    assert res.stdout == ""
    assert not new.exists()   # nothing was started


# -- Ctrl-C ------------------------------------------------------------------------------

# Seconds after the command starts importing numpy (the first heavy import) until Ctrl-C.
DELAYS = [0.0, 0.1, 0.3, 0.6, 1.0, 1.4, 1.8]


def _importing_numpy(pid: int) -> bool:
    try:
        return "_multiarray_umath" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _interrupt(argv: list[str], delay: float) -> subprocess.CompletedProcess:
    """Run ``argv``; ``delay`` seconds after it starts importing numpy, send SIGINT to its
    process group.  (Before that it is the interpreter's own start-up, out of our hands.)"""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _importing_numpy(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        finished_first = proc.poll() is not None
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        out, err = proc.communicate(timeout=120)
        assert not finished_first, (f"the command ended before the Ctrl-C {delay} s in: "
                                    f"give it more work (status {proc.returncode})\n{err}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _assert_interrupted(res: subprocess.CompletedProcess, prog: str, delay: float) -> None:
    assert "Traceback" not in res.stderr and "KeyboardInterrupt" not in res.stderr, \
        f"after {delay} s:\n{res.stderr}"
    assert res.returncode == 130, f"after {delay} s: status {res.returncode}\n{res.stderr}"
    # a report adds what it kept ("interrupted; N keys done..."); a cold kernel cache says so
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("gradstore: compiling")]
    assert len(lines) == 1 and lines[0].split(";")[0] == f"{prog}: interrupted", f"after {delay} s:\n{res.stderr}"


@pytest.mark.parametrize("delay", DELAYS)
def test_ctrl_c_during_gradstore_report(store, delay):
    # zstd at level 19 makes the report outlast the longest delay (about 12 s here);
    # --fresh: an earlier delay's results must not shorten it
    res = _interrupt([sys.executable, "-m", "gradstore", "report", str(store), "--fresh",
                      "--codec", "eg:k=auto,scale=1e6", "--codec", "zstd:level=19", "-j", "2"], delay)
    _assert_interrupted(res, "gradstore", delay)


@pytest.mark.parametrize("delay", DELAYS[:4])
def test_ctrl_c_during_gradstore_synth_leaves_a_store_that_opens(tmp_path, delay):
    path = tmp_path / "synth.gs"
    res = _interrupt([sys.executable, "-m", "gradstore", "synth", str(path)], delay)
    _assert_interrupted(res, "gradstore", delay)
    if path.exists():
        with gradstore.open(path) as gs:
            assert not gs.verify()


@pytest.mark.parametrize("delay", DELAYS)
def test_ctrl_c_during_gradstore_convert(sources, tmp_path, delay):
    dest = tmp_path / "run.gs"
    # What the gradstore-convert script runs (python -m gradstore.convert imports the
    # convert package before any of its code can catch a Ctrl-C).
    res = _interrupt([sys.executable, "-c", "from gradstore.entry import gradstore_convert; gradstore_convert()",
                      str(sources), str(dest), "-j", "2", "-q"], delay)
    _assert_interrupted(res, "gradstore-convert", delay)
    assert len(list(sources.iterdir())) == 48   # sources are never touched without --delete-source
    if dest.exists():
        with gradstore.open(dest) as gs:
            assert not gs.verify()
            for k in gs.keys():   # what was stored is what the sources hold
                assert gs[k].shape == (SOURCE_NUMEL,) and np.isfinite(gs[k]).all()
        shutil.rmtree(dest)


def test_a_ctrl_c_in_a_callback_is_not_shown_other_errors_are():
    """Under a command, a KeyboardInterrupt Python cannot raise (in a destructor, or a C
    library's callback as numba compiles) shows no traceback; other such errors do."""
    code = textwrap.dedent("""
        import gc, sys
        from gradstore.progress import exit_on_interrupt

        class Interrupted:
            def __del__(self):
                raise KeyboardInterrupt

        class Broken:
            def __del__(self):
                raise ValueError("shown")

        def run():
            Interrupted()
            Broken()
            gc.collect()
            return 0

        sys.exit(exit_on_interrupt("t", run))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ValueError: shown" in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
