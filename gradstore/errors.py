"""Exceptions raised by gradstore.

Every error carries what a user needs to act on it: the key, the file and the
offset where that applies.  All derive from :class:`GradstoreError`, so a CLI
can catch one type and print one line.
"""
from __future__ import annotations


class GradstoreError(Exception):
    """Base class of every error gradstore raises on purpose."""


class FormatError(GradstoreError):
    """A file is not a gradstore file, or has a version this reader does not know."""


class ChecksumError(GradstoreError):
    """A record's bytes do not match the checksum stored with them."""

    def __init__(self, message: str, *, key: str | None = None,
                 segment: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.key = key
        self.segment = segment
        self.offset = offset


class LockedError(GradstoreError):
    """Another writer holds the lock of a store namespace."""


class ReadOnlyError(GradstoreError):
    """A write was attempted on a store opened for reading."""


class KeyExistsError(GradstoreError, KeyError):
    """A key is written a second time without ``overwrite=True``."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CodecError(GradstoreError):
    """A codec spec is unknown or malformed, or a payload does not decode."""


class UnknownCodecError(CodecError):
    """A codec id names no built-in codec and no installed plug-in."""


class NotEncodableError(CodecError):
    """A tensor cannot be represented by a codec (NaN, Inf, out of range)."""


class WriteError(GradstoreError, OSError):
    """A write failed (disk full, say); nothing of the call was committed.

    An OSError too, with the original errno; the message names the key and the file.
    """
