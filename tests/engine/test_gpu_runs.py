"""Whole runs on a GPU (marker ``cuda``): the quickstart end to end, ``research eval`` of its
checkpoint, and DDP at world size 1 over NCCL; the same DDP path over gloo runs on every machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from research.engine.run_dir import read_metrics

ROOT = Path(__file__).resolve().parents[2]
# bench/gpu_check.sh names the archive where ../shared does not exist (a GPU box)
ARCHIVE = os.environ.get("RESEARCH_CIFAR_ARCHIVE", str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"))


def _run(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.mark.cuda
@pytest.mark.slow
def test_quickstart_end_to_end_then_research_eval_on_the_gpu(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    overrides = [f"output_dir={runs}", f"data.archive={ARCHIVE}", "logger.name=jsonl"]
    trained = _run(sys.executable, "launchers/local.py", "experiments/quickstart.yaml", *overrides)
    assert "on cuda" in trained.stderr  # the run's start line names its device
    student = runs / "quickstart"
    assert json.loads((student / "summary.json").read_text())["status"] == "done"
    epochs = [m for m in read_metrics(student) if "val/top1" in m]
    assert [m["epoch"] for m in epochs] == [1, 2] and all(m["val/top1"] > 10 for m in epochs)  # above chance

    evaluated = _run(
        sys.executable, "-m", "research.cli", "eval", "experiments/quickstart.yaml", f"checkpoint={student / 'last.pt'}", *overrides
    )
    results = json.loads(evaluated.stdout)
    assert results["epoch"] == 2
    assert results["val/top1"] == pytest.approx(epochs[-1]["val/top1"], abs=0.5)  # the same weights, the same val set


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DDP_SCRIPT = """
import sys
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import research
from research.config import load_run
from research.launch.dist import init_distributed, shutdown_distributed
from research.launch.train import train

seen = {}
def check(loop):
    seen["ddp"] = isinstance(loop.state.model, DistributedDataParallel)
    seen["backend"] = dist.get_backend()
    seen["world"] = dist.get_world_size()
    seen["device"] = loop.device.type
env = init_distributed()
try:
    summary = train(load_run(sys.argv[1]), env=env, on_loop=check)
finally:
    shutdown_distributed()
print(seen["ddp"], seen["backend"], seen["world"], seen["device"], summary["status"])
"""


@pytest.mark.parametrize(
    "backend",
    [pytest.param("gloo", marks=pytest.mark.slow), pytest.param("nccl", marks=[pytest.mark.cuda, pytest.mark.slow])],
)
def test_a_one_process_launch_runs_ddp(backend: str, experiment, tmp_path: Path) -> None:
    """With the environment torchrun or submitit sets for one process, the run joins a process group of
    one (NCCL on a GPU, gloo on a CPU) and trains through DDP, as every multi-GPU run does."""
    path = experiment(model={"name": "deit_nano_distilled_patch4_32"}, train={"epochs": 1, "progress": False})
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    if backend == "gloo":
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = _run(sys.executable, "-c", DDP_SCRIPT, str(path), env=env)
    device = "cuda" if backend == "nccl" else "cpu"
    assert done.stdout.split()[-5:] == ["True", backend, "1", device, "done"]
