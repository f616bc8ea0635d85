"""Test helper: read an offline W&B run file (``run-<id>.wandb``) back into Python.

wandb ships no public reader for these files. The layout, checked against files written by wandb 0.31:

* a 7-byte header: ``b":W&B"``, the 2-byte little-endian ident ``0xBEE1``, a version byte ``0``;
* then a LevelDB-style log in 32 KiB blocks. Each chunk is a 7-byte chunk header and the payload.
  The chunk header: a little-endian uint32 CRC-32 of the type byte followed by the payload, as
  ``zlib.crc32`` computes it (not LevelDB's masked CRC-32C); the payload length, a little-endian
  uint16; the type, 1 full, 2 first, 3 middle, 4 last. A block with fewer than 7 bytes left is
  padded with zeros and the next chunk starts at the next block. The file header counts as part of
  the first block;
* the payloads of a FULL chunk, or of a FIRST..MIDDLE*..LAST sequence, are one serialized
  ``wandb.proto.wandb_internal_pb2.Record``.

The file is written by the ``wandb-core`` service process, and ``run.finish()`` can return before the
service has written it (seen here: a 7-byte file right after ``finish``). :func:`read_runs` therefore
waits until each run's ``exit`` record is on disk.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a W&B run file or is corrupt."""


def iter_chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(type, payload)`` of every chunk, checksums verified."""
    if not data.startswith(HEADER):
        raise WandbFileError(f"not a W&B run file: header {data[:7]!r}, expected {HEADER!r}")
    pos = len(HEADER)
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # zero padding at the end of a block
            pos += left_in_block
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        payload = data[start : start + length]
        if kind == 0 and length == 0 and crc == 0:  # preallocated zeros: end of the written log
            return
        if len(payload) < length:
            raise WandbFileError(f"chunk at byte {pos} is truncated ({len(payload)} of {length} bytes)")
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise WandbFileError(f"checksum mismatch in chunk at byte {pos}")
        yield kind, payload
        pos = start + length


def iter_records(path: str | Path) -> Iterator[pb.Record]:
    """Every ``Record`` of the run file at ``path``, in write order."""
    pending: list[bytes] | None = None
    for kind, payload in iter_chunks(Path(path).read_bytes()):
        if kind == FULL:
            yield _parse(payload)
        elif kind == FIRST:
            pending = [payload]
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise WandbFileError(f"chunk type {kind} without a FIRST chunk")
            pending.append(payload)
            if kind == LAST:
                yield _parse(b"".join(pending))
                pending = None
        else:
            raise WandbFileError(f"unknown chunk type {kind}")


def _parse(payload: bytes) -> pb.Record:
    record = pb.Record()
    record.ParseFromString(payload)
    return record


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What a run file says about its run."""

    run_id: str = ""
    started: float = 0.0  # the run's start time, seconds since the epoch
    project: str = ""
    entity: str = ""
    group: str = ""
    name: str = ""
    job_type: str = ""
    notes: str = ""
    tags: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per log() call
    summary: dict[str, Any] = field(default_factory=dict)
    step_metrics: dict[str, str] = field(default_factory=dict)  # metric name or glob -> its step metric
    exited: bool = False
    record_types: list[str] = field(default_factory=list)
    chunk_types: set[int] = field(default_factory=set)

    def metric(self, key: str) -> list[tuple[Any, Any]]:
        """``(step metric value, value)`` pairs of a metric, in log order."""
        step_key = self.step_metric_for(key)
        return [(row.get(step_key), row[key]) for row in self.history if key in row]

    def step_metric_for(self, key: str) -> str:
        if key in self.step_metrics:
            return self.step_metrics[key]
        for pattern, step in self.step_metrics.items():
            if pattern.endswith("*") and key.startswith(pattern[:-1]):
                return step
        return "_step"


def read_run(path: str | Path) -> OfflineRun:
    """Parse the offline run file at ``path`` (``.../offline-run-*/run-<id>.wandb``)."""
    out = OfflineRun()
    out.chunk_types = {kind for kind, _ in iter_chunks(Path(path).read_bytes())}
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        out.record_types.append(kind or "")
        if kind == "run":
            run = record.run
            out.run_id, out.project, out.entity = run.run_id, run.project, run.entity
            out.group, out.name, out.job_type = run.run_group, run.display_name, run.job_type
            out.tags = tuple(run.tags)
            out.notes = run.notes
            out.started = run.start_time.seconds + run.start_time.nanos / 1e9
            for item in run.config.update:
                out.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out.config[_key(item)] = json.loads(item.value_json)
            for item in record.config.remove:
                out.config.pop(_key(item), None)
        elif kind == "history":
            out.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "metric":
            metric = record.metric
            if metric.step_metric:
                out.step_metrics[metric.name or metric.glob_name] = metric.step_metric
        elif kind == "exit":
            out.exited = True
    return out


def find_run_files(root: str | Path) -> list[Path]:
    """The run files under ``root``, in path order."""
    return sorted(Path(root).rglob("run-*.wandb"))


def read_runs(root: str | Path, *, count: int = 1, timeout: float = 30.0) -> list[OfflineRun]:
    """The ``count`` finished runs under ``root``, oldest first, waiting for wandb-core to write them.

    Raises:
        TimeoutError: after ``timeout`` seconds without ``count`` complete run files; says what was seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        runs = []
        for path in find_run_files(root):
            try:
                runs.append(read_run(path))
            except WandbFileError:  # caught mid-write
                pass
        finished = [run for run in runs if run.exited]
        if len(finished) == count == len(runs):
            return sorted(finished, key=lambda run: run.started)
        if len(runs) > count or time.monotonic() > deadline:
            raise TimeoutError(
                f"expected {count} finished W&B runs under {root}, found {len(runs)} run files "
                f"of which {len(finished)} finished"
            )
        time.sleep(0.05)
