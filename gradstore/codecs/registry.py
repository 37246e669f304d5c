"""Find codecs by id: the built-ins, then plug-ins from the ``gradstore.codecs`` entry points.

Nothing is imported until a codec is asked for, so listing codecs or parsing
a spec never pulls numba or zstandard in.  Entry points are read again on
each miss, so a plug-in installed while Python runs is found.
"""
from __future__ import annotations

import importlib
import re
import warnings
from importlib.metadata import EntryPoint, entry_points

from ..errors import CodecError, UnknownCodecError
from .codec import Codec

ENTRY_POINT_GROUP = "gradstore.codecs"

_BUILTIN: dict[str, str] = {
    "eg": "gradstore.codecs.eg:EGCodec",
    "fpx": "gradstore.codecs.fpx:FpxCodec",
    "raw": "gradstore.codecs.raw:RawCodec",
    "zlib": "gradstore.codecs.zlib:ZlibCodec",
    "zipnn": "gradstore.codecs.zipnn:ZipnnCodec",
    "zstd": "gradstore.codecs.zstd:ZstdCodec",
}

_loaded: dict[str, type[Codec]] = {}
_warned: set[str] = set()   # plug-ins shadowing a built-in, warned about once
_ID = re.compile(r"[A-Za-z0-9_.\-]+")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"eg:k=0,scale=1e6"`` into ``("eg", {"k": "0", "scale": "1e6"})``.

    Values stay strings: each codec parses its own.
    """
    if not isinstance(spec, str):
        raise CodecError(f"codec spec must be a string, got {type(spec).__name__}")
    codec_id, _, body = spec.strip().partition(":")
    codec_id = codec_id.strip()
    if not _ID.fullmatch(codec_id):
        raise CodecError(f"bad codec spec {spec!r}: expected 'id' or 'id:name=value,...'")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        name, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not name or not value:
            raise CodecError(f"bad codec spec {spec!r}: {item!r} is not name=value")
        if name in params:
            raise CodecError(f"bad codec spec {spec!r}: parameter {name!r} given twice")
        params[name] = value
    return codec_id, params


def _plugins() -> dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in sorted(set(found) & set(_BUILTIN)):
        target = found.pop(name).value
        if target not in _warned:
            _warned.add(target)
            warnings.warn(f"ignoring plug-in codec {name!r} ({target}): "
                          f"a built-in codec has that id", stacklevel=3)
    return found


def available_codecs() -> list[str]:
    """The ids of the built-in codecs and of every installed plug-in, sorted."""
    return sorted(set(_BUILTIN) | set(_plugins()))


def _load(target: str, codec_id: str) -> type[Codec]:
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # a broken plug-in must not look like an unknown codec
        raise CodecError(f"codec {codec_id!r}: cannot load {target}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Codec)):
        raise CodecError(f"codec {codec_id!r}: {target} is not a gradstore Codec subclass")
    if getattr(cls, "codec_id", None) != codec_id:
        raise CodecError(f"codec {codec_id!r}: {target} declares codec_id "
                         f"{getattr(cls, 'codec_id', None)!r}")
    return cls


def _target(codec_id: str) -> str | None:
    """The ``module:Class`` registered under ``codec_id`` (a built-in first), or None."""
    if codec_id in _BUILTIN:
        return _BUILTIN[codec_id]
    ep = _plugins().get(codec_id)
    return None if ep is None else ep.value


def codec_class(codec_id: str) -> type[Codec]:
    """The class registered under ``codec_id``; UnknownCodecError lists what exists."""
    if codec_id in _loaded:
        return _loaded[codec_id]
    target = _target(codec_id)
    if target is None:
        raise UnknownCodecError(f"unknown codec {codec_id!r}; available: {', '.join(available_codecs())}")
    cls = _loaded[codec_id] = _load(target, codec_id)
    return cls


def module_of(spec: str) -> str | None:
    """The module that holds the codec ``spec`` names, found without importing it;
    None if the spec is bad or names no codec (get_codec then says why)."""
    try:
        codec_id, _ = parse_spec(spec)
    except CodecError:
        return None
    target = _target(codec_id)
    return None if target is None else target.partition(":")[0]


def get_codec(spec: str | Codec) -> Codec:
    """The codec a spec string names (a Codec is returned as it is)."""
    if isinstance(spec, Codec):
        return spec
    codec_id, params = parse_spec(spec)
    return codec_class(codec_id)(**params)
