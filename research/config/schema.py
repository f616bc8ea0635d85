"""The typed schema of an experiment file, one dataclass per fixed section.

Sections that pick a registered component (``model``, ``teacher``, ``loss``, ``data``, ``aug``,
``logger``) are ``name`` plus the builder's own keyword arguments: their keys are checked against the
builder's signature by :mod:`research.config.components`, not listed here. Defaults of the fixed
sections are the paper's ImageNet recipe (DeiT, Touvron et al. 2021, Table 9 and section 6).

Numbers declare their bounds in their annotation (``epochs: Annotated[int, Range(ge=1)]``), settings
their choices (``step_on: Annotated[str, OneOf("epoch", "step")]``); the loader checks every one when an
experiment loads (:mod:`research.config.checks`), before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Dict, List, Optional

from research.registry import OneOf, Range

# OmegaConf needs typing.Dict/List/Optional, not PEP 604/585 forms, in structured configs.

COUNT = Range(ge=1)  # a number of things: at least one
NON_NEGATIVE = Range(ge=0)
POSITIVE = Range(gt=0)
PROBABILITY = Range(ge=0, le=1)


@dataclass
class LoaderCfg:
    """Data loading. ``batch_size`` is per process (rank); the paper's 1024 is 8 GPUs x 128."""

    batch_size: Annotated[int, COUNT] = 128
    # default: 4 x batch_size (no gradients or activations kept at eval)
    eval_batch_size: Annotated[Optional[int], COUNT] = None
    workers: Annotated[int, Range(ge=0, hint="DataLoader worker processes; 0 = load in the main process")] = 8
    pin_memory: bool = True
    # Run the whole recipe (crop, flip, RandAugment / AutoAugment, color jitter, grayscale, random erasing,
    # cutout; mixup runs in the loop either way) on whole uint8 batches on the training device, each image
    # drawing its own parameters, instead of image by image in PIL: for in-memory datasets.
    batch_augment: bool = False
    # On one process, repeated augmentation puts an image's copies in the same batch. false: sample
    # each image once per epoch there, as the reference does (its RASampler only runs distributed).
    repeated_aug_single_process: bool = True
    # Seed each epoch's order with the epoch alone, as the reference's RASampler does (its data order
    # ignores --seed); false: from the run's seed and the epoch (research/seeding.py)
    sampler_seed_epoch_only: bool = False
    # keep a fixed, seeded subset of this many images (null: all of them)
    limit_train: Annotated[Optional[int], Range(ge=1, hint="a number of images; null = all")] = None
    limit_val: Annotated[Optional[int], Range(ge=1, hint="a number of images; null = all")] = None


@dataclass
class OptimCfg:
    """Optimizer (timm's ``create_optimizer_v2``). With ``scale_lr``, the lr is per 512 images and
    scales linearly with the global batch: lr x batch_size x world_size / 512 (DeiT section 6)."""

    name: str = "adamw"
    lr: Annotated[float, POSITIVE] = 5e-4
    scale_lr: bool = True
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.05
    eps: Annotated[Optional[float], POSITIVE] = None  # None: the optimizer's default
    betas: Annotated[Optional[List[float]], Range(ge=0, lt=1)] = None
    momentum: Annotated[float, PROBABILITY] = 0.9
    # Weight-decay the distillation token as the reference did under its timm 0.3.2 (whose
    # no_weight_decay() named only pos_embed and cls_token); timm >= 0.4 exempts it, as we do by default.
    decay_dist_token: bool = False
    clip_grad: Annotated[Optional[float], POSITIVE] = None  # max gradient norm; None = no clipping
    # torch's kernel for the update: auto (fused on CUDA where the optimizer has it, else torch's
    # choice), foreach (one multi-tensor kernel per op), fused (one kernel for the whole update;
    # Adam/AdamW/SGD, CUDA and CPU), for_loop
    implementation: Annotated[str, OneOf("auto", "foreach", "fused", "for_loop")] = "auto"
    # airbench's Lookahead (research/engine/lookahead.py): sync slow weights every N steps (0 = off),
    # their decay rising as (progress)^3 to lookahead_max_decay (airbench: every 5, 0.95^5 = 0.774)
    lookahead_every: Annotated[int, Range(ge=0, hint="a number of steps; 0 = off, airbench: 5")] = 0
    lookahead_max_decay: Annotated[float, Range(ge=0, lt=1, hint="a decay; airbench: 0.774")] = 0.7737809375


@dataclass
class SchedCfg:
    """Learning-rate schedule (timm's ``create_scheduler_v2``).

    ``step_on: epoch`` steps it after each epoch with that epoch's index, as the reference's
    ``lr_scheduler.step(epoch)``: epoch e trains at lr(e - 1), epochs 0 and 1 at ``warmup_lr``.
    ``step_on: step`` moves it every optimizer update (smooth warm-up; short runs).
    """

    name: Annotated[str, OneOf(  # timm's create_scheduler_v2 names, less one
        "cosine", "tanh", "step", "constant", "multistep", "poly", "wsd", "rsqrt",
        hint="timm's schedules; plateau is not supported: it needs a validation metric at every step",
    )] = "cosine"
    step_on: Annotated[str, OneOf("epoch", "step")] = "epoch"
    warmup_epochs: Annotated[float, NON_NEGATIVE] = 5.0
    warmup_lr: Annotated[float, NON_NEGATIVE] = 1e-6
    min_lr: Annotated[float, NON_NEGATIVE] = 1e-5
    # timm's decay_rate: the power of the ``poly`` schedule (1.0: a straight line), the factor of ``step``
    decay_rate: Annotated[float, POSITIVE] = 0.1
    # Decay from the end of the warm-up to the last epoch (timm's warmup_prefix, the schedule shortened by
    # the warm-up so it still ends with training): poly at power 1 is then airbench's exact lr triangle
    warmup_prefix: bool = False


@dataclass
class TrainCfg:
    """The training loop's options; recipe techniques that act in the loop live here too."""

    epochs: Annotated[int, COUNT] = 300
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.1
    ema: bool = False  # keep an EMA of the weights; both raw and EMA weights are evaluated
    ema_decay: Annotated[float, PROBABILITY] = 0.99996
    # timm's ModelEmaV3.update(step=s) copies the weights on the first two updates; false decays from
    # the first update, as timm's ModelEma in the reference does
    ema_copy_first: bool = False
    precision: Annotated[str, OneOf("fp32", "bf16", "fp16")] = "fp32"  # autocast; fp16 only on GPU
    # Keep the teacher's weights in fp32 under the run's autocast, as the reference does; false casts
    # them (BatchNorm included) to the autocast dtype once, so no step casts them again
    teacher_fp32: bool = False
    # Build the student as the reference does: on the global generators seeded with seed + rank, after
    # the data and before the teacher; false: on its own "init" stream, whatever else the run builds
    reference_init: bool = False
    # torch.compile the step's device work: the batch's mixing, the student's forward and the loss
    # with the teacher's forward, and their backward (CPU and CUDA; research/engine/fit.py)
    compile: bool = False
    # torch.compile's mode; reduce-overhead: CUDA graphs of the compiled step
    compile_mode: Annotated[str, OneOf("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")] = "default"
    channels_last: bool = False
    # also checkpoint every N steps inside an epoch (0 = per epoch only)
    checkpoint_every_steps: Annotated[int, NON_NEGATIVE] = 0
    # An epoch's end checkpoints only when this long has passed since the last checkpoint (0 = every
    # epoch); the last epoch, a new best and a stop always do. A 65 MB save costs 0.1-0.2 s: 10-15% of
    # a 1-s epoch, under 0.3% once a minute. A preemption loses at most this much training.
    checkpoint_every_s: Annotated[float, Range(ge=0, hint="seconds; 0 = every epoch")] = 60.0
    log_every_steps: Annotated[int, COUNT] = 50
    eval_every_epochs: Annotated[int, COUNT] = 1
    eval_hflip: bool = False  # also evaluate each val image mirrored and average the logits (flip TTA)
    # also evaluate each val image moved this many pixels both ways (airbench's TTA at 1)
    eval_translate: Annotated[int, Range(ge=0, hint="a number of pixels; 0 = off, airbench: 1")] = 0
    resume: bool = True  # continue from <run dir>/last.pt when it exists
    progress: bool = True  # tqdm progress bar on rank 0
    # timm's fused (scaled_dot_product) attention; its CPU backward is slow in bf16 (docs/PERFORMANCE.md)
    fused_attention: bool = True
    # torch compute threads per process; None = torch's default (all cores)
    threads: Annotated[Optional[int], COUNT] = None


@dataclass
class FinetuneCfg:
    """Start from another run's weights (e.g. a 224 model fine-tuned at 384, DeiT section 6)."""

    checkpoint: Optional[str] = None
    from_experiment: Optional[str] = None  # an experiment file whose finished run provides the checkpoint
    interpolation: Annotated[str, OneOf("bicubic", "bilinear")] = "bicubic"  # of the position embeddings


@dataclass
class ResourcesCfg:
    """What one run needs, whatever runs it: each launcher backend maps this to its own options
    (research/launch/backends/); ``backend`` picks one of research.registry.BACKENDS."""

    backend: str = "slurm"
    time: str = "24:00:00"  # D-HH:MM:SS, HH:MM:SS or minutes
    nodes: Annotated[int, COUNT] = 1
    gpus_per_node: Annotated[int, Range(ge=0, hint="0 = a CPU-only job")] = 0
    # The GPU type, as the cluster names it (h200, a100, ...): asked of the backend, and the device
    # whose throughput prices the run (research/launch/cost.py)
    gpu_type: Optional[str] = None
    tasks_per_node: Annotated[Optional[int], COUNT] = None  # default: gpus_per_node, or 1 on a CPU-only cluster
    cpus_per_task: Annotated[int, COUNT] = 10
    mem_gb: Annotated[Optional[float], POSITIVE] = None

    def processes(self) -> int:
        """The run's processes (its DDP world size): one per GPU, or ``tasks_per_node`` (default 1) per node on CPUs."""
        return self.nodes * (self.gpus_per_node or self.tasks_per_node or 1)


@dataclass
class SlurmCfg:
    """SLURM's own options for one run (its resources are ``resources:``); nothing site-specific by default."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)  # more sbatch parameters, as submitit passes them
    setup: List[str] = field(default_factory=list)  # shell lines run before the job (module load ...)
    max_requeues: Annotated[int, NON_NEGATIVE] = 3  # preemptions / time limits survived before the run gives up
    array_parallelism: Annotated[int, COUNT] = 64


@dataclass
class AblationCfg:
    """Variants of one experiment: named override sets and/or a grid over keys (their product)."""

    baseline: Optional[str] = None  # the variant deltas are measured against; default: the first
    variants: Dict[str, Any] = field(default_factory=dict)  # name -> {dotted.key: value}
    grid: Dict[str, Any] = field(default_factory=dict)  # dotted.key -> [values]
    studies: List[str] = field(default_factory=list)  # the dotted keys variants and grid may set (`loss`: `loss.*`)


def _component(name: Any) -> Any:
    return field(default_factory=lambda: {"name": name})


@dataclass
class ExperimentCfg:
    """One experiment file, resolved. ``variant`` is set by the expansion of an ablation."""

    name: str = ""  # default: the file name without .yaml
    description: str = ""
    job_type: Annotated[str, OneOf("train", "teacher", "finetune", "eval")] = "train"  # W&B job_type
    plugins: List[str] = field(default_factory=list)
    seed: Annotated[int, Range(ge=0, lt=2**32, hint="numpy and the samplers take seeds below 2**32")] = 0
    # Run every variant this many times, run i with seed + i, in <variant run dir>/seed<seed> (1: no seed dir)
    seeds: Annotated[int, Range(ge=1, hint="a number of runs per variant; 1 = one run, no seed dir")] = 1
    output_dir: str = "runs"  # run dir = <output_dir>/<name>[/<variant>][/seed<seed>]
    variant: str = ""
    model: Dict[str, Any] = _component("???")
    teacher: Optional[Dict[str, Any]] = None
    loss: Dict[str, Any] = _component("none")
    data: Dict[str, Any] = _component("cifar10_jpeg")
    aug: Dict[str, Any] = _component("deit")
    logger: Dict[str, Any] = _component("wandb")
    loader: LoaderCfg = field(default_factory=LoaderCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    finetune: FinetuneCfg = field(default_factory=FinetuneCfg)
    resources: ResourcesCfg = field(default_factory=ResourcesCfg)
    # A launcher backend's own options, one section each (marked, so research/config/keys.py counts them
    # as where a run runs, not what it trains)
    slurm: SlurmCfg = field(default_factory=SlurmCfg, metadata={"backend": True})
    ablation: AblationCfg = field(default_factory=AblationCfg)


#: The sections of launcher backends' own options (``slurm``).
BACKEND_SECTIONS = tuple(f.name for f in fields(ExperimentCfg) if f.metadata.get("backend"))
