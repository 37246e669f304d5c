"""Bring existing gradient dumps into a store, and take subsets back out.

    from gradstore.convert import convert, watch, export
    report = convert(["run/grads"], "run.gs", jobs=2, delete_source=True)
    report = watch("run/grads", "run.gs", once=True)
    export("run.gs", "share/", format="pt", step=range(10, 20))

Sources are .pt/.pth (torch.save of tensors, dicts of tensors, nested
dicts), HDF5 packs and .safetensors files.  torch, h5py and safetensors are
imported only when a file of theirs is read or written.
"""
from .export import ExportReport, export
from .pipeline import DEFAULT_JOBS, Converter, convert
from .progress import Report
from .readers import MainGuardError
from .source import SourceError
from .watch import watch

__all__ = ["convert", "watch", "export", "Converter", "Report", "ExportReport", "SourceError",
           "MainGuardError", "DEFAULT_JOBS"]
