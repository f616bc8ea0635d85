"""What ``bench/throughput.py`` measures: one field per command-line option."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Settings:
    """What to measure; one field per command-line option."""

    model: str = "deit_micro_distilled_patch4_32"
    teacher: str = "resnet18_cifar"  # "none": no distillation measurement
    batch: int = 128
    precision: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    repeats: int = 9  # interleaved timing rounds per measurement; medians are reported
    warmup: int = 1  # untimed steps of each kind before the rounds
    steps: int = 2  # optimizer steps per timed block (short blocks: neighbours' bursts hit fewer pairs)
    matmul_size: int = 0  # 0: 2048 on a CPU, 8192 on a GPU
    data: str = "auto"  # cifar10_jpeg | synthetic | auto (cifar10_jpeg at 32 px, synthetic above)
    archive: str = "../shared/data/cifar10-jpeg.tar.xz"
    data_images: int = 600  # images per timed block of the augmentation pipeline
    loader_batches: int = 6  # timed batches per DataLoader measurement
    skip_data: bool = False  # leave out the per-image pipeline measurement
    profile: bool = False  # also profile the engine step: where the time goes, by aten op
    epoch: bool = False
    epoch_images: int = 5000
    epoch_precision: str = "auto"  # auto: the precision of experiments/base/cifar10.yaml
    # DataLoader workers of each side's epoch. 0 is the fastest setting for both on 2 cores (the
    # engine's recipe, base/cifar10.yaml, sets it; the reference's epoch measured 36.3 / 39.3 / 40.1 s
    # at 0 / 1 / 2 workers, docs/PERFORMANCE.md): a worker stalls the step's two threads.
    epoch_workers: int = 0
    epoch_reference_workers: int = 0
    epoch_fused_attention: bool = False  # also time the engine's epoch with train.fused_attention=true
    epoch_rounds: int = 1  # engine and reference epochs, alternating which goes first; ratios are medians
    compile: bool = False  # also time the engine step with train.compile (the compiled step, fused attention as eager)
    threads: int = 2  # torch threads on a CPU (the machine's cores); DataLoader workers use one each
    out: str | None = None
    markdown: str | None = None
    record_table: str | None = None  # merge the step rates into this throughput table (research/launch/cost.py)
    device_name: str = ""  # the table's device name; default: the GPU's model ("h200"), or "cpu"
    tiny: bool = False

    def shrink(self) -> None:
        """Small settings for a CI smoke run: a nano DeiT, a narrow teacher, a few steps and images."""
        self.model, self.teacher, self.batch = "deit_nano_distilled_patch4_32", "resnet10_cifar", 16
        self.repeats, self.warmup, self.steps = 2, 1, 2
        self.matmul_size, self.data, self.data_images, self.loader_batches = 256, "synthetic", 32, 2
        self.epoch_images = 64

    def table_device_name(self) -> str:
        """How the throughput table names this device: ``--device-name``, else the GPU's model (``h200``)."""
        if self.device_name:
            return self.device_name
        device = self.torch_device()
        return torch.cuda.get_device_name(device).split()[-1].lower() if device.type == "cuda" else "cpu"

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def parse_args(argv: Sequence[str] | None = None, *, description: str = "") -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=defaults.model, help="MODELS name of the student (default: %(default)s)")
    parser.add_argument("--teacher", default=defaults.teacher, help="TEACHERS name, or 'none' (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument(
        "--precision", nargs="+", choices=["fp32", "bf16", "fp16"], default=defaults.precision,
        help="autocast precisions to measure; fp16 (with a GradScaler) needs a GPU (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=defaults.device, help="auto (a GPU when torch sees one), cpu, cuda or cuda:N (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed blocks per measurement (medians)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps before timing")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="steps per timed block")
    parser.add_argument("--matmul-size", type=int, default=defaults.matmul_size, help="0: 2048 on a CPU, 8192 on a GPU")
    parser.add_argument("--data", choices=["auto", "cifar10_jpeg", "synthetic"], default=defaults.data)
    parser.add_argument("--archive", default=defaults.archive, help="CIFAR-10 JPEG archive (data.archive)")
    parser.add_argument("--data-images", type=int, default=defaults.data_images)
    parser.add_argument("--loader-batches", type=int, default=defaults.loader_batches)
    parser.add_argument("--skip-data", action="store_true", help="leave out the per-image augmentation pipeline")
    parser.add_argument("--profile", action="store_true", help="also profile the engine step by op (torch.profiler)")
    parser.add_argument("--epoch", action="store_true", help="also time one CIFAR epoch end to end, engine vs reference")
    parser.add_argument("--epoch-images", type=int, default=defaults.epoch_images, help="training images of that epoch")
    parser.add_argument("--epoch-precision", choices=["auto", "fp32", "bf16", "fp16"], default=defaults.epoch_precision)
    parser.add_argument("--epoch-workers", type=int, default=defaults.epoch_workers, help="the engine epoch's DataLoader workers")
    parser.add_argument(
        "--epoch-reference-workers", type=int, default=defaults.epoch_reference_workers,
        help="the reference epoch's DataLoader workers (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--epoch-rounds", type=int, default=defaults.epoch_rounds,
        help="rounds of (engine epoch, reference epoch), alternating which goes first; ratios are per-round medians",
    )  # fmt: skip
    parser.add_argument(
        "--epoch-fused-attention", action="store_true",
        help="also time the engine's epoch with train.fused_attention=true (the recipe runs it non-fused)",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="also time the engine step with train.compile (compiles first)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads on a CPU (default: %(default)s)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="write the tables as Markdown here")
    parser.add_argument(
        "--record-table", default=None,
        help="merge the engine's step rates into this throughput table (what research expand / slurm.py --dry-run price runs with)",
    )  # fmt: skip
    parser.add_argument("--device-name", default="", help="the device's name in that table (default: the GPU's model, e.g. h200; cpu)")
    parser.add_argument(
        "--tiny", action="store_true", help="CI smoke settings (seconds); replaces model, teacher, batch, rounds and sizes"
    )
    args = parser.parse_args(argv)
    settings = Settings(**{key.replace("-", "_"): value for key, value in vars(args).items()})
    if settings.tiny:
        settings.shrink()
    for key in ("batch", "repeats", "steps", "data_images", "loader_batches", "epoch_images", "epoch_rounds", "threads"):
        if getattr(settings, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    for key in ("epoch_workers", "epoch_reference_workers", "matmul_size", "warmup"):
        if getattr(settings, key) < 0:
            parser.error(f"--{key.replace('_', '-')} must be >= 0")
    if settings.batch % 2:
        parser.error(f"--batch {settings.batch}: Mixup/CutMix pair images within a batch; give an even batch")
    try:
        device = settings.torch_device()
    except RuntimeError as error:
        parser.error(f"--device {settings.device}: {error}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {settings.device}: give auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {settings.device}: torch sees no GPU here (torch.cuda.is_available() is False); use --device cpu")
    if device.type == "cpu" and "fp16" in settings.precision + [settings.epoch_precision]:
        parser.error("--precision fp16 needs a GPU (the engine refuses fp16 on a CPU); use fp32 or bf16")
    if settings.matmul_size == 0:
        settings.matmul_size = 8192 if device.type == "cuda" else 2048
    return settings
