"""Data-efficient image transformers: DeiT, its teachers, losses and augmentation recipes.

:func:`load_builtins` registers every built-in component, then the components of installed plugins
(entry-point group ``research.plugins``). Every registry lookup calls it on first use, so
``from research.registry import MODELS; MODELS.build("deit_tiny_patch16_224", num_classes=10)`` works in
a fresh interpreter; importing ``research`` alone imports neither torch nor timm, so ``research --help``
starts at once.
"""

from research.plugins import load_builtins

__all__ = ["load_builtins"]
__version__ = "0.1.0"
