"""What an experiment will cost before it is submitted: GPU-hours and wall time per run and per grid.

The figures come from two throughput tables, read in this order: the user's (rows measured here by
``research throughput``: ``~/.cache/research/throughput.csv``, or the file that ``--throughput-table``
or ``$RESEARCH_THROUGHPUT_TABLE`` names), then the one shipped with the package (``throughput.csv``
beside this module, which no command writes: a measurement would leave the code's git tree dirty).
One row per measured (model, image size, per-device batch, precision, device, teacher), with the
training and evaluation rates in images/s of one device and where each figure comes from; the user's
row wins over a shipped row of the same key. A run's estimate is

    train seconds = epochs x train images / (devices x train_img_s)
    eval seconds  = evaluations x val images x views / (devices x eval_img_s)

with ``views`` the test-time augmentation's forward passes per image (2 with ``train.eval_hflip``,
x3 with ``train.eval_translate``; x2 again with ``train.ema``), and GPU-hours = devices x wall time.
Scaling over devices is taken as linear (no communication cost), and start-up, checkpoints and the
teacher's one check of the val set are not counted. A run whose key has no row is priced from the
nearest row on its device, scaled by FLOPs per image (:func:`nearest_row`) and marked ``~``; on a
device without rows it is "unknown". Both come with the command that measures the run's own row
(``research throughput``). A row without an eval rate makes the estimate a lower bound (``>=``).

The target device is ``resources.gpu_type`` (which also asks the cluster for that GPU type), or the
``--device`` of ``research expand`` and ``launchers/slurm.py --dry-run``; with neither, every device
in the table.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from research.config import ConfigError, ExperimentCfg, Run
from research.console import text_table
from research.files import write_atomic
from research.registry import DATASETS, MODELS

__all__ = [
    "COLUMNS",
    "SHIPPED_TABLE",
    "TABLE_ENV",
    "USER_TABLE",
    "Estimate",
    "Throughput",
    "dataset_sizes",
    "estimate_run",
    "estimate_runs",
    "format_estimates",
    "read_table",
    "read_tables",
    "record_throughput",
    "recording_table",
    "table_path",
]

SHIPPED_TABLE = Path(__file__).with_name("throughput.csv")  # read-only: rows measured for the package
USER_TABLE = Path("~/.cache/research/throughput.csv")  # where `research throughput` records, by default
TABLE_ENV = "RESEARCH_THROUGHPUT_TABLE"


@dataclass(frozen=True)
class Throughput:
    """One measurement: images/s of one device.

    Attributes:
        model: the ``model.name`` (the student's, for a distilled run).
        img_size: the input side in pixels.
        batch_size: images per device per step (``loader.batch_size``).
        precision: ``fp32``, ``bf16`` or ``fp16``.
        device: the device's name, as ``resources.gpu_type`` or ``--device`` spell it (``h200``; ``cpu-...``).
        teacher: the teacher whose forward pass the train rate includes (``teacher.name``), or ``""``.
        scope: ``step`` (the optimisation step on data already on the device: no data path) or
            ``epoch`` (whole training epochs, the data path included).
        train_img_s: training images/s.
        eval_img_s: evaluation images/s (one view, no gradient), or None when not measured.
        measured: when (a date) and with which code (a commit), free text.
        source: the command that measured it, or the document that reports it.
    """

    model: str
    img_size: int
    batch_size: int
    precision: str
    device: str
    teacher: str = ""
    scope: str = "step"
    train_img_s: float = 0.0
    eval_img_s: float | None = None
    measured: str = ""
    source: str = ""

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.model, self.img_size, self.batch_size, self.precision, self.device.lower(), self.teacher)

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any], where: str = "") -> Throughput:
        """A row from a CSV line or a dict; empty cells take the defaults. Raises ConfigError naming ``where``."""
        known = {f.name for f in fields(cls)}
        if None in row:  # csv.DictReader's key for the cells past the header's
            raise ConfigError(f"{where}: more cells than the header's {len(row) - 1} columns: {row[None]}")  # type: ignore[index]
        unknown = sorted(set(row) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown throughput column(s) {', '.join(unknown)}; columns: {', '.join(COLUMNS)}")
        try:
            values = {key: value for key, value in row.items() if value not in ("", None)}
            for key in ("img_size", "batch_size"):
                values[key] = int(values[key])
            for key in ("train_img_s", "eval_img_s"):
                if key in values:
                    values[key] = float(values[key])
            made = cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: bad throughput row {dict(row)}: {exc!r}") from None
        if made.scope not in ("step", "epoch") or made.train_img_s <= 0 or (made.eval_img_s is not None and made.eval_img_s <= 0):
            raise ConfigError(f"{where}: bad throughput row {dict(row)}: scope is step or epoch, rates are > 0")
        return made


COLUMNS = tuple(f.name for f in fields(Throughput))


def table_path(path: str | Path | None = None) -> Path:
    """The user's table: ``path``, else ``$RESEARCH_THROUGHPUT_TABLE``, else ``~/.cache/research/throughput.csv``."""
    chosen = path or os.environ.get(TABLE_ENV) or USER_TABLE
    return Path(chosen).expanduser()


def read_tables(path: str | Path | None = None) -> list[Throughput]:
    """The user's rows (see :func:`table_path`; a default table not made yet holds none), then the
    shipped table's: the first row of a key is the one an estimate uses."""
    user = table_path(path)
    named = path is not None or bool(os.environ.get(TABLE_ENV))
    rows = read_table(user) if named or user.exists() else []
    return rows + (read_table(SHIPPED_TABLE) if not _same_file(user, SHIPPED_TABLE) else [])


def read_table(file: str | Path) -> list[Throughput]:
    """Every row of one table file. ``#`` lines are comments. Raises ConfigError naming the file."""
    file = Path(file).expanduser()
    fix = f"point --throughput-table (or ${TABLE_ENV}) at a CSV with columns {', '.join(COLUMNS)}"
    if not file.exists():
        raise ConfigError(f"throughput table {file}: no such file; {fix}")
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
        if any("\0" in line for line in lines):
            raise csv.Error("it holds NUL bytes")
        records = list(csv.DictReader(lines))
    except IsADirectoryError:
        raise ConfigError(f"throughput table {file}: is a directory; {fix}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:  # unreadable, binary, NUL bytes
        raise ConfigError(f"throughput table {file}: cannot read it as CSV text ({exc}); {fix}") from None
    return [Throughput.from_mapping(row, where=f"{file} line {number}") for number, row in enumerate(records, 2)]


def record_throughput(rows: Iterable[Throughput | Mapping[str, Any]], path: str | Path | None = None) -> Path:
    """Merge measurements into the user's throughput table and return its path.

    A row replaces the row of the table with the same key (model, img_size, batch_size, precision,
    device, teacher); other rows are kept. The file is rewritten sorted by key, keeping its leading
    ``#`` comment lines, and created when missing. This is what the benchmark and ``research
    throughput`` call. The shipped table is never written (copy rows into it by hand, in a commit).

    Args:
        rows: :class:`Throughput` rows, or mappings with its field names (``eval_img_s`` may be absent).
        path: the table; default :func:`table_path` (``$RESEARCH_THROUGHPUT_TABLE`` or the user's cache).
    """
    file = recording_table(path)
    new = [row if isinstance(row, Throughput) else Throughput.from_mapping(row, where="record_throughput") for row in rows]
    header: list[str] = []
    merged: dict[tuple[Any, ...], Throughput] = {}
    if file.exists():
        header = [line for line in file.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
        merged = {row.key: row for row in read_table(file)}
    merged.update({row.key: row for row in new})
    text = io.StringIO()
    text.writelines(line + "\n" for line in header)
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for key in sorted(merged, key=lambda k: tuple(str(part) for part in k)):
        writer.writerow({name: "" if value is None else _csv_number(value) for name, value in asdict(merged[key]).items()})
    file = file.resolve()  # a symlinked table keeps its link: its target is replaced
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(file, text.getvalue())
    return file


def recording_table(path: str | Path | None = None) -> Path:
    """The user's table (:func:`table_path`), checked before anything is measured into it: never the
    shipped table, and a table already there must read."""
    file = table_path(path)
    if _same_file(file, SHIPPED_TABLE):
        raise ConfigError(
            f"throughput table {file} is the one shipped with the package: no command writes it (runs would record a "
            f"dirty commit); record into your own, the default {USER_TABLE}, or name one with --throughput-table"
        )
    if file.exists() or file.is_symlink():
        read_table(file)
    return file


def _same_file(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.resolve()


def _csv_number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


@dataclass(frozen=True)
class Estimate:
    """The cost of one run on ``device``; ``train_s`` is None when it is unknown (see ``reason``)."""

    run: Run
    device: str | None
    devices: int
    train_images: int | None = None
    train_s: float | None = None
    eval_s: float | None = None  # None: no eval rate measured (the estimate is then a lower bound)
    row: Throughput | None = None
    reason: str = ""  # why unknown, or what the figure leaves out
    command: str = ""  # the command that measures the missing row
    scaled: bool = False  # the row is another key's: its rates times ``scale``, its FLOPs per image over the run's
    scale: float = 1.0

    @property
    def known(self) -> bool:
        return self.train_s is not None

    @property
    def wall_s(self) -> float | None:
        return None if self.train_s is None else self.train_s + (self.eval_s or 0.0)

    @property
    def gpu_hours(self) -> float | None:
        return None if self.wall_s is None else self.devices * self.wall_s / 3600


def dataset_sizes(cfg: ExperimentCfg, *, count_files: bool = True) -> tuple[int, int, int] | str:
    """``(train images, val images, classes)`` of a run, or why they are unknown here.

    Each comes from the ``data:`` key that states it (:attr:`DatasetInfo.keys`), else the dataset's info
    record; images in class folders are counted on disk where neither says (one listing per class), so
    the estimate then needs the data where it is made; ``count_files=False`` leaves them unknown instead
    (ImageNet's listing takes a while on a shared file system). ``loader.limit_train`` / ``limit_val`` cap them.
    """
    data, info = cfg.data, DATASETS.info(cfg.data["name"])  # the section holds every default of its builder
    facts = (info.train_size, info.val_size, info.num_classes)
    train, val, classes = (data.get(key) or fact for key, fact in zip(info.keys, facts))
    if train is None or val is None or classes is None:
        root = Path(str(data.get("root", ""))).expanduser()
        if not info.folders:
            return f"dataset size unknown for data.name={data['name']}: its info record states none"
        if not count_files:
            return f"dataset size unknown: {data['name']} is not counted"
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            return f"dataset size unknown: {root}/train and /val are not on this machine (make the estimate where the data is)"
        classes = classes or sum(1 for entry in os.scandir(root / "train") if entry.is_dir())
        train, val = train or _count_files(root / "train"), val or _count_files(root / "val")
    train = min(train, cfg.loader.limit_train) if cfg.loader.limit_train else train
    val = min(val, cfg.loader.limit_val) if cfg.loader.limit_val else val
    return int(train), int(val), int(classes)


def _count_files(folder: Path) -> int:
    return sum(1 for cls in os.scandir(folder) if cls.is_dir() for entry in os.scandir(cls.path) if entry.is_file())


def run_key(cfg: ExperimentCfg, device: str) -> tuple[Any, ...]:
    """The table key a run needs: its student, input size, per-device batch, precision, device, teacher."""
    teacher = cfg.teacher["name"] if cfg.teacher is not None else ""  # the loader drops a teacher no loss distils from
    img_size = int(cfg.model.get("img_size") or cfg.aug.get("img_size") or 224)
    return (cfg.model["name"], img_size, cfg.loader.batch_size, cfg.train.precision, device.lower(), teacher)


def estimate_run(run: Run, table: Sequence[Throughput], *, device: str | None = None, measure_command: str = "") -> Estimate:
    """The cost of ``run`` on ``device`` from ``table``.

    Args:
        run: a validated run.
        table: the throughput rows (:func:`read_tables`), the first of a key used.
        device: the target device's name; default the run's ``resources.gpu_type``.
        measure_command: the command that measures this run's row, with ``{device}`` to fill in.
    """
    cfg = run.cfg
    target = device or cfg.resources.gpu_type
    devices = cfg.resources.processes()  # one per GPU, or tasks_per_node per node on CPUs
    if not target:
        names = ", ".join(sorted({row.device for row in table})) or "none"
        return Estimate(run, None, devices, reason=f"no target device: set resources.gpu_type or pass --device (the table has: {names})")
    command = measure_command.replace("{device}", shlex.quote(target))  # not format(): overrides may hold braces
    sizes = dataset_sizes(cfg)
    if isinstance(sizes, str):
        return Estimate(run, target, devices, reason=sizes)
    train_images, val_images, _ = sizes
    key = run_key(cfg, target)
    row, scale = nearest_row(table, key)
    if row is None:
        described = f"{key[0]} {key[1]}px batch {key[2]} {key[3]} on {target}" + (f" with teacher {key[5]}" if key[5] else "")
        return Estimate(run, target, devices, train_images, reason=f"no measurement of {described}", command=command)
    train_s = cfg.train.epochs * train_images / (devices * row.train_img_s * scale)
    # The module docstring's eval seconds: an evaluation every eval_every_epochs epochs and after the last.
    evaluations = math.ceil(cfg.train.epochs / max(cfg.train.eval_every_epochs, 1))
    views = (2 if cfg.train.eval_hflip else 1) * (3 if cfg.train.eval_translate else 1) * (2 if cfg.train.ema else 1)
    eval_s = None if row.eval_img_s is None else evaluations * val_images * views / (devices * row.eval_img_s * scale)
    source = f"{row.model} {row.img_size}px batch {row.batch_size} {row.precision}" + (f" with teacher {row.teacher}" if row.teacher else "")
    notes = [f"scaled from {source} by FLOPs (x{scale:.3g})"] if row.key != key else []
    notes += [] if eval_s is not None else ["evaluation not measured: training only, a lower bound"]
    return Estimate(run, target, devices, train_images, train_s, eval_s, row, "; ".join(notes), command, row.key != key, scale)


def nearest_row(table: Sequence[Throughput], key: tuple[Any, ...]) -> tuple[Throughput | None, float]:
    """The row of ``key``, else the nearest row measured on its device (the same teacher, then precision,
    then the closest FLOPs per image, then batch) and the factor that scales its rates to ``key``'s
    model: its FLOPs per image over the run's. ``(None, 1.0)``: no row to use."""
    exact = next((row for row in table if row.key == key), None)
    flops = None if exact else _flops(key[0], key[1])
    on_device = [row for row in table if flops and row.device.lower() == key[4] and _flops(row.model, row.img_size)]
    if not flops or not on_device:
        return exact, 1.0

    def distance(row: Throughput) -> tuple[Any, ...]:
        ratio = _flops(row.model, row.img_size) / flops  # type: ignore[operator]
        return (row.teacher != key[5], row.precision != key[3], abs(math.log(ratio)), abs(math.log(row.batch_size / key[2])))

    row = min(on_device, key=distance)
    return row, _flops(row.model, row.img_size) / flops  # type: ignore[operator]


@functools.cache
def _flops(model: str, img_size: int) -> float | None:
    """Forward FLOPs per image of a registered model, counted once per (model, size); None where it
    cannot be counted (a plugin's builder that takes no ``img_size`` or does not build on the meta device)."""
    from research.models.flops import registered_flops  # torch's counter: only when a row is missing

    try:
        return registered_flops(model, img_size) if model in MODELS else None
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return None


def inference_rate(run: Run, table: str | Path | None = None) -> float | None:
    """The inference images/s (``eval_img_s``: no gradients, the eval batch) that ``research throughput``
    measured for ``run``'s row on its ``resources.gpu_type``; None when not measured. ``research report``
    puts it beside the paper's Table 5 throughput, which is inference too."""
    target = run.cfg.resources.gpu_type
    if not target:
        return None
    key = run_key(run.cfg, target)
    row = next((row for row in read_tables(table) if row.key == key), None)
    return None if row is None else row.eval_img_s


def estimate_runs(
    runs: Sequence[Run],
    *,
    device: str | None = None,
    table: str | Path | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> list[Estimate]:
    """Estimates for ``runs`` on ``device``, else each run's ``resources.gpu_type``, else every device in the
    table (grouped by device), each with the ``research throughput`` command that measures its row.

    ``overrides`` (the command line's) go into the commands of the runs of ``config``, not into those
    of prerequisites from other files (a student's teacher experiment).
    """
    rows = read_tables(table)
    all_devices = list(dict.fromkeys(sorted(row.device.lower() for row in rows)))  # priced where a run names none
    primary = Path(config).resolve() if config is not None else None
    estimates = []
    for run in runs:
        own = primary is None or Path(run.source).resolve() == primary
        words = ["research", "throughput", display_path(run.source), *(overrides if own else ())]
        if run.variant:
            words += ["--only", run.variant]
        words += ["--device", "{device}"]
        if table is not None or os.environ.get(TABLE_ENV):
            words += ["--throughput-table", str(table_path(table))]
        command = " ".join(shlex.quote(word) if word != "{device}" else word for word in words)
        chosen = device or run.cfg.resources.gpu_type
        targets: Sequence[str | None] = [chosen] if chosen else all_devices or [None]
        estimates += [estimate_run(run, rows, device=target, measure_command=command) for target in targets]
    return sorted(estimates, key=lambda e: all_devices.index(e.device) if e.device in all_devices else -1)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def format_estimates(estimates: Sequence[Estimate], *, table: str | Path | None = None) -> str:
    """The cost table (run, device, devices, GPU-hours, wall time, rate and its scope), the grid's
    totals per device, every source cited and, for unknown or scaled runs, the commands that measure them."""
    if not estimates:
        return ""
    if all(e.device is None for e in estimates):  # one line, not a table of the same sentence
        return f"cost estimate: {estimates[0].reason}"
    sources: dict[str, int] = {}
    lines = []
    for estimate in estimates:
        row = estimate.row
        basis = "-"
        if row is not None:
            ref = sources.setdefault(f"{row.source} ({row.measured}; {row.scope} scope)", len(sources) + 1)
            basis = f"{'~' if estimate.scaled else ''}{row.train_img_s * estimate.scale:,.0f} img/s {row.scope} [{ref}]"
        bound = ("~" if estimate.scaled else "") + (">=" if estimate.known and estimate.eval_s is None else "")
        hours, wall = (bound + _hours(estimate.gpu_hours), bound + _duration(estimate.wall_s)) if estimate.known else ("unknown",) * 2
        lines.append([estimate.run.name, estimate.device or "?", str(estimate.devices), hours, wall, basis, estimate.reason or "-"])
    out = [
        f"cost estimate (throughput tables: {table_path(table)}, then {display_path(SHIPPED_TABLE)})",
        text_table(["run", "device", "devices", "GPU-h", "wall time", "rate", "note"], lines),
    ]
    by_device = {e.device: [d for d in estimates if d.device == e.device] for e in estimates}
    out += [(f"on {device}: " if len(by_device) > 1 else "") + _totals(group) for device, group in by_device.items()]
    out += [f"[{ref}] {source}" for source, ref in sources.items()]
    if any(e.scaled for e in estimates):
        out.append("~ scaled: no row of the run's own key on that device: the nearest row's rate x (its model's FLOPs per image / the run's model's)")
    commands = list(dict.fromkeys(e.command for e in estimates if (not e.known or e.scaled) and e.command))
    if commands:
        out.append(f"measure what is unknown or scaled, on the target device (adds rows to {table_path(table)}):")
        out += [f"  {command}" for command in commands]
    return "\n".join(out)


def _totals(estimates: Sequence[Estimate]) -> str:
    known = [e for e in estimates if e.known]
    unknown = len(estimates) - len(known)
    if not known:
        return f"total: unknown ({unknown} of {len(estimates)} runs have no estimate)"
    bound = ("~" if any(e.scaled for e in known) else "") + (">=" if unknown or any(e.eval_s is None for e in known) else "")
    hours = sum(e.gpu_hours or 0.0 for e in known)
    serial = sum(e.wall_s or 0.0 for e in known)
    parallel = _critical_path(known)
    text = (
        f"total over {len(known)} run{'s' if len(known) != 1 else ''}: {bound}{_hours(hours)} GPU-h; wall time "
        f"{bound}{_duration(parallel)} with every run started at once (teachers first), {bound}{_duration(serial)} one after another"
    )
    return text + (f"; {unknown} run{'s' if unknown != 1 else ''} unknown, not counted" if unknown else "")


def _critical_path(estimates: Sequence[Estimate]) -> float:
    """The wall time when every run starts as soon as its prerequisites (teachers) finish."""
    wall = {e.run.run_dir: e.wall_s or 0.0 for e in estimates}
    finish: dict[Path, float] = {}

    def done(run: Run) -> float:
        if run.run_dir not in finish:
            before = max((done(p) for p in run.prerequisites()), default=0.0)
            finish[run.run_dir] = before + wall.get(run.run_dir, 0.0)
        return finish[run.run_dir]

    return max(done(e.run) for e in estimates)


def _hours(hours: float | None) -> str:
    if hours is None:
        return "unknown"
    return f"{hours:.3g}" if hours < 100 else f"{hours:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
