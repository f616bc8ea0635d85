"""Load a checkpoint into a DeiT built for another resolution or class count, for fine-tuning.

Paper Sec. 3 and 6 ("Fine-tuning at different resolution"): DeiT is trained at 224x224 and fine-tuned at
384x384 (Touvron et al. 2019, FixRes). Patches keep their size, so a larger image has more of them and the
patch position embeddings are interpolated on their 2-D grid. The paper uses bicubic interpolation because
bilinear interpolation averages neighbouring vectors and so shrinks their L2 norm, which the pre-trained
transformer is not adapted to; bicubic approximately preserves it. The class and distillation tokens have
no grid position, so their embeddings are copied unchanged. A new class count (transfer learning, Sec. 5.3)
gets freshly initialised heads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer, init_weights_vit_timm
from torch import Tensor

__all__ = ["INTERPOLATIONS", "HEADS", "FinetuneLoadResult", "load_for_finetune"]

_logger = logging.getLogger(__name__)

#: Modes accepted for the position-embedding grid (``torch.nn.functional.interpolate`` names).
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

#: Classifier modules reset when the checkpoint's class count differs from the model's.
HEADS = ("head", "head_dist")


@dataclass(frozen=True)
class FinetuneLoadResult:
    """What :func:`load_for_finetune` changed on the way in.

    Attributes:
        resized: Checkpoint key -> (checkpoint shape, model shape) for interpolated position embeddings.
        reset: Model keys not loaded but freshly initialised, because the class count differs.
    """

    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)


def load_for_finetune(
    model: VisionTransformer,
    state_dict: Mapping[str, Tensor],
    *,
    interpolation: str = "bicubic",
) -> FinetuneLoadResult:
    """Load ``state_dict`` into ``model``, adapting what a new resolution or class count requires.

    * ``pos_embed``: the patch part is resampled from the checkpoint's square grid to the model's
      ``patch_embed.grid_size`` with ``interpolation``; the class (and distillation) token rows are kept.
    * ``head`` / ``head_dist``: when their shapes differ (another class count) they are not loaded and
      are re-initialised as timm initialises a ViT head; their keys are listed in the result.
    * Everything else must match exactly: any other missing, unexpected or differently shaped key raises.

    Args:
        model: A DeiT (or any timm ``VisionTransformer``) built for the target resolution and classes.
        state_dict: The pre-trained weights; a facebookresearch/deit checkpoint ``{"model": ...}`` works too.
        interpolation: ``"bicubic"`` (the paper's choice), ``"bilinear"`` or ``"nearest"``.

    Returns:
        Which keys were resized and which were reset.

    Raises:
        ValueError: On an unknown ``interpolation``, keys that do not match the model (named in the
            message), or a checkpoint position embedding whose patch grid is not square.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}; got {interpolation!r}")
    checkpoint = dict(state_dict)
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):  # facebookresearch/deit format
        checkpoint = dict(checkpoint["model"])
    target = model.state_dict()
    _check_same_keys(checkpoint, target)

    result = FinetuneLoadResult()
    for name in HEADS:
        keys = [key for key in target if key.startswith(f"{name}.")]
        if any(checkpoint[key].shape != target[key].shape for key in keys):
            for key in keys:
                del checkpoint[key]
            init_weights_vit_timm(model.get_submodule(name))
            result.reset.extend(keys)

    if "pos_embed" in checkpoint and checkpoint["pos_embed"].shape != target["pos_embed"].shape:
        old = checkpoint["pos_embed"]
        checkpoint["pos_embed"] = _resample_pos_embed(model, old, interpolation)
        result.resized["pos_embed"] = (tuple(old.shape), tuple(checkpoint["pos_embed"].shape))

    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}"
        for key, value in checkpoint.items()
        if value.shape != target[key].shape
    ]
    if mismatched:
        raise ValueError(
            "checkpoint does not fit the model (another width, depth or patch size?): " + "; ".join(mismatched)
        )

    incompatible = model.load_state_dict(checkpoint, strict=False)
    # _check_same_keys made this hold; a failure here is a bug in this function, not in the checkpoint.
    assert not incompatible.unexpected_keys and set(incompatible.missing_keys) == set(result.reset), incompatible
    for key, (before, after) in result.resized.items():
        _logger.info("resized %s from %s to %s (%s)", key, before, after, interpolation)
    if result.reset:
        _logger.info("class count differs: re-initialised %s", ", ".join(result.reset))
    return result


def _check_same_keys(checkpoint: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> None:
    missing = sorted(target.keys() - checkpoint.keys())
    unexpected = sorted(checkpoint.keys() - target.keys())
    if not (missing or unexpected):
        return
    hint = ""
    if "dist_token" in unexpected:
        hint = "; the checkpoint has a distillation token: build the *_distilled_* model"
    elif "dist_token" in missing:
        hint = "; the checkpoint has no distillation token: build the model without '_distilled'"
    raise ValueError(f"checkpoint keys do not match the model: missing {missing}, unexpected {unexpected}{hint}")


def _resample_pos_embed(model: VisionTransformer, pos_embed: Tensor, interpolation: str) -> Tensor:
    # pos_embed: (1, P + N_old, D), the P prefix-token rows first (P = 0 when timm's no_embed_class is set)
    num_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    num_patches = pos_embed.shape[1] - num_prefix
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"checkpoint pos_embed has {num_patches} patch positions after {num_prefix} token(s), not a square "
            "grid; resample it yourself with timm.layers.resample_abs_pos_embed(old_size=(H, W)) first"
        )
    return resample_abs_pos_embed(
        pos_embed,
        new_size=list(model.patch_embed.grid_size),
        old_size=[side, side],
        num_prefix_tokens=num_prefix,
        interpolation=interpolation,
        # facebookresearch/deit resizes with plain F.interpolate (no antialiasing); timm's default
        # antialias=True switches bicubic to a different kernel (a=-0.5), even when upsampling.
        antialias=False,
    )  # (1, P + H * W, D)
