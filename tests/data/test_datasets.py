"""Dataset builders: layouts, class lists, errors naming the bad path, the CIFAR archive cache."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import pickle
import random
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10

from research.data import DataError, InMemoryImageDataset
from research.data.augment import eval_transform
from research.data.datasets import archive_key, check_ready, extract_archive_once
from research.registry import AUGMENTATIONS, DATASETS

from .conftest import CLASSES, write_image_folder, write_images

SHARED_ARCHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.xz"


def test_builders_registered_with_engine_signature():
    for name in ("imagefolder", "imagenet", "cifar10_jpeg", "cifar10", "synthetic"):
        params = DATASETS.signature(name).parameters
        assert {"split", "transform"} <= set(params), name
        assert all(p.kind is p.KEYWORD_ONLY for p in params.values()), name
        assert all(p.default is not p.empty for key, p in params.items() if key not in ("split", "transform")), name


# --- imagefolder -----------------------------------------------------------------------------------


def test_imagefolder_reads_splits_and_classes(image_folder: Path):
    train = DATASETS.build("imagefolder", split="train", transform=eval_transform(32), root=str(image_folder))
    val = DATASETS.build("imagefolder", split="val", transform=None, root=str(image_folder))
    assert train.classes == val.classes == sorted(CLASSES)
    assert (len(train), len(val)) == (12, 6)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and label == 0
    assert val[0][0].mode == "RGB"


def test_imagefolder_is_checked_against_the_sizes_it_declares(image_folder: Path):
    declared = {"root": str(image_folder), "train_size": 12, "val_size": 6, "num_classes": 3}
    assert len(DATASETS.build("imagefolder", split="val", transform=None, **declared)) == 6
    with pytest.raises(DataError, match=r"holds 12 images, not the 13 of data.train_size; correct data.train_size or data.num_classes"):
        DATASETS.build("imagefolder", split="train", transform=None, **{**declared, "train_size": 13})
    with pytest.raises(DataError, match="holds 3 classes, not the 4 of data.num_classes"):
        DATASETS.build("imagefolder", split="val", transform=None, **{**declared, "num_classes": 4})


def test_imagenet_is_an_image_folder_of_imagenet_1ks_known_sizes(image_folder: Path):
    info = DATASETS.info("imagenet")
    assert (info.train_size, info.val_size, info.num_classes, info.folders) == (1_281_167, 50_000, 1000, True)
    with pytest.raises(DataError, match="holds 6 images, not the 50000 of ImageNet-1k; a subset is data.name=imagefolder"):
        DATASETS.build("imagenet", split="val", transform=None, root=str(image_folder))
    with pytest.raises(DataError, match="has no 'train' or 'val' folder"):
        check_ready({"name": "imagenet", "root": str(image_folder / "train")})


def test_imagefolder_relative_root(image_folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(image_folder.parent)
    assert len(DATASETS.build("imagefolder", split="val", transform=None, root=image_folder.name)) == 6


@pytest.mark.parametrize("root", ["", "does-not-exist"])
def test_imagefolder_missing_root(tmp_path: Path, root: str):
    with pytest.raises(DataError, match="root"):
        DATASETS.build("imagefolder", split="train", transform=None, root=root and str(tmp_path / root))


def test_imagefolder_missing_split(image_folder: Path):
    shutil.rmtree(image_folder / "val")
    with pytest.raises(DataError, match=r"no 'val' folder"):
        DATASETS.build("imagefolder", split="val", transform=None, root=str(image_folder))


def test_imagefolder_empty_class_folder_is_named(image_folder: Path):
    (image_folder / "train" / "zebra").mkdir()
    (image_folder / "val" / "zebra").mkdir()
    (image_folder / "val" / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"val/zebra"):
        DATASETS.build("imagefolder", split="val", transform=None, root=str(image_folder))


def test_imagefolder_class_mismatch_between_splits(image_folder: Path):
    write_images(image_folder / "train" / "zebra", 2)
    with pytest.raises(DataError, match=r"only in train: \['zebra'\]"):
        DATASETS.build("imagefolder", split="val", transform=None, root=str(image_folder))


def test_unreadable_image_names_the_file(image_folder: Path):
    bad = image_folder / "train" / "cat" / "0000.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    dataset = DATASETS.build("imagefolder", split="train", transform=None, root=str(image_folder))
    with pytest.raises(DataError, match=str(bad)):
        dataset[0]
    # ... also when the failure happens in a DataLoader worker process.
    loader = DataLoader(dataset, batch_size=None, num_workers=1, collate_fn=lambda item: item)
    with pytest.raises(DataError, match=str(bad)):
        list(loader)


# --- cifar10_jpeg ----------------------------------------------------------------------------------


def test_cifar10_jpeg_extracts_once_and_verifies(cifar_archive: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    kwargs = dict(transform=None, archive=str(cifar_archive), cache_dir=str(cache))
    train = DATASETS.build("cifar10_jpeg", split="train", **kwargs)
    assert train.classes == sorted(CLASSES) and len(train) == 12
    (extraction,) = cache.glob("cifar10-*")  # keyed by the archive (research.data.datasets.archive_key)
    assert extraction.name == f"cifar10-{archive_key(cifar_archive)}"
    marker = json.loads((extraction / ".extracted.json").read_text())
    assert marker["files"] == {"train": 12, "val": 6}
    assert not [p for p in cache.iterdir() if "extracting" in p.name]  # temporary folder removed
    # Second build: no extraction (the archive may even be gone).
    cifar_archive.unlink()
    val = DATASETS.build("cifar10_jpeg", split="val", **kwargs)
    assert len(val) == 6


def test_cifar10_jpeg_detects_modified_cache(cifar_archive: Path, tmp_path: Path):
    kwargs = dict(transform=None, archive=str(cifar_archive), cache_dir=str(tmp_path))
    DATASETS.build("cifar10_jpeg", split="train", **kwargs)
    (extraction,) = tmp_path.glob("cifar10-*")
    (extraction / "train" / "cat" / "0000.jpg").unlink()
    with pytest.raises(DataError, match=f"delete {extraction} to re-extract"):
        DATASETS.build("cifar10_jpeg", split="train", **kwargs)


def test_cifar10_jpeg_refuses_unmarked_folder(cifar_archive: Path, tmp_path: Path):
    write_image_folder(tmp_path / f"cifar10-{archive_key(cifar_archive)}")  # e.g. extracted by hand: unverified
    kwargs = dict(transform=None, archive=str(cifar_archive), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="was not extracted by research"):
        DATASETS.build("cifar10_jpeg", split="train", **kwargs)


def test_cifar10_jpeg_missing_or_corrupt_archive(tmp_path: Path):
    missing = tmp_path / "x.tar.xz"
    with pytest.raises(DataError, match="not found.*data.archive"):
        DATASETS.build("cifar10_jpeg", split="train", transform=None, archive=str(missing), cache_dir=str(tmp_path))
    corrupt = tmp_path / "corrupt.tar.xz"
    corrupt.write_bytes(b"\xfd7zXZ\x00" + b"garbage" * 100)
    with pytest.raises(DataError, match="cannot extract"):
        DATASETS.build("cifar10_jpeg", split="train", transform=None, archive=str(corrupt), cache_dir=str(tmp_path))
    assert not list(tmp_path.glob("cifar10*"))


def test_cifar10_jpeg_two_archives_coexist_in_one_cache(cifar_archive: Path, tmp_path: Path):
    """The cache is keyed by the archive, not by the dataset's name: a second archive (another
    subset, a fixed copy) gets its own extraction, and the first one stays usable."""
    other = tmp_path / "other-cifar10.tar.xz"
    tree = write_image_folder(tmp_path / "src2" / "cifar10", per_class={name: 3 for name in CLASSES})
    with tarfile.open(other, "w:xz") as tar:
        tar.add(tree, arcname="cifar10")
    cache = tmp_path / "cache"

    def train(archive: Path) -> int:
        return len(DATASETS.build("cifar10_jpeg", split="train", transform=None, archive=str(archive), cache_dir=str(cache)))

    assert train(cifar_archive) == 12
    assert train(other) == 9  # before: "was extracted from ... delete it to re-extract"
    assert train(cifar_archive) == 12  # not re-extracted over the other one
    assert len(list(cache.glob("cifar10-*/.extracted.json"))) == 2
    with pytest.raises(DataError, match="several archives"):  # gone: which of the two is meant is unknown
        train(tmp_path / "gone.tar.xz")
    # the same archive elsewhere finds its extraction (the key is its content, not its path)
    moved = tmp_path / "moved.tar.xz"
    other.rename(moved)
    assert train(moved) == 9 and len(list(cache.glob("cifar10-*"))) == 2


def _extract_after(barrier: Any, archive: Path, cache: Path) -> None:
    barrier.wait()  # start together so the extractions overlap
    extract_archive_once(archive, cache, "cifar10")


@pytest.mark.parametrize("lock", [True, False], ids=["locked", "rename-only"])
def test_cifar10_jpeg_concurrent_extraction(cifar_archive: Path, tmp_path: Path, monkeypatch, lock: bool):
    """Parallel jobs or DDP ranks extracting at once; without the lock (e.g. on a filesystem that
    ignores flock) the atomic rename alone must keep the result complete."""
    if not lock:
        monkeypatch.setattr("research.data.datasets.flock", lambda path: contextlib.nullcontext())
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    processes = [context.Process(target=_extract_after, args=(barrier, cifar_archive, cache)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    extraction = f"cifar10-{archive_key(cifar_archive)}"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [extraction]
    assert len(list((cache / extraction).rglob("*.jpg"))) == 18
    assert len(DATASETS.build("cifar10_jpeg", split="val", transform=None, archive="-", cache_dir=str(cache))) == 6


def test_cifar10_jpeg_in_memory_same_pixels_and_npy_cache(cifar_archive: Path, tmp_path: Path, monkeypatch):
    kwargs = dict(split="train", transform=None, archive=str(cifar_archive), cache_dir=str(tmp_path))
    files = DATASETS.build("cifar10_jpeg", **kwargs)
    memory = DATASETS.build("cifar10_jpeg", in_memory=True, **kwargs)
    assert isinstance(memory, InMemoryImageDataset) and memory.pixels.shape == (12, 32, 32, 3)
    assert memory.classes == files.classes and memory.targets == files.targets
    for i in range(len(files)):
        assert np.array_equal(np.asarray(memory[i][0]), np.asarray(files[i][0]))
    assert (tmp_path / f"cifar10-{archive_key(cifar_archive)}" / "train.uint8.npy").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the .npy cache")

    monkeypatch.setattr("research.data.memory.decode_images", no_decoding)
    again = DATASETS.build("cifar10_jpeg", in_memory=True, **kwargs)
    assert np.array_equal(again.pixels, memory.pixels)


def test_in_memory_rejects_mixed_sizes(tmp_path: Path):
    small = write_images(tmp_path / "a", 1, size=32)
    large = write_images(tmp_path / "b", 1, size=40)
    with pytest.raises(DataError, match="one size"):
        InMemoryImageDataset.from_files([(str(small[0]), 0), (str(large[0]), 1)], ["a", "b"])


@pytest.mark.slow
def test_cifar10_jpeg_real_archive():
    """The shared archive: 40k/5k images, 10 classes, 32x32.

    Uses the default cache (``~/.cache/research``) like real runs: the first run on a machine extracts
    (~10 s), later runs only check the cache.
    """
    kwargs = dict(transform=None, archive=str(SHARED_ARCHIVE))
    train = DATASETS.build("cifar10_jpeg", split="train", **kwargs)
    val = DATASETS.build("cifar10_jpeg", split="val", in_memory=True, **kwargs)
    assert (len(train), len(val)) == (40_000, 5_000)
    assert train.classes == val.classes == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    ]  # fmt: skip
    assert val.pixels.shape == (5_000, 32, 32, 3)
    assert np.bincount(val.targets).tolist() == [500] * 10
    assert train[0][0].size == (32, 32)


# --- cifar10 (torchvision pickles) -----------------------------------------------------------------


def test_cifar10_missing_root_says_how_to_fix(tmp_path: Path):
    for root in ("", str(tmp_path)):
        with pytest.raises(DataError, match="cifar-10-batches-py"):
            DATASETS.build("cifar10", split="train", transform=None, root=root)


def test_cifar10_reads_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    for i, name in enumerate(names):
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [i % 10, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / CIFAR10.meta["filename"]).write_bytes(pickle.dumps({"label_names": labels}))
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)  # ours lack the real md5s
    train = DATASETS.build("cifar10", split="train", transform=None, root=str(tmp_path))
    val = DATASETS.build("cifar10", split="val", transform=None, root=str(folder))  # the folder itself works too
    assert (len(train), len(val)) == (20, 4)
    assert train.classes == labels and val[0][1] == 5 and val[0][0].size == (32, 32)


# --- synthetic -------------------------------------------------------------------------------------


def test_synthetic_shapes_labels_determinism():
    train = DATASETS.build("synthetic", split="train", transform=None, num_classes=4, size=40, img_size=16)
    again = DATASETS.build("synthetic", split="train", transform=None, num_classes=4, size=40, img_size=16)
    val = DATASETS.build("synthetic", split="val", transform=None, num_classes=4, size=40, img_size=16)
    assert train.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert train[0][0].size == (16, 16) and train[0][0].mode == "RGB"
    assert np.bincount(train.targets).tolist() == [10] * 4
    assert np.array_equal(train.pixels, again.pixels) and train.targets == again.targets
    assert not np.array_equal(train.pixels, val.pixels)


@pytest.fixture
def one_thread():
    """Tiny models train far faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_synthetic_is_learnable_through_the_cifar_recipe(one_thread):
    """A one-conv probe trained on augmented synthetic images beats chance (10%) by far in a second."""
    random.seed(0)  # RandAugment draws from `random`
    torch.manual_seed(0)
    recipe = AUGMENTATIONS.build("cifar", img_size=32, mixup=0.0, cutmix=0.0)
    train = DATASETS.build("synthetic", split="train", transform=recipe.train_transform, size=200)
    val = DATASETS.build("synthetic", split="val", transform=recipe.eval_transform, size=100)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(5):
        for images, labels in DataLoader(train, batch_size=50, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    images, labels = next(iter(DataLoader(val, batch_size=100)))
    accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.6, accuracy


def test_bad_split_rejected():
    with pytest.raises(ValueError, match="split"):
        DATASETS.build("synthetic", split="test", transform=None)
