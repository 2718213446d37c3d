"""Torch datasets over the uint8 cache: no JPEG is decoded while training."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class CachedImages(Dataset):
    """``(uint8 tensor 1 x S x S, label)`` pairs from cache rows; scale to [0, 1] (and augment) on the device."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> None:
        if len(rows) != len(labels):
            raise ValueError("rows and labels differ in length")
        self.images, self.rows, self.labels = images, np.asarray(rows), np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[self.rows[i]]))[None], int(self.labels[i])


def to_tensor(images: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """All selected rows as one uint8 (N, 1, S, S) tensor in memory (the whole 224 px set is ~300 MB)."""
    return torch.from_numpy(np.ascontiguousarray(images[rows]))[:, None]
