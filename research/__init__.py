"""Data-efficient image transformers: DeiT, its teachers, losses and augmentation recipes.

Importing ``research`` registers every built-in component, then the components of installed
plugins (entry-point group ``research.plugins``).
"""

from research import data, losses, models, teachers, tracking  # noqa: F401  (registers built-ins)
from research.plugins import load_entry_point_plugins

__version__ = "0.1.0"

load_entry_point_plugins()
