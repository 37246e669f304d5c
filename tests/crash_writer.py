"""A gradstore writer that can be killed anywhere: the subject of the crash and concurrency tests.

The workload is a pure function of the plan (``make_ops``) and every tensor's
bytes are a pure function of its key and version (``content``). After each op
returns, the writer appends the op's index to the ``committed`` file with one
write(2). So after a SIGKILL the parent knows exactly what the store must
hold: every op listed there, plus perhaps the one op that was in flight.

A plan is a JSON-able dict:

    store, committed          paths
    seed, n_ops, rank         the workload (``make_ops``), or ``ops`` given explicitly
    segment_size              passed to every open
    checkpoint_every          if set, overrides namespace.CHECKPOINT_EVERY (forces log rotations)
    checkpoint_on_close       if set, overrides namespace.CHECKPOINT_ON_CLOSE
    compact_batch             if set, overrides namespace.COMPACT_BATCH (records per compaction run)
    hash_piece                if set, every run is written the large-run way (zeroed headers,
                              payloads in pieces of this size hashed by the hash thread,
                              then the headers): hashrun.HASH_PIECE, PARALLEL_HASH = 1
    direct_io                 open with direct_io=True (gradstore.direct: O_DIRECT writes)
    direct_stage              if set, overrides direct.STAGE (bytes per direct write), so a run
                              is written in several pieces
    kill_after                SIGKILL right after this many ops have been committed
    fault                     {"fn", "where", "not_where", "n", "how", "killed_at"}: the n-th
                              call of os.<fn> (or of any of "fn1|fn2") made with every function
                              of ``where`` on the stack (qualified names of gradstore functions)
                              and none of ``not_where`` kills the process (SIGKILL). ``how``:
                              "before" the call, "after" it, or after writing only a prefix of
                              its bytes: "one", "half", "allbut1". ``killed_at`` gets a note.
    pause                     like ``fault`` but waits: creates ``paused``, then waits for ``go``
    census                    a path: write how often each (fn, stack) was called, at exit

Run as ``python tests/crash_writer.py PLAN.json``, or call ``run(plan)`` in a forked child.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import sys
import time
from collections import Counter

import numpy as np
import xxhash

try:
    import gradstore  # noqa: F401
except ImportError:  # run as a script from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_dtypes

DTYPES = ("float32", "bfloat16", "float16", "float64", "int32", "int64", "uint8", "bool", "int8")
MODULES = (
    "model.embed_tokens.weight",
    "model.layers.{l}.self_attn.q_proj.weight",
    "model.layers.{l}.self_attn.k_proj.weight",
    "model.layers.{l}.self_attn.v_proj.weight",
    "model.layers.{l}.self_attn.o_proj.weight",
    "model.layers.{l}.mlp.gate_proj.weight",
    "model.layers.{l}.mlp.up_proj.weight",
    "model.layers.{l}.mlp.down_proj.weight",
    "model.layers.{l}.input_layernorm.weight",
    "model.layers.{l}.post_attention_layernorm.weight",
    "model.norm.weight",
    "lm_head.weight",
)
# Size classes in bytes, with their odds. The segment size of the crash tests is
# 16 KiB, so "large" records sit alone in a segment and medium ones roll over often.
SIZE_CLASSES = ((0, 0, 0.06), (1, 64, 0.24), (64, 4096, 0.35), (4096, 14000, 0.2),
                (20000, 48000, 0.15))
FAULT_FNS = ("writev", "pwritev", "pwrite", "fsync", "replace", "rename", "link", "unlink", "ftruncate",
             "truncate")


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def content(key: str, version: int) -> np.ndarray:
    """The tensor written as ``version`` of ``key``: dtype, shape and bytes all follow from both."""
    seed = xxhash.xxh3_64_intdigest(f"{key}#{version}".encode())
    rng = np.random.default_rng(seed)
    dt = numpy_dtype(DTYPES[seed % len(DTYPES)])
    lo, hi, _ = SIZE_CLASSES[rng.choice(len(SIZE_CLASSES), p=[c[2] for c in SIZE_CLASSES])]
    if hi == 0:
        shape = () if rng.random() < 0.6 else (0, 3)
    else:
        n = max(1, int(rng.integers(lo, hi)) // dt.itemsize)
        cols = int(rng.choice([1, 3, 16, 64]))
        shape = (n,) if cols == 1 or n < cols else (n // cols, cols)
    count = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, count * dt.itemsize, dtype=np.uint8)
    if dt == np.bool_:
        raw &= 1
    return raw.view(dt).reshape(shape)


def make_ops(seed: int, n_ops: int, rank: int | None = None) -> list[list]:
    """A deterministic workload: writes, overwrites, buckets, compactions and reopens.

    Each phase between two opens alternates fsync off and on, so both commit paths
    are exercised; fsync phases are short and do not compact, to keep the tests
    quick. Versions count the writes of a key (version > 0 is an overwrite).
    """
    rng = random.Random(seed)
    r = 0 if rank is None else rank
    ops: list[list] = []
    versions: dict[str, int] = {}
    fsync = False
    ops.append(["open", {"fsync": fsync}])
    step = 0
    while len(ops) < n_ops:
        x = rng.random()
        if x < (0.2 if fsync else 0.03):  # fsync phases are short: each write costs two fsyncs
            ops.append(["close"])
            fsync = not fsync
            ops.append(["open", {"fsync": fsync}])
        elif x < 0.05:
            if not fsync:
                ops.append(["compact"])
        elif x < 0.06:
            ops.append(["sync"])
        elif x < 0.22 and versions:
            key = rng.choice(sorted(versions))
            versions[key] += 1
            ops.append(["write", key, versions[key]])
        elif x < 0.32:
            step += 1
            name = f"R_{r}_E_0_S_{step}_B_{rng.randrange(4)}"
            mods = []
            for m in rng.sample(MODULES, rng.randint(2, 5)):
                mod = m.format(l=rng.randrange(32))
                key = f"{name}/{mod}"
                versions[key] = versions.get(key, -1) + 1
                mods.append([mod, versions[key]])
            ops.append(["bucket", name, mods])
        else:
            if rng.random() < 0.15:
                key = f"plain/{seed}/k{len(ops)}"
            else:
                step += 1
                mod = rng.choice(MODULES).format(l=rng.randrange(32))
                key = f"R_{r}_E_{rng.randrange(2)}_S_{step}_B_{rng.randrange(4)}/{mod}"
            versions[key] = versions.get(key, -1) + 1
            ops.append(["write", key, versions[key]])
    ops.append(["close"])
    return ops


def op_writes(op: list) -> list[tuple[str, int]]:
    """(key, version) pairs an op writes."""
    if op[0] == "write":
        return [(op[1], op[2])]
    if op[0] == "bucket":
        return [(f"{op[1]}/{mod}", v) for mod, v in op[2]]
    return []


def replay(ops: list[list], done: int) -> tuple[dict[str, int], dict[str, int]]:
    """(committed {key: version} after the first ``done`` ops, in-flight {key: version})."""
    state: dict[str, int] = {}
    for op in ops[:done]:
        state.update(op_writes(op))
    inflight = dict(op_writes(ops[done])) if done < len(ops) else {}
    return state, inflight


def read_committed(path: str) -> int:
    """How many ops the writer reported as returned (their indices must be 0..n-1)."""
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().split("\n") if ln]
    except FileNotFoundError:
        return 0
    done = [int(x) for x in lines if x.isdigit()]
    assert done == list(range(len(done))), f"committed file out of order: {done[:20]}..."
    return len(done)


# -- fault injection -------------------------------------------------------------


def _stack_names() -> list[str]:
    """Qualified names of the gradstore functions on the stack, outermost first."""
    names = []
    f = sys._getframe(2)
    while f is not None:
        if f"{os.sep}gradstore{os.sep}" in f.f_code.co_filename:
            names.append(f.f_code.co_qualname)
        f = f.f_back
    return names[::-1]


def _die(where_file: str | None, note: str) -> None:
    if where_file:
        fd = os.open(where_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, note.encode())
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


def _wait_for(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody created {path}")
        time.sleep(0.002)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


class Hooks:
    """Wraps os.<fn> to count calls by stack, and to kill or pause at one of them."""

    def __init__(self, plan: dict):
        self.fault = plan.get("fault")
        self.pause = plan.get("pause")
        self.census_path = plan.get("census")
        self.census: Counter = Counter()
        self.hits: Counter = Counter()
        self.real = {fn: getattr(os, fn) for fn in FAULT_FNS}

    def install(self) -> None:
        if self.fault or self.pause or self.census_path:
            for fn in FAULT_FNS:
                setattr(os, fn, self._wrap(fn))

    def uninstall(self) -> None:
        for fn, real in self.real.items():
            setattr(os, fn, real)

    @staticmethod
    def _matches(spec: dict, fn: str, stack: list[str]) -> bool:
        return (fn in spec["fn"].split("|") and all(w in stack for w in spec.get("where", ()))
                and not any(w in stack for w in spec.get("not_where", ())))

    def _wrap(self, fn: str):
        real = self.real[fn]

        def wrapper(*args, **kwargs):
            stack = _stack_names()
            if self.census_path is not None and stack:
                self.census[f"{fn} {'>'.join(stack)}"] += 1
            for label, spec in (("fault", self.fault), ("pause", self.pause)):
                if spec and self._matches(spec, fn, stack):
                    self.hits[label] += 1
                    if self.hits[label] == spec["n"]:
                        return self._act(label, spec, fn, stack, real, args, kwargs)
            return real(*args, **kwargs)

        return wrapper

    def _act(self, label, spec, fn, stack, real, args, kwargs):
        how = spec.get("how", "before")
        note = f"{fn} {how} #{spec['n']} at {'>'.join(stack)}"
        if label == "pause":
            if how == "after":
                result = real(*args, **kwargs)
            _touch(spec["paused"])
            _wait_for(spec["go"])
            return real(*args, **kwargs) if how != "after" else result
        if how == "before":
            _die(spec.get("killed_at"), note)
        if how == "after":
            real(*args, **kwargs)
            _die(spec.get("killed_at"), note)
        # A torn write: only a prefix of the bytes reaches the file.
        if fn in ("writev", "pwritev"):
            fd, buffers = args[0], args[1]
            data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
            offset = args[2] if fn == "pwritev" else None
        elif fn == "pwrite":
            fd, data, offset = args[0], bytes(args[1]), args[2]
        else:
            raise ValueError(f"a {how!r} fault needs writev, pwritev or pwrite, not {fn}")
        cut = {"one": 1, "half": len(data) // 2, "allbut1": len(data) - 1}[how]
        cut = max(0, min(cut, len(data) - 1))
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & getattr(os, "O_DIRECT", 0):  # a prefix of any length: write it buffered
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        if fn == "writev":
            os.write(fd, data[:cut])
        else:
            self.real["pwrite"](fd, data[:cut], offset)
        _die(spec.get("killed_at"), note + f" ({cut} of {len(data)} bytes)")

    def dump(self) -> None:
        if self.census_path:
            with open(self.census_path, "w") as f:
                json.dump(dict(self.census), f, indent=1, sort_keys=True)


# -- the writer ----------------------------------------------------------------


def run(plan: dict) -> None:
    """Carry out the plan's ops, reporting each one that returned to plan["committed"]."""
    import gradstore
    from gradstore import namespace

    if plan.get("checkpoint_every") is not None:
        namespace.CHECKPOINT_EVERY = plan["checkpoint_every"]
    if plan.get("compact_batch") is not None:
        namespace.COMPACT_BATCH = plan["compact_batch"]
    if plan.get("checkpoint_on_close") is not None:
        namespace.CHECKPOINT_ON_CLOSE = plan["checkpoint_on_close"]
    if plan.get("hash_piece") is not None:
        from gradstore import hashrun
        hashrun.HASH_PIECE, hashrun.PARALLEL_HASH = plan["hash_piece"], 1
    if plan.get("direct_stage") is not None:
        from gradstore import direct
        direct.STAGE = plan["direct_stage"]
    ops = plan.get("ops") or make_ops(plan["seed"], plan["n_ops"], plan.get("rank"))
    kill_after = plan.get("kill_after")
    hooks = Hooks(plan)
    fd = os.open(plan["committed"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    hooks.install()
    gs = None
    try:
        for i, op in enumerate(ops):
            kind = op[0]
            if kind == "open":
                gs = gradstore.open(plan["store"], "a", rank=plan.get("rank"),
                                    segment_size=plan.get("segment_size"), fsync=op[1]["fsync"],
                                    direct_io=plan.get("direct_io", False))
            elif kind == "close":
                gs.close()
                gs = None
            elif kind == "write":
                gs.write(op[1], content(op[1], op[2]), overwrite=op[2] > 0)
            elif kind == "bucket":
                gs.write_bucket(op[1], {m: content(f"{op[1]}/{m}", v) for m, v in op[2]},
                                overwrite=any(v > 0 for _, v in op[2]))
            elif kind == "compact":
                gs.compact()
            elif kind == "sync":
                gs.sync()
            elif kind == "hold":  # keep the store open until the parent says so
                os.write(fd, b"holding\n")
                _wait_for(op[1])
                continue
            else:
                raise ValueError(f"unknown op {op!r}")
            os.write(fd, f"{i}\n".encode())
            if kill_after is not None and i + 1 == kill_after:
                _die(plan.get("killed_at"), f"after {kill_after} ops")
    finally:
        hooks.uninstall()
        os.close(fd)
        hooks.dump()
    if gs is not None:
        gs.close()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run(json.load(f))


# -- checking (used by the tests in the parent process) ------------------------------

_CONTENT_CACHE: dict[tuple[str, int], np.ndarray] = {}


def fork(plan: dict) -> int:
    """Start ``run(plan)`` in a forked child; its pid. The child never returns into pytest."""
    import traceback
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            run(plan)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def expected(key: str, version: int) -> np.ndarray:
    got = _CONTENT_CACHE.get((key, version))
    if got is None:
        got = _CONTENT_CACHE[(key, version)] = content(key, version)
    return got


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact: dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def content_problems(store, committed: dict[str, int], inflight: dict[str, int],
                     extra: dict[str, np.ndarray] | None = None) -> list[str]:
    """Lost committed keys, corrupt reads and keys that should not be there."""
    from gradstore import ChecksumError

    extra = extra or {}
    problems = []
    keys = set(store.keys())
    for key in committed:
        if key not in keys:
            problems.append(f"lost committed key {key!r} (version {committed[key]})")
    for key in extra:
        if key not in keys:
            problems.append(f"lost key {key!r}")
    for key in sorted(keys):
        try:
            arr = store.read(key, verify=True)
        except ChecksumError as exc:
            problems.append(f"corrupt read: {exc}")
            continue
        if key in extra:
            if not same(arr, extra[key]):
                problems.append(f"wrong content for {key!r}")
            continue
        allowed = [v for v in (committed.get(key), inflight.get(key)) if v is not None]
        if not allowed:
            problems.append(f"key {key!r} was never written")
        elif not any(same(arr, expected(key, v)) for v in allowed):
            problems.append(f"wrong content for {key!r}: matches none of versions {allowed}")
    return problems


def tree_state(path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, xxh3 of the bytes)} of every file under ``path``."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                data = f.read()
            out[os.path.relpath(full, path)] = (len(data), xxhash.xxh3_64_intdigest(data))
    return out


def scratch_dir(fallback):
    """A fresh directory on tmpfs (/dev/shm) if there is one, else ``fallback``; and a cleanup.

    A SIGKILL loses nothing that fsync would have saved (the page cache outlives
    the process), so crash tests do not need the disk, where each of the
    writer's fsyncs costs milliseconds. GRADSTORE_TEST_ON_DISK=1 uses the disk.
    """
    import shutil
    import tempfile

    shm = "/dev/shm"
    usable = os.path.isdir(shm) and os.access(shm, os.W_OK)
    if os.environ.get("GRADSTORE_TEST_ON_DISK") or not usable:
        return fallback, lambda: None
    from pathlib import Path
    d = Path(tempfile.mkdtemp(prefix="gradstore-test-", dir=shm))
    return d, lambda: shutil.rmtree(d, ignore_errors=True)
