"""``evaluate``: totals over a loader, and the top-1 of each head of a model with a distillation token."""

from __future__ import annotations

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

    def forward_heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.tensor([0.0, 1.0, 1.0, 0.0]).expand(len(images), 4)
        return logits, logits.clone()


def test_head_top1_breaks_ties_as_top1_does() -> None:
    targets = torch.tensor([1, 2, 2, 2])
    metrics = evaluate(_TiedHeads(), [(torch.zeros(4, 3, 32, 32), targets)], CPU)
    assert metrics["top1_both"] == metrics["top1"] == metrics["top1_class"]
