"""The README's examples run as typed, so they cannot drift from the code."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradstore

README = Path(__file__).resolve().parent.parent / "README.md"


def _section(title: str) -> str:
    """The text of a level-2 section, its subsections included."""
    text = README.read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section, re.S | re.M)


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> str:
    proc = subprocess.run(args, input=stdin, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args[0]} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def api_dir(tmp_path_factory):
    """A directory where the Python API examples ran, twice: a second run must not
    trip over the first one's store."""
    pytest.importorskip("torch")
    blocks = _blocks(_section("Python API"), "python")
    assert len(blocks) >= 2
    d = tmp_path_factory.mktemp("readme")
    outputs = [_run([sys.executable, "-"], d, "\n".join(blocks)) for _ in range(2)]
    return d, outputs


def test_python_api_examples_run_as_typed(api_dir):
    d, outputs = api_dir
    assert all("R_0_E_0_S_1_B_0/" in out for out in outputs)   # the items() loop printed pairs
    with gradstore.open(d / "run.gs") as gs:
        assert gs.verify() == []
        assert len(gs.keys(rank=0, step=range(0, 2), module="*.mlp.*")) == 2


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("gradstore") is None,
                    reason="needs bash and the gradstore command")
def test_cli_ls_and_get_examples_find_keys_in_the_python_api_store(api_dir):
    d, _ = api_dir
    lines = [line for block in _blocks(_section("Command line"), "bash") for line in block.splitlines()
             if line.startswith(("gradstore ls ", "key=", "gradstore get "))]
    assert [line.split()[0].split("=")[0] for line in lines] == ["gradstore", "key", "gradstore"]
    out = _run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], d)
    assert out.split()[0].startswith("R_0_E_0_S_0_B_0/")   # ls found keys
    with gradstore.open(d / "run.gs") as gs:
        key = gs.keys(step=0, module="*.mlp.*")[0]
        assert np.array_equal(np.load(d / "out.npy"), gs[key].astype(np.float32))
