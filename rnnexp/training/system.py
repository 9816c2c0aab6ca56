"""LightningModule: negative log-likelihood training of a generator.

Figures are per image in nats and per dimension in bits:
``bits/dim = nats / (C * H * W * ln 2)``. The module receives a ready generator; it
builds no data. Each finished validation epoch appends a row to ``history``
(train and val NLL), which travels inside every checkpoint under ``"rnnexp"``.

The epoch means are torchmetrics ``MeanMetric`` in float64, one per split: under
DDP their ``compute()`` sums the states of every process, so the mean is over the
whole split, not one process's shard. Their states are not saved in checkpoints
(a checkpoint is written at an epoch's end, when they are empty).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

SPLITS = ("train", "val", "test")
PLATEAU_PATIENCE = 2  # lr_schedule plateau: epochs without a better val NLL before halving


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor at optimizer ``step`` (0-based) of ``total``: linear
    from 1/(warmup+1) to 1 over ``warmup`` steps, then a half cosine from 1 to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class PixelRNNSystem(pl.LightningModule):
    """Train a PixelRNN-style generator by maximum likelihood.

    Args:
        generator: an ``nn.Module`` with ``config`` (a ``GeneratorConfig``) and
            ``nll(x) -> (B,)`` in nats per image.
        image_shape: (C, H, W) of the images.
        lr, weight_decay: AdamW settings.
        data_info: facts about the training data stored in checkpoints (hash, levels).
        lr_schedule: ``constant``, or ``cosine``: a linear warm-up over
            ``warmup_epochs`` to lr, then a cosine decay to 0 at the
            trainer's ``max_epochs``, stepped every batch; or ``plateau``: halved after
            ``PLATEAU_PATIENCE`` epochs without a better validation NLL.
        compile: run the generator's ``nll`` through ``torch.compile`` in every step
            (train, val, test). The module itself stays uncompiled, so checkpoints keep
            the generator's own keys and the samplers run it eagerly.
    """

    def __init__(
        self,
        generator: nn.Module,
        image_shape: tuple[int, int, int],
        lr: float,
        weight_decay: float = 0.0,
        data_info: dict[str, Any] | None = None,
        lr_schedule: str = "constant",
        warmup_epochs: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.generator = generator
        # Compile the NLL rather than the module (or the whole step, Lightning's
        # `trainer.fit(torch.compile(system))`): the state_dict gets no "_orig_mod."
        # prefix, and the torchmetrics update and logging stay eager, out of the graph.
        self._compiled_nll = torch.compile(generator.nll) if compile else None
        self.image_shape = tuple(image_shape)
        self.levels = generator.config.levels
        self.lr, self.weight_decay = lr, weight_decay
        self.lr_schedule, self.warmup_epochs = lr_schedule, warmup_epochs
        self.data_info = dict(data_info or {})
        self.run_id: str | None = None
        self.fingerprint: str | None = None  # see rnnexp.training.resume.fingerprint
        self.source_run_id: str | None = None  # the tune trial's run this training continues
        self.history: list[dict[str, float]] = []
        # Keyed "<split>_nll" ("train" is an nn.Module method). NaN checks off: a
        # non-finite loss is NonFiniteLossGuard's to report, with a clear message.
        self.epoch_means = nn.ModuleDict(
            {f"{s}_nll": MeanMetric(nan_strategy="disable") for s in SPLITS}
        )
        for mean in self.epoch_means.values():
            mean.set_dtype(torch.float64)  # also keeps .half()/.double() off its sums
        # Everything needed to rebuild the generator from the checkpoint alone.
        self.save_hyperparameters(
            {
                "generator": generator.config.to_dict(),
                "image_shape": list(self.image_shape),
                "lr": lr,
                "weight_decay": weight_decay,
                "lr_schedule": lr_schedule,
                "warmup_epochs": warmup_epochs,
            }
        )

    @property
    def dims(self) -> int:
        return math.prod(self.image_shape)

    def bits_per_dim(self, nats_per_image: float | torch.Tensor) -> float | torch.Tensor:
        return nats_per_image / (self.dims * math.log(2))

    def conditioning(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The conditioning inputs the generator was built for, taken from a batch."""
        config, cond = self.generator.config, {}
        if config.num_classes:
            cond["labels"] = batch["label"]
        if config.source_channels:
            cond["source"] = batch["source"]
        return cond

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        x = batch["image"]  # (B, C, H, W) level indices
        nll_of = self._compiled_nll or self.generator.nll
        nll = nll_of(x, **self.conditioning(batch))  # (B,) nats per image
        self.epoch_means[f"{stage}_nll"].update(nll.detach())  # summed in float64, weight 1 each
        return nll.mean()

    def _epoch_mean(self, stage: str) -> float | None:
        """The split's mean NLL of this epoch (over every DDP process); resets it."""
        mean = self.epoch_means[f"{stage}_nll"]
        # DistributedSampler gives every process as many batches: all or none updated
        if not mean.update_called:
            return None
        value = float(mean.compute())
        mean.reset()
        return value

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self.epoch_means["train_nll"].reset()

    def on_validation_epoch_end(self) -> None:
        # Validation runs after the epoch's last training batch, so both means are
        # complete here, before ModelCheckpoint saves at the end of validation.
        val = self._epoch_mean("val")
        if val is None or self.trainer.sanity_checking:
            return
        train = self._epoch_mean("train")
        row = {"epoch": self.current_epoch, "val_nll": val, "val_bpd": self.bits_per_dim(val)}
        if train is not None:
            row.update(train_nll=train, train_bpd=self.bits_per_dim(train))
        self.history.append(row)
        for key, value in row.items():
            if key != "epoch":
                stage, metric = key.split("_")
                # A float64 tensor (batch_size=1: no reweighting), so the logged curve and
                # ModelCheckpoint's choice equal ``history`` exactly; a Python float would
                # be rounded to float32 by Lightning.
                exact = torch.tensor(value, dtype=torch.float64)
                self.log(f"{stage}/{metric}", exact, prog_bar=key == "val_bpd", batch_size=1)

    def on_test_epoch_end(self) -> None:
        test = self._epoch_mean("test")
        if test is not None:
            self.log("test/nll", test)
            self.log("test/bpd", self.bits_per_dim(test))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return optimizer
        if self.lr_schedule == "plateau":
            # Halve the lr after 2 epochs without a better validation NLL: it does not
            # depend on max_epochs, so a shorter training (a trial) can be continued.
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.5, patience=PLATEAU_PATIENCE
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val/nll", "interval": "epoch"},
            }
        # Steps of the whole training (max_epochs x batches per epoch), so the decay
        # ends at max_epochs however many epochs a resumed run has done already.
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = total * self.warmup_epochs // max(self.trainer.max_epochs, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, warmup, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rnnexp"] = {
            "history": list(self.history),
            "run_id": self.run_id,
            "data": self.data_info,
            "fingerprint": self.fingerprint,
            "source_run_id": self.source_run_id,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("rnnexp", {})
        self.history = list(info.get("history", []))
        self.source_run_id = info.get("source_run_id")
        # A resumed training whose run is not in this store logs to a new run: keep it.
        self.run_id = self.run_id or info.get("run_id")
