"""One call that checks a fresh GPU machine and measures the goals of issue 26, in this order:

1. **preflight**: the versions this code needs (torch, timm >= 1.0.29, Pillow < 13, ...); what is
   missing and comes as a carried wheel (omegaconf + its antlr4 runtime, submitit + cloudpickle,
   wandb) is installed into a folder outside ``--out``; anything else stops the check at once, naming
   what to carry;
2. **teacher**: ``teacher_cifar10_gpu.yaml`` (airbench94 on CIFAR-10);
3. **student**: ``deit_tiny_distilled_cifar10_gpu.yaml`` at batch 512 with the full recipe and that
   teacher, for ``--student-epochs`` epochs: img/s end to end (the goal: 40,000 on one H100/H200);
4. **steps at 224**: the bf16 train step of DeiT-Ti/S/B (``bench/throughput.py``): img/s and MFU;
5. **cuda tests**: the ``cuda`` tests, issue 26's first, in the time left.

Each stage is a subprocess with its own time limit; the limits and the installation fit ``--budget-s``
(one 590-s call). At its limit a stage gets SIGINT (a run saves and stops; pytest writes its report),
then is killed. At most 8 files land at the top of ``--out``: summary.json, summary.md,
throughput.csv (the package's table with the measured step rates), cuda_tests.xml, one step profile
per model (step_<model>.json) and stages.log; runs, data and installed wheels go to ``--work``.

``--dry-run`` runs the same stages on the CPU at tiny settings (CI: tests/bench/test_gpu_check.py).
Stdlib only until the preflight has passed: it runs on a machine that lacks the project's packages.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
BUDGET_S = 575.0  # one 590-s device call, with room to start Python and copy the results back
INSTALL_RESERVE_S = 25.0  # pip installs a handful of local wheels
#: DeiT-Ti/S/B at 224 and the batch per GPU each is measured at (issue 15's figures).
STEP_MODELS = [("deit_tiny_patch16_224", 256), ("deit_small_patch16_224", 256), ("deit_base_patch16_224", 128)]
DRY_STEP_MODELS = [("deit_nano_patch4_32", 16)]
#: Test files whose cuda tests run first: issue 26's no-sync step, CUDA graphs, then the quickstart.
FIRST_TESTS = ["tests/engine/test_no_host_sync.py", "tests/engine/test_compile_step.py"]


@dataclass(frozen=True)
class Requirement:
    """A distribution this code needs: the range it works with, and the wheels that bring it."""

    name: str  # the distribution's name, as importlib.metadata knows it
    minimum: str = ""
    below: str = ""  # the first version that does not work
    why: str = ""
    wheels: tuple[str, ...] = ()  # wheel file prefixes (normalised names) that install it; () = preinstalled only
    optional: bool = False


REQUIREMENTS = [
    Requirement("torch", "2.5", why="torch.serialization.safe_globals (research/safe_load.py)"),
    Requirement("torchvision", "0.16"),
    Requirement("timm", "1.0.29", "2", why="timm.layers.get_device_dtype (research/models/deit.py)"),
    Requirement("pillow", "9", "13", why="Pillow 13 rejects timm's posterize at 0 bits (RandAugment m9)"),
    Requirement("pyyaml", "6"),
    Requirement("einops", "0.7"),
    Requirement("tqdm", "4.60"),
    Requirement("pytest", "7", why="the cuda tests: the machine's own, never carried (plugins would clash)"),
    # omegaconf 2.3 imports its parser's runtime (antlr4-python3-runtime 4.9, an sdist on PyPI: --fetch-wheels builds it)
    Requirement("omegaconf", "2.3", "3", wheels=("omegaconf", "antlr4_python3_runtime")),
    Requirement("submitit", "1.5", wheels=("submitit",)),  # its cloudpickle: the next line, if missing
    Requirement("cloudpickle", "1", wheels=("cloudpickle",)),
    Requirement("wandb", "0.17", why="only logger.name=wandb; the check logs to jsonl", wheels=("wandb",), optional=True),
]
CARRY = "bash bench/gpu_check.sh --fetch-wheels WHEELS (where PyPI is reachable), carry WHEELS, then --wheels WHEELS"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def problems(requirements: Sequence[Requirement] | None = None) -> dict[str, str]:
    """``{distribution: what is wrong}`` for each required one (default: :data:`REQUIREMENTS`) that is
    missing or out of range."""
    found = {}
    for req in REQUIREMENTS if requirements is None else requirements:
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            if not req.optional:
                found[req.name] = "not installed"
            continue
        low, high = _version_tuple(req.minimum), _version_tuple(req.below)
        if (low and _version_tuple(version) < low) or (high and _version_tuple(version) >= high):
            wanted = f">={req.minimum}" + (f",<{req.below}" if req.below else "")
            found[req.name] = f"{version} installed, {wanted} needed" + (f" ({req.why})" if req.why else "")
    return found


def install_missing(wheels: Path | None, site: Path) -> list[str]:
    """Install, from ``wheels``, the carried packages that are missing (into ``site``); returns the wheels."""
    missing = problems()
    prefixes = {
        prefix for req in REQUIREMENTS if req.name in missing and missing[req.name] == "not installed" for prefix in req.wheels
    }
    if not prefixes or wheels is None:
        return []
    files = sorted(path for path in wheels.glob("*.whl") if _normalised(path.name.split("-")[0]) in prefixes)
    for wheel in files:  # pure-Python wheels: unpacked, they are installed (no pip needed)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    if files:
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    return [path.name for path in files]


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def preflight(wheels: Path | None, site: Path) -> list[str]:
    """Install what the carried wheels bring, then raise SystemExit(2) naming each remaining problem."""
    installed = install_missing(wheels, site)
    left = problems() or import_problems(site)
    if left:
        preinstalled = {req.name for req in REQUIREMENTS if not req.wheels}
        wheels_of = {req.name: req.wheels for req in REQUIREMENTS}
        carried = {prefix for name in left if name not in preinstalled for prefix in wheels_of.get(name, (name,))}
        lines = [f"gpu_check: {name}: {problem}" for name, problem in sorted(left.items())]
        if carried:
            where = f"none in {wheels}" if wheels else "no --wheels given"
            lines.append(f"gpu_check: carry wheels of {', '.join(sorted(carried))} ({where}): {CARRY}")
        if set(left) & preinstalled:
            lines.append("gpu_check: torch, timm, Pillow, pytest & co. are not carried: use a machine that has them in range")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2)
    return installed


def import_problems(site: Path) -> dict[str, str]:
    """What fails to import of the project's own imports (e.g. omegaconf without its antlr4 runtime)."""
    path = os.pathsep.join([str(ROOT), str(site), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", "import omegaconf, submitit, timm, research.launch.train"],
        env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode == 0:
        return {}
    error = (done.stderr.strip().splitlines() or ["?"])[-1]
    missing = re.search(r"No module named '([\w.]+)'", error)
    return {missing[1].split(".")[0] if missing else "import": error}


@dataclass
class Stage:
    name: str
    command: list[str]
    limit_s: float
    status: str = "not run"  # passed | failed (exit N) | stopped at its limit | not run (budget spent)
    wall_s: float = 0.0
    output_tail: str = ""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check", help="the (at most 8) result files (default: %(default)s)")
    parser.add_argument("--work", default=None, help="runs, extracted data and installed wheels (default: a temporary folder)")
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 JPEG archive (default: ../shared/data/...)")
    parser.add_argument("--cache-dir", default=None, help="where the archive is extracted (data.cache_dir; default: in --work)")
    parser.add_argument("--wheels", default=None, help="carried wheels; the missing packages are installed from them")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="epochs of the teacher recipe (default: %(default)s)")
    parser.add_argument("--student-epochs", type=int, default=3, help="epochs of the student recipe (default: %(default)s)")
    parser.add_argument(
        "--budget-s", type=float, default=BUDGET_S, help="the whole check, installation included (default: %(default)s)"
    )
    parser.add_argument("--dry-run", action="store_true", help="the CPU at tiny settings: checks the check itself")
    args = parser.parse_args(argv)
    if args.student_epochs < 1 or args.teacher_epochs < 1:
        parser.error("--teacher-epochs and --student-epochs must be >= 1")
    if args.budget_s < INSTALL_RESERVE_S + 60:
        parser.error(f"--budget-s must leave at least 60 s after the {INSTALL_RESERVE_S:.0f} s kept for installing wheels")
    if not Path(args.archive).is_file():
        parser.error(f"--archive {args.archive}: no such file; give the CIFAR-10 JPEG archive (cifar10-jpeg.tar.xz)")
    if args.wheels and not Path(args.wheels).is_dir():
        parser.error(f"--wheels {args.wheels}: no such folder")
    return args


#: Each stage's share of the budget left after the installation reserve, in run order (GPU; the dry
#: run's stages take what they need of the same shares).
SHARES = {"teacher": 0.2, "student": 0.28, "steps": 0.3, "cuda tests": 0.22}


def limits(budget_s: float) -> dict[str, float]:
    """Each stage's time limit in seconds; they and the installation reserve add up to the budget."""
    left = budget_s - INSTALL_RESERVE_S
    return {name: share * left for name, share in SHARES.items()}


def stages(args: argparse.Namespace, work: Path, out: Path) -> list[Stage]:
    """The stages, in order, with their commands and time limits (tiny CPU settings for a dry run)."""
    python, dry, limit = sys.executable, args.dry_run, limits(args.budget_s)
    cache = Path(args.cache_dir).resolve() if args.cache_dir else work / "cache"
    data = [
        f"data.archive={Path(args.archive).resolve()}",
        f"data.cache_dir={cache}",
        "logger.name=jsonl",
        f"output_dir={work / 'runs'}",
    ]
    tiny = ["loader.limit_train=128", "loader.limit_val=64"] if dry else []
    teacher = [python, "launchers/local.py", "experiments/teacher_cifar10_gpu.yaml", *data, *tiny]
    teacher += [f"train.epochs={1 if dry else args.teacher_epochs}"]
    teacher += ["loader.batch_size=64", "sched.warmup_epochs=0.5"] if dry else []  # a decay after the prefixed warm-up
    student = [python, "launchers/local.py", "experiments/deit_tiny_distilled_cifar10_gpu.yaml", *data, *tiny]
    # the teacher the stage before trained, whatever its epochs (a linked run would compare its config)
    checkpoint = work / "runs" / "teacher_cifar10_gpu" / "last.pt"
    student += ["teacher.from_experiment=null", "teacher.name=airbench_cifar", f"teacher.checkpoint={checkpoint}"]
    student += [f"train.epochs={1 if dry else args.student_epochs}", "train.eval_every_epochs=1000"]  # the last epoch only
    # the recipe's 10-epoch warm-up is longer than these few epochs, which is refused: a speed check needs no warm-up
    student += ["sched.warmup_epochs=0.5"]
    # the GPU: the recipe's batch of 512; the CPU: a few steps, attention as the CPU recipes run it
    student += ["loader.batch_size=32", "train.fused_attention=false"] if dry else []
    result = [Stage("teacher recipe", teacher, limit["teacher"]), Stage("student recipe", student, limit["student"])]
    models = DRY_STEP_MODELS if dry else STEP_MODELS
    for model, batch in models:
        bench = [python, "bench/throughput.py", "--model", model, "--batch", str(batch), "--teacher", "none", "--skip-data",
                 "--precision", "bf16", "--out", str(out / f"step_{model}.json"), "--record-table", str(out / "throughput.csv")]  # fmt: skip
        bench += (
            ["--device", "cpu", "--repeats", "2", "--matmul-size", "256"]
            if dry
            else ["--device", "cuda", "--repeats", "3", "--profile"]
        )
        result.append(Stage(f"step {model}", bench, limit["steps"] / len(models)))
    tests = [python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={out / 'cuda_tests.xml'}"]
    result.append(Stage("cuda tests", [*tests, *cuda_test_files()], limit["cuda tests"]))
    return result


def cuda_test_files() -> list[str]:
    """The test files that mark tests ``cuda`` (relative to the repository), issue 26's first."""
    files = sorted(path for path in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in path.read_text(encoding="utf-8"))
    names = [str(path.relative_to(ROOT)) for path in files]
    return [name for name in FIRST_TESTS if name in names] + [name for name in names if name not in FIRST_TESTS]


def run_stage(stage: Stage, *, limit_s: float, env: dict[str, str], log: Any) -> None:
    """Run ``stage``; at ``limit_s`` send SIGINT (runs save, pytest reports), kill 20 s later."""
    print(f"== {stage.name} (at most {limit_s:.0f} s)", flush=True)
    log.write(f"\n== {stage.name} (at most {limit_s:.0f} s): {' '.join(stage.command)}\n")
    log.flush()
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(stage.command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            code = process.wait(timeout=limit_s)
            stage.status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            stage.status = "stopped at its limit"
        output.seek(0)
        text = output.read()
    stage.wall_s = time.perf_counter() - started
    stage.output_tail = text[-3000:]
    log.write(text[-20000:] + f"\n-- {stage.status} in {stage.wall_s:.0f} s\n")
    print(f"   {stage.status} in {stage.wall_s:.0f} s", flush=True)


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
    return {"forward_gflop": bench["flops"]["student"] / 1e9, **{key: step[key] for key in keys}}


def run_results(run_dir: Path) -> dict[str, Any]:
    """A recipe run's outcome: status, epochs, accuracy, epoch times, and img/s end to end (every
    image trained over the training time, evaluation and checkpoints included)."""
    import yaml  # preinstalled (preflight)

    summary_file, log_file = run_dir / "summary.json", run_dir / "log.jsonl"
    if not summary_file.exists():
        return {}
    summary = json.loads(summary_file.read_text())
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()] if log_file.exists() else []
    epochs = [r for r in records if "epoch_time_s" in r]
    evaluated = [r for r in epochs if "val/top1" in r]
    batch = yaml.safe_load((run_dir / "config.yaml").read_text())["loader"]["batch_size"]
    images = epochs[-1]["step"] * batch if epochs else 0
    return {
        "status": summary["status"],
        "epochs": summary["epochs_done"],
        "wall_time_s": summary["wall_time_s"],
        "img_s_end_to_end": images / summary["wall_time_s"] if summary["wall_time_s"] else None,
        "val_top1": evaluated[-1]["val/top1"] if evaluated else None,
        "epoch_time_s": [round(r["epoch_time_s"], 3) for r in epochs],
        "train_img_s": [round(r["train/epoch_images_per_s"]) for r in epochs if "train/epoch_images_per_s" in r],
    }


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["cpu_cores"] = os.cpu_count()
    info["versions"] = {req.name: _installed(req.name) for req in REQUIREMENTS}
    from research.launch.provenance import git_info  # "unknown" where the copy has no git (a GPU box)

    info["commit"] = str(git_info()["commit"])[:12]
    return info


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    lines = [
        f"GPU check of {summary['date']} ({'dry run on the CPU' if summary['dry_run'] else m['gpu']}), commit {m['commit']}, "
        f"torch {m['torch']} (CUDA {m['cuda']}), {m['cpu_cores']} CPU cores; `{summary['command']}`",
        "",
        "| stage | status | wall s | limit s |",
        "|---|---|---|---|",
        *(f"| {s['name']} | {s['status']} | {s['wall_s']:.0f} | {s['limit_s']:.0f} |" for s in summary["stages"]),
    ]
    for name in ("teacher", "student"):
        r = summary.get(name) or {}
        if r:
            rate = f"{r['img_s_end_to_end']:.0f}" if r["img_s_end_to_end"] else "-"
            lines += ["", f"{name} recipe: {r['status']}, {r['epochs']} epochs, val top-1 {r['val_top1']}, training "
                      f"{r['wall_time_s']:.1f} s, **{rate} img/s end to end**, epochs {r['epoch_time_s']} s"]  # fmt: skip
    steps = summary.get("steps") or {}
    if steps:
        lines += [
            "",
            "| model (bf16) | GFLOP fwd | engine img/s | eng/ref | of matmul ceiling | MFU (spec) |",
            "|---|---|---|---|---|---|",
        ]
        for model, s in steps.items():
            if not s:
                lines.append(f"| {model} | - | not measured | | | |")
                continue
            mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "- (no data-sheet peak)"
            lines.append(
                f"| {model} | {s['forward_gflop']:.2f} | {s['engine_img_s']:.0f} | {s['engine_over_reference']:.2f}x "
                f"| {100 * s['ceiling_fraction']:.1f}% | {mfu} |"
            )
    tests = summary.get("cuda_tests") or {}
    if tests:
        lines += ["", f"`cuda` tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    site = work / "site"
    installed = preflight(Path(args.wheels) if args.wheels else None, site)
    out.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(ROOT), *([str(site)] if installed else []), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), "PYTHONUNBUFFERED": "1"}
    env["RESEARCH_CIFAR_ARCHIVE"] = str(Path(args.archive).resolve())  # the cuda tests' data
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a GPU machine
    shutil.copyfile(ROOT / "research" / "launch" / "throughput.csv", out / "throughput.csv")  # the step rates merge in
    plan = stages(args, work, out)
    with open(out / "stages.log", "w") as log:
        log.write(f"installed from {args.wheels}: {', '.join(installed) or 'nothing'}\n")
        for stage in plan:
            left = args.budget_s - (time.perf_counter() - started)
            if left < 10:
                stage.status = "not run (budget spent)"
                continue
            run_stage(stage, limit_s=min(stage.limit_s, left), env=env, log=log)
    sys.path.insert(0, str(ROOT))
    models = DRY_STEP_MODELS if args.dry_run else STEP_MODELS
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bash bench/gpu_check.sh " + " ".join(sys.argv[1:] if argv is None else argv),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "installed": installed,
        "machine": machine(),
        "wall_time_s": time.perf_counter() - started,
        "stages": [asdict(stage) for stage in plan],
        "teacher": run_results(work / "runs" / "teacher_cifar10_gpu"),
        "student": run_results(work / "runs" / "deit_tiny_distilled_cifar10_gpu"),
        "steps": {model: step_results(out / f"step_{model}.json") for model, _ in models},
        "cuda_tests": test_counts(out / "cuda_tests.xml"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"written to {out}: {', '.join(sorted(p.name for p in out.iterdir()))} ({summary['wall_time_s']:.0f} s)")
    print(f"to ship the measured step rates: cp {out / 'throughput.csv'} research/launch/throughput.csv")
    return 0 if all(stage.status == "passed" for stage in plan) else 1


if __name__ == "__main__":
    sys.exit(main())
