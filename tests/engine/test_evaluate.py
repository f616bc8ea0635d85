"""``evaluate``: totals over a loader, and the top-1 of each head of a model with a distillation token."""

from __future__ import annotations

import pytest
import torch

from research.engine.evaluate import evaluate
from research.registry import MODELS

CPU = torch.device("cpu")


def batches(images: torch.Tensor, targets: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[i : i + size], targets[i : i + size]) for i in range(0, len(images), size)]


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return 100.0 * logits.argmax(1).eq(targets).float().mean().item()


def test_distilled_model_reports_each_head_from_one_pass() -> None:
    torch.manual_seed(0)
    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=4, drop_path_rate=0.0, eval_head="class")
    with torch.no_grad():  # at DeiT's init both heads predict one class everywhere: make them disagree
        for parameter in model.parameters():
            parameter.normal_(std=0.5)
    images = torch.randn(20, 3, 32, 32)
    with torch.no_grad():
        class_logits, distillation_logits = model.train()(images)
    # Labels the class head gets right on 14 images and the distillation head on the other 6.
    targets = torch.cat([class_logits[:14].argmax(1), distillation_logits[14:].argmax(1)])
    expected = {
        "class": top1(class_logits, targets),
        "distillation": top1(distillation_logits, targets),
        "both": top1((class_logits + distillation_logits) / 2, targets),
    }
    assert len(set(expected.values())) > 1  # the heads disagree, so a mixed-up key would show

    metrics = evaluate(model, batches(images, targets, 8), CPU)

    assert model.training  # evaluation restores the mode it found
    for head, value in expected.items():
        assert abs(metrics[f"top1_{head}"] - value) < 1e-4, head
    assert abs(metrics["top1"] - expected["class"]) < 1e-4  # top1 follows eval_head
    model.eval_head = "distillation"
    assert abs(evaluate(model, batches(images, targets, 8), CPU)["top1"] - expected["distillation"]) < 1e-4


def test_plain_model_reports_only_its_prediction() -> None:
    torch.manual_seed(0)
    model = MODELS.build("deit_nano_patch4_32", num_classes=4, drop_path_rate=0.0).eval()
    torch.nn.init.normal_(model.head.weight)
    images, targets = torch.randn(12, 3, 32, 32), torch.randint(0, 4, (12,))
    with torch.no_grad():
        logits = model(images)
    metrics = evaluate(model, batches(images, targets, 5), CPU)
    assert set(metrics) == {"loss", "top1", "top5"}
    assert abs(metrics["top1"] - top1(logits, targets)) < 1e-4
    expected_loss = torch.nn.functional.cross_entropy(logits, targets).item()
    assert abs(metrics["loss"] - expected_loss) < 1e-5


class _TiedHeads(torch.nn.Module):
    """Both heads give classes 1 and 2 the same top score, as bf16 logits often do early in training."""

    eval_head = "both"
    eval_heads = ("both", "class", "distillation")

    def forward_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = torch.tensor([0.0, 1.0, 1.0, 0.0]).expand(len(images), 4)
        return {"class": logits, "distillation": logits.clone(), "both": logits.clone()}


def test_head_top1_breaks_ties_as_top1_does() -> None:
    targets = torch.tensor([1, 2, 2, 2])
    metrics = evaluate(_TiedHeads(), [(torch.zeros(4, 3, 32, 32), targets)], CPU)
    assert metrics["top1_both"] == metrics["top1"] == metrics["top1_class"]


def test_hflip_averages_each_image_with_its_mirror() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))  # sees left from right
    images = torch.randn(12, 3, 8, 8)
    with torch.no_grad():
        single, mirrored = model(images), model(images.flip(-1))
    averaged = (single + mirrored) / 2
    # Labels the single view gets right on 7 images and the mirror-averaged logits on the other 5.
    targets = torch.cat([single[:7].argmax(1), averaged[7:].argmax(1)])
    assert top1(single, targets) != top1(averaged, targets)  # the flip changes predictions here

    metrics = evaluate(model, batches(images, targets, 5), CPU, hflip=True)

    assert abs(metrics["top1"] - top1(averaged, targets)) < 1e-4
    assert abs(metrics["top1_single_view"] - top1(single, targets)) < 1e-4
    assert abs(metrics["loss"] - torch.nn.functional.cross_entropy(averaged, targets).item()) < 1e-5
    assert "top1_single_view" not in evaluate(model, batches(images, targets, 5), CPU)


def test_hflip_applies_to_every_head_of_a_distilled_model() -> None:
    torch.manual_seed(0)
    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=4, drop_path_rate=0.0, eval_head="distillation")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.5)
    model.eval()
    images, targets = torch.randn(10, 3, 32, 32), torch.randint(0, 4, (10,))
    with torch.no_grad():
        single, mirrored = model.forward_heads(images), model.forward_heads(images.flip(-1))
        heads = [(single[head] + mirrored[head]) / 2 for head in ("class", "distillation")]
        single_distillation = single["distillation"]

    metrics = evaluate(model, batches(images, targets, 4), CPU, hflip=True)

    assert abs(metrics["top1_class"] - top1(heads[0], targets)) < 1e-4
    assert abs(metrics["top1_distillation"] - top1(heads[1], targets)) < 1e-4
    assert abs(metrics["top1"] - metrics["top1_distillation"]) < 1e-4
    assert abs(metrics["top1_single_view"] - top1(single_distillation, targets)) < 1e-4


def _reflect_shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` whose pixel (y, x) is the input's (y + dy, x + dx), borders reflected (numpy-style)."""
    _, _, height, width = images.shape
    rows = (torch.arange(height) + dy).abs()
    rows = torch.where(rows > height - 1, 2 * (height - 1) - rows, rows)
    cols = (torch.arange(width) + dx).abs()
    cols = torch.where(cols > width - 1, 2 * (width - 1) - cols, cols)
    return images[:, :, rows][:, :, :, cols]


@pytest.mark.parametrize("hflip", [False, True])
def test_translate_weights_the_image_half_and_two_diagonal_shifts_a_quarter_each(hflip: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))  # sees every pixel's place
    images = torch.randn(12, 3, 8, 8)

    def view(x: torch.Tensor) -> torch.Tensor:
        return (model(x) + model(x.flip(-1))) / 2 if hflip else model(x)

    with torch.no_grad():
        single = model(images)
        expected = view(images) / 2 + (view(_reflect_shift(images, -1, -1)) + view(_reflect_shift(images, 1, 1))) / 4
    targets = expected.argmax(1)
    assert top1(single, targets) < 100.0  # the extra views change some predictions here

    metrics = evaluate(model, batches(images, targets, 5), CPU, hflip=hflip, translate=1)

    assert abs(metrics["top1"] - top1(expected, targets)) < 1e-4
    assert abs(metrics["top1_single_view"] - top1(single, targets)) < 1e-4
    assert abs(metrics["loss"] - torch.nn.functional.cross_entropy(expected, targets).item()) < 1e-5


def test_translate_must_not_be_negative() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ValueError, match="translate is a number of pixels"):
        evaluate(model, batches(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), 2), CPU, translate=-1)
