"""The types of the MODELS builders' shared parameters, with the bounds the config loader checks when
an experiment loads (``model.drop_path_rate=1.5`` fails there, not when the model is built)."""

from __future__ import annotations

from typing import Annotated, Literal

from research.registry import Range

#: Input side in pixels (a ViT also needs a multiple of its patch size; the loader checks that too).
ImgSize = Annotated[int, Range(ge=1, hint="the input side in pixels")]
#: Stochastic depth's largest drop probability (Huang et al. 2016), reached by the last block.
DropPathRate = Annotated[float, Range(ge=0, lt=1, hint="a probability")]
#: What a distilled model returns in eval mode (:data:`research.models.deit.EVAL_HEADS`).
EvalHead = Literal["both", "class", "distillation"]
#: How a DeiT's class token starts: timm's N(0, 1e-6) (timm >= 0.9), or the reference's truncated
#: normal of std 0.02 (facebookresearch/deit on timm 0.3.2).
ClsTokenInit = Literal["timm", "reference"]
