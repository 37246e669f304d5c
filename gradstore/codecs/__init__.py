"""Codecs: turn one array into bytes and back, behind one small interface.

Built in: ``eg`` (Exp-Golomb entropy coding of quantized values, lossy),
``fpx`` (lossless float coding: rANS over the exponent byte, per chunk),
``zlib``, ``zstd``, ``raw``, and ``zipnn`` (an adapter, when the zipnn
package is installed).  Plug-ins register classes under the entry-point group
``gradstore.codecs`` (``gradstore.codecs.testing.check_codec`` is the test
they should pass).  A spec string such as ``eg:k=auto,remap=rank`` names a
codec the same way in the CLI and the API.  Importing this package loads
no codec: numba and zstandard are imported when a codec that needs them is
first asked for.
"""
from .codec import Codec, Encoded
from .registry import available_codecs, get_codec, parse_spec

__all__ = ["Codec", "Encoded", "available_codecs", "get_codec", "parse_spec"]
