"""Store calls on the encoded variants and the accounting over them.

Encode variants next to the tensors, read them back, list the keys held
as variants only, and compare sizes.  The work is done by
gradstore.variants, gradstore.encoded and gradstore.report, each imported
inside the call that needs it.  Mixed into gradstore.store.Store.
"""
from __future__ import annotations

import numpy as np

from . import format as fmt
from .index import Entry
from .keys import Selector, select


class Studying:
    """A Store's encoded variants: ``encode``, ``variant``, ``encoded_keys``, ``sizes``."""

    def encode(self, spec, keys: list[str] | None = None, *, progress: bool | None = None,
               jobs: int = 1, dask: str | None = None, scheduler_file: str | None = None,
               **filters):
        """Store the ``spec`` variant of each key (all, ``keys`` or a filter) next to it.

        Idempotent: keys already encoded with ``spec`` from the same tensor are
        skipped. Tensors the codec cannot represent (NaN, Inf, out of range)
        are reported in the result, and the others go on.  ``jobs`` worker
        processes (or a Dask cluster) encode; this process writes.
        """
        from .report.encoding import encode
        return encode(self, spec, self.keys(**filters) if keys is None else keys, jobs=jobs,
                      dask=dask, scheduler_file=scheduler_file, progress=progress)

    def variant(self, key: str, spec, verify: bool = False) -> np.ndarray:
        """The stored ``spec`` variant of ``key``, decoded."""
        from .variants import decode_variant
        self._check_open()
        return decode_variant(self, key, spec, verify)

    def variant_entry(self, key: str, spec) -> Entry:
        """The index entry of a stored variant: ``extra`` holds nbits, err, info."""
        from .variants import find_variant
        self._check_open()
        return find_variant(self, key, spec)[1]

    def variant_specs(self, key: str) -> list[str]:
        """Codec specs of the variants stored for ``key``."""
        prefix = key + "\0"
        return sorted({i[len(prefix):] for ns in self._namespaces.values()
                       for i in ns.index.ids(fmt.KIND_VARIANT) if i.startswith(prefix)})

    def encoded_keys(self, *, rank=None, epoch=None, step=None, bucket=None, module=None) -> list[str]:
        """Keys stored as encoded variants only (no tensor), in natural order; filters as keys()."""
        from .encoded import keys
        self._check_open()
        return select(keys(self), Selector(rank, epoch, step, bucket, module))

    def sizes(self, codecs=(), keys: list[str] | None = None, group_by=(), *,
              progress: bool | None = None, jobs: int = 1, dask: str | None = None,
              scheduler_file: str | None = None, results=False, **filters) -> list[dict]:
        """Rows of side-by-side sizes per key (or per group) for the raw data and each codec.

        ``jobs`` > 1 spreads the keys over that many worker processes (``dask``:
        a Dask scheduler's address).  ``results``: a results file to resume
        from (see gradstore.report.run); by default none is kept.
        """
        from . import report
        self._check_open()
        rep = report.run(self, codecs, keys, group_by, jobs=jobs, dask=dask,
                         scheduler_file=scheduler_file, results=results, progress=progress,
                         **filters)
        rep.close()
        return rep.rows
