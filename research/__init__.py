"""Data-efficient image transformers: DeiT, its teachers, losses and augmentation recipes.

:func:`load_builtins` registers every built-in component, then the components of installed plugins
(entry-point group ``research.plugins``). The config loader calls it before it reads a name, and so
does every entry point (the command line, a SLURM job); importing ``research`` alone imports neither
torch nor timm, so ``research --help`` starts at once.
"""

from research.plugins import load_builtins

__all__ = ["load_builtins"]
__version__ = "0.1.0"
