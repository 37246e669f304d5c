"""The ``eg`` codec: quantize, then Exp-Golomb code (BackSlash, ICML 2025).

The interface is ``EGCodec`` (codec.py), registered as ``eg``; its docstring
is the payload's format spec.  The other modules are its parts, in the order
an encode goes through them:

    codec.py    EGCodec: parameters, spec string, payload header, encode/decode
    passes.py   the passes over an array: scan (histogram), plan, write
    plan.py     what is done once per distinct symbol: codes, k=auto, rank table
    kernels.py  numba kernels of the scan: quantize, count, table indices
    write.py    numba kernels of the write pass
    emit.py     the shared codeword emitter of every writer
    bits.py     bit arithmetic: EG code lengths and codewords, big-endian stores
    read.py     the decoder's kernels
"""
from .codec import EGCodec

__all__ = ["EGCodec"]
