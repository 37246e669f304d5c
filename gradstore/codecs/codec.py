"""The codec interface that every codec, built-in or plug-in, implements.

A codec is a small immutable object whose whole configuration is its spec
string (``zstd:level=3``): the store keeps that string as the codec's
identity, and ``get_codec(spec)`` rebuilds an equal codec from it.
Parameters are declared once, as :class:`Param` entries, so that validation,
canonical spelling and the error listing what is accepted cannot drift apart.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import CodecError


@dataclass(frozen=True)
class Encoded:
    """What ``Codec.encode`` returns: the bytes to store and the facts to account."""

    payload: bytes
    nbits: int
    nsymbols: int
    entropy_bits: float | None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """One accepted parameter: its default, how to read it, and what it accepts.

    ``parse`` takes a spec string or a Python value and returns the canonical
    value, raising ValueError when it cannot; ``accepts`` is shown in errors.
    """

    default: Any
    parse: Callable[[Any], Any]
    accepts: str


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    """A parser for an integer in [lo, hi]."""
    def parse(value: Any) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            number = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            number = int(value.strip())
        else:
            raise ValueError("not an integer")
        if not lo <= number <= hi:
            raise ValueError(f"out of range [{lo}, {hi}]")
        return number
    return parse


def positive_real(value: Any) -> float:
    """A finite float > 0 (parser)."""
    if isinstance(value, bool):
        raise ValueError("not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("not a number") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError("not a finite number > 0")
    return number


def choice(*names: str) -> Callable[[Any], str]:
    """A parser for one of a fixed set of words."""
    def parse(value: Any) -> str:
        word = str(value).strip()
        if word not in names:
            raise ValueError(f"not one of {', '.join(names)}")
        return word
    return parse


def integer_or(word: str, lo: int, hi: int) -> Callable[[Any], int | str]:
    """A parser for an integer in [lo, hi] or a keyword such as ``auto``."""
    as_int = integer(lo, hi)

    def parse(value: Any) -> int | str:
        if isinstance(value, str) and value.strip() == word:
            return word
        try:
            return as_int(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; expected an integer or {word!r}") from None
    return parse


def _spell(value: Any) -> str:
    """The canonical spelling of a parameter value inside a spec string."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class Codec(ABC):
    """Turns one C-contiguous array into bytes and back.

    Subclasses set ``codec_id``, ``lossless`` and ``PARAMS`` and implement
    ``encode`` and ``decode``; ``__init__`` validates parameters from
    ``PARAMS`` so a plug-in gets the same error messages as the built-ins.
    """

    codec_id: ClassVar[str]
    lossless: ClassVar[bool]
    PARAMS: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise CodecError(
                f"codec {self.codec_id!r}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {self.accepted()}")
        values = {}
        for name, param in self.PARAMS.items():
            raw = params.get(name, param.default)
            try:
                values[name] = param.parse(raw)
            except (ValueError, TypeError) as exc:
                raise CodecError(
                    f"codec {self.codec_id!r}: bad value {raw!r} for parameter {name!r} ({exc}); "
                    f"{name} accepts {param.accepts}") from None
        self._params = values

    @classmethod
    def accepted(cls) -> str:
        """The accepted parameters with their defaults, for error messages and --help."""
        if not cls.PARAMS:
            return "no parameters"
        return "; ".join(f"{name}={p.accepts} (default {_spell(p.default)})"
                         for name, p in sorted(cls.PARAMS.items()))

    @property
    def params(self) -> dict:
        """The canonical parameters, defaults filled in."""
        return dict(self._params)

    @property
    def spec(self) -> str:
        """The canonical spec string; equal codecs have equal specs."""
        if not self._params:
            return self.codec_id
        body = ",".join(f"{name}={_spell(value)}" for name, value in sorted(self._params.items()))
        return f"{self.codec_id}:{body}"

    def is_lossless(self, dtype: np.dtype) -> bool:
        """Whether encoding arrays of ``dtype`` loses nothing."""
        return self.lossless

    @abstractmethod
    def encode(self, array: np.ndarray) -> Encoded:
        """Encode a C-contiguous array; NotEncodableError if it cannot be represented."""

    @abstractmethod
    def decode(self, payload: bytes | memoryview | np.ndarray, dtype: np.dtype,
               shape: tuple[int, ...]) -> np.ndarray:
        """Rebuild the array from ``payload``; CodecError if the payload is corrupt."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"get_codec({self.spec!r})"


def as_bytes(payload: bytes | memoryview | np.ndarray) -> memoryview:
    """A flat byte view of any accepted payload type, without copying."""
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8:
            raise CodecError(f"payload array must be uint8, got {payload.dtype}")
        return memoryview(np.ascontiguousarray(payload).reshape(-1))
    return memoryview(payload).cast("B")


def element_count(shape: tuple[int, ...]) -> int:
    """The number of elements of ``shape`` (1 for a 0-d array)."""
    return math.prod(int(d) for d in shape)
