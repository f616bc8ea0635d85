"""The shipped experiment files: every one loads and validates; every ablation also runs on the CIFAR-10
recipe; an ablation's baseline is exactly its recipe, and its other variants change only the keys its
``ablation.studies`` lists. Files are loaded with ``check_files=False``, as ``research expand`` does, so no ImageNet
copy and no teacher checkpoint are needed.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from research.config import ExperimentCfg, Run, load_runs
from research.config.sources import flatten

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FILES = sorted(EXPERIMENTS.rglob("*.yaml"))
ABLATIONS = sorted(EXPERIMENTS.glob("ablate_*.yaml"))

#: The CIFAR-10 recipe each ablation also runs on (``_base_=`` is relative to the ablation file).
CIFAR_BASE = {"ablate_distillation": "base/cifar10_distilled.yaml"}
DEFAULT_CIFAR_BASE = "base/cifar10.yaml"

VARIANT_COUNTS = {"ablate_mixup": 2, "ablate_ema": 2, "ablate_all": 10, "ablate_distillation": 6}

IGNORED = ("name", "variant", "ablation")  # what an ablation run may differ in from its recipe's run


def _id(path: Path) -> str:
    return str(path.relative_to(EXPERIMENTS))


@functools.lru_cache(maxsize=None)
def runs_of(path: Path, base: str | None = None) -> tuple[Run, ...]:
    """The runs of ``path``, on its own ``_base_`` or on ``base`` (cached: loading builds transforms)."""
    overrides = [f"_base_={base}"] if base else []
    return tuple(load_runs(path, overrides, check_files=False))


def base_of(path: Path, base: str | None) -> Path:
    """The recipe file an ablation runs on: ``base`` if given, else the file's own ``_base_``."""
    if base is None:
        base = yaml.safe_load(path.read_text())["_base_"]
    return (path.parent / base).resolve()


def flat(run: Run) -> dict[str, Any]:
    return {
        key: value
        for key, value in flatten(dataclasses.asdict(run.cfg)).items()
        if not any(key == part or key.startswith(f"{part}.") for part in IGNORED)
    }


def changed(run: Run, baseline: Run) -> set[str]:
    a, b = flat(run), flat(baseline)
    missing = object()
    return {key for key in a.keys() | b.keys() if a.get(key, missing) != b.get(key, missing)}


def covered(key: str, allowed: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in allowed)


def baseline_of(runs: tuple[Run, ...]) -> Run:
    baselines = [run for run in runs if run.is_baseline]
    assert len(baselines) == 1, [run.name for run in baselines]
    return baselines[0]


BASES = [pytest.param(None, id="imagenet"), pytest.param("cifar10", id="cifar10")]


def cifar_base(path: Path) -> str:
    return CIFAR_BASE.get(path.stem, DEFAULT_CIFAR_BASE)


def chosen_base(path: Path, which: str | None) -> str | None:
    return None if which is None else cifar_base(path)


# --- every file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_every_file_opens_with_a_comment(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 10, f"{_id(path)}: start with a comment saying what it is"


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_every_file_expands_and_validates(path: Path) -> None:
    runs = runs_of(path)
    assert runs and all(isinstance(run.cfg, ExperimentCfg) for run in runs)
    assert len({run.run_dir for run in runs}) == len(runs)
    assert (len(runs) > 1) == path.stem.startswith("ablate_"), "only ablate_*.yaml files make several runs"


def studies(path: Path) -> tuple[str, ...]:
    """The keys an ablation studies, as its file says (``ablation.studies``). A dotted key also covers
    the keys below it (``teacher`` covers ``teacher.name``; the section is null when there is no teacher)."""
    return tuple(runs_of(path)[0].cfg.ablation.studies)


@pytest.mark.parametrize("path", ABLATIONS, ids=_id)
def test_every_ablation_says_what_it_studies(path: Path) -> None:
    assert studies(path), f"{_id(path)}: list the keys its variants change in ablation.studies"


# --- ablations, on ImageNet (their own _base_) and on CIFAR-10 ---------------------------------------


@pytest.mark.parametrize("which", BASES)
@pytest.mark.parametrize("path", ABLATIONS, ids=_id)
def test_ablation_expands_on_both_recipes(path: Path, which: str | None) -> None:
    runs = runs_of(path, chosen_base(path, which))
    baseline = baseline_of(runs)
    assert baseline.variant == "full"
    assert [run.variant for run in runs] == [run.variant for run in runs_of(path)]
    size = baseline.cfg.model["img_size"]
    assert size == (224 if which is None else 32)
    assert baseline.cfg.data["name"] == ("imagenet" if which is None else "cifar10_jpeg")


@pytest.mark.parametrize(("name", "count"), sorted(VARIANT_COUNTS.items()))
def test_variant_counts(name: str, count: int) -> None:
    assert len(runs_of(EXPERIMENTS / f"{name}.yaml")) == count


@pytest.mark.parametrize("which", BASES)
@pytest.mark.parametrize("path", ABLATIONS, ids=_id)
def test_ablation_baseline_is_the_full_recipe(path: Path, which: str | None) -> None:
    base = chosen_base(path, which)
    (recipe,) = runs_of(base_of(path, base))
    assert flat(baseline_of(runs_of(path, base))) == flat(recipe)


@pytest.mark.parametrize("which", BASES)
@pytest.mark.parametrize("path", ABLATIONS, ids=_id)
def test_variants_change_only_their_technique(path: Path, which: str | None) -> None:
    runs = runs_of(path, chosen_base(path, which))
    baseline = baseline_of(runs)
    allowed = studies(path)
    for run in runs:
        if run is baseline:
            continue
        keys = changed(run, baseline)
        assert keys, f"{run.name} is the same run as the baseline"
        others = sorted(key for key in keys if not covered(key, allowed))
        assert not others, f"{run.name} changes {others}, outside what {path.stem} studies: {allowed}"


@pytest.mark.parametrize("path", ABLATIONS, ids=_id)
def test_imagenet_and_cifar_runs_never_share_a_run_dir(path: Path) -> None:
    imagenet = {run.run_dir for run in runs_of(path)}
    cifar = {run.run_dir for run in runs_of(path, cifar_base(path))}
    assert not imagenet & cifar


def test_ablate_all_removes_one_technique_per_variant_as_table_8() -> None:
    runs = runs_of(EXPERIMENTS / "ablate_all.yaml")
    baseline = baseline_of(runs)
    expected = {
        "no_randaugment": {"aug.rand_augment"},
        "autoaugment": {"aug.rand_augment", "aug.auto_augment"},
        "no_mixup": {"aug.mixup"},
        "no_cutmix": {"aug.cutmix"},
        "no_mixup_cutmix": {"aug.mixup", "aug.cutmix"},
        "no_random_erasing": {"aug.random_erasing"},
        "no_stochastic_depth": {"model.drop_path_rate"},
        "no_repeated_aug": {"aug.repeated_aug"},
        "ema": {"train.ema"},
    }
    assert {run.variant: changed(run, baseline) for run in runs if run is not baseline} == expected


# --- distillation --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", BASES)
def test_distillation_variants(which: str | None) -> None:
    path = EXPERIMENTS / "ablate_distillation.yaml"
    runs = {run.variant: run for run in runs_of(path, chosen_base(path, which))}
    full = runs["full"].cfg
    assert full.loss["name"] == "hard" and full.loss["alpha"] == 0.5 and full.model["eval_head"] == "both"
    none = runs["none"]
    assert none.cfg.teacher is None and none.teacher_run is None and none.prerequisites() == []
    assert none.cfg.loss["name"] == "none" and none.cfg.model["eval_head"] == "class"
    # Switching the loss picks up that loss's own defaults (the recipe does not pin alpha or tau).
    assert (runs["soft"].cfg.loss["tau"], runs["soft"].cfg.loss["alpha"]) == (1.0, 0.5)
    assert (runs["soft_paper"].cfg.loss["tau"], runs["soft_paper"].cfg.loss["alpha"]) == (3.0, 0.1)
    assert runs["class_head"].cfg.model["eval_head"] == "class"
    assert runs["dist_head"].cfg.model["eval_head"] == "distillation"
    if which is not None:  # the CIFAR teacher is another experiment, trained first
        assert all(runs[v].teacher_run.name == "teacher_cifar10" for v in runs if v != "none")


# --- the ImageNet recipes ------------------------------------------------------------------------


def load_fresh(name: str) -> Run:
    (run,) = load_runs(EXPERIMENTS / name, check_files=False)
    return run


def global_batch(run: Run) -> int:
    return run.cfg.loader.batch_size * run.cfg.resources.gpus_per_node * run.cfg.resources.nodes


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_imagenet_recipe_is_table_9(size: str) -> None:
    cfg = runs_of(EXPERIMENTS / f"deit_{size}_imagenet.yaml")[0].cfg
    assert cfg.model == {"name": f"deit_{size}_patch16_224", "img_size": 224, "drop_path_rate": 0.1, "cls_token_init": "timm"}
    assert global_batch(runs_of(EXPERIMENTS / f"deit_{size}_imagenet.yaml")[0]) == 1024
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.scale_lr, cfg.optim.weight_decay) == ("adamw", 5e-4, True, 0.05)
    assert (cfg.sched.name, cfg.sched.warmup_epochs, cfg.sched.warmup_lr, cfg.sched.min_lr) == ("cosine", 5, 1e-6, 1e-5)
    assert (cfg.train.epochs, cfg.train.label_smoothing, cfg.train.ema) == (300, 0.1, False)
    aug = cfg.aug
    assert (aug["rand_augment"], aug["auto_augment"]) == ("rand-m9-mstd0.5-inc1", None)
    assert (aug["random_erasing"], aug["mixup"], aug["cutmix"], aug["repeated_aug"]) == (0.25, 0.8, 1.0, 3)


def test_imagenet_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    assert load_fresh("deit_small_imagenet.yaml").cfg.data == {"name": "imagenet", "root": "/datasets/imagenet"}
    monkeypatch.setenv("IMAGENET_ROOT", "/scratch/imagenet")
    assert load_fresh("deit_small_imagenet.yaml").cfg.data["root"] == "/scratch/imagenet"


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_distilled_recipes_add_only_the_teacher(size: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEIT_TEACHER_CHECKPOINT", "/ckpt/regnety_160.pth")
    plain, distilled = load_fresh(f"deit_{size}_imagenet.yaml"), load_fresh(f"deit_{size}_distilled_imagenet.yaml")
    assert distilled.cfg.teacher == {"name": "regnety_160", "checkpoint": "/ckpt/regnety_160.pth", "channels_last": False}
    assert distilled.cfg.loss["name"] == "hard" and distilled.cfg.loss["alpha"] == 0.5
    assert distilled.cfg.model["name"] == f"deit_{size}_distilled_patch16_224"
    assert {key.partition(".")[0] for key in changed(distilled, plain)} == {"model", "teacher", "loss"}


@pytest.mark.parametrize(
    ("name", "source", "model"),
    [
        ("deit_base_384_finetune_imagenet.yaml", "deit_base_imagenet", "deit_base_patch16_384"),
        ("deit_base_distilled_384_finetune_imagenet.yaml", "deit_base_distilled_imagenet", "deit_base_distilled_patch16_384"),
    ],
)
def test_384_finetuning_starts_from_the_224_run(name: str, source: str, model: str) -> None:
    run = runs_of(EXPERIMENTS / name)[0]
    assert run.finetune_run is not None and run.finetune_run.name == source
    assert run.cfg.finetune.checkpoint == str(run.finetune_run.run_dir / "last.pt")
    assert (run.cfg.model["name"], run.cfg.model["img_size"], run.cfg.job_type) == (model, 384, "finetune")
    # The reference README: 30 epochs, lr 5e-6 at a global batch of 512, weight decay 1e-8, min lr 5e-6.
    assert global_batch(run) == 512 and run.cfg.train.epochs == 30
    assert (run.cfg.optim.lr, run.cfg.optim.weight_decay, run.cfg.sched.min_lr) == (5e-6, 1e-8, 5e-6)
    assert (run.cfg.loss["name"] == "hard") == ("distilled" in name) == (run.cfg.teacher is not None)
