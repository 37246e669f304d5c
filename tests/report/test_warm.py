"""Workers of -j N fork from a server that has loaded the codecs' kernels once (report.warm)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

import gradstore
from gradstore.report import engine
from gradstore.report.warm import WARM_ENV, plan

LOADED = ("bool(__import__('gradstore.codecs.fpx_decode', fromlist=['decode']).decode.overloads) and "
          "bool(__import__('gradstore.codecs.fpx_encode', fromlist=['encode']).encode.overloads)")


def python(code: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("warmed", [True, False])
def test_importing_warm_loads_the_kernels_the_plan_names(warmed):
    env = dict(os.environ)
    env.pop(WARM_ENV, None)
    if warmed:
        env[WARM_ENV] = plan(["fpx", "eg:k=0,scale=1e6,sign=bit"], ["float32"])
    proc = python(f"""
        import gradstore.codecs.fpx, gradstore.report.warm
        print({LOADED})
    """, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == f"{warmed}\n"


@pytest.mark.parametrize("warmed", [True, False])
def test_the_server_leaves_the_compile_notice_to_the_command(warmed):
    """On a cold kernel cache the command's own process compiles for its first task
    and says so: the server warming up beside it keeps quiet (one line, not two)."""
    env = dict(os.environ)
    env.pop(WARM_ENV, None)
    if warmed:
        env[WARM_ENV] = plan(["eg:k=0,scale=1e6,sign=bit"], ["float32"])
    proc = python("""
        import gradstore.report.warm
        from gradstore.codecs.eg.notice import NOTICE
        print(NOTICE.shown)
    """, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == f"{warmed}\n"


@pytest.mark.parametrize("value", ["not json", '{"specs": ["nope:x=1", "fpx"], "dtypes": ["int4x", "float32"]}',
                                   '{"specs": 3}', '[]'])
def test_a_plan_it_cannot_follow_never_fails(value):
    proc = python("""
        import gradstore.report.warm
        print("ok")
    """, env=dict(os.environ, **{WARM_ENV: value}))
    assert proc.returncode == 0 and proc.stdout == "ok\n" and proc.stderr == "", proc.stderr


def _store(path, bf16: bool) -> None:
    with gradstore.open(path, "w") as gs:
        gs.write("R_0_E_0_S_0_B_0/w", np.linspace(-1, 1, 100, dtype=np.float32))
        if bf16:
            gs.write("R_0_E_0_S_0_B_0/n", np.ones(10, dtype=ml_dtypes.bfloat16))


@pytest.mark.parametrize("bf16", [False, True])
def test_start_early_asks_the_server_to_warm_the_keys_dtypes(tmp_path, monkeypatch, bf16):
    seen = {}

    def start_server(preload=()):
        seen["preload"], seen["plan"] = preload, os.environ.get(WARM_ENV)

    import gradstore.convert.readers as readers
    monkeypatch.setattr(readers, "start_server", start_server)
    monkeypatch.delenv(WARM_ENV, raising=False)
    _store(tmp_path / "s.gs", bf16)
    with gradstore.open(tmp_path / "s.gs") as gs:
        engine.start_early(gs, gs.keys(), ["fpx", "eg:k=0,scale=1e6,sign=bit"], 2, False)
    assert seen["preload"][0] == engine.WORKER_MODULE and seen["preload"][-1] == engine.WARM_MODULE
    assert ("ml_dtypes" in seen["preload"]) == bf16
    wanted = json.loads(seen["plan"])
    assert wanted["specs"] == ["fpx", "eg:k=0,scale=1e6,sign=bit"]
    assert sorted(wanted["dtypes"]) == (["bfloat16", "float32"] if bf16 else ["float32"])
    assert WARM_ENV not in os.environ            # only the server's start saw it


def test_a_worker_starts_with_the_kernels_loaded(tmp_path):
    """A real pool: its worker answers, before doing anything else, that the server it
    forked from has loaded fpx's kernels; without the warm-up (one worker), it has not."""
    _store(tmp_path / "s.gs", False)
    proc = python(f"""
        import sys
        import gradstore
        from gradstore.convert.readers import make_executor
        from gradstore.report import engine
        with gradstore.open(sys.argv[1]) as gs:
            engine.start_early(gs, gs.keys(), ["fpx"], 2, False)
        ex = make_executor(2, (engine.WORKER_MODULE,))
        print(ex.submit(eval, {LOADED!r}).result())
        ex.shutdown()
    """, tmp_path / "s.gs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "True\n"
    proc = python(f"""
        import sys
        from gradstore.convert.readers import make_executor
        from gradstore.report import engine
        ex = make_executor(2, (engine.WORKER_MODULE, "gradstore.codecs.fpx"))
        print(ex.submit(eval, {LOADED!r}).result())
        ex.shutdown()
    """, tmp_path / "s.gs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "False\n"
