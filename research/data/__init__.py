"""Data: datasets, augmentation recipes and samplers.

Importing this package registers the built-in datasets (``imagefolder``, ``imagenet``, ``cifar10_jpeg``,
``cifar10``, ``synthetic``) and recipes (``deit``, ``cifar``, ``none``). Images are normalised with
timm's ImageNet mean and std throughout, as in the reference code (also for CIFAR).
"""

from research.data import augment, checks, datasets  # noqa: F401  (registers the built-ins and the recipe check)
from research.data.augment import Recipe, build_recipe, check_policy
from research.data.memory import DataError, InMemoryImageDataset, load_rgb
from research.data.sampler import RepeatedAugSampler, ShardSampler, build_eval_sampler, build_train_sampler
from research.data.seeded import PlaceSeeded, placed

__all__ = [
    "DataError",
    "InMemoryImageDataset",
    "PlaceSeeded",
    "Recipe",
    "RepeatedAugSampler",
    "ShardSampler",
    "build_eval_sampler",
    "build_recipe",
    "build_train_sampler",
    "check_policy",
    "load_rgb",
    "placed",
]
