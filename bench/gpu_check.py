"""One call that checks a GPU machine: the ``cuda`` tests, the train step at 224 (DeiT-Ti, -S, -B), the
CIFAR-10 teacher recipe and the student recipe for a fixed number of epochs, with the whole DeiT
recipe on device batches (``loader.batch_augment=true``) and per image; one JSON and one Markdown
summary in ``--out``, and ``throughput.csv``: the package's throughput table (what ``research expand``
prices runs with) with the measured step rates merged in. Started by ``bench/gpu_check.sh``, which first installs the carried wheels.

Each stage is a subprocess with its own time limit, inside an overall budget (``--budget-s``): a stage
that fails or runs out of time is recorded as such, with the tail of its output, and the next one runs.
``--dry-run`` runs the same stages on the CPU at tiny settings (seconds to minutes), for CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
#: The paper's three DeiTs at 224 and the batch per GPU each was measured at (issue 15's figures).
STEP_MODELS = [("deit_tiny_patch16_224", 256), ("deit_small_patch16_224", 256), ("deit_base_patch16_224", 128)]


@dataclass
class Stage:
    name: str
    command: list[str]
    limit_s: float
    status: str = "not run"  # passed | failed | timed out | not run (budget spent)
    wall_s: float = 0.0
    output_tail: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check", help="folder for summary.json, summary.md and the runs (default: %(default)s)")
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 JPEG archive (default: ../shared/data/...)")
    parser.add_argument("--student-epochs", type=int, default=5, help="epochs of the student recipe (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="overall time budget in seconds (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="the CPU at tiny settings: checks the check itself")
    args = parser.parse_args(argv)
    if args.student_epochs < 1 or args.budget_s <= 0:
        parser.error("--student-epochs must be >= 1 and --budget-s > 0")
    if not Path(args.archive).is_file():
        parser.error(f"--archive {args.archive}: no such file; give the CIFAR-10 JPEG archive (cifar10-jpeg.tar.xz)")
    return args


def stages(args: argparse.Namespace, out: Path) -> list[Stage]:
    """The stages, in order, with their commands and time limits (tiny CPU settings for a dry run)."""
    python, dry = sys.executable, args.dry_run
    runs = out / "runs"
    data = [f"data.archive={Path(args.archive).resolve()}", "logger.name=jsonl"]
    # Only the files that hold cuda tests are collected: the others import packages (wandb, ...) that
    # the GPU box need not have. On a CPU (the dry run) every cuda test skips, with its reason.
    tests = [python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={out / 'cuda_tests.xml'}"]
    tests += cuda_test_files()
    result = [Stage("cuda tests", tests, 90 if dry else 200)]
    for model, batch in [("deit_nano_patch4_32", 16)] if dry else STEP_MODELS:
        bench = [python, "bench/throughput.py", "--model", model, "--batch", str(batch), "--teacher", "none", "--skip-data",
                 "--precision", "bf16", "--out", str(out / f"step_{model}.json")]  # fmt: skip
        bench += ["--record-table", str(out / "throughput.csv")]
        bench += ["--device", "cpu", "--repeats", "2", "--matmul-size", "256"] if dry else ["--device", "cuda", "--repeats", "5", "--profile"]
        result.append(Stage(f"step {model}", bench, 60 if dry else 75))
    teacher = [python, "launchers/local.py", "experiments/teacher_cifar10.yaml", f"output_dir={runs}", *data]

    def student(output_dir: Path, *extra: str) -> list[str]:
        return [
            python, "launchers/local.py", "experiments/deit_micro_distilled_cifar10.yaml", f"output_dir={output_dir}", *data,
            "teacher.from_experiment=null", "teacher.name=airbench_cifar", f"teacher.checkpoint={runs / 'teacher_cifar10' / 'last.pt'}",
            f"train.epochs={1 if dry else args.student_epochs}", *extra,
        ]  # fmt: skip

    batched = student(out / "runs_batched", "loader.batch_augment=true", "loader.workers=0")
    per_image = student(runs, "loader.batch_augment=false")
    if dry:
        tiny = ["loader.limit_train=256", "loader.limit_val=128", "sched.warmup_epochs=0.2"]  # shorter than its 1 epoch
        teacher += [*tiny, "train.epochs=1", "loader.batch_size=64"]  # batch_augment: the images in memory
        batched += [*tiny, "loader.batch_size=32"]
        per_image += [*tiny, "data.in_memory=false", "loader.batch_size=32"]
    result += [
        Stage("teacher recipe", teacher, 150 if dry else 100),
        Stage("student recipe, batched", batched, 150 if dry else 90),  # the whole DeiT recipe on device batches
        Stage("student recipe, per image", per_image, 150 if dry else 90),  # PIL per image, as the recipe file has it
    ]
    return result


def cuda_test_files() -> list[str]:
    """The test files that mark tests ``cuda`` (relative to the repository)."""
    files = sorted(path for path in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in path.read_text(encoding="utf-8"))
    return [str(path.relative_to(ROOT)) for path in files]


def run_stage(stage: Stage, *, limit_s: float, env: dict[str, str]) -> None:
    print(f"== {stage.name} (at most {limit_s:.0f} s): {' '.join(stage.command)}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(stage.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
        stage.status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        stage.status = "timed out"
        output = _text(expired.stdout) + _text(expired.stderr)
    stage.wall_s = time.perf_counter() - started
    stage.output_tail = output[-3000:]
    print(f"   {stage.status} in {stage.wall_s:.0f} s", flush=True)


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def test_counts(junit: Path) -> dict[str, int]:
    """passed / failed / skipped of the cuda tests, from pytest's JUnit XML."""
    if not junit.exists():
        return {}
    head = junit.read_text()[:2000]
    found = {key: int(value) for key, value in re.findall(r'\b(tests|failures|errors|skipped)="(\d+)"', head)}
    total, failed = found.get("tests", 0), found.get("failures", 0) + found.get("errors", 0)
    return {"passed": total - failed - found.get("skipped", 0), "failed": failed, "skipped": found.get("skipped", 0)}


def step_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    bench = json.loads(path.read_text())
    (step,) = bench["steps"]
    keys = ("engine_img_s", "reference_img_s", "engine_over_reference", "reference_deit_img_s", "engine_over_reference_deit",
            "ceiling_gflop_s", "ceiling_fraction", "spec_peak_tflops", "mfu")  # fmt: skip
    return {
        "forward_gflop": bench["flops"]["student"] / 1e9,
        "flop_counts": bench["flop_counts"],
        **{key: step[key] for key in keys},
        "profile": step["profile"],
    }


def run_results(run_dir: Path) -> dict[str, Any]:
    """A recipe run's outcome from its run dir: status, epochs, accuracy, epoch times and rates."""
    summary_file, metrics_file = run_dir / "summary.json", run_dir / "metrics.jsonl"
    if not summary_file.exists():
        return {}
    summary = json.loads(summary_file.read_text())
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()] if metrics_file.exists() else []
    epochs = [m for m in metrics if "epoch_time_s" in m]
    evaluated = [m for m in epochs if "val/top1" in m]
    return {
        "status": summary["status"],
        "epochs": summary["epochs_done"],
        "wall_time_s": summary["wall_time_s"],
        "val_top1": evaluated[-1]["val/top1"] if evaluated else None,
        "val_top1_single_view": evaluated[-1].get("val/top1_single_view") if evaluated else None,
        "epoch_time_s": [round(m["epoch_time_s"], 3) for m in epochs],
        "train_img_s": [round(m["train/epoch_images_per_s"]) for m in epochs if "train/epoch_images_per_s" in m],
        "curve": [(m["epoch"], m["val/top1"]) for m in evaluated],
    }


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["cpu_cores"] = os.cpu_count()
    from research.launch.provenance import git_info  # "unknown" where the copy has no git (a GPU box)

    info["commit"] = str(git_info()["commit"])[:12]
    return info


def markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    lines = [
        f"GPU check of {summary['date']} ({'dry run on the CPU' if summary['dry_run'] else m['gpu']}), commit {m['commit']}, "
        f"torch {m['torch']} (CUDA {m['cuda']}), {m['cpu_cores']} CPU cores; `{summary['command']}`",
        "",
        "| stage | status | wall s |",
        "|---|---|---|",
        *(f"| {s['name']} | {s['status']} | {s['wall_s']:.0f} |" for s in summary["stages"]),
    ]
    tests = summary.get("cuda_tests") or {}
    if tests:
        lines += ["", f"`cuda` tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped"]
    steps = summary.get("steps") or {}
    if steps:
        lines += [
            "",
            "| model (bf16) | GFLOP fwd | engine img/s | eng/ref | eng/deit way | of matmul ceiling | MFU (spec) |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, s in steps.items():
            if not s:
                lines.append(f"| {model} | - | not measured | | | | |")
                continue
            deit = f"{s['engine_over_reference_deit']:.2f}x" if s["engine_over_reference_deit"] else "-"
            mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "- (no data-sheet peak)"
            lines.append(
                f"| {model} | {s['forward_gflop']:.2f} | {s['engine_img_s']:.0f} | {s['engine_over_reference']:.2f}x | {deit} "
                f"| {100 * s['ceiling_fraction']:.1f}% | {mfu} |"
            )
    for name in ("teacher", "student", "student_per_image"):
        r = summary.get(name) or {}
        if r:
            epoch_s = sorted(r["epoch_time_s"])[len(r["epoch_time_s"]) // 2] if r["epoch_time_s"] else None
            rate = sorted(r["train_img_s"])[len(r["train_img_s"]) // 2] if r["train_img_s"] else None
            lines += [
                "",
                f"{name.replace('_', ' ')} recipe{' (batched)' if name == 'student' else ''}: {r['status']}, {r['epochs']} epochs, val top-1 {r['val_top1']} "
                f"(single view {r['val_top1_single_view']}), training {r['wall_time_s']:.1f} s, "
                f"median epoch {epoch_s} s, {rate} img/s",
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RESEARCH_CIFAR_ARCHIVE": str(Path(args.archive).resolve()), "PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a GPU machine
    started = time.perf_counter()
    table = out / "throughput.csv"  # the package's table, with this machine's step rates merged in
    shutil.copyfile(ROOT / "research" / "launch" / "throughput.csv", table)
    plan = stages(args, out)
    for stage in plan:
        left = args.budget_s - (time.perf_counter() - started)
        if left < 10:
            stage.status = "not run (budget spent)"
            continue
        run_stage(stage, limit_s=min(stage.limit_s, left), env=env)
    steps = {model: step_results(out / f"step_{model}.json") for model, _ in ([("deit_nano_patch4_32", 16)] if args.dry_run else STEP_MODELS)}
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bash bench/gpu_check.sh " + " ".join(sys.argv[1:]),
        "dry_run": args.dry_run,
        "machine": machine(),
        "wall_time_s": time.perf_counter() - started,
        "stages": [asdict(stage) for stage in plan],
        "cuda_tests": test_counts(out / "cuda_tests.xml"),
        "steps": steps,
        "teacher": run_results(out / "runs" / "teacher_cifar10"),
        "student": run_results(out / "runs_batched" / "deit_micro_distilled_cifar10"),
        "student_per_image": run_results(out / "runs" / "deit_micro_distilled_cifar10"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"written: {out / 'summary.json'}, {out / 'summary.md'}, {table} ({summary['wall_time_s']:.0f} s)")
    print(f"to ship the measured step rates: cp {table} research/launch/throughput.csv")
    return 0 if all(stage.status == "passed" for stage in plan) else 1


if __name__ == "__main__":
    sys.exit(main())
