"""DeiT: the data-efficient image transformer, with and without the distillation token.

DeiT's architecture is ViT-B's (Dosovitskiy et al. 2020), also at smaller widths, so, as in
facebookresearch/deit, the models subclass timm's :class:`~timm.models.vision_transformer.VisionTransformer`
and reuse its blocks, attention and initialisation. The distilled variant (paper Sec. 4, Fig. 2) adds a
second learned token that attends with the class token and the patches, and a second linear head on it.

Parameter names and shapes follow timm's models of the same name, so official checkpoints load with
``strict=True``. Entry points are registered in :data:`research.registry.MODELS` under timm's names
(``deit_tiny_patch16_224`` ...) plus 32x32 variants with 4x4 patches for CIFAR-size experiments.
"""

from dataclasses import replace
from functools import partial
from typing import Any, Union, get_args

import torch
from timm.layers import LayerNorm, get_device_dtype, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from research.models.params import ClsTokenInit, DropPathRate, EvalHead, ImgSize
from research.registry import MODELS, ModelInfo

__all__ = ["DeiT", "DistilledDeiT", "EVAL_HEADS"]

#: What a distilled model returns in eval mode: the late fusion of both heads (the paper's default, Sec. 4
#: "joint classifiers"; computed as in facebookresearch/deit and timm, as the mean of the two heads' logits),
#: the class head alone, or the distillation head alone (Table 5 compares the three).
EVAL_HEADS: tuple[str, ...] = get_args(EvalHead)

# Width, depth and heads per variant. Table 1 of the paper: DeiT-Ti/S/B keep ViT-B's depth and a head
# dimension of 64 and only change the width. mini/micro/nano are ours (not in the paper): shallower and
# narrower models for 32x32 inputs and for tests.
_VARIANTS: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "mini": dict(embed_dim=192, depth=6, num_heads=3),
    "micro": dict(embed_dim=128, depth=6, num_heads=4),
    "nano": dict(embed_dim=64, depth=2, num_heads=2),
}

# Shared by every variant (paper Table 1 and facebookresearch/deit models.py): MLP hidden size 4x the
# width, biased qkv projection, LayerNorm with eps 1e-6.
_COMMON: dict[str, Any] = dict(mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(LayerNorm, eps=1e-6))


class DeiT(VisionTransformer):
    """DeiT without the distillation token: timm's ViT, predicting from the class token.

    The class exists so every model of the family carries :attr:`distilled` and so both variants share one
    type; the architecture is exactly timm's. DeiT's contribution for this model is the training recipe
    (paper Sec. 6), which lives in the engine and the augmentation recipes, not here.
    """

    #: Whether the model has a distillation token and returns two logit tensors in training.
    distilled: bool = False

    def __init__(self, *, cls_token_init: str = "timm", **kwargs: Any) -> None:
        if cls_token_init not in get_args(ClsTokenInit):
            raise ValueError(f"cls_token_init is one of {', '.join(get_args(ClsTokenInit))}; got {cls_token_init!r}")
        super().__init__(**kwargs)  # timm's __init__ runs init_weights before the attribute below exists
        self.cls_token_init = cls_token_init
        if kwargs.get("weight_init") != "skip":
            self._init_cls_token()

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """timm's ViT initialisation, the class token as :attr:`cls_token_init` says."""
        super().init_weights(mode=mode, needs_reset=needs_reset)
        self._init_cls_token()

    def _init_cls_token(self) -> None:
        # timm >= 0.9 draws the class token from N(0, 1e-6); the reference's timm 0.3.2 from a
        # truncated normal of std 0.02 (docs/EXPERIMENTS.md, divergence table)
        if getattr(self, "cls_token_init", "timm") == "reference":
            trunc_normal_(self.cls_token, std=0.02)


class DistilledDeiT(DeiT):
    """DeiT with a distillation token (paper Sec. 4, Fig. 2).

    The distillation token is a learned embedding appended after the class token. It goes through the
    transformer like the class token, and its output feeds a second linear head trained against the
    teacher's prediction, while the class head is trained against the label.

    In training mode :meth:`forward` returns ``(class_logits, distillation_logits)`` so the loss can
    supervise each head. In eval mode it returns one tensor chosen by :attr:`eval_head`.

    Args:
        eval_head: What eval mode returns: ``"both"`` (the mean of both heads' logits, the paper's
            default), ``"class"`` or ``"distillation"``. Can be changed later by assigning
            ``model.eval_head``, e.g. to evaluate one trained model each way as in Table 5.
        **kwargs: Passed to timm's ``VisionTransformer`` (``embed_dim``, ``depth``, ...).

    Raises:
        ValueError: On an unknown ``eval_head`` or timm options that conflict with the token layout
            (DeiT's position embedding covers both tokens and the head reads tokens 0 and 1).
    """

    distilled = True
    eval_heads = EVAL_HEADS  # the keys of :meth:`forward_heads`; the engine reads them from here

    def __init__(self, *, eval_head: str = "both", **kwargs: Any) -> None:
        unsupported = {
            key: kwargs[key]
            for key, default in (
                ("global_pool", "token"),
                ("class_token", True),
                ("no_embed_class", False),
                ("reg_tokens", 0),
                ("dynamic_img_size", False),
            )
            if kwargs.get(key, default) != default
        }
        if unsupported:
            raise ValueError(
                f"DistilledDeiT does not support {unsupported}: the distilled head reads the class and "
                "distillation tokens, which carry position embeddings; drop these options"
            )
        # Like timm's VisionTransformerDistilled: build the plain ViT without initialising it, replace the
        # parts that depend on the extra token, then initialise everything once.
        weight_init = kwargs.pop("weight_init", "")
        super().__init__(weight_init="skip", **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}

        self.eval_head = eval_head
        self.num_prefix_tokens = 2  # [cls, dist]
        self.dist_token = nn.Parameter(torch.empty(1, 1, self.embed_dim, **dd))
        # One position embedding per token, both prefix tokens included: DeiT concatenates
        # [cls, dist, patches] and then adds pos_embed (timm's no_embed_class=False layout).
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_prefix_tokens + self.patch_embed.num_patches, self.embed_dim, **dd))
        self.head_dist = self._linear_head(self.num_classes, dd)

        self.weight_init_mode = "reset" if weight_init == "skip" else weight_init
        if weight_init != "skip":
            self.init_weights(needs_reset=False)

    @property
    def eval_head(self) -> str:
        """Which logits eval mode returns: one of :data:`EVAL_HEADS`."""
        return self._eval_head

    @eval_head.setter
    def eval_head(self, value: str) -> None:
        if value not in EVAL_HEADS:
            raise ValueError(f"eval_head must be one of {', '.join(map(repr, EVAL_HEADS))}; got {value!r}")
        self._eval_head = value

    def _linear_head(self, num_classes: int, dd: dict[str, Any]) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """timm's ViT initialisation, plus the distillation token drawn like DeiT's (truncated normal, std .02)."""
        trunc_normal_(self.dist_token, std=0.02)
        super().init_weights(mode=mode, needs_reset=needs_reset)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        matcher = super().group_matcher(coarse)
        matcher["stem"] += "|dist_token"  # the token is part of the embedding stem, like cls_token
        return matcher

    @torch.jit.ignore
    def get_classifier(self) -> tuple[nn.Module, nn.Module]:  # type: ignore[override]
        return self.head, self.head_dist

    def reset_classifier(self, num_classes: int, global_pool: Union[str, None] = None) -> None:
        """Replace both heads with fresh ``num_classes``-way heads (``0`` removes them)."""
        if global_pool not in (None, "", "token"):
            raise ValueError(f"DistilledDeiT reads the class and distillation tokens; got global_pool={global_pool!r}")
        super().reset_classifier(num_classes)
        self.head_dist = self._linear_head(num_classes, get_device_dtype(self))
        self.head_dist.train(self.training)

    def _pos_embed(self, x: Tensor) -> Tensor:
        # x: (B, N, D) patch tokens from patch_embed
        batch = x.shape[0]
        cls_token = self.cls_token.expand(batch, -1, -1)  # (B, 1, D)
        dist_token = self.dist_token.expand(batch, -1, -1)  # (B, 1, D)
        x = torch.cat((cls_token, dist_token, x), dim=1)  # (B, 2+N, D): [cls, dist, patches]
        x = x + self.pos_embed  # (1, 2+N, D) broadcast over the batch
        return self.pos_drop(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Logits from the final tokens ``x`` of shape (B, 2+N, D); see the class docstring for what is returned.

        With ``pre_logits`` the (B, D) features of the token(s) :attr:`eval_head` selects are returned
        (the mean of both tokens for ``"both"``).
        """
        if pre_logits:
            return self._select(self.head_drop(x[:, 0]), self.head_drop(x[:, 1]))  # (B, D)
        class_logits, distillation_logits = self._logits(x)  # (B, K) each
        if self.training and not torch.jit.is_scripting():
            return class_logits, distillation_logits
        return self._select(class_logits, distillation_logits)

    def forward_heads(self, x: Tensor) -> dict[str, Tensor]:
        """Logits (B, K) of images ``x`` for every :data:`EVAL_HEADS` entry, from one pass in either mode.

        Evaluation reports each way to predict (the paper's Table 3) with it.
        """
        return self._by_head(*self._logits(self.forward_features(x)))

    def _logits(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(class logits, distillation logits) from the final tokens (B, 2+N, D)."""
        return self.head(self.head_drop(tokens[:, 0])), self.head_dist(self.head_drop(tokens[:, 1]))

    @staticmethod
    def _by_head(from_class: Tensor, from_distillation: Tensor) -> dict[str, Tensor]:
        """Each :data:`EVAL_HEADS` entry from the two tokens' outputs; "both" is their mean (late fusion)."""
        return {"both": (from_class + from_distillation) / 2, "class": from_class, "distillation": from_distillation}

    def _select(self, from_class: Tensor, from_distillation: Tensor) -> Tensor:
        return self._by_head(from_class, from_distillation)[self.eval_head]

    def forward(self, x: Tensor, **kwargs: Any) -> Union[Tensor, tuple[Tensor, Tensor]]:  # type: ignore[override]
        """Image (B, C, H, W) -> logits (B, K) in eval, ``(class_logits, distillation_logits)`` in training."""
        return self.forward_head(self.forward_features(x, **kwargs))


# One row per architecture and resolution: (variant, patch size, image size, what it is). Each row registers
# two entries, ``deit_<variant>_patch<P>_<S>`` and ``deit_<variant>_distilled_patch<P>_<S>`` (with the
# distillation token), whose names and info records come from the row. The ImageNet rows are the paper's
# models under timm's names (drop_path_rate 0.1: paper Table 9); the 32x32 rows are ours, for CIFAR-size
# experiments, with 4x4 patches (an 8x8 grid of 64 tokens, where 16x16 patches would leave 4).
_ENTRIES: tuple[tuple[str, int, int, str], ...] = (
    ("tiny", 16, 224, "DeiT-Ti (5M parameters, Table 1)."),
    ("small", 16, 224, "DeiT-S (22M parameters, Table 1)."),
    ("base", 16, 224, "DeiT-B (86M parameters, Table 1): ViT-B's architecture."),
    ("base", 16, 384, "DeiT-B↑384: DeiT-B fine-tuned at 384x384 (Sec. 6, \"Fine-tuning at different resolution\")."),
    ("tiny", 4, 32, "DeiT-Ti's transformer (width 192, depth 12, 3 heads) on 4x4 patches."),
    ("mini", 4, 32, "Half DeiT-Ti's depth: width 192, depth 6, 3 heads, 4x4 patches."),
    ("micro", 4, 32, "Width 128, depth 6, 4 heads, 4x4 patches."),
    ("nano", 4, 32, "Width 64, depth 2, 2 heads, 4x4 patches: for tests and smoke runs."),
)


def _check_img_size(img_size: int, patch_size: int) -> None:
    if img_size <= 0 or img_size % patch_size:
        raise ValueError(
            f"img_size must be a positive multiple of the patch size {patch_size}, got {img_size}; "
            f"try {max(1, round(img_size / patch_size)) * patch_size}"
        )


def _register(variant: str, patch_size: int, default_img_size: int, doc: str) -> None:
    """Register the row's two entries: the plain model and the one with the distillation token."""
    name = f"deit_{variant}_patch{patch_size}_{default_img_size}"
    info = ModelInfo(distilled=False, family="deit", patch_size=patch_size, default_img_size=default_img_size)
    shape = dict(patch_size=patch_size, **_VARIANTS[variant], **_COMMON)

    def plain(
        *,
        num_classes: int = 1000,
        img_size: ImgSize = default_img_size,
        drop_path_rate: DropPathRate = 0.1,
        cls_token_init: ClsTokenInit = "timm",
    ) -> DeiT:
        _check_img_size(img_size, patch_size)
        return DeiT(num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path_rate, cls_token_init=cls_token_init, **shape)

    def distilled(
        *,
        num_classes: int = 1000,
        img_size: ImgSize = default_img_size,
        drop_path_rate: DropPathRate = 0.1,
        eval_head: EvalHead = "both",
        cls_token_init: ClsTokenInit = "timm",
    ) -> DistilledDeiT:
        _check_img_size(img_size, patch_size)
        return DistilledDeiT(
            eval_head=eval_head, num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path_rate,
            cls_token_init=cls_token_init, **shape,
        )  # fmt: skip

    distilled_name = name.replace("_patch", "_distilled_patch")
    for builder, entry, text in ((plain, name, doc), (distilled, distilled_name, f":func:`{name}` with the distillation token.")):
        builder.__name__ = builder.__qualname__ = entry
        builder.__doc__ = text
    MODELS.register(name, info)(plain)
    MODELS.register(distilled_name, replace(info, distilled=True))(distilled)


for _row in _ENTRIES:
    _register(*_row)
