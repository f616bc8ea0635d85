"""Dataset builders registered in :data:`research.registry.DATASETS`.

Every builder has the signature ``(*, split, transform, <own parameters>)``: the engine passes
``split`` (``"train"`` or ``"val"``) and ``transform``; the other parameters are the experiment's
``data:`` keys. Each returns a map-style dataset of ``(image, label)`` with ``.classes`` (class names,
index = label), so the class count always comes from the data, never from a config value.

Relative paths (``root``, ``archive``) are resolved against the current working directory, and
``~`` is expanded; the default archive path assumes you run from the project's root, where the
shared data sits at ``../shared/data``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from research.data.memory import DataError, InMemoryImageDataset, load_rgb
from research.files import flock
from research.registry import DATASETS, DatasetInfo, Range

__all__ = ["extract_archive_once", "imagefolder", "imagenet", "cifar10_jpeg", "cifar10", "synthetic", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
Transform = Optional[Callable[[Any], Any]]

_LAYOUT = "<root>/{train,val}/<class name>/<image file>"


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())


def _has_image(folder: Path) -> bool:
    """Whether ImageFolder would find an image in ``folder`` (stops at the first one)."""
    return any(has_file_allowed_extension(f, IMG_EXTENSIONS) for _, _, files in os.walk(folder) for f in files)


def _image_folder(root: Path, split: str, transform: Transform) -> ImageFolder:
    """ImageFolder on ``root/split`` that fails with a :class:`DataError` naming the path at fault."""
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder; expected layout {_LAYOUT}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{root} has no {split!r} folder; expected layout {_LAYOUT}")
    classes = _class_dirs(split_dir)
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected layout {_LAYOUT}")
    # Labels are indices into the sorted class names of *each* split, so a class folder missing from
    # one split would silently shift every later label. Refuse rather than evaluate garbage.
    other = root / ("val" if split == "train" else "train")
    if other.is_dir() and (other_classes := _class_dirs(other)) != classes:
        only_here = sorted(set(classes) - set(other_classes))
        only_there = sorted(set(other_classes) - set(classes))
        raise DataError(
            f"{split_dir} and {other} must hold the same class folders (labels are their sorted index); "
            f"only in {split}: {only_here or 'none'}, only in {other.name}: {only_there or 'none'}"
        )
    empty = [str(split_dir / name) for name in classes if not _has_image(split_dir / name)]
    if empty:
        raise DataError(
            f"class folders without images ({', '.join(IMG_EXTENSIONS)}): {', '.join(empty)}; "
            "add images or remove the folders"
        )
    return ImageFolder(str(split_dir), transform=transform, loader=load_rgb)


@DATASETS.register("imagefolder", DatasetInfo(folders=True))
def imagefolder(
    *,
    split: str,
    transform: Transform,
    root: str = "",
    train_size: Annotated[Optional[int], Range(ge=1, hint="images in train/; null = not declared")] = None,
    val_size: Annotated[Optional[int], Range(ge=1, hint="images in val/; null = not declared")] = None,
    num_classes: Annotated[Optional[int], Range(ge=1, hint="class folders; null = not declared")] = None,
) -> ImageFolder:
    """Images in class folders, the layout DeiT reads ImageNet from: ``<root>/<split>/<class>/<image>``.

    Args:
        split: ``"train"`` or ``"val"`` (injected by the engine).
        transform: Applied to each PIL image (injected by the engine).
        root: Folder holding ``train/`` and ``val/``; relative to the current directory. Required.
        train_size, val_size, num_classes: The sizes, declared so that the cost estimate knows them
            where the folders are not mounted (else it counts them); checked against the folders.

    Raises:
        DataError: missing folders, class folders differing between splits, a class without images,
            sizes other than declared. An unreadable image raises when it is loaded, naming the file.
    """
    _check_split(split)
    if not root:
        raise DataError(f"data.root is required by dataset 'imagefolder': the folder laid out as {_LAYOUT}")
    folder = _image_folder(_resolve(root), split, transform)
    said = (f"data.{split}_size", "data.num_classes")
    images = train_size if split == "train" else val_size
    return _as_declared(folder, images, num_classes, said=said, fix=f"correct {' or '.join(said)}, or remove them")


@DATASETS.register("imagenet", DatasetInfo(train_size=1_281_167, val_size=50_000, num_classes=1000, folders=True))
def imagenet(*, split: str, transform: Transform, root: str = "") -> ImageFolder:
    """ImageNet-1k (ILSVRC-2012) in :func:`imagefolder`'s layout, as DeiT trains on it: 1,281,167
    train and 50,000 val images of 1000 classes. These known sizes price a run where the data is not
    mounted, and the folders are checked against them (a subset is an ``imagefolder``)."""
    info = DATASETS.info("imagenet")
    folder = imagefolder(split=split, transform=transform, root=root)
    images = info.train_size if split == "train" else info.val_size
    return _as_declared(folder, images, info.num_classes, said=("ImageNet-1k", "ImageNet-1k"), fix="a subset is data.name=imagefolder")


def _as_declared(folder: ImageFolder, images: int | None, classes: int | None, *, said: tuple[str, str], fix: str) -> ImageFolder:
    """``folder``, checked to hold ``images`` images of ``classes`` classes (None: not said), as the keys ``said`` say."""
    for found, expected, what, key in ((len(folder), images, "images", said[0]), (len(folder.classes), classes, "classes", said[1])):
        if expected is not None and found != expected:
            raise DataError(f"{folder.root} holds {found} {what}, not the {expected} of {key}; {fix}")
    return folder


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 as JPEG files in a tar archive


_MARKER = ".extracted.json"


def _count_files(folder: Path) -> dict[str, int]:
    """Files per split folder directly below ``folder`` (``{"train": 40000, "val": 5000}``)."""
    return {
        split.name: sum(len(files) for _, _, files in os.walk(split))
        for split in sorted(folder.iterdir())
        if split.is_dir()
    }


def archive_key(archive: Path) -> str:
    """A short digest naming ``archive``'s extraction: its size and its first and last MiB.

    Cheap (2 MiB read, whatever the archive's size) and tied to the content, not to the path: the
    same archive copied elsewhere finds its extraction, and a second archive gets its own.
    """
    size = archive.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(archive, "rb") as handle:
        digest.update(handle.read(_KEY_BYTES))
        handle.seek(max(size - _KEY_BYTES, 0))
        digest.update(handle.read(_KEY_BYTES))
    return digest.hexdigest()[:12]


_KEY_BYTES = 1 << 20


def extract_archive_once(archive: Path, cache_dir: Path, name: str) -> Path:
    """Extract ``archive`` (whose members all sit under ``name/``) to ``cache_dir/name-<key>``, once.

    The key is :func:`archive_key`, so extractions of different archives sit side by side. Without
    the archive (e.g. deleted after extracting), its extraction is still found if it is the only one.

    Safe under concurrency: each process extracts into its own temporary folder and renames it into
    place (atomic on one filesystem), so readers see either nothing or a complete tree; a file lock
    makes the others wait instead of extracting too. An exception (a stop request raises one, see
    :meth:`research.launch.stop.StopRequest.at_once`) removes the temporary folder; one a kill left
    is removed by the next extraction of the same archive. The file count per split is checked against the
    archive and stored in ``<extraction>/.extracted.json``, whose presence marks a finished extraction.

    Returns:
        ``cache_dir/name-<key>``.

    Raises:
        DataError: missing or malformed archive (with no single extraction to fall back on), or a
            ``cache_dir/name-<key>`` folder that this function did not create.
    """
    if not archive.is_file():
        return _only_extraction(archive, cache_dir, name)
    target = cache_dir / f"{name}-{archive_key(archive)}"
    if (target / _MARKER).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with flock(cache_dir / f".{target.name}.lock"):  # one extraction at a time (DDP ranks, parallel jobs)
        if (target / _MARKER).is_file():  # another process finished while we waited for the lock
            return target
        if target.exists():
            raise DataError(
                f"{target} exists but was not extracted by research (no {_MARKER}), so its contents are "
                f"unverified; delete it (it is re-extracted from {archive}) or set data.cache_dir elsewhere"
            )
        _remove_stale_extractions(cache_dir, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-extracting-", dir=cache_dir))
        try:
            expected = _extract(archive, tmp, name)
            found = _count_files(tmp / name)
            if found != expected:
                raise DataError(f"extracting {archive} gave {found} files per split, the archive lists {expected}")
            marker = {"archive": str(archive), "archive_bytes": archive.stat().st_size, "files": expected}
            (tmp / name / _MARKER).write_text(json.dumps(marker, indent=1))
            try:
                os.rename(tmp / name, target)
            except OSError:
                if not (target / _MARKER).is_file():  # not a lost race with a finished extraction
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_extractions(cache_dir: Path, target: Path) -> None:
    """Remove the temporary folders of extractions of ``target`` that a kill cut short. Called under
    ``target``'s extraction lock, so none of them is in progress: its process died."""
    for stale in cache_dir.glob(f".{target.name}-extracting-*"):
        log.warning("%s: removing %s, left by an extraction that was killed", cache_dir, stale.name)
        shutil.rmtree(stale, ignore_errors=True)


def _only_extraction(archive: Path, cache_dir: Path, name: str) -> Path:
    """The extraction to use when ``archive`` is gone: the only finished one of ``name``."""
    found = sorted(path.parent for path in cache_dir.glob(f"{name}-*/{_MARKER}")) if cache_dir.is_dir() else []
    if len(found) == 1:
        return found[0]
    where = f"; {cache_dir} holds extractions of several archives: {', '.join(p.name for p in found)}" if found else ""
    raise DataError(
        f"archive {archive} not found (relative paths are resolved against the current directory "
        f"{Path.cwd()}){where}; set data.archive to the {name} archive's path"
    )


def _extract(archive: Path, into: Path, name: str) -> dict[str, int]:
    """Extract after checking every member is a plain file or folder under ``name/``; files per split."""
    counts: dict[str, int] = {}
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if parts[:1] != (name,) or ".." in parts or not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"{archive}: unexpected member {member.name!r}; expected only files and folders under {name}/"
                    )
                if member.isfile() and len(parts) >= 3:
                    counts[parts[1]] = counts.get(parts[1], 0) + 1
            # filter="data" (Python >= 3.10.12) refuses links, devices and absolute paths as well.
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(into, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise DataError(f"cannot extract {archive}: {exc}; is it a complete .tar(.gz|.xz) file?") from exc
    return counts


@DATASETS.register("cifar10_jpeg", DatasetInfo(train_size=40_000, val_size=5_000, num_classes=10))
def cifar10_jpeg(
    *,
    split: str,
    transform: Transform,
    archive: str = "../shared/data/cifar10-jpeg.tar.xz",
    cache_dir: str = "~/.cache/research",
    in_memory: bool = False,
) -> Dataset:
    """CIFAR-10 as JPEG files (``cifar10/{train,val}/<class>/*.jpg``), extracted once into a cache.

    Args:
        split: ``"train"`` (40k images) or ``"val"`` (5k) (injected by the engine).
        transform: Applied to each PIL image (injected by the engine).
        archive: The ``.tar.xz``; relative to the current directory (the default fits the project
            root). Its first and last MiB name its extraction (see :func:`extract_archive_once`).
        cache_dir: Where ``cifar10-<key>/`` is extracted (about 180 MB on disk per archive); ``~`` is expanded.
        in_memory: Decode every image once into a ``(N, 32, 32, 3)`` uint8 array (about 120 MB for
            train) instead of decoding each JPEG every epoch; the array is cached as
            ``<cache_dir>/cifar10-<key>/<split>.uint8.npy`` for the next run. Same pixels either way.

    Raises:
        DataError: missing archive, failed or mismatched extraction, wrong image count.
    """
    _check_split(split)
    root = extract_archive_once(_resolve(archive), _resolve(cache_dir), "cifar10")
    folder = _image_folder(root, split, transform)
    expected = json.loads((root / _MARKER).read_text())["files"].get(split)
    if len(folder) != expected:
        raise DataError(
            f"{root / split} holds {len(folder)} images but the archive had {expected}; the cache was modified: "
            f"delete {root} to re-extract it"
        )
    if not in_memory:
        return folder
    # Inside the extraction: keyed by the archive too, and deleting the extraction drops the pixels.
    cache_file = root / f"{split}.uint8.npy"
    return InMemoryImageDataset.from_files(folder.samples, folder.classes, transform, cache_file=cache_file)


# ---------------------------------------------------------------------------------------------------
# Ready to read: cheap checks a launcher makes before it writes a run dir (no extraction, no listing)

_READY: dict[str, Callable[..., None]] = {}


def check_ready(section: dict[str, Any]) -> None:
    """Raise :class:`DataError` if the resolved ``data:`` section names data that cannot be read here,
    or a cache that cannot be written: files and folders are looked at, never read through. Datasets
    without a check (plugins, ``synthetic``) pass."""
    ready = _READY.get(section["name"])
    if ready is not None:
        ready(**{key: value for key, value in section.items() if key != "name"})


def _ready_check(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorator(check: Callable[..., None]) -> Callable[..., None]:
        _READY[name] = check
        return check

    return decorator


@_ready_check("cifar10_jpeg")
def _cifar10_jpeg_ready(*, archive: str, cache_dir: str, **_: Any) -> None:
    """The archive reads (or its one extraction is there), and the cache takes an extraction not made yet."""
    path, cache = _resolve(archive), _resolve(cache_dir)
    if not path.is_file():
        _only_extraction(path, cache, "cifar10")
        return
    try:
        target = cache / f"cifar10-{archive_key(path)}"
    except OSError as exc:
        raise DataError(f"cannot read archive {path} ({exc.strerror}); set data.archive to a readable copy") from None
    if not (target / _MARKER).is_file():
        _check_writable(cache, "data.cache_dir")


def _check_writable(folder: Path, key: str) -> None:
    """``folder`` can be made and written: an empty folder is made and removed in the nearest existing
    one (``os.access`` says yes to root on a read-only mount)."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, f"{existing} is a file")
        os.rmdir(tempfile.mkdtemp(prefix=".research-write-check-", dir=existing))
    except OSError as exc:
        raise DataError(f"{key}={folder}: cannot write there ({exc.strerror}); set {key} to a folder you can write") from None


@_ready_check("imagefolder")
@_ready_check("imagenet")
def _imagefolder_ready(*, root: str, **_: Any) -> None:
    if not root:
        raise DataError(f"data.root is required by dataset 'imagefolder': the folder laid out as {_LAYOUT}")
    missing = [split for split in SPLITS if not (_resolve(root) / split).is_dir()]
    if missing:
        raise DataError(f"{_resolve(root)} has no {' or '.join(map(repr, missing))} folder; expected layout {_LAYOUT}")


@_ready_check("cifar10")
def _cifar10_ready(*, root: str, **_: Any) -> None:
    path = _resolve(root) if root else None
    if path is not None and path.name == CIFAR10.base_folder:
        path = path.parent
    if path is None or not (path / CIFAR10.base_folder).is_dir():
        where = f"no {CIFAR10.base_folder}/ in {path}" if path else "data.root is required by dataset 'cifar10'"
        raise DataError(f"{where}: set data.root to the folder containing {CIFAR10.base_folder}/ (the extracted cifar-10-python.tar.gz)")


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 in torchvision's format


@DATASETS.register("cifar10", DatasetInfo(train_size=50_000, val_size=10_000, num_classes=10))
def cifar10(*, split: str, transform: Transform, root: str = "") -> CIFAR10:
    """CIFAR-10 from the original python pickles (torchvision's ``CIFAR10``); never downloads.

    ``split="train"`` is the 50k training batches, ``"val"`` the 10k test batch.

    Args:
        split: ``"train"`` or ``"val"`` (injected by the engine).
        transform: Applied to each PIL image (injected by the engine).
        root: The folder that contains ``cifar-10-batches-py/`` (or that folder itself); relative to
            the current directory. Required.

    Raises:
        DataError: missing or corrupt batches.
    """
    _check_split(split)
    hint = "set data.root to the folder containing cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)"
    if not root:
        raise DataError(f"data.root is required by dataset 'cifar10': {hint}")
    path = _resolve(root)
    if path.name == CIFAR10.base_folder:
        path = path.parent
    try:
        return CIFAR10(str(path), train=split == "train", transform=transform, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise DataError(f"no complete CIFAR-10 batches in {path / CIFAR10.base_folder}: {hint}") from exc


# ---------------------------------------------------------------------------------------------------
# Synthetic data for tests


@DATASETS.register("synthetic", DatasetInfo(keys=("size", "size", "num_classes")))
def synthetic(
    *,
    split: str,
    transform: Transform,
    num_classes: Annotated[int, Range(ge=1)] = 10,
    size: Annotated[int, Range(ge=1, hint="images per split")] = 64,
    img_size: Annotated[int, Range(ge=1)] = 32,
    seed: Annotated[int, Range(ge=0, lt=2**32)] = 0,
) -> InMemoryImageDataset:
    """Generated images for unit tests: each class is a colour plus a stripe orientation, with noise.

    The class signal survives crops, flips and RandAugment, so a tiny model learns it in a few steps
    (a test can assert accuracy well above chance). Both splits share the class patterns and differ in
    their noise and sample order.

    Args:
        split: ``"train"`` or ``"val"`` (injected by the engine).
        transform: Applied to each PIL image (injected by the engine).
        num_classes: Number of classes; labels are balanced (``i % num_classes`` before shuffling).
        size: Images in this split.
        img_size: Height and width of the images.
        seed: Fixes the class patterns and the samples.
    """
    _check_split(split)
    if num_classes < 1 or size < 1 or img_size < 1:
        raise ValueError(f"num_classes, size and img_size must be >= 1, got {num_classes}, {size}, {img_size}")
    patterns = np.random.default_rng(seed)
    colours = patterns.uniform(0.15, 0.85, size=(num_classes, 3))  # (C, 3)
    angles = patterns.permutation(num_classes) * np.pi / num_classes  # distinct stripe orientations
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    targets = rng.permutation(np.arange(size) % num_classes)  # (N,)
    ys, xs = np.meshgrid(np.arange(img_size), np.arange(img_size), indexing="ij")  # (H, W) each
    phase = rng.uniform(0, 2 * np.pi, size=(size, 1, 1))  # random offset so no pixel is a class giveaway
    along = np.cos(angles[targets])[:, None, None] * xs + np.sin(angles[targets])[:, None, None] * ys  # (N, H, W)
    stripes = 0.25 * np.sin(2 * np.pi * along / max(img_size / 4, 2) + phase)  # (N, H, W)
    noise = rng.normal(0, 0.08, size=(size, img_size, img_size, 3))
    images = colours[targets][:, None, None, :] + stripes[..., None] + noise  # (N, H, W, 3)
    pixels = np.clip(images * 255, 0, 255).round().astype(np.uint8)
    return InMemoryImageDataset(pixels, targets.tolist(), [f"class_{i}" for i in range(num_classes)], transform)
