"""The torch adapter: the only place in gradstore that imports torch at module level.

``GradientCapture`` (DDP communication hook) and ``CaptureCallback``
(transformers Trainer, an optional dependency) load on first use, as do
``eg_compress_hook`` and ``EGHookState`` (EG-coded gradient exchange).
"""
from __future__ import annotations

__all__ = ["GradientCapture", "CaptureCallback", "CaptureError", "EGHookState", "eg_compress_hook"]


def __getattr__(name: str):
    if name in ("GradientCapture", "CaptureError"):
        from . import capture
        return getattr(capture, name)
    if name == "CaptureCallback":
        from .callback import CaptureCallback
        return CaptureCallback
    if name in ("EGHookState", "eg_compress_hook"):
        from . import eg_hook
        return getattr(eg_hook, name)
    raise AttributeError(f"module 'gradstore.torch' has no attribute {name!r}")
