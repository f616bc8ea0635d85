"""Loading checkpoints for fine-tuning at another resolution or class count."""

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from research.models import load_for_finetune
from research.registry import MODELS


def smooth_field(embed_dim: int, side: int, *, seed: int = 0) -> torch.Tensor:
    """(side*side, embed_dim) random vectors correlated over about one grid step, like trained position
    embeddings, whose neighbours are similar but not equal. (An i.i.d. field shrinks under both
    interpolations; a very smooth one under neither: the paper's observation needs something in between.)"""
    noise = torch.randn(embed_dim, side, side, generator=torch.Generator().manual_seed(seed))
    field = gaussian_blur(noise, kernel_size=7, sigma=1.0)  # (D, side, side)
    return 0.02 * field.flatten(1).T  # (side*side, D)


def with_patch_pos_embed(state_dict: dict, patch_rows: torch.Tensor) -> dict:
    state_dict = dict(state_dict)
    pos_embed = state_dict["pos_embed"].clone()  # (1, P + N, D)
    pos_embed[0, -patch_rows.shape[0]:] = patch_rows
    state_dict["pos_embed"] = pos_embed
    return state_dict


def mean_norm(patch_rows: torch.Tensor) -> float:
    return patch_rows.norm(dim=-1).mean().item()


def test_bicubic_keeps_the_position_embedding_norm_and_bilinear_shrinks_it():
    # Paper Sec. 3: 224 -> 384 turns DeiT-Ti's 14x14 grid of 192-wide embeddings into 24x24.
    patch_rows = smooth_field(192, 14)
    checkpoint = with_patch_pos_embed(MODELS.build("deit_tiny_patch16_224").state_dict(), patch_rows)
    ratios = {}
    for mode in ("bicubic", "bilinear"):
        model = MODELS.build("deit_tiny_patch16_224", img_size=384)
        result = load_for_finetune(model, checkpoint, interpolation=mode)
        assert result.resized == {"pos_embed": ((1, 197, 192), (1, 577, 192))}
        ratios[mode] = mean_norm(model.pos_embed[0, 1:].detach()) / mean_norm(patch_rows)
    print(f"mean L2 norm of patch position embeddings after / before 14x14 -> 24x24: "
          f"bicubic {ratios['bicubic']:.3f}, bilinear {ratios['bilinear']:.3f}")
    assert ratios["bicubic"] == pytest.approx(1.0, abs=0.03)
    assert ratios["bilinear"] < 0.96
    assert ratios["bicubic"] - ratios["bilinear"] > 0.03


def test_position_embeddings_are_interpolated_on_the_2d_grid():
    # deit_nano at 56 and 96 pixels with 4x4 patches: a 14x14 grid becomes 24x24.
    source = MODELS.build("deit_nano_patch4_32", img_size=56).state_dict()
    rows = torch.arange(14.0).view(14, 1, 1)
    cols = torch.arange(14.0).view(1, 14, 1)
    a, b = torch.randn(64), torch.randn(64)

    # A field linear in (row, col) is reproduced exactly by bilinear interpolation away from the border,
    # at the new positions of the patch centres (align_corners=False): flattening the grid to 1-D,
    # swapping rows and columns or another coordinate convention would all break this.
    model = MODELS.build("deit_nano_patch4_32", img_size=96)
    load_for_finetune(model, with_patch_pos_embed(source, (rows * a + cols * b).reshape(196, 64)),
                      interpolation="bilinear")
    new = ((torch.arange(24.0) + 0.5) * 14 / 24 - 0.5).view(24, 1, 1)
    expected = new * a + new.view(1, 24, 1) * b  # (24, 24, D)
    grid = model.pos_embed[0, 1:].detach().reshape(24, 24, 64)
    torch.testing.assert_close(grid[2:-2, 2:-2], expected[2:-2, 2:-2], atol=1e-4, rtol=1e-4)

    # A field that depends on the row only keeps depending on the row only under bicubic interpolation.
    model = MODELS.build("deit_nano_patch4_32", img_size=96)
    load_for_finetune(model, with_patch_pos_embed(source, (torch.sin(rows) * a).expand(14, 14, 64).reshape(196, 64)))
    grid = model.pos_embed[0, 1:].detach().reshape(24, 24, 64)
    torch.testing.assert_close(grid, grid[:, :1].expand(24, 24, 64))
    assert not torch.allclose(grid[0], grid[12])


def test_distilled_224_to_384_keeps_token_embeddings_and_resets_heads():
    torch.manual_seed(0)
    checkpoint = MODELS.build("deit_tiny_distilled_patch16_224").state_dict()  # 1000 classes
    model = MODELS.build("deit_tiny_distilled_patch16_224", img_size=384, num_classes=10)

    result = load_for_finetune(model, checkpoint)

    assert result.resized == {"pos_embed": ((1, 2 + 196, 192), (1, 2 + 576, 192))}
    assert result.reset == ["head.weight", "head.bias", "head_dist.weight", "head_dist.bias"]
    loaded = model.state_dict()
    # the class and distillation token embeddings, and their position embeddings, are copied unchanged
    torch.testing.assert_close(loaded["pos_embed"][:, :2], checkpoint["pos_embed"][:, :2], rtol=0, atol=0)
    for key, value in checkpoint.items():
        if key != "pos_embed" and not key.startswith("head"):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    # fresh heads, initialised as timm initialises a ViT head
    assert torch.count_nonzero(model.head.bias) == torch.count_nonzero(model.head_dist.bias) == 0
    assert 0.01 < model.head_dist.weight.std().item() < 0.03

    images = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert model.eval()(images).shape == (1, 10)
        class_logits, distillation_logits = model.train()(images)
    assert class_logits.shape == distillation_logits.shape == (1, 10)


def test_same_class_count_and_resolution_loads_everything():
    source = MODELS.build("deit_nano_distilled_patch4_32", num_classes=10)
    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=10)
    result = load_for_finetune(model, {"model": source.state_dict()})  # facebookresearch/deit layout
    assert result.resized == {} and result.reset == []
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), source.eval()(images))


def test_distilled_checkpoint_into_a_plain_model_names_the_keys():
    checkpoint = MODELS.build("deit_nano_distilled_patch4_32").state_dict()
    with pytest.raises(ValueError, match=r"unexpected \['dist_token', 'head_dist.bias', 'head_dist.weight'\]"
                                         r".*_distilled_"):
        load_for_finetune(MODELS.build("deit_nano_patch4_32"), checkpoint)


def test_missing_and_unexpected_keys_are_errors():
    checkpoint = MODELS.build("deit_nano_patch4_32").state_dict()
    checkpoint["extra.weight"] = torch.zeros(1)
    del checkpoint["norm.bias"]
    with pytest.raises(ValueError, match=r"missing \['norm.bias'\], unexpected \['extra.weight'\]"):
        load_for_finetune(MODELS.build("deit_nano_patch4_32"), checkpoint)


def test_other_shape_mismatches_are_errors():
    checkpoint = MODELS.build("deit_nano_patch4_32").state_dict()
    checkpoint["norm.weight"] = torch.ones(32)
    with pytest.raises(ValueError, match=r"norm.weight: checkpoint \(32,\) vs model \(64,\)"):
        load_for_finetune(MODELS.build("deit_nano_patch4_32"), checkpoint)


def test_non_square_checkpoint_grid_is_an_error():
    checkpoint = MODELS.build("deit_nano_patch4_32").state_dict()
    checkpoint["pos_embed"] = torch.zeros(1, 1 + 8 * 6, 64)
    with pytest.raises(ValueError, match="48 patch positions .* not a square"):
        load_for_finetune(MODELS.build("deit_nano_patch4_32"), checkpoint)


def test_unknown_interpolation_names_the_choices():
    model = MODELS.build("deit_nano_patch4_32")
    with pytest.raises(ValueError, match="'bicubic', 'bilinear', 'nearest'.*'cubic'"):
        load_for_finetune(model, model.state_dict(), interpolation="cubic")
