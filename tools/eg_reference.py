"""The Exp-Golomb bit counter people used before gradstore, kept as a reference.

It is reproduced as it worked, on pure Python strings: each float becomes
round(x * scale) wrapped to int32 (so |x| > 2147 at scale 1e6 wraps around),
|n| is coded with Exp-Golomb of order 0, and one sign bit follows every
value, zero included.  It only counts bits: nothing is written or decoded.

gradstore's ``eg:k=0,scale=1e6,sign=bit`` must count exactly the same bits
(tests/codecs check it, tools/bench_codecs.py times both).

    python tools/eg_reference.py grads.npy [--scale 1e6]
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable


def quantize(x: float, scale: float = 1e6) -> int:
    """round(x * scale) as the original's int32: wraps around beyond 2**31."""
    n = round(x * scale)
    return (n + 2**31) % 2**32 - 2**31


def exp_golomb0(n: int) -> str:
    """Order-0 Exp-Golomb codeword of n >= 0: bin(n + 1) after len - 1 zeros."""
    b = bin(n + 1)[2:]
    return "0" * (len(b) - 1) + b


def codeword(n: int) -> str:
    """EG-0 of |n|, then the sign bit (1 for negative), zero included."""
    return exp_golomb0(abs(n)) + ("1" if n < 0 else "0")


def bitstring(values: Iterable[float], scale: float = 1e6) -> str:
    """The bits the original would write, as a string of '0' and '1'."""
    return "".join(codeword(quantize(x, scale)) for x in values)


def count_bits(values: Iterable[float], scale: float = 1e6) -> int:
    """What the original reports: the total number of bits, summed codeword by codeword."""
    return sum(len(codeword(quantize(x, scale))) for x in values)


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npy", help="a .npy file of floats")
    parser.add_argument("--scale", type=float, default=1e6)
    args = parser.parse_args(argv)
    values = np.load(args.npy).astype(np.float64).ravel().tolist()
    bits = count_bits(values, args.scale)
    print(f"{len(values)} values, {bits} bits, {bits / max(len(values), 1):.4f} bits/value")


if __name__ == "__main__":
    main()
