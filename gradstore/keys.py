"""Keys: validating them, parsing `R_E_S_B/module`, and structured selection."""
from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from typing import NamedTuple, Union

from .format import MAX_KEY_BYTES

_NUM = r"(0|[1-9][0-9]*)"
_BUCKET_RE = re.compile(rf"R_{_NUM}_E_{_NUM}_S_{_NUM}_B_{_NUM}")
_KEY_RE = re.compile(rf"R_{_NUM}_E_{_NUM}_S_{_NUM}_B_{_NUM}/(.+)", re.DOTALL)

IntFilter = Union[int, range, Iterable[int], None]
ModuleFilter = Union[str, Iterable[str], None]


class Key(NamedTuple):
    """A structured key ``R_{rank}_E_{epoch}_S_{step}_B_{bucket}/{module}``."""

    rank: int
    epoch: int
    step: int
    bucket: int
    module: str

    @classmethod
    def parse(cls, key: str) -> "Key":
        m = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
        if m is None:
            raise ValueError(f"not a structured key: {key!r} "
                             "(expected R_<rank>_E_<epoch>_S_<step>_B_<bucket>/<module>)")
        r, e, s, b, module = m.groups()
        return cls(int(r), int(e), int(s), int(b), module)

    @property
    def bucket_name(self) -> str:
        return f"R_{self.rank}_E_{self.epoch}_S_{self.step}_B_{self.bucket}"

    def __str__(self) -> str:
        return f"{self.bucket_name}/{self.module}"


def bucket_name(rank: int, epoch: int, step: int, bucket: int) -> str:
    return f"R_{rank}_E_{epoch}_S_{step}_B_{bucket}"


def parse_bucket(name: str) -> Key | None:
    """The Key of a bucket name ``R_E_S_B`` (module empty), or None."""
    m = _BUCKET_RE.fullmatch(name)
    return None if m is None else Key(*map(int, m.groups()), "")


_LAYER = re.compile(r"(?<![^.])\d+(?![^.])")    # a dot-separated component of digits only


def module_type(module: str) -> str:
    """The module name with its layer numbers as ``*``: ``layers.3.mlp.weight`` ->
    ``layers.*.mlp.weight``; all layers of one kind share a type."""
    return _LAYER.sub("*", module)


def try_parse(key: str) -> Key | None:
    m = _KEY_RE.fullmatch(key)
    if m is None:
        return None
    r, e, s, b, module = m.groups()
    return Key(int(r), int(e), int(s), int(b), module)


def check_key(key: object) -> str:
    """Return ``key`` if it may be stored, else raise TypeError or ValueError."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("key is empty")
    if "\0" in key:
        raise ValueError(f"key contains a NUL character: {key!r}")
    if "" in key.split("/"):
        raise ValueError(f"key has an empty part (leading, trailing or doubled '/'): {key!r}")
    try:
        n = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"key is not valid UTF-8: {key!r}") from None
    if n > MAX_KEY_BYTES:
        raise ValueError(f"key is {n} bytes long, the limit is {MAX_KEY_BYTES}")
    return key


def _int_set(name: str, value: IntFilter):
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name}= takes an int, a range or ints, not bool")
    if isinstance(value, int):
        return {value}
    if isinstance(value, range):
        return value  # `in` on a range is O(1)
    try:
        items = set(value)
    except TypeError:
        raise TypeError(f"{name}= takes an int, a range or ints, not {type(value).__name__}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name}= takes an int, a range or ints")
    return items


def _module_patterns(module: ModuleFilter):
    if module is None:
        return None
    pats = [module] if isinstance(module, str) else list(module)
    if not all(isinstance(p, str) for p in pats):
        raise TypeError("module= takes a glob pattern or a list of them")
    return [re.compile(fnmatch.translate(p)) for p in pats]


class Selector:
    """A structured filter over keys; plain keys never match a non-empty filter."""

    def __init__(self, rank: IntFilter = None, epoch: IntFilter = None, step: IntFilter = None,
                 bucket: IntFilter = None, module: ModuleFilter = None):
        self.ints = [(i, s) for i, s in enumerate((
            _int_set("rank", rank), _int_set("epoch", epoch),
            _int_set("step", step), _int_set("bucket", bucket))) if s is not None]
        self.modules = _module_patterns(module)
        self.empty = not self.ints and self.modules is None

    def matches(self, parsed: Key | None) -> bool:
        if self.empty:
            return True
        return parsed is not None and self.matches_parts(parsed[:4], parsed.module)

    def matches_parts(self, nums: tuple, module: str) -> bool:
        """Whether a structured key's (rank, epoch, step, bucket) and module match."""
        for i, allowed in self.ints:
            if nums[i] not in allowed:
                return False
        return self.modules is None or any(p.fullmatch(module) for p in self.modules)


class _Heads(dict):
    """Bucket name -> its four numbers (None: not a bucket name), each parsed once:
    a run has hundreds of keys per bucket."""

    def __missing__(self, head: str):
        k = parse_bucket(head)
        nums = self[head] = None if k is None else k[:4]
        return nums


def _parts(key: str, heads: _Heads) -> tuple[tuple | None, str]:
    """((rank, epoch, step, bucket) or None for a plain key, module): try_parse's answer."""
    head, sep, module = key.partition("/")
    return (heads[head] if sep and module else None), module


def sort_key(key: str, heads: _Heads | None = None):
    """Natural order: structured keys by their numbers, then plain keys."""
    nums, module = _parts(key, _Heads() if heads is None else heads)
    return (1, (), key) if nums is None else (0, nums, module)


def select(keys: Iterable[str], selector: Selector) -> list[str]:
    heads = _Heads()
    if not selector.empty:
        def wanted(key: str) -> bool:
            nums, module = _parts(key, heads)
            return nums is not None and selector.matches_parts(nums, module)
        keys = filter(wanted, keys)
    return sorted(keys, key=functools.partial(sort_key, heads=heads))


def parse_int_filter(text: str) -> IntFilter:
    """CLI form of an int filter: ``5``, ``10:20`` (end exclusive) or ``1,2,5``."""
    try:
        if ":" in text:
            lo, hi = text.split(":", 1)
            return range(int(lo), int(hi))
        if "," in text:
            return [int(p) for p in text.split(",") if p]
        return int(text)
    except ValueError:
        raise ValueError(f"bad number filter {text!r} (use 5, 10:20 or 1,2,5)") from None
