"""Data sources of the training loop: where a step's batch comes from.

Every source draws its items in the study's order (``BatchStream``: passes over the set, each freshly shuffled,
so batch ``step`` is a pure function of the seed and the step, and a resumed training sees exactly the batches
it would have seen) and turns the items of one batch into tensors on the runtime's device. Under DDP each process
takes its share (``rank::world_size``) of every global batch.

=====================  ==========================================================  ============================
source                 items                                                       used by
=====================  ==========================================================  ============================
``ArraySource``        in-memory images (N, H, W, 3) uint8 and labels (N, H, W)     the study, consistency loss
                       (on a GPU with room for them: held in its memory)
``OnlineAugmented``    the same, rescaled, cropped, flipped and jittered on device  the standard protocol
``ViewPairs``          two photometric views of every unlabeled image              consistency loss
``EvalNetBatches``     (image, candidate mask, IoU and detection targets) rows     EvalNets
=====================  ==========================================================  ============================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from ..data.augment import AugmentParams, augment_photometric
from ..data.online_augment import augment_batch
from ..seeds import derive_seed
from .runtime import Runtime, gpu_share

Batch = tuple[torch.Tensor, ...]


class BatchStream:
    """The study's data order: passes over the set, each in a fresh shuffled order, cut into batches; the last
    batch of a pass is kept even when short, or, with ``drop_last``, left out (the standard protocol's loaders:
    a short batch split over processes can leave one image per BatchNorm). Batch ``step`` is a pure function
    of (seed, step), so a resumed training sees exactly the batches it would have seen."""

    def __init__(self, size: int, batch_size: int, seed: int, drop_last: bool = False):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_pass = max(1, size // batch_size) if drop_last else math.ceil(size / batch_size)
        self._pass, self._order = -1, np.arange(0)

    def batch(self, step: int) -> np.ndarray:
        number, position = divmod(step, self.batches_per_pass)
        if number != self._pass:
            self._pass, self._order = number, np.random.default_rng([self.seed, number]).permutation(self.size)
        return self._order[position * self.batch_size:(position + 1) * self.batch_size]


def to_batch(images: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, runtime: Runtime
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (B, 3, H, W) uint8 and labels (B, H, W) int64 on the runtime's device. The (B, H, W, 3) arrays
    already are channels-last memory, so no layout copy is made unless NCHW is asked for."""
    x = _layout(torch.from_numpy(np.ascontiguousarray(images[indices])), runtime)
    if runtime.device.type == "cpu":
        return x, torch.from_numpy(np.asarray(labels[indices]).astype(np.int64)) if labels is not None else None
    # labels cross to the device in their own type (uint8: an eighth of int64's bytes) and widen there
    y = torch.from_numpy(np.ascontiguousarray(labels[indices])) if labels is not None else None
    return x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True).long() \
        if y is not None else None


def _layout(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """(B, H, W, 3) images as (B, 3, H, W): a channels-last view, or NCHW memory when that is asked for."""
    x = images.permute(0, 3, 1, 2)
    return x if runtime.channels_last else x.contiguous()


#: the share of the GPU memory a training left unused in its first step that its training set may take
DEVICE_DATA_SHARE = 0.5


def device_memory(device: torch.device) -> int:
    """Bytes of the GPU this process may use: the device's memory times its share (``runtime.gpu_share``)."""
    return int(torch.cuda.get_device_properties(device).total_memory * gpu_share())


def reserved_memory(device: torch.device) -> int:
    """The most GPU memory this process's allocator has held so far."""
    return int(torch.cuda.max_memory_reserved(device))


def _nbytes(array) -> int:
    return int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize


def holds_on_device(images, labels, runtime: Runtime) -> bool:
    """Whether a training set goes to device memory (``train.device_data``): on a GPU, when images and labels
    take at most ``DEVICE_DATA_SHARE`` of the memory this process may use and has not used so far (asked after a
    training step, whose peak is then known), so that a network that needs most of the device keeps it."""
    if runtime.device.type == "cpu" or not runtime.device_data:
        return False
    size = _nbytes(images) + (_nbytes(labels) if labels is not None else 0)
    return size <= DEVICE_DATA_SHARE * (device_memory(runtime.device) - reserved_memory(runtime.device))


def to_device(array, device: torch.device, rows: int = 256) -> torch.Tensor:
    """An array (in memory or read on demand) as one tensor on ``device``, copied ``rows`` rows at a time, so
    that the host never holds more than those rows of a lazily read set."""
    out = torch.empty(tuple(array.shape), dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device)
    for start in range(0, len(array), rows):
        out[start:start + rows] = torch.from_numpy(np.ascontiguousarray(array[start:start + rows]))
    return out


def gather(images: torch.Tensor, labels: torch.Tensor | None, indices: np.ndarray, runtime: Runtime
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``to_batch`` of a set held on the device: the same tensors, gathered there."""
    index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=images.device)
    x = _layout(images.index_select(0, index), runtime)
    return x, labels.index_select(0, index).long() if labels is not None else None


class Source(Protocol):
    """What the loop needs of a data source."""

    def __len__(self) -> int:  # items in one pass
        ...

    @property
    def pixels(self) -> int:  # pixels of one item (for train.recompute=auto)
        ...

    def batch(self, indices: np.ndarray, step: int, runtime: Runtime) -> Batch:
        ...


class ArraySource:
    """Images and labels held in memory (or memory-mapped), as the study trains. On a GPU with room for them
    (``holds_on_device``, asked at the second batch: after a step) they are copied to the device, and later
    batches are gathered there; the batches are the same either way."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self._on_device: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._batches = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def pixels(self) -> int:
        return int(self.images.shape[1] * self.images.shape[2])

    def tensors(self, indices: np.ndarray, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's images and labels on the runtime's device (``to_batch``), from the device's copy when
        there is one."""
        self._batches += 1
        if self._batches == 2:  # the first step's memory is known now
            if holds_on_device(self.images, self.labels, runtime):
                self._on_device = (to_device(self.images, runtime.device),
                                   to_device(self.labels, runtime.device) if self.labels is not None else None)
        if self._on_device is not None:
            return gather(*self._on_device, indices, runtime)
        return to_batch(self.images, self.labels, indices, runtime)

    def batch(self, indices: np.ndarray, step: int, runtime: Runtime) -> Batch:
        return self.tensors(indices, runtime)


class OnlineAugmented(ArraySource):
    """The standard protocol's augmentation, drawn anew for every batch on the device: random rescaling, crop
    (padded with ignore), flip and photometric jitter, from a generator seeded by (seed, step, rank)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, online, seed: int):
        super().__init__(images, labels)
        self.online, self.seed = online, seed

    @property
    def pixels(self) -> int:
        return int(self.online.crop[0] * self.online.crop[1])

    def batch(self, indices: np.ndarray, step: int, runtime: Runtime) -> Batch:
        generator = torch.Generator(device=runtime.device)
        generator.manual_seed(self.seed * 1_000_003 + step * 101 + runtime.rank)
        images, labels = self.tensors(indices, runtime.but(channels_last=False))
        images, labels = augment_batch(images, labels, self.online, generator)
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels


def two_views(images: np.ndarray, ids: list[str], params: AugmentParams, seed: int, step: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Two independent photometric views of every (H, W, 3) RGB image of a batch."""
    views_a, views_b = np.empty_like(images), np.empty_like(images)
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng(derive_seed(seed, "views", step, image_id))
        views_a[i] = augment_photometric(images[i], params, rng)
        views_b[i] = augment_photometric(images[i], params, rng)
    return views_a, views_b


class ViewPairs:
    """Two photometric views of each unlabeled image (consistency loss). Both views are RGB, as the labeled
    images are (the original fed this branch OpenCV's BGR order, notes 8.6)."""

    def __init__(self, images: np.ndarray, ids: list[str], params: AugmentParams, seed: int,
                 views: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None):  # None: two_views
        self.images, self.ids, self.params, self.seed, self.views = images, ids, params, seed, views

    def __len__(self) -> int:
        return len(self.images)

    @property
    def pixels(self) -> int:
        return int(2 * self.images.shape[1] * self.images.shape[2])

    def batch(self, indices: np.ndarray, step: int, runtime: Runtime) -> Batch:
        views = (self.views or two_views)(np.asarray(self.images[indices]), [self.ids[i] for i in indices], self.params, self.seed,
                           step)
        a, b = (torch.from_numpy(v).permute(0, 3, 1, 2) for v in views)
        if not runtime.channels_last:
            a, b = a.contiguous(), b.contiguous()
        return a.to(runtime.device), b.to(runtime.device)


class EvalNetBatches:
    """EvalNet training rows (``data.evalnet_rows.EvalNetRows``): image, candidate mask, IoU and detection
    targets per class."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def pixels(self) -> int:
        return int(self.rows.images.shape[1] * self.rows.images.shape[2])

    def batch(self, indices: np.ndarray, step: int, runtime: Runtime) -> Batch:
        rows, device = self.rows, runtime.device
        images = torch.from_numpy(np.asarray(rows.images[rows.image_index[indices]])).permute(0, 3, 1, 2)
        if not runtime.channels_last:
            images = images.contiguous()
        masks = torch.from_numpy(np.asarray(rows.masks[indices]).astype(np.int64))
        return (images.to(device), masks.to(device), torch.from_numpy(rows.iou[indices]).to(device),
                torch.from_numpy(rows.detection[indices]).to(device))
