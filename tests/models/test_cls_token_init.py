"""model.cls_token_init: the class token's initialisation, timm's or the reference's."""

from __future__ import annotations

import pytest
import torch

from research.registry import MODELS


@pytest.mark.parametrize("name", ["deit_nano_patch4_32", "deit_nano_distilled_patch4_32"])
def test_cls_token_init_reference_is_the_truncated_normal_of_std_002(name: str) -> None:
    """model.cls_token_init: timm's N(0, 1e-6) by default, the reference's (timm 0.3.2) trunc normal std 0.02 on request."""
    torch.manual_seed(0)
    timm_token = MODELS.build(name, num_classes=10, cls_token_init="timm").cls_token
    reference = MODELS.build(name, num_classes=10, cls_token_init="reference").cls_token
    assert timm_token.std() < 1e-5
    assert 0.01 < reference.std() < 0.03  # (timm cuts at +-2 absolute, as 0.3.2 did: 100 std, no cut in practice)
    with pytest.raises(ValueError, match="cls_token_init"):
        MODELS.build(name, num_classes=10, cls_token_init="jax")
