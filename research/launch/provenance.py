"""What ran: the git commit of the code (and whether it had uncommitted changes) and package versions.

A SLURM job runs from a code snapshot without ``.git``: the launcher records the commit at submission
in ``RESEARCH_GIT_COMMIT`` / ``RESEARCH_GIT_DIRTY``, which the job's environment inherits.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def git_info(repo: Path = _REPO) -> dict[str, object]:
    if "RESEARCH_GIT_COMMIT" in os.environ:
        return {"commit": os.environ["RESEARCH_GIT_COMMIT"], "dirty": os.environ.get("RESEARCH_GIT_DIRTY") == "1"}
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def git_env() -> dict[str, str]:
    """Environment variables that carry :func:`git_info` into a job running from a snapshot."""
    info = git_info()
    return {"RESEARCH_GIT_COMMIT": str(info["commit"]), "RESEARCH_GIT_DIRTY": "1" if info["dirty"] else "0"}


def versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "torchvision", "timm", "wandb", "submitit", "omegaconf", "pillow"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout.strip()
