"""Codec kernels loaded once, in the server that report and encode workers fork from.

A worker that loads numba's cached kernels itself spends about half a
second on it before its first key (numba's target set-up, then each
kernel), and every worker of a run pays it again, all at the same moment.
The forkserver imports this module among its preloads (``engine.start_early``);
it reads from the environment variable WARM_ENV which codecs and dtypes the
run needs and puts each codec once through a trial, as a task would, on a
small array of each dtype, so that workers forked from it start with every
kernel loaded.

The warm-up may never fail a run: a codec it cannot warm is left to load
its kernels in the workers, as without it.  With numba's cache still cold,
the warm-up compiles the kernels (tens of seconds, once); if the command
is stopped meanwhile, the server leaves before its next codec rather than
go on compiling for no one.
"""
from __future__ import annotations

import json
import os

WARM_ENV = "GRADSTORE_WARM"
SAMPLE = 2048     # values per dtype: every path of the kernels, in a few milliseconds


def plan(specs, dtypes) -> str:
    """The value of WARM_ENV for these codec specs and dtype names."""
    return json.dumps({"specs": list(specs), "dtypes": list(dtypes)})


def sample(dtype):
    """Values like a gradient's: six orders of magnitude, both signs, exact zeros."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.laplace(size=SAMPLE) * 10.0 ** rng.uniform(-7, -1, SAMPLE)
    x[::7] = 0.0
    return x.astype(dtype)


def warm(specs, dtypes) -> None:
    """One trial of each codec spec on a sample of each dtype name; errors ignored."""
    from ..dtypes import to_numpy
    from ..variants import codec_of, trial
    if specs and dtypes:   # the command's own process says it, compiling the same kernels for its first task
        try:
            from ..codecs.eg.notice import NOTICE
            NOTICE.shown = True
        except ImportError:
            pass
    parent = os.getppid()
    for name in dtypes:
        try:
            array = sample(to_numpy(name))
        except Exception:
            continue
        for spec in specs:
            if os.getppid() != parent:      # the command has gone
                os._exit(0)
            try:
                trial(codec_of(spec), array)
            except Exception:
                pass


def _from_environment() -> None:
    try:
        wanted = json.loads(os.environ.get(WARM_ENV) or "{}")
        warm(wanted.get("specs", []), wanted.get("dtypes", []))
    except Exception:
        pass


_from_environment()
