"""Kernel launches per training step, by phase, on any device (issue 26).

Counted on the CPU with a ``TorchDispatchMode``: every ATen op that reaches a backend is a kernel a GPU
would launch, except the ops that only make a new view of a tensor or allocate memory
(``func.is_view``: ``view``, ``t``, ``expand``, ``slice``, ``select``, ``as_strided``, ``detach``,
...; and ``_unsafe_view``, ``empty*``, ``lift_fresh``, ``set_``, and ``scalar_tensor``, which wraps a
Python number as a host tensor). A CPU op and its CUDA twin are one launch each; composite ops are
counted as what they decompose into, as a GPU runs them; a multi-tensor (``_foreach_*``, fused) op is one.

The step is the engine's own (``research.engine.fit.train_step`` on the ``Loop`` that
``research.launch.train.train`` builds), for an experiment (default: the GPU student recipe) on
synthetic images with a randomly initialised teacher. Phases:

- ``augmentation``: the batch's share of the epoch's draws (slices: none), its per-pixel noise and its
  transform (``loader.batch_augment``), one batch of the epoch; the epoch's draws, made once when the
  epoch starts, are counted apart (``epoch draws``: the crops on the host, the ops' on the device);
- ``mixup``: timm's Mixup / CutMix in the step;
- ``teacher``, ``student forward``: the modules' forwards (hooks);
- ``backward``: ops the autograd engine runs;
- ``optimizer``: the optimizer's step (hooks);
- ``other``: the rest of the step (loss, seeding, scaler, scheduler).

It counts the second step (the first makes the optimizer's state and the op tables). With
``--compiled`` it also reports ``torch._dynamo.explain`` of the augmentation's transform: its graphs
and graph breaks (the transform is what a compiled step would trace); ``--inductor`` compiles it
and counts the kernels inductor generates.

    python bench/launches.py                       # batch 512 and 64, GPU student recipe
    python bench/launches.py --batch 8 --json out.json --compiled
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed.loops import loop_of, random_teacher_checkpoint  # noqa: E402

from research.config import load_run  # noqa: E402
from research.config.sources import load_layers  # noqa: E402
from research.data.batch_ops import whole_batches  # noqa: E402
from research.engine.fit import Loop, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "experiments" / "deit_tiny_distilled_cifar10_gpu.yaml"
PHASES = ("augmentation", "mixup", "teacher", "student forward", "backward", "optimizer", "other")
_NO_KERNEL = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "set_", "scalar_tensor",
    "_unsafe_view",  # a view of a fresh tensor (reshape's second half); its schema does not say so
}  # fmt: skip


def launches(func: Any) -> bool:
    """Whether ATen op ``func`` (an OpOverload) would launch a kernel on a GPU."""
    return not func.is_view and func.overloadpacket.__name__ not in _NO_KERNEL


class LaunchCounter(TorchDispatchMode):
    """Counts kernel-launching ATen ops by phase: ``phase`` (a stack) names where the step is; ops the
    autograd engine runs count as ``backward``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.ops: dict[str, Counter[str]] = {phase: Counter() for phase in PHASES}
        self.phase = ["other"]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if launches(func):
            phase = "backward" if torch._C._current_autograd_node() is not None else self.phase[-1]
            self.counts[phase] += 1
            self.ops[phase][str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def within(self, phase: str) -> Iterator[None]:
        self.phase.append(phase)
        try:
            yield
        finally:
            self.phase.pop()

    def hook(self, module: torch.nn.Module, phase: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.phase.append(phase))
        module.register_forward_hook(lambda *_: self.phase.pop() and None)  # a hook's result would replace the output


def experiment(path: Path, batch: int, workdir: Path, optimizer: str) -> dict[str, Any]:
    """``path`` resolved, on synthetic CIFAR-sized images, with a random teacher of its architecture
    and ``optim.implementation=optimizer`` (``recipe``: the recipe's own)."""
    config: dict[str, Any] = OmegaConf.to_container(load_layers(path).config)  # type: ignore[assignment]
    config.update(
        name=f"launches_{batch}", output_dir=str(workdir / "runs"), logger={"name": "none"},
        data={"name": "synthetic", "size": 2 * batch, "num_classes": 10},
    )  # fmt: skip
    config.pop("slurm", None)
    config["loader"] = {**config.get("loader", {}), "batch_size": batch}
    config["train"] = {**config.get("train", {}), "epochs": 1, "progress": False}
    config["sched"] = {**config.get("sched", {}), "warmup_epochs": 0}  # one epoch: a longer warm-up is refused
    if optimizer != "recipe":
        config["optim"] = {**config.get("optim", {}), "implementation": optimizer}
    teacher = config.get("teacher")
    if teacher:  # the linked teacher run's network, with random weights
        name = teacher.get("name") or load_run(path).cfg.teacher["name"]
        checkpoint = random_teacher_checkpoint(name, workdir / "teacher.pt")
        config["teacher"] = {k: v for k, v in teacher.items() if k != "from_experiment"} | {"name": name, "checkpoint": checkpoint}
    return config


def build(path: Path, batch: int, workdir: Path, optimizer: str) -> Loop:
    file = workdir / f"launches_{batch}.yaml"
    file.write_text(yaml.safe_dump(experiment(path, batch, workdir, optimizer), sort_keys=False))
    return loop_of(load_run(file), torch.device("cpu"))


def count_step(loop: Loop) -> tuple[LaunchCounter, LaunchCounter]:
    """Launches of the loop's second training step, by phase (the first one warms up), and of the
    epoch's draws (made once, when its batches are made)."""
    counter, epoch = LaunchCounter(), LaunchCounter()
    counter.hook(loop.state.model, "student forward")
    teacher = getattr(loop.objective, "teacher", None)
    if isinstance(teacher, torch.nn.Module):
        counter.hook(teacher, "teacher")
    optimizer = loop.state.optimizer
    optimizer.register_step_pre_hook(lambda *_: counter.phase.append("optimizer"))
    optimizer.register_step_post_hook(lambda *_: counter.phase.pop() and None)
    mix = loop.data.mix
    if mix is not None:
        loop.data.mix = _CountedMix(counter, mix)  # type: ignore[assignment]
    loop.data.train_batches(0, 0)  # the op tables and constants, made once
    with epoch:
        batches = iter(loop.data.train_batches(0, 0))
    with whole_batches():  # as on a device: the CPU's eager shortcut runs ops on subsets
        train_step(loop, *next(batches))  # makes the optimizer's state, the op tables and constants
        with counter:
            with counter.within("augmentation"):
                images, targets = next(batches)
            train_step(loop, images, targets)
    return counter, epoch


def _within(counter: LaunchCounter, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        with counter.within(phase):
            return fn(*args)

    return run


class _CountedMix:
    """The loop's mixup/CutMix, its host draw and its tensor apply both counted as the mixup phase."""

    def __init__(self, counter: LaunchCounter, inner: Any) -> None:
        self.counter, self.inner = counter, inner

    def draw(self, *args: Any) -> Any:
        return _within(self.counter, "mixup", self.inner.draw)(*args)

    def apply(self, *args: Any) -> Any:
        return _within(self.counter, "mixup", self.inner.apply)(*args)


def compiled_augmentation(loop: Loop, inductor: bool) -> dict[str, int]:
    """``torch._dynamo.explain`` of the augmentation's transform on one batch: graphs and breaks; with
    ``inductor``, also the kernels inductor generates for it (minutes of compiling on a small CPU)."""
    pixels, draws, _ = next(loop.data.train_batches(0, 0).drawn())  # type: ignore[attr-defined]
    transform = loop.data.train_batches(0, 0).transform  # type: ignore[attr-defined]
    explained = torch._dynamo.explain(transform.transform)(pixels, draws)
    found = {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count}
    if inductor:
        from torch._inductor import metrics

        metrics.reset()
        torch.compile(transform.transform, fullgraph=True, dynamic=False)(pixels, draws)
        found["inductor_kernels"] = metrics.generated_kernel_count
    return found


def measure(path: Path, batch: int, compiled: bool, optimizer: str = "fused", inductor: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        loop = build(path, batch, Path(tmp), optimizer)
        counter, epoch = count_step(loop)
        row: dict[str, Any] = {"batch": batch, **{phase: counter.counts[phase] for phase in PHASES}}
        row["total"] = sum(counter.counts.values())
        row["epoch_draws"] = sum(epoch.counts.values())
        row["top_augmentation_ops"] = dict(counter.ops["augmentation"].most_common(8))
        if compiled or inductor:
            row["compiled_augmentation"] = compiled_augmentation(loop, inductor)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| batch | " + " | ".join(PHASES) + " | total |"
    lines = [head, "|" + " ---: |" * (len(PHASES) + 2)]
    lines += ["| " + " | ".join(str(row[k]) for k in ("batch", *PHASES, "total")) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, default=RECIPE, help="the recipe (default: the GPU student's)")
    parser.add_argument("--batch", type=int, nargs="+", default=[512, 64], help="batch sizes to count")
    parser.add_argument("--compiled", action="store_true", help="also torch._dynamo.explain the augmentation")
    parser.add_argument("--inductor", action="store_true", help="also count inductor's kernels for the augmentation (slow)")
    parser.add_argument(
        "--optimizer", default="fused", choices=("fused", "foreach", "recipe"),
        help="optim.implementation (default fused, the CUDA default of issue 26; foreach's per-parameter step "
        "counters are host tensors on a GPU, but count here, where every tensor is on the host)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # counts do not depend on threads; one keeps the machine free
    rows = [measure(args.experiment.resolve(), batch, args.compiled, args.optimizer, args.inductor) for batch in args.batch]
    print(markdown(rows))
    for row in rows:
        print(f"batch {row['batch']}: the epoch's draws, once per epoch: {row['epoch_draws']} launches")
        if "compiled_augmentation" in row:
            print(f"batch {row['batch']}: augmentation transform under torch._dynamo: {row['compiled_augmentation']}")
    record = {
        "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "experiment": str(args.experiment), "optimizer": args.optimizer, "rows": rows,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
