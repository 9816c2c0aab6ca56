"""Lightning callbacks and the checkpoint writer: side effects that are not the model's job."""

from __future__ import annotations

import io
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rnnexp.console import progress_line
from rnnexp.data.prepare import read_arrays
from rnnexp.errors import RnnexpError
from rnnexp.evaluation.generation import TaskInfo, sample_picture
from rnnexp.util.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


class SampleGrid(pl.Callback):
    """Every ``every`` epochs (and after the last), log a sample picture, fixed seed.

    The same seed every epoch shows how samples of the *same* noise evolve. For
    image-to-image models the picture shows source | output | target rows of the
    first validation images (read from ``prepared_dir``). The picture goes to the
    logger's ``log_image(image, key, step)`` when it has one.
    """

    def __init__(self, every: int, n: int, seed: int = 0, prepared_dir: str | None = None):
        self.every, self.n, self.seed, self.prepared_dir = every, n, seed, prepared_dir
        self._arrays: dict | None = None

    def _val_arrays(self, module: pl.LightningModule) -> dict:
        if self._arrays is None:
            if self.prepared_dir is not None:
                self._arrays = read_arrays(self.prepared_dir, "val")
            else:
                self._arrays = {"images": np.zeros((0, *module.image_shape), np.uint8)}
        return self._arrays

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.every <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        last = epoch + 1 == trainer.max_epochs
        if (epoch + 1) % self.every and not last:
            return
        log_image = getattr(trainer.logger, "log_image", None)
        if log_image is None:
            return
        task = TaskInfo.from_data_info(module.data_info)
        picture = sample_picture(
            module.generator, task, self._val_arrays(module), self.n, self.seed, 1.0
        )
        log_image(picture, key="samples", step=epoch)


class EpochProgress(pl.Callback):
    """One log line per finished epoch, for where no progress bar is drawn.

    ``train: epoch 3/30 val/bpd 1.2345 (elapsed 0:01:02, eta 0:09:18)``: the label,
    the epoch, the monitored metric, the time this process has trained and the
    time the remaining epochs will take at the pace so far. Global rank 0 only.

    Args:
        label: what the line starts with (``train:``, ``tune: trial 3``).
        every_s: log an epoch only when at least this many seconds passed since the
            last line (or the start); 0: every epoch.
        metric: the logged metric shown.
    """

    def __init__(self, label: str = "train:", every_s: float = 0.0, metric: str = "val/bpd"):
        self.label, self.every_s, self.metric = label, every_s, metric
        self._start = self._last = 0.0
        self._first_epoch = 0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._first_epoch = trainer.current_epoch  # > 0 when resumed

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Lightning 2 runs the epoch's validation before this hook: the metric is fresh.
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last < self.every_s:
            return
        self._last = now
        done = trainer.current_epoch + 1
        value = trainer.callback_metrics.get(self.metric)
        figures = "" if value is None else f"{self.metric} {float(value):.4f}"
        ran = done - self._first_epoch
        log.info(
            progress_line(self.label, done, trainer.max_epochs, figures, now - self._start, ran)
        )


class NonFiniteLossGuard(pl.Callback):
    """Stop training with a clear error when the loss turns NaN or infinite.

    The step named is the global step of the batch whose loss was not finite (read
    before the batch: by ``on_train_batch_end`` the optimizer has already stepped).
    """

    _step = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise RnnexpError(
                f"training loss became {float(loss)} at epoch {trainer.current_epoch}, "
                f"step {self._step} (batch {batch_idx}); lower train.lr or "
                "set train.grad_clip"
            )


class RngState(pl.Callback):
    """Save the global random generators in checkpoints and restore them on resume.

    Lightning restores weights, optimizer and loop counters but not the state of
    ``torch``, ``numpy`` and ``random``; anything drawing from them during training
    (dropout, augmentation) would make a resumed run differ from an uninterrupted
    one. The state is stored as tensors and plain lists, which
    ``torch.load(weights_only=True)`` reads.
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        version, words, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": [version, list(words), gauss],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words), gauss))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that never leaves a half-written file.

    The checkpoint is serialised in memory and moved into place with a rename, so an
    interrupted save (kill, full disk) keeps the previous checkpoint intact.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())
