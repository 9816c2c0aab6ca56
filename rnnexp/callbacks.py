"""Lightning callbacks for side effects that are not the model's job."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from rnnexp.errors import RnnexpError
from rnnexp.images import make_grid
from rnnexp.models.sampling import sample_naive


class SampleGrid(pl.Callback):
    """Every ``every`` epochs (and after the last), sample a grid with a fixed seed.

    The same seed every epoch shows how samples of the *same* noise evolve. The grid
    goes to the logger's ``log_image(image, key, step)`` when it has one.
    """

    def __init__(self, every: int, n: int, seed: int = 0) -> None:
        self.every, self.n, self.seed = every, n, seed

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
        c, h, w = module.image_shape
        generator = torch.Generator().manual_seed(self.seed)  # same grid on any device
        images = sample_naive(
            module.generator, self.n, h, w, generator=generator, device=module.device
        )
        log_image(make_grid(images.cpu().numpy(), module.levels), key="samples", step=epoch)


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
