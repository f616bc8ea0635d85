"""What an augmentation recipe asks of the loader, checked when an experiment loads (before any run)."""

from __future__ import annotations

from research.data.policy import AugError
from research.registry import AUGMENTATIONS, CheckContext, Invalid, model_img_size


@AUGMENTATIONS.add_check
def recipe_fits_loader(context: CheckContext) -> None:
    """Every ``aug.*`` value is one the recipe takes, the per-rank batch suits the recipe, and the
    whole-batch path (``loader.batch_augment``) has every technique the recipe turns on, and the
    decoded images in memory."""
    config = context.config
    loader = config["loader"]
    try:
        recipe = AUGMENTATIONS.build(context.name, img_size=model_img_size(config["model"]) or 224, **_kwargs(config["aug"]))
    except AugError as exc:
        raise Invalid(f"aug.{exc.key}", str(exc)) from None
    try:
        recipe.check_batch_size(loader["batch_size"])
    except ValueError as exc:
        raise Invalid("loader.batch_size", f"loader.batch_size: {exc}") from None
    if "alternate_flip" in recipe.techniques() and not loader["batch_augment"]:
        raise Invalid(
            "aug.alternate_flip",
            "aug.alternate_flip needs each image's place and the epoch, which only the whole-batch path has: "
            "set loader.batch_augment: true (or aug.alternate_flip: false)",
        )
    if not loader["batch_augment"]:
        return
    if recipe.batch_transform is None:
        raise Invalid(
            "loader.batch_augment",
            f"loader.batch_augment runs the recipe on whole batches, but recipe {recipe.name!r} has no batched "
            f"version of {'; '.join(recipe.per_image_techniques())}: change that technique in aug: or set "
            "loader.batch_augment: false",
        )
    if config["data"].get("in_memory") is False:
        raise Invalid(
            "loader.batch_augment",
            "loader.batch_augment needs the decoded images in memory: set data.in_memory: true, "
            "or loader.batch_augment: false",
        )


def _kwargs(section: dict) -> dict:
    return {key: value for key, value in section.items() if key != "name"}
