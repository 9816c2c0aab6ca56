"""LightningDataModule over ``data/prepared/``."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from rnnexp.data.prepare import read_meta, read_split
from rnnexp.errors import DataError


def split_dataset(prepared_dir: str | Path, split: str) -> TensorDataset:
    """Images as int64 level indices (N, C, H, W), with labels when the data has them."""
    images, labels = read_split(prepared_dir, split)
    tensors = [torch.from_numpy(images.astype("int64"))]
    if labels is not None:
        tensors.append(torch.from_numpy(labels.astype("int64")))
    return TensorDataset(*tensors)


class PreparedDataModule(pl.LightningDataModule):
    """Train/val/test loaders over the arrays written by the prepare stage."""

    def __init__(
        self, prepared_dir: str | Path, batch_size: int, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.meta = read_meta(self.prepared_dir)
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                self.datasets[split] = split_dataset(self.prepared_dir, split)
        n_train = len(self.datasets["train"])
        if n_train < self.batch_size:
            raise DataError(
                f"{self.prepared_dir / 'train.npz'}: the training split has {n_train} images, "
                f"fewer than train.batch_size={self.batch_size}; lower train.batch_size"
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
