"""CONTRIBUTING.md's worked examples: each extension written as ONE plugin module in a fresh folder,
used from an experiment file through ``plugins:``, shown by ``research expand`` and trained for a
tiny epoch by ``research train``. Each example's docstring says how many files it took (``Files: N``),
the fixture checks that it wrote that many, and :func:`test_the_table_counts_what_the_examples_take`
holds CONTRIBUTING.md's table to those counts.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TINY, deep_update, write_yaml

from research.cli import main
from research.plugins import import_plugins

REPO = Path(__file__).resolve().parents[1]
FILES = re.compile(r"^\s*Files: (\d+)\b", re.MULTILINE)

pytestmark = pytest.mark.usefixtures("restore_registries")

Plugin = Callable[[str, str], str]


def files_in(doc: str | None, where: str) -> int:
    found = FILES.search(doc or "")
    assert found, f"{where}: its docstring says how many files the extension took, as 'Files: N'"
    return int(found.group(1))


@pytest.fixture
def plugin(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugin]:
    """``plugin("mylab_net", source)`` writes ``mylab_net.py`` in the launch folder (``tmp_path``, the
    current directory, where ``plugins:`` finds it) and returns the module name; at the end, the test
    must have written as many as its docstring's ``Files: N``."""
    monkeypatch.chdir(tmp_path)
    written: list[Path] = []

    def write(module: str, source: str) -> str:
        path = tmp_path / f"{module}.py"
        path.write_text(textwrap.dedent(source))
        written.append(path)
        return module

    yield write
    assert len(written) == files_in(request.function.__doc__, request.function.__name__)


def experiment(tmp_path: Path, name: str, **sections: Any) -> Path:
    """The tiny experiment (tests/tiny.py) with ``sections`` merged in, its runs under ``tmp_path/runs``."""
    return write_yaml(tmp_path / f"{name}.yaml", deep_update({"output_dir": str(tmp_path / "runs"), **TINY}, sections))


def expand_and_train(path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """``research expand`` lists the run; ``research train`` trains it to the end. Its run dir."""
    assert main(["expand", str(path)]) == 0, capsys.readouterr().err
    assert f"{path.stem} " in capsys.readouterr().out
    assert main(["train", str(path)]) == 0, capsys.readouterr().err
    run_dir = path.parent / "runs" / path.stem
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "done"
    return run_dir


def test_a_model(plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A student network: its module and its builder, registered with what it is (ModelInfo).

    Files: 1 (a second when the network has a file of its own)
    """
    module = plugin("mylab_mlp", '''
        from torch import nn

        from research.registry import MODELS, ModelInfo


        @MODELS.register("mlp_32", ModelInfo(default_img_size=32, family="mlp"))
        def mlp_32(*, num_classes: int, img_size: int = 32, width: int = 64) -> nn.Module:
            """A two-layer perceptron on the pixels; the YAML keys are the parameters (model.width)."""
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, width), nn.GELU(), nn.Linear(width, num_classes))
    ''')
    path = experiment(tmp_path, "contrib_model", plugins=[module], model={"name": "mlp_32", "width": 16})
    expand_and_train(path, capsys)


def test_a_distillation_loss(plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A distillation loss: a DistillationObjective with its distillation term, registered as distilling
    (LossInfo(needs_teacher=True): the run builds the teacher, trains the distillation head).

    Files: 1
    """
    module = plugin("mylab_cosine", '''
        from typing import Annotated

        import torch
        import torch.nn.functional as F
        from torch import nn

        from research.losses import DistillationObjective
        from research.registry import LOSSES, LossInfo, Range


        class CosineDistillation(DistillationObjective):
            """(1 - alpha) * base + alpha * (1 - cos(student, teacher)) on the distillation head."""

            def distillation_loss(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
                return (1 - F.cosine_similarity(dist_logits, teacher_logits, dim=-1)).mean()  # (B,) -> ()


        @LOSSES.register("cosine", LossInfo(needs_teacher=True))
        def cosine(
            *, base_criterion: nn.Module, teacher: nn.Module | None, alpha: Annotated[float, Range(ge=0, le=1)] = 0.5
        ) -> CosineDistillation:
            if teacher is None:
                raise ValueError("loss 'cosine' distils from a teacher: add a 'teacher:' section")
            return CosineDistillation(base_criterion=base_criterion, teacher=teacher, alpha=alpha)
    ''')
    from research.registry import MODELS  # a teacher's weights: any checkpoint of the right network

    torch.save(MODELS.build("resnet10_cifar", num_classes=10).state_dict(), tmp_path / "teacher.pt")
    path = experiment(
        tmp_path, "contrib_loss", plugins=[module], model={"name": "deit_nano_distilled_patch4_32"},
        teacher={"name": "resnet10_cifar", "checkpoint": str(tmp_path / "teacher.pt")}, loss={"name": "cosine", "alpha": 0.3},
    )  # fmt: skip
    expand_and_train(path, capsys)


def test_a_teacher(plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A teacher: its network, loaded from a checkpoint and frozen by Teacher, with the resolution its
    weights were trained at (TeacherInfo.img_size).

    Files: 1
    """
    module = plugin("mylab_teacher", '''
        from torch import nn

        from research.registry import TEACHERS, TeacherInfo
        from research.teachers import Teacher, check_teacher_checkpoint, load_teacher_weights


        def small_cnn(num_classes: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


        @TEACHERS.register("small_cnn", TeacherInfo(img_size=32))
        def small_cnn_teacher(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
            check_teacher_checkpoint(checkpoint)
            net = small_cnn(num_classes)
            load_teacher_weights(net, checkpoint, teacher="small_cnn", num_classes=num_classes)
            return Teacher(net, name="small_cnn", num_classes=num_classes, channels_last=channels_last)
    ''')
    import_plugins([module])  # as the experiment will: from the launch folder
    trained = sys.modules[module].small_cnn(10)  # stands for weights trained elsewhere
    torch.save(trained.state_dict(), tmp_path / "small_cnn.pt")
    path = experiment(
        tmp_path, "contrib_teacher", plugins=[module], model={"name": "deit_nano_distilled_patch4_32"},
        teacher={"name": "small_cnn", "checkpoint": str(tmp_path / "small_cnn.pt")}, loss={"name": "hard"},
    )  # fmt: skip
    expand_and_train(path, capsys)


def test_a_dataset(plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dataset: a builder of one split, taking the engine's ``split`` and ``transform``, returning a
    torch Dataset of (image, label) with its ``classes``.

    Files: 1
    """
    module = plugin("mylab_noise", '''
        from typing import Annotated

        from torchvision.datasets import FakeData

        from research.registry import DATASETS, Range


        @DATASETS.register("noise")
        def noise(*, split: str, transform, size: Annotated[int, Range(ge=1)] = 32, num_classes: int = 10) -> FakeData:
            """Random images (torchvision's FakeData), a different draw per split."""
            dataset = FakeData(size, (3, 32, 32), num_classes, transform=transform, random_offset=0 if split == "train" else size)
            dataset.classes = [f"class_{i}" for i in range(num_classes)]
            return dataset
    ''')
    path = experiment(tmp_path, "contrib_dataset", plugins=[module], data={"name": "noise", "size": 32}, loader={"batch_augment": False})
    expand_and_train(path, capsys)


def test_a_logger(plugin: Plugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A logger: a Tracker (log, summary, close) built from the engine's RunInfo; only rank 0 gets it.

    Files: 1
    """
    module = plugin("mylab_csv", '''
        import csv

        from research.registry import LOGGERS
        from research.tracking.base import RunInfo


        class CsvTracker:
            """One ``step,key,value`` row per scalar, in ``<run dir>/metrics.csv``."""

            def __init__(self, run: RunInfo) -> None:
                self.file = open(run.run_dir / "metrics.csv", "a", newline="")
                self.rows = csv.writer(self.file)

            def log(self, metrics, *, step: int) -> None:
                self.rows.writerows([step, key, float(value)] for key, value in metrics.items())

            def summary(self, values) -> None:
                self.rows.writerows(["summary", key, value] for key, value in values.items())

            def close(self) -> None:
                self.file.close()


        @LOGGERS.register("csv")
        def csv_logger(*, run: RunInfo) -> CsvTracker:
            return CsvTracker(run)
    ''')
    path = experiment(tmp_path, "contrib_logger", plugins=[module], logger={"name": "csv"}, train={"log_every_steps": 1})
    run_dir = expand_and_train(path, capsys)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert any(row.startswith("1,train/loss,") for row in rows) and any(row.startswith("summary,") for row in rows)


# --- the table -------------------------------------------------------------------------------------

ROW = re.compile(r"^\|\s*(?P<what>[^|]+?)\s*\|\s*(?P<count>[^|]+?)\s*\|.*\|\s*`(?P<example>[^`]+)`\s*\|\s*$")


def table_rows() -> list[tuple[str, str, str]]:
    rows = [ROW.match(line) for line in (REPO / "CONTRIBUTING.md").read_text().splitlines()]
    return [(m["what"], m["count"], m["example"]) for m in rows if m and not set(m["count"]) <= set("-: ")]


def bounds(count: str) -> tuple[int, int]:
    """``1`` -> (1, 1); ``1-2`` or ``1–2`` -> (1, 2); ``≤ 3`` -> (1, 3)."""
    numbers = [int(n) for n in re.findall(r"\d+", count)]
    assert numbers, f"{count!r}: a number of files, a range (1–2) or a bound (≤ 3)"
    return (1, numbers[0]) if count.lstrip().startswith("≤") else (numbers[0], numbers[-1])


def example_count(example: str) -> int:
    """``Files: N`` of the docstring of ``tests/x.py::test_y`` (the function) or of ``tests/x.py``."""
    file, _, function = example.partition("::")
    path = REPO / file
    assert path.is_file(), f"CONTRIBUTING.md names {example}, but {file} does not exist"
    tree = ast.parse(path.read_text())
    if not function:
        return files_in(ast.get_docstring(tree), file)
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function]
    assert found, f"CONTRIBUTING.md names {example}, but {file} has no test {function}"
    return files_in(ast.get_docstring(found[0]), example)


def test_the_table_counts_what_the_examples_take() -> None:
    rows = table_rows()
    assert {"a model", "a distillation loss", "a teacher", "a dataset", "a logger", "a launcher backend",
            "an augmentation technique, on both paths, with its ablation"} <= {what for what, _, _ in rows}
    for what, count, example in rows:
        low, high = bounds(count)
        assert low <= example_count(example) <= high, f"CONTRIBUTING.md: {what} takes {count} files, {example} takes another number"
