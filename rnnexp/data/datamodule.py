"""LightningDataModule over ``data/prepared/``.

Batches are dicts: ``image`` int64 level indices (B, C, H, W); ``label`` int64 (B,)
when the data is labelled; ``source`` float32 (B, S, Hs, Ws) in [-1, 1] for the
image-to-image tasks (see :mod:`rnnexp.data.tasks`).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rnnexp.data.prepare import check_batch_size, read_arrays, read_meta
from rnnexp.data.tasks import source_to_float


class SplitDataset(Dataset):
    """One prepared split as tensors; item ``k`` is a dict like a batch, for one image."""

    def __init__(self, prepared_dir: str | Path, split: str) -> None:
        meta = read_meta(prepared_dir)
        arrays = read_arrays(prepared_dir, split, meta)
        self.tensors = {"image": torch.from_numpy(arrays["images"].astype("int64"))}
        if "labels" in arrays:
            self.tensors["label"] = torch.from_numpy(arrays["labels"].astype("int64"))
        if "source" in arrays:
            source = source_to_float(arrays["source"], meta["levels"])
            self.tensors["source"] = torch.from_numpy(source)

    def __len__(self) -> int:
        return len(self.tensors["image"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: t[index] for key, t in self.tensors.items()}


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``range(n)`` that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every training epoch (also after a
    resume from a checkpoint), so epoch ``e`` sees the same order whether training
    ran straight through or was killed and resumed: a resumed run equals an
    uninterrupted one. (A DataLoader's own ``generator`` would instead carry its
    state from epoch to epoch, which a checkpoint does not restore.)
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        # SeedSequence mixes (seed, epoch) into one well-spread 63-bit torch seed.
        word = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        rng = torch.Generator().manual_seed(int(word) >> 1)
        return iter(torch.randperm(self.n, generator=rng).tolist())


class PreparedDataModule(pl.LightningDataModule):
    """Train/val/test loaders over the arrays written by the prepare stage."""

    def __init__(
        self, prepared_dir: str | Path, batch_size: int, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.meta = read_meta(self.prepared_dir)
        self.datasets: dict[str, SplitDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                self.datasets[split] = SplitDataset(self.prepared_dir, split)
        check_batch_size(len(self.datasets["train"]), self.batch_size, self.prepared_dir)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
