"""A teacher's identity is its weights: the same weights saved again (another wall time beside them)
are the same teacher; one changed number is another."""

from __future__ import annotations

from pathlib import Path

import torch

from research.teachers.checkpoint import teacher_digest


def test_the_digest_follows_the_weights_not_the_file(tmp_path: Path) -> None:
    weights = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.zeros(10, dtype=torch.bfloat16)}
    torch.save({"model": weights, "wall_time_s": 1.0}, tmp_path / "a.pt")
    torch.save({"model": weights, "wall_time_s": 2.0}, tmp_path / "b.pt")
    changed = {**weights, "fc.bias": weights["fc.bias"].clone().index_fill_(0, torch.tensor([3]), 1.0)}
    torch.save({"model": changed, "wall_time_s": 1.0}, tmp_path / "c.pt")
    a, b, c = (teacher_digest(str(tmp_path / name)) for name in ("a.pt", "b.pt", "c.pt"))
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert a == b and a != c and len(a) == 64
