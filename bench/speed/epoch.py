"""One CIFAR-10 epoch end to end (data, teacher, student, evaluation, checkpoint): the project's engine
with its recipe's settings, against the reference way (ImageFolder over the JPEGs, decoded every
epoch; on a GPU fp16 with a GradScaler, on a CPU fp32)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import accuracy
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from research.config import load_run
from research.data import RepeatedAugSampler
from research.engine.fit import Loop
from research.engine.run_dir import read_metrics
from research.launch import train as train_module
from research.launch.dist import DistEnv
from research.launch.train import train
from research.registry import DATASETS, MODELS
from research.teachers import teacher_network
from speed.data import training_recipe
from speed.loops import NUM_CLASSES, img_size_of
from speed.reference import ReferenceLoss, ReferenceSettings, reference_step
from speed.settings import Settings
from speed.timing import progress

ROOT = Path(__file__).resolve().parents[2]
CIFAR_EXPERIMENT = ROOT / "experiments" / "base" / "cifar10.yaml"


@dataclass
class EpochResult:
    images: int
    val_images: int
    workers: int  # the engine's DataLoader workers
    reference_workers: int
    engine_precision: str
    reference_precision: str
    engine_s: float
    engine_phases: dict[str, float]
    reference_s: float
    reference_phases: dict[str, float]
    reference_over_engine: float  # how many times faster the engine's epoch is, once-per-run costs included
    # The same for every later epoch of a run: training, evaluation and checkpoint, without the
    # once-per-run setup (datasets, model) and the engine's check of the teacher on the val set.
    reference_over_engine_per_epoch: float
    engine_train_img_s: float  # training images / the engine's training phase
    # One entry per round: engine_s, reference_s and both ratios. With several rounds, the seconds and
    # phases above are per-key medians and the ratios above are medians of the per-round ratios.
    rounds: list[dict[str, float]] = field(default_factory=list)
    engine_fused_attention_s: float | None = None
    engine_fused_attention_phases: dict[str, float] | None = None
    reference_over_engine_fused_attention: float | None = None


def engine_overrides(settings: Settings, *, precision: str, teacher_checkpoint: str | None, val_images: int) -> list[str]:
    """The command-line overrides of experiments/base/cifar10.yaml that one engine epoch runs with."""
    distil = teacher_checkpoint is not None
    teacher = [f"teacher.name={settings.teacher}", f"teacher.checkpoint={teacher_checkpoint}", "teacher.channels_last=true"]
    return [
        f"model.name={settings.model}",
        f"loss.name={'hard' if distil else 'none'}",
        *(teacher if distil else []),
        f"data.archive={Path(settings.archive).expanduser().resolve()}",
        f"loader.batch_size={settings.batch}",
        f"loader.workers={settings.epoch_workers}",
        f"loader.limit_train={settings.epoch_images}",
        f"loader.limit_val={val_images}",
        "train.epochs=1",
        "sched.warmup_epochs=0",  # shorter than the one epoch (the lr does not change the speed)
        f"train.precision={precision}",
        "train.progress=false",
        "logger.name=none",
    ]


def engine_epoch(
    settings: Settings,
    *,
    precision: str,
    teacher_checkpoint: str | None,
    val_images: int,
    workdir: Path,
    fused_attention: bool = False,
) -> tuple[float, dict[str, float]]:
    """Wall time of ``train()`` for one epoch of experiments/base/cifar10.yaml (in-memory data) on a slice;
    ``fused_attention`` turns the recipe's ``train.fused_attention: false`` around."""
    overrides = engine_overrides(settings, precision=precision, teacher_checkpoint=teacher_checkpoint, val_images=val_images)
    overrides += [*(["train.fused_attention=true"] if fused_attention else []), f"output_dir={workdir / 'epoch'}"]
    run = load_run(CIFAR_EXPERIMENT, overrides)
    marks: dict[str, float] = {}
    log_teacher = train_module._log_teacher

    def timed_log_teacher(loop: Loop, teacher: nn.Module) -> None:
        started = time.perf_counter()
        log_teacher(loop, teacher)
        marks["teacher_eval_s"] = time.perf_counter() - started

    def built(loop: Loop) -> None:
        marks["built"] = time.perf_counter()

    train_module._log_teacher = timed_log_teacher  # instrumentation only: the same call, timed
    started = time.perf_counter()
    try:
        train(run, env=DistEnv(device=settings.torch_device()), on_loop=built)
    finally:
        train_module._log_teacher = log_teacher
    total = time.perf_counter() - started
    epoch = next(m for m in read_metrics(run.run_dir) if "epoch_time_s" in m)
    phases = {
        "setup_s": marks["built"] - started,
        "teacher_eval_s": marks.get("teacher_eval_s", 0.0),
        "train_s": epoch["epoch_time_s"],
    }
    phases["eval_and_checkpoint_s"] = total - sum(phases.values())
    return total, phases


@torch.no_grad()
def reference_evaluate(model: nn.Module, loader: DataLoader, settings: ReferenceSettings) -> dict[str, float]:
    """The reference ``evaluate``: cross-entropy and top-1/top-5 per batch, synced with ``.item()``."""
    criterion = nn.CrossEntropyLoss()
    model.eval()
    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0}
    count = 0
    for images, target in loader:
        images, target = images.to(settings.device, non_blocking=True), target.to(settings.device, non_blocking=True)
        with settings.autocast():
            output = model(images)  # (B, C); a distilled model averages its heads in eval mode
            loss = criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        size = images.shape[0]
        totals["loss"] += loss.item() * size
        totals["top1"] += acc1.item() * size
        totals["top5"] += acc5.item() * size
        count += size
    return {key: value / max(count, 1) for key, value in totals.items()}


def _slice(dataset: Dataset, size: int) -> Subset:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()  # type: ignore[arg-type]
    return Subset(dataset, sorted(order[:size]))


def reference_epoch(
    settings: Settings, *, teacher_checkpoint: str | None, val_images: int, workdir: Path
) -> tuple[float, dict[str, float]]:
    """One epoch the reference way: ImageFolder over the JPEGs (decoded every epoch), the same recipe,
    and deit's own precision (fp16 + GradScaler on a GPU, fp32 on a CPU)."""
    device = settings.torch_device()
    driving = ReferenceSettings.deit(device)
    started = time.perf_counter()
    recipe = training_recipe(32)
    archive = str(Path(settings.archive).expanduser().resolve())
    train_set = _slice(
        DATASETS.build("cifar10_jpeg", split="train", transform=recipe.train_transform, archive=archive), settings.epoch_images
    )
    val_set = _slice(DATASETS.build("cifar10_jpeg", split="val", transform=recipe.eval_transform, archive=archive), val_images)
    sampler = RepeatedAugSampler(train_set, num_replicas=1, rank=0, repeats=recipe.repeats, seed=0)
    workers, pin = settings.epoch_reference_workers, device.type == "cuda"
    train_loader = DataLoader(
        train_set, batch_size=settings.batch, sampler=sampler, num_workers=workers, pin_memory=pin, drop_last=True
    )
    val_loader = DataLoader(val_set, batch_size=int(1.5 * settings.batch), num_workers=workers, pin_memory=pin)
    model = MODELS.build(settings.model, num_classes=NUM_CLASSES, img_size=32, drop_path_rate=0.1).to(device)
    teacher = None
    if teacher_checkpoint is not None:
        teacher = teacher_network(settings.teacher, num_classes=NUM_CLASSES)
        teacher.load_state_dict(torch.load(teacher_checkpoint, map_location="cpu", weights_only=True))
        teacher = teacher.to(device).eval()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=5e-4 * settings.batch / 512, weight_decay=0.05)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=1, warmup_epochs=0)
    mixup_fn = recipe.mixup(num_classes=NUM_CLASSES, label_smoothing=0.1)
    criterion = ReferenceLoss(SoftTargetCrossEntropy(), teacher)
    scaler = driving.scaler()
    built = time.perf_counter()

    model.train()
    for samples, targets in train_loader:
        reference_step(model, criterion, optimizer, mixup_fn, samples, targets, driving, scaler)
    scheduler.step(1)  # per epoch, as the reference main loop does
    trained = time.perf_counter()
    reference_evaluate(model, val_loader, driving)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0}, workdir / "reference.pt")
    done = time.perf_counter()
    return done - started, {"setup_s": built - started, "train_s": trained - built, "eval_and_checkpoint_s": done - trained}


def _per_epoch_s(phases: dict[str, float]) -> float:
    """What each epoch after the first costs: train + eval + checkpoint (setup and teacher check are once per run)."""
    return phases["train_s"] + phases["eval_and_checkpoint_s"]


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(phases[key] for phases in runs) for key in runs[0]}


def measure_epoch(settings: Settings, *, precision: str, teacher_checkpoint: str | None, workdir: Path) -> EpochResult:
    if img_size_of(settings.model) != 32:
        raise SystemExit(f"--epoch times a CIFAR-10 epoch: {settings.model} is not a 32x32 model")
    val_images = min(5000, max(settings.batch, settings.epoch_images // 8))  # CIFAR-10 here: 40k train, 5k val
    engines, references, rounds = [], [], []
    reference_precision = ReferenceSettings.deit(settings.torch_device()).precision
    for index in range(settings.epoch_rounds):

        def engine_side(index: int = index) -> tuple[float, dict[str, float]]:
            progress(
                f"epoch round {index + 1}: engine, {settings.epoch_images} images, {precision}, "
                f"{settings.epoch_workers} workers, in-memory data"
            )
            return engine_epoch(
                settings,
                precision=precision,
                teacher_checkpoint=teacher_checkpoint,
                val_images=val_images,
                workdir=workdir / f"round{index}",
            )

        def reference_side(index: int = index) -> tuple[float, dict[str, float]]:
            progress(
                f"epoch round {index + 1}: reference way, {settings.epoch_images} images, {reference_precision}, "
                f"JPEG decoding, {settings.epoch_reference_workers} workers"
            )
            return reference_epoch(settings, teacher_checkpoint=teacher_checkpoint, val_images=val_images, workdir=workdir)

        if index % 2:  # every other round the reference goes first, so a drift in load hits both sides
            reference, engine = reference_side(), engine_side()
        else:
            engine, reference = engine_side(), reference_side()
        engines.append(engine)
        references.append(reference)
        rounds.append(
            {
                "engine_s": engine[0],
                "reference_s": reference[0],
                "reference_over_engine": reference[0] / engine[0],
                "reference_over_engine_per_epoch": _per_epoch_s(reference[1]) / _per_epoch_s(engine[1]),
            }
        )
    fused_s, fused_phases = None, None
    if settings.epoch_fused_attention:
        progress("epoch: engine as above, with fused attention")
        fused_s, fused_phases = engine_epoch(
            settings,
            precision=precision,
            teacher_checkpoint=teacher_checkpoint,
            val_images=val_images,
            workdir=workdir / "fused",
            fused_attention=True,
        )
    engine_phases = _median_phases([phases for _, phases in engines])
    reference_s = statistics.median(seconds for seconds, _ in references)
    return EpochResult(
        images=settings.epoch_images,
        val_images=val_images,
        workers=settings.epoch_workers,
        reference_workers=settings.epoch_reference_workers,
        engine_precision=precision,
        reference_precision=reference_precision,
        engine_s=statistics.median(seconds for seconds, _ in engines),
        engine_phases=engine_phases,
        reference_s=reference_s,
        reference_phases=_median_phases([phases for _, phases in references]),
        reference_over_engine=statistics.median(r["reference_over_engine"] for r in rounds),
        reference_over_engine_per_epoch=statistics.median(r["reference_over_engine_per_epoch"] for r in rounds),
        engine_train_img_s=settings.epoch_images / engine_phases["train_s"],
        rounds=rounds,
        engine_fused_attention_s=fused_s,
        engine_fused_attention_phases=fused_phases,
        reference_over_engine_fused_attention=reference_s / fused_s if fused_s else None,
    )
