"""DeiT models: registry entries, timm compatibility, distillation-token behaviour."""

import inspect
import typing

import pytest
import timm
import torch
from timm.layers import DropPath

from research.models import EVAL_HEADS, DeiT, DistilledDeiT
from research.registry import MODELS, ModelInfo

DEIT_NAMES = [name for name in MODELS.names() if MODELS.info(name).family == "deit"]
TIMM_NAMES = timm.list_models("deit_*")  # DeiT (not DeiT III): the 8 patch16 models at 224 and 384
BIG = {"deit_base_patch16_224", "deit_base_patch16_384", "deit_base_distilled_patch16_224",
       "deit_base_distilled_patch16_384"}

# Written out independently of deit.py's table: (embed_dim, depth, num_heads, patch_size, img_size).
EXPECTED_SHAPES = {
    "deit_tiny_patch16_224": (192, 12, 3, 16, 224),
    "deit_small_patch16_224": (384, 12, 6, 16, 224),
    "deit_base_patch16_224": (768, 12, 12, 16, 224),
    "deit_base_patch16_384": (768, 12, 12, 16, 384),
    "deit_tiny_patch4_32": (192, 12, 3, 4, 32),
    "deit_mini_patch4_32": (192, 6, 3, 4, 32),
    "deit_micro_patch4_32": (128, 6, 4, 4, 32),
    "deit_nano_patch4_32": (64, 2, 2, 4, 32),
}
EXPECTED_SHAPES.update({name.replace("_patch", "_distilled_patch"): v for name, v in EXPECTED_SHAPES.items()})


def slow_if_big(names: list[str]) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in BIG else name for name in names]


def test_registry_has_timm_names_and_the_32px_variants():
    assert sorted(TIMM_NAMES) == sorted(name for name in DEIT_NAMES if "patch16" in name)
    assert set(DEIT_NAMES) == set(EXPECTED_SHAPES)


@pytest.mark.parametrize("name", DEIT_NAMES)
def test_metadata_and_builder_signature(name):
    embed_dim, depth, num_heads, patch_size, img_size = EXPECTED_SHAPES[name]
    distilled = "_distilled_" in name
    assert MODELS.info(name) == ModelInfo(
        distilled=distilled, family="deit", patch_size=patch_size, default_img_size=img_size
    )

    params = MODELS.signature(name).parameters
    expected = {"num_classes": (int, 1000), "img_size": (int, img_size), "drop_path_rate": (float, 0.1)}
    expected["cls_token_init"] = (typing.Literal["timm", "reference"], "timm")  # model.cls_token_init
    if distilled:
        expected["eval_head"] = (typing.Literal[EVAL_HEADS], "both")  # checked against at load time
    hints = typing.get_type_hints(MODELS.get(name))
    assert {key: (hints[key], p.default) for key, p in params.items()} == expected
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())


@pytest.mark.parametrize("name", DEIT_NAMES)
def test_paper_shapes(name):
    embed_dim, depth, num_heads, patch_size, img_size = EXPECTED_SHAPES[name]
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = MODELS.build(name)
    assert isinstance(model, DistilledDeiT if "_distilled_" in name else DeiT)
    assert model.distilled == ("_distilled_" in name)
    assert (model.embed_dim, len(model.blocks), model.patch_embed.patch_size) == (embed_dim, depth, (patch_size,) * 2)
    assert model.patch_embed.img_size == (img_size, img_size)
    block = model.blocks[0]
    assert block.attn.num_heads == num_heads
    assert block.attn.qkv.bias is not None
    assert block.mlp.fc1.out_features == 4 * embed_dim
    assert block.norm1.eps == model.norm.eps == 1e-6
    num_tokens = (img_size // patch_size) ** 2 + (2 if model.distilled else 1)
    assert model.pos_embed.shape == (1, num_tokens, embed_dim)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_state_dict_keys_and_shapes_equal_timms(name):
    with torch.device("meta"):
        ours = MODELS.build(name).state_dict()
        theirs = timm.create_model(name, pretrained=False).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]


@pytest.mark.parametrize("name", slow_if_big(TIMM_NAMES))
def test_outputs_equal_timms_given_the_same_weights(name):
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, drop_path_rate=0.0)
    ours = MODELS.build(name, drop_path_rate=0.0)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    size = MODELS.info(name).default_img_size
    images = torch.randn(1 if size > 224 else 2, 3, size, size)

    with torch.no_grad():
        ours.eval(), theirs.eval()
        torch.testing.assert_close(ours(images), theirs(images))
        if size > 224:  # one forward on one image is enough for the 384x384 base models
            return
        ours.train(), theirs.train()
        if ours.distilled:
            theirs.set_distilled_training(True)  # timm only returns both heads' logits when asked to
        torch.testing.assert_close(ours(images), theirs(images))


@pytest.mark.parametrize("name", slow_if_big(DEIT_NAMES))  # building an 86M-parameter model takes a while
def test_forward_backward_at_32px(name):
    # patch16 models see a 2x2 grid at 32x32, patch4 models an 8x8 grid
    model = MODELS.build(name, num_classes=5, img_size=32, drop_path_rate=0.2)
    images = torch.randn(2, 3, 32, 32)

    model.train()
    out = model(images)
    if model.distilled:
        class_logits, distillation_logits = out
        assert class_logits.shape == distillation_logits.shape == (2, 5)
        (class_logits.sum() + distillation_logits.sum()).backward()
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
        out.sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)

    # stochastic depth: timm's linear rule, 0 for the first block up to drop_path_rate for the last
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)
    assert isinstance(model.blocks[-1].drop_path1, DropPath)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_drop_path_rate_zero_disables_stochastic_depth():
    model = MODELS.build("deit_nano_patch4_32", drop_path_rate=0.0)
    assert not any(isinstance(module, DropPath) for module in model.modules())
    assert MODELS.build("deit_nano_patch4_32").blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_distilled_token_layout():
    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    patches = model.patch_embed(images)  # (2, 64, 64)
    tokens = model._pos_embed(patches)  # (2, 2 + 64, 64): [cls, dist, patches]
    assert tokens.shape == (2, 66, 64)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token[0, 0] + model.pos_embed[0, 0]).expand(2, -1))
    torch.testing.assert_close(tokens[:, 1], (model.dist_token[0, 0] + model.pos_embed[0, 1]).expand(2, -1))
    torch.testing.assert_close(tokens[:, 2:], patches + model.pos_embed[:, 2:])
    assert model.forward_features(images).shape == (2, 66, 64)


def test_eval_head_selects_what_eval_returns():
    torch.manual_seed(0)
    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=4, drop_path_rate=0.0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        class_logits, distillation_logits = model.train()(images)
        model.eval()
        assert model.eval_head == "both"
        torch.testing.assert_close(model(images), (class_logits + distillation_logits) / 2)
        model.eval_head = "class"
        torch.testing.assert_close(model(images), class_logits)
        model.eval_head = "distillation"
        torch.testing.assert_close(model(images), distillation_logits)
        assert not torch.allclose(class_logits, distillation_logits)  # the heads are distinct

    built = MODELS.build("deit_nano_distilled_patch4_32", eval_head="distillation")
    assert built.eval_head == "distillation"
    assert EVAL_HEADS == ("both", "class", "distillation")


def test_invalid_eval_head_names_the_choices():
    with pytest.raises(ValueError, match="eval_head 'cls' is not one of both, class, distillation"):  # Registry.build's check
        MODELS.build("deit_nano_distilled_patch4_32", eval_head="cls")
    model = MODELS.build("deit_nano_distilled_patch4_32")
    with pytest.raises(ValueError, match="'both', 'class', 'distillation'"):
        model.eval_head = "mean"


def test_no_weight_decay_covers_the_tokens_and_position_embedding():
    model = MODELS.build("deit_nano_distilled_patch4_32")
    params = dict(model.named_parameters())
    assert {"pos_embed", "cls_token", "dist_token"} <= model.no_weight_decay()
    assert {"pos_embed", "cls_token", "dist_token"} <= params.keys()
    assert {"pos_embed", "cls_token"} <= MODELS.build("deit_nano_patch4_32").no_weight_decay()


def test_distillation_token_is_initialised():
    model = MODELS.build("deit_tiny_distilled_patch4_32")
    assert 0.01 < model.dist_token.std().item() < 0.03  # truncated normal, std .02, not left empty
    assert 0.01 < model.head_dist.weight.std().item() < 0.03
    assert torch.count_nonzero(model.head_dist.bias) == 0


def test_reset_classifier_replaces_both_heads():
    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=10)
    model.reset_classifier(7)
    assert model.head.out_features == model.head_dist.out_features == 7
    class_logits, distillation_logits = model.train()(torch.randn(1, 3, 32, 32))
    assert class_logits.shape == distillation_logits.shape == (1, 7)


@pytest.mark.parametrize(("img_size", "match"), [(30, "multiple of the patch size 4"), (0, r"model\.img_size=0: must be >= 1")])
def test_img_size_must_be_a_multiple_of_the_patch_size(img_size, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build("deit_nano_patch4_32", img_size=img_size)


def test_other_resolutions_and_class_counts_build():
    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=100, img_size=64, drop_path_rate=0.0)
    assert model.pos_embed.shape == (1, 2 + 16 * 16, 64)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 100)
