"""Image decoding shared by every dataset, and a dataset whose images are decoded once and kept in RAM.

:func:`load_rgb` is the single place an image file becomes a PIL image, so per-item loading and the
in-memory copy give the same pixels by construction. :class:`InMemoryImageDataset` exists because a
CIFAR-sized epoch is dominated by JPEG decoding (40k tiny files) rather than by the model on CPU:
decoding once and serving PIL images from a ``uint8`` array keeps every transform (RandAugment needs
PIL) while paying the decode cost only once per process, or once per machine with the ``.npy`` cache.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from research.files import write_atomic

__all__ = ["DataError", "InMemoryImageDataset", "decode_images", "load_rgb"]


class DataError(ValueError):
    """Missing, empty or unreadable data. The message names the offending path and says what to do."""


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode one image file to an RGB PIL image (what torchvision's default loader does).

    Raises:
        DataError: naming ``path`` if it cannot be opened or decoded. A truncated JPEG otherwise
            fails deep in PIL with "image file is truncated" and no file name, and inside a
            DataLoader worker that leaves no way to find the bad file.
    """
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")  # convert() forces the full decode while the file is open
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {os.fspath(path)}: {exc}. Replace or delete this file.") from exc


def decode_images(paths: Sequence[str], *, num_threads: int | None = None) -> np.ndarray:
    """Decode equally sized images into one ``(N, H, W, 3)`` uint8 array, in ``paths`` order.

    Args:
        paths: Image files, all of the same height and width.
        num_threads: Decoding threads (PIL releases the GIL while decoding); default: CPU count, max 8.

    Raises:
        DataError: an unreadable file, or a file whose size differs from the first one's.
    """
    if not paths:
        raise DataError("no images to decode: the dataset is empty")
    first = np.asarray(load_rgb(paths[0]))  # (H, W, 3)
    pixels = np.empty((len(paths), *first.shape), dtype=np.uint8)  # (N, H, W, 3)

    def decode(i: int) -> None:
        array = np.asarray(load_rgb(paths[i]))
        if array.shape != first.shape:
            raise DataError(
                f"{paths[i]} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is {first.shape[1]}x"
                f"{first.shape[0]}; an in-memory dataset needs images of one size (set in_memory: false)"
            )
        pixels[i] = array

    workers = num_threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(decode, range(len(paths))):  # consuming the results re-raises worker errors
            pass
    return pixels


class InMemoryImageDataset(Dataset):
    """(image, label) pairs served from a decoded ``(N, H, W, 3)`` uint8 array.

    Items are PIL images (then ``transform``), exactly what an ImageFolder with :func:`load_rgb` gives.
    With fork-started DataLoader workers the array is shared copy-on-write, never copied per worker.

    Args:
        pixels: ``(N, H, W, 3)`` uint8 images.
        targets: ``N`` class indices.
        classes: Class names; ``classes[target]`` names an image's class.
        transform: Applied to each PIL image.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        targets: Sequence[int],
        classes: list[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be a (N, H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
        if len(targets) != len(pixels):
            raise ValueError(f"{len(pixels)} images but {len(targets)} targets")
        self.pixels = pixels
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.transform = transform

    @classmethod
    def from_files(
        cls,
        samples: Sequence[tuple[str, int]],
        classes: list[str],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        cache_file: str | os.PathLike[str] | None = None,
    ) -> InMemoryImageDataset:
        """Decode ``samples`` (``(path, target)`` pairs, e.g. ``ImageFolder.samples``) into memory.

        Args:
            samples: Files and their class indices, in dataset order.
            classes: Class names.
            transform: Applied to each PIL image.
            cache_file: Optional ``.npy`` path. If it holds an array of the right length it is loaded
                instead of decoding; otherwise the decoded array is written there (atomically, so
                concurrent processes never read a half-written file). Only use it next to data that
                does not change, as the cache is validated by image count alone.
        """
        paths = [path for path, _ in samples]
        targets = [target for _, target in samples]
        pixels = _load_cache(cache_file, len(paths)) if cache_file else None
        if pixels is None:
            pixels = decode_images(paths)
            if cache_file:
                _save_cache(cache_file, pixels)
        return cls(pixels, targets, classes, transform)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.pixels[index])  # mode "RGB" from the (H, W, 3) uint8 shape
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __repr__(self) -> str:
        n, h, w, _ = self.pixels.shape
        return f"{type(self).__name__}({n} images of {w}x{h}, {len(self.classes)} classes)"


def _load_cache(path: str | os.PathLike[str], expected: int) -> np.ndarray | None:
    if not os.path.isfile(path):
        return None
    try:
        pixels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        warnings.warn(f"ignoring unreadable decoded-image cache {path} ({exc}); decoding again", stacklevel=3)
        return None
    if pixels.ndim != 4 or pixels.dtype != np.uint8 or len(pixels) != expected:
        warnings.warn(
            f"ignoring decoded-image cache {path}: it holds {pixels.dtype} {pixels.shape}, expected {expected} "
            "uint8 images; decoding again",
            stacklevel=3,
        )
        return None
    return pixels


def _save_cache(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write atomically (research.files): readers see the old file, nothing, or the whole new one."""
    try:
        write_atomic(Path(path), lambda handle: np.save(handle, pixels, allow_pickle=False))
    except OSError as exc:  # read-only cache folder: the dataset still works, only slower to start
        warnings.warn(f"cannot write decoded-image cache {path} ({exc}); continuing without it", stacklevel=3)
