"""A PyTorch view of prepared arrays (kept apart so that the data layer imports without torch)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .prepared import SplitArrays


class SegmentationDataset(Dataset):
    """Items are ``(image, label)``: image (3, H, W) uint8 RGB, label (H, W) int64 (all 255 for an unlabeled
    split). Models scale the uint8 input themselves, so nothing is normalised here."""

    def __init__(self, split: SplitArrays):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.split.images[index])).permute(2, 0, 1)  # a copy: arrays may be read-only
        if self.split.labels is None:
            label = torch.full(image.shape[1:], 255, dtype=torch.int64)
        else:
            label = torch.from_numpy(np.asarray(self.split.labels[index], dtype=np.int64))
        return image, label
