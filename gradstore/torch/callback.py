"""A transformers Trainer callback that keeps a GradientCapture's epoch and step in line with the Trainer."""
from __future__ import annotations

import math

from transformers import TrainerCallback

from .capture import GradientCapture


class CaptureCallback(TrainerCallback):
    """Tell ``capture`` the Trainer's epoch and global step before each optimizer step.

    With ``trainer``, the capture hook is also registered on the Trainer's
    DDP model when training begins (``hook`` as in ``GradientCapture.register``).
    At the end of training the capture is closed (``close_at_end``), so
    everything captured is stored.
    """

    def __init__(self, capture: GradientCapture, trainer=None, hook=None, close_at_end: bool = True):
        self.capture = capture
        self.trainer = trainer
        self.hook = hook
        self.close_at_end = close_at_end
        self.registered = False
        self._epoch = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from torch.nn.parallel import DistributedDataParallel
        wrapped = getattr(self.trainer, "model_wrapped", None)
        if not self.registered and isinstance(wrapped, DistributedDataParallel):
            self.capture.register(wrapped, self.hook)
            self.registered = True
        self._epoch = math.floor((state.epoch or 0) + 1e-9)
        self.capture.step(epoch=self._epoch, step=state.global_step)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch = math.floor((state.epoch or 0) + 1e-9)
        self.capture.step(epoch=self._epoch)

    def on_step_begin(self, args, state, control, **kwargs):
        self.capture.step(epoch=self._epoch, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.close_at_end:
            self.capture.close()
        else:
            self.capture.flush()
