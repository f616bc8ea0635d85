"""DeiT objectives against hand computations (plain ``math.exp``/``math.log``, no torch losses).

The fixture batch has B=2 samples and C=3 classes; the pinned numbers were computed with the helpers
below and are kept as literals so that a change to the helpers cannot silently move them.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from research.engine.fit import Objective, ObjectiveResult
from research.losses import (
    GroundTruthObjective,
    HardDistillation,
    SoftDistillation,
    build_base_criterion,
)
from research.registry import LOSSES

CLASS_LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
DIST_LOGITS = [[0.5, 1.5, -0.5], [2.0, 0.0, 1.0]]
TEACHER_LOGITS = [[2.0, 0.0, 1.0], [-1.0, 0.5, 2.5]]  # argmax: [0, 2]
LABELS = [1, 2]
B, C = 2, 3




def log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_sum_exp = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_sum_exp for x in row]


def cross_entropy(rows: list[list[float]], labels: list[int]) -> float:
    return sum(-log_softmax(row)[y] for row, y in zip(rows, labels)) / len(rows)


def kl_sum(student: list[list[float]], teacher: list[list[float]], tau: float) -> float:
    """sum_b sum_c p_t (log p_t - log p_s), both at temperature tau."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        log_ps = log_softmax([z / tau for z in s_row])
        log_pt = log_softmax([z / tau for z in t_row])
        total += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
    return total




class FixedTeacher(nn.Module):
    """Returns fixed logits; records the images it saw and whether autograd was on."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float64))
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((images, torch.is_grad_enabled()))
        return self.logits.clone()


def make_batch() -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    images = torch.randn(B, 3, 4, 4, dtype=torch.float64)
    class_logits = torch.tensor(CLASS_LOGITS, dtype=torch.float64, requires_grad=True)
    dist_logits = torch.tensor(DIST_LOGITS, dtype=torch.float64, requires_grad=True)
    return images, (class_logits, dist_logits), torch.tensor(LABELS)


def build(name: str, teacher: nn.Module | None = None, **kwargs: object) -> nn.Module:
    teacher = FixedTeacher(TEACHER_LOGITS) if teacher is None and name != "none" else teacher
    return LOSSES.build(name, base_criterion=nn.CrossEntropyLoss(), teacher=teacher, **kwargs)




def test_hand_math_matches_pinned_numbers() -> None:
    assert cross_entropy(CLASS_LOGITS, LABELS) == pytest.approx(0.2651263439326872, abs=1e-12)
    assert kl_sum(DIST_LOGITS, TEACHER_LOGITS, 1.0) / (B * C) == pytest.approx(0.2919387594847504, abs=1e-12)
    assert kl_sum(DIST_LOGITS, TEACHER_LOGITS, 3.0) * 9 / (B * C) == pytest.approx(0.4307539011273935, abs=1e-12)
    assert cross_entropy(DIST_LOGITS, [0, 2]) == pytest.approx(1.4076059644443806, abs=1e-12)


def test_none_is_cross_entropy_on_the_class_head() -> None:
    images, (class_logits, dist_logits), labels = make_batch()
    objective = build("none")
    assert isinstance(objective, GroundTruthObjective)

    single = objective(images, class_logits, labels)
    pair = objective(images, (class_logits, dist_logits), labels)

    expected = cross_entropy(CLASS_LOGITS, LABELS)
    assert single.loss.item() == pytest.approx(0.2651263439326872, abs=1e-12)
    assert single.loss.item() == pytest.approx(expected, abs=1e-12)
    assert pair.loss.item() == pytest.approx(expected, abs=1e-12)
    assert set(pair.logs) == {"loss/base"}
    pair.loss.backward()
    assert class_logits.grad is not None and dist_logits.grad is None  # the dist head is not trained


def test_soft_reference_defaults_pinned() -> None:
    images, outputs, labels = make_batch()
    objective = build("soft")
    assert isinstance(objective, SoftDistillation)
    assert (objective.alpha, objective.tau, objective.kl_reduction) == (0.5, 1.0, "numel")

    out = objective(images, outputs, labels)

    base = cross_entropy(CLASS_LOGITS, LABELS)
    distill = kl_sum(DIST_LOGITS, TEACHER_LOGITS, 1.0) / (B * C)  # DeiT: sum / numel
    assert out.logs["loss/base"].item() == pytest.approx(base, abs=1e-12)
    assert out.logs["loss/distill"].item() == pytest.approx(distill, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.5 * base + 0.5 * distill, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.2785325517087188, abs=1e-12)


def test_soft_paper_setting_pinned() -> None:
    images, outputs, labels = make_batch()
    objective = build("soft_paper")
    assert (objective.alpha, objective.tau, objective.kl_reduction) == (0.1, 3.0, "numel")

    out = objective(images, outputs, labels)

    base = cross_entropy(CLASS_LOGITS, LABELS)
    distill = kl_sum(DIST_LOGITS, TEACHER_LOGITS, 3.0) * 3.0**2 / (B * C)  # tau^2 keeps gradient scale
    assert out.logs["loss/distill"].item() == pytest.approx(distill, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.9 * base + 0.1 * distill, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.2816890996521578, abs=1e-12)


def test_hard_is_cross_entropy_against_teacher_argmax_pinned() -> None:
    images, outputs, labels = make_batch()
    objective = build("hard")
    assert isinstance(objective, HardDistillation)

    out = objective(images, outputs, labels)

    teacher_labels = [max(range(C), key=lambda c: row[c]) for row in TEACHER_LOGITS]
    assert teacher_labels == [0, 2]
    base, distill = cross_entropy(CLASS_LOGITS, LABELS), cross_entropy(DIST_LOGITS, teacher_labels)
    assert out.logs["loss/distill"].item() == pytest.approx(distill, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.5 * base + 0.5 * distill, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.8363661541885339, abs=1e-12)




@pytest.mark.parametrize("num_classes", [3, 10, 100])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_batchmean_is_num_classes_times_numel(num_classes: int, tau: float) -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 3, 4, 4)
    outputs = (torch.randn(4, num_classes, dtype=torch.float64), torch.randn(4, num_classes, dtype=torch.float64))
    teacher = FixedTeacher(torch.randn(4, num_classes).tolist())
    labels = torch.zeros(4, dtype=torch.long)
    numel = build("soft", teacher=teacher, tau=tau, kl_reduction="numel")(images, outputs, labels)
    batch = build("soft", teacher=teacher, tau=tau, kl_reduction="batchmean")(images, outputs, labels)
    ratio = batch.logs["loss/distill"] / numel.logs["loss/distill"]
    assert ratio.item() == pytest.approx(num_classes, rel=1e-6)


def test_batchmean_matches_hand_math() -> None:
    images, outputs, labels = make_batch()
    out = build("soft", kl_reduction="batchmean")(images, outputs, labels)
    assert out.logs["loss/distill"].item() == pytest.approx(kl_sum(DIST_LOGITS, TEACHER_LOGITS, 1.0) / B, abs=1e-12)


@pytest.mark.parametrize("name", ["soft", "hard"])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_alpha_weights_base_against_distill(name: str, alpha: float) -> None:
    images, outputs, labels = make_batch()
    out = build(name, alpha=alpha)(images, outputs, labels)
    base, distill = out.logs["loss/base"].item(), out.logs["loss/distill"].item()
    assert out.loss.item() == pytest.approx((1 - alpha) * base + alpha * distill, abs=1e-12)
    assert base != pytest.approx(distill)  # so the check above distinguishes the two terms


def test_mixed_soft_targets() -> None:
    """Mixup targets: a lam / (1 - lam) blend of two one-hot rows; SoftTargetCrossEntropy on the class head."""
    images, outputs, _ = make_batch()
    lam = 0.7
    targets = [[0.0, lam, 1 - lam], [1 - lam, 0.0, lam]]  # (1 -> 2) and (2 -> 0) mixed
    criterion = build_base_criterion(mixup_active=True, label_smoothing=0.1)
    objective = LOSSES.build("soft", base_criterion=criterion, teacher=FixedTeacher(TEACHER_LOGITS))

    out = objective(images, outputs, torch.tensor(targets, dtype=torch.float64))

    base = sum(-sum(t * lp for t, lp in zip(t_row, log_softmax(row))) for t_row, row in zip(targets, CLASS_LOGITS)) / B
    distill = kl_sum(DIST_LOGITS, TEACHER_LOGITS, 1.0) / (B * C)
    assert out.logs["loss/base"].item() == pytest.approx(base, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.5 * base + 0.5 * distill, abs=1e-12)




@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_keeps_the_objective_contract_the_loop_holds(name: str) -> None:
    """What research/engine/fit.py's ``Objective`` promises the loop, for every LOSSES entry: a scalar
    loss to backpropagate and its parts as detached scalar tensors keyed ``loss/<part>``."""
    images, outputs, labels = make_batch()
    teacher = FixedTeacher(TEACHER_LOGITS) if LOSSES.info(name).needs_teacher else None
    objective: Objective = LOSSES.build(name, base_criterion=nn.CrossEntropyLoss(), teacher=teacher)
    result = objective(images, outputs, labels)
    assert isinstance(result, ObjectiveResult) and result.loss.ndim == 0 and result.loss.requires_grad
    assert all(key.startswith("loss/") and part.ndim == 0 and not part.requires_grad for key, part in result.logs.items())


def test_base_criterion_choice() -> None:
    assert isinstance(build_base_criterion(mixup_active=True, label_smoothing=0.1), SoftTargetCrossEntropy)
    assert isinstance(build_base_criterion(mixup_active=False, label_smoothing=0.1), LabelSmoothingCrossEntropy)
    assert type(build_base_criterion(mixup_active=False, label_smoothing=0.0)) is nn.CrossEntropyLoss


def test_label_smoothing_matches_hand_math() -> None:
    eps = 0.1
    criterion = build_base_criterion(mixup_active=False, label_smoothing=eps)
    loss = criterion(torch.tensor(CLASS_LOGITS, dtype=torch.float64), torch.tensor(LABELS))
    # (1 - eps) * NLL of the label + eps * mean over classes of -log p
    expected = sum(
        (1 - eps) * -log_softmax(row)[y] + eps * -sum(log_softmax(row)) / C for row, y in zip(CLASS_LOGITS, LABELS)
    ) / B
    assert loss.item() == pytest.approx(expected, abs=1e-12)




def test_registry_entries_and_defaults() -> None:
    assert {"none", "soft", "soft_paper", "hard"} <= set(LOSSES.names())
    assert LOSSES.info("none").needs_teacher is False
    for name in ("soft", "soft_paper", "hard"):
        assert LOSSES.info(name).needs_teacher is True
    defaults = {
        name: {k: p.default for k, p in LOSSES.signature(name).parameters.items() if p.default is not p.empty}
        for name in ("none", "soft", "soft_paper", "hard")
    }
    assert defaults["soft"] == {"alpha": 0.5, "tau": 1.0, "kl_reduction": "numel"}
    assert defaults["soft_paper"] == {"alpha": 0.1, "tau": 3.0, "kl_reduction": "numel"}
    assert defaults["hard"]["alpha"] == 0.5
    for name in defaults:
        params = LOSSES.signature(name).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


def test_none_with_a_teacher_fails_at_build() -> None:
    with pytest.raises(ValueError, match="does not use a teacher"):
        build("none", teacher=FixedTeacher(TEACHER_LOGITS))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kl_reduction": "mean"}, "kl_reduction"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"tau": 0.0}, "tau"),
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build("soft", **kwargs)


def test_malformed_outputs() -> None:
    images, (class_logits, dist_logits), labels = make_batch()
    with pytest.raises(TypeError, match="length 3"):
        build("soft")(images, (class_logits, dist_logits, dist_logits), labels)


def test_teacher_with_other_classes_is_explained() -> None:
    images, outputs, labels = make_batch()
    objective = build("soft", teacher=FixedTeacher([[0.0] * 5, [0.0] * 5]))
    with pytest.raises(ValueError, match="same classes"):
        objective(images, outputs, labels)
