"""Helpers that write small image datasets and archives to a temporary folder."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("cat", "dog", "frog")


def write_images(folder: Path, count: int, *, size: int = 32, seed: int = 0, suffix: str = ".jpg") -> list[Path]:
    """``count`` random RGB images named ``0000<suffix>``... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}{suffix}"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_image_folder(root: Path, *, per_class: dict[str, int] | None = None, size: int = 32) -> Path:
    """``root/{train,val}/<class>/*.jpg`` with ``per_class`` images (default 4 train / 2 val per class)."""
    for s, split in enumerate(("train", "val")):
        for c, name in enumerate(CLASSES):
            count = (per_class or {}).get(name, 4 if split == "train" else 2)
            write_images(root / split / name, count, size=size, seed=10 * s + c)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def cifar_archive(tmp_path: Path) -> Path:
    """A miniature of the CIFAR-10 JPEG archive: ``cifar10/{train,val}/<class>/*.jpg`` in a .tar.xz."""
    tree = write_image_folder(tmp_path / "src" / "cifar10")
    archive = tmp_path / "mini-cifar10.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tree, arcname="cifar10")
    return archive
