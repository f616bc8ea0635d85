"""Ablations: variants and grids expand into named runs with their own run dirs, differing keys and a
baseline; ``teacher.from_experiment`` links a run to another experiment's run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from research.config import CHECKPOINT, ConfigError, load_run, load_runs
from research.config.expand import differing_keys, format_value, variant_overrides


def names(runs) -> list[str]:
    return [run.name for run in runs]


def test_grid_names_run_dirs_and_differing_keys(tmp_path: Path, experiment) -> None:
    runs = load_runs(experiment("ablate_x", aug={"name": "cifar"}, ablation={"grid": {"aug.mixup": [0, 0.8]}}))
    assert names(runs) == ["ablate_x/mixup=0", "ablate_x/mixup=0.8"]
    assert [run.run_dir for run in runs] == [tmp_path / "runs" / "ablate_x" / v for v in ("mixup=0", "mixup=0.8")]
    assert [run.cfg.aug["mixup"] for run in runs] == [0.0, 0.8]
    assert [run.differing for run in runs] == [{"aug.mixup": 0.0}, {"aug.mixup": 0.8}]  # nothing else differs
    assert [run.is_baseline for run in runs] == [True, False]  # the first, by default
    assert {run.experiment for run in runs} == {"ablate_x"}
    assert [run.cfg.variant for run in runs] == ["mixup=0", "mixup=0.8"]


def test_variants_times_grid(tmp_path: Path, experiment) -> None:
    ablation = {
        "variants": {"short": {"train.epochs": 1}, "long": {"train": {"epochs": 3}, "optim.lr": 1e-3}},
        "grid": {"aug.mixup": [0, 0.8], "aug.cutmix": [0, 1]},
    }
    runs = load_runs(experiment("abl", aug={"name": "cifar"}, ablation=ablation))
    assert len(runs) == 2 * 4
    assert names(runs)[:4] == [
        "abl/short,mixup=0,cutmix=0",
        "abl/short,mixup=0,cutmix=1",
        "abl/short,mixup=0.8,cutmix=0",
        "abl/short,mixup=0.8,cutmix=1",
    ]
    long = runs[-1]
    assert long.variant == "long,mixup=0.8,cutmix=1"
    assert long.run_dir == tmp_path / "runs" / "abl" / "long,mixup=0.8,cutmix=1"
    assert long.cfg.train.epochs == 3 and long.cfg.optim.lr == 1e-3 and long.cfg.aug["cutmix"] == 1.0
    assert set(long.differing) == {"train.epochs", "optim.lr", "aug.mixup", "aug.cutmix"}
    assert runs[0].cfg.optim.lr == 5e-4  # a variant's overrides stay in that variant
    assert len({run.run_dir for run in runs}) == len(runs)


def test_variant_overrides_as_a_list_of_items(experiment) -> None:
    runs = load_runs(experiment("abl", ablation={"variants": {"a": ["optim.lr=1e-3", "train.epochs=2"], "b": {}}}))
    assert names(runs) == ["abl/a", "abl/b"]
    assert runs[0].cfg.optim.lr == 1e-3 and runs[0].cfg.train.epochs == 2
    assert runs[0].differing == {"optim.lr": 1e-3, "train.epochs": 2}


def test_command_line_applies_to_every_variant_and_variants_win(experiment) -> None:
    path = experiment("abl", ablation={"variants": {"a": {"optim.lr": 1e-3}, "b": {}}})
    a, b = load_runs(path, ["optim.lr=0.1", "seed=3"])
    assert (a.cfg.optim.lr, b.cfg.optim.lr) == (1e-3, 0.1)
    assert a.cfg.seed == b.cfg.seed == 3
    assert "seed" not in a.differing


def test_baseline_picks_a_variant(experiment) -> None:
    runs = load_runs(experiment("abl", ablation={"baseline": "mixup=0.8", "grid": {"aug.mixup": [0, 0.8]}}))
    assert [run.is_baseline for run in runs] == [False, True]


def test_named_baseline_crossed_with_a_grid_is_its_first_grid_point(experiment) -> None:
    ablation = {"baseline": "full", "variants": {"full": {}, "flat": {"aug.hflip": 0.0}}, "grid": {"seed": [0, 1]}}
    runs = load_runs(experiment("abl", ablation=ablation))
    assert [run.variant for run in runs if run.is_baseline] == ["full,seed=0"]


def test_unknown_baseline_lists_the_variants(experiment) -> None:
    expected = r"ablation.baseline 'mixup=0.5' is not a variant; variants: mixup=0, mixup=0.8"
    with pytest.raises(ConfigError, match=expected):
        load_runs(experiment("abl", ablation={"baseline": "mixup=0.5", "grid": {"aug.mixup": [0, 0.8]}}))


def test_duplicate_run_names(tmp_path: Path, experiment) -> None:
    with pytest.raises(ConfigError, match="same name: mixup=0") as caught:
        load_runs(experiment("abl", ablation={"grid": {"aug.mixup": [0, 0.0]}}))
    assert str(tmp_path / "abl.yaml") in str(caught.value)


def test_a_variant_written_twice_is_an_error_not_a_lost_run(tmp_path: Path, yaml_file, experiment) -> None:
    experiment("base")
    path = yaml_file("abl.yaml", "_base_: base.yaml\nablation:\n  variants:\n    a: {}\n    b: {}\n    a: {seed: 1}\n")
    with pytest.raises(ConfigError, match=r"abl\.yaml:6:5: malformed YAML: key 'a' appears twice"):
        load_runs(path)


def test_grid_keys_ending_the_same_way_use_full_keys(experiment) -> None:
    runs = load_runs(experiment("abl", ablation={"grid": {"optim.name": ["adamw", "sgd"], "sched.name": ["cosine"]}}))
    assert names(runs) == ["abl/optim.name=adamw,sched.name=cosine", "abl/optim.name=sgd,sched.name=cosine"]


def test_variant_names_cannot_hold_a_slash(experiment) -> None:
    with pytest.raises(ConfigError, match="cannot contain '/'"):
        load_runs(experiment("abl", ablation={"variants": {"a/b": {}}}))


@pytest.mark.parametrize("values", [[], "0.8", 0.8])
def test_grid_values_must_be_a_non_empty_list(experiment, values) -> None:
    with pytest.raises(ConfigError, match=r"ablation.grid.aug.mixup: expected a non-empty list"):
        load_runs(experiment("abl", ablation={"grid": {"aug.mixup": values}}))


def test_bad_key_in_a_variant_names_the_variant(tmp_path: Path, experiment) -> None:
    with pytest.raises(ConfigError) as caught:
        load_runs(experiment("abl", ablation={"variants": {"fast": {"optim.lrr": 1e-3}}}))
    message = str(caught.value)
    assert "abl.yaml (variant fast)" in message and "optim.lrr" in message


STUDIES_MIXUP = {"studies": ["aug.mixup", "optim"], "variants": {"full": {}, "lr": {"optim.lr": 1e-3}}, "grid": {"aug.mixup": [0, 0.8]}}


def test_studies_cover_the_keys_of_the_variants_and_the_grid(experiment) -> None:
    runs = load_runs(experiment("abl", aug={"name": "cifar"}, ablation=STUDIES_MIXUP))
    assert len(runs) == 4 and runs[0].cfg.ablation.studies == ["aug.mixup", "optim"]  # optim covers optim.lr


@pytest.mark.parametrize(
    ("ablation", "message"),
    [
        (
            {**STUDIES_MIXUP, "studies": ["aug.mixup"]},
            r"abl\.yaml: ablation\.variants\.lr sets optim\.lr, which ablation\.studies \[aug\.mixup\] does not list; "
            "add it to ablation.studies or take it out of the variant",
        ),
        ({**STUDIES_MIXUP, "studies": ["optim"]}, r"ablation\.grid sets aug\.mixup, which ablation\.studies \[optim\] does not list"),
        ({**STUDIES_MIXUP, "studies": ["aug.mix", "optim"]}, r"ablation\.grid sets aug\.mixup"),  # a prefix of a name is no parent
        ({**STUDIES_MIXUP, "studies": ["aug.mixup", "optim", "train.ema"]}, r"ablation\.studies lists train\.ema, which no variant or grid key sets"),
    ],
    ids=["variant", "grid", "not-a-parent", "unused"],
)
def test_a_key_outside_the_studies_or_a_study_without_a_key_is_refused(experiment, ablation, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_runs(experiment("abl", aug={"name": "cifar"}, ablation=ablation))


def test_expand_refuses_a_wrong_studies_list_in_one_line(experiment, capsys) -> None:
    from research.cli import main

    path = experiment("abl", ablation={"studies": ["aug.cutmix"], "variants": {"full": {}, "no_mixup": {"aug.mixup": 0.0}}})
    assert main(["expand", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ablation.variants.no_mixup sets aug.mixup" in err[0], err


def test_no_ablation_is_one_run_named_after_the_experiment(experiment) -> None:
    assert variant_overrides({}, "x.yaml") == [("", {})]
    (run,) = load_runs(experiment("single"))
    assert run.name == "single" and run.differing == {} and run.is_baseline


def test_differing_keys_keeps_first_seen_order_and_missing_keys() -> None:
    flats = [{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 0}, {"a": 1, "b": 2, "c": 3, "x.y": 9}]
    assert differing_keys(flats) == ["b", "c", "d", "x.y"]
    assert differing_keys(flats, ignore=("x.",)) == ["b", "c", "d"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "null"), (True, "true"), (False, "false"), (0.0, "0"), (0.8, "0.8"), (1e-4, "0.0001"), (3, "3"),
     ("rand-m9", "rand-m9"), ([1, 0.5], "[1,0.5]")],
)
def test_format_value(value, text: str) -> None:
    assert format_value(value) == text


# --- teacher.from_experiment -------------------------------------------------------------------------


@pytest.fixture
def teacher_experiment(experiment) -> Path:
    return experiment("teacher", job_type="teacher", model={"name": "resnet10_cifar"})


def student_sections(link: str) -> dict:
    return {
        "model": {"name": "deit_nano_distilled_patch4_32"},
        "loss": {"name": "hard"},
        "teacher": {"from_experiment": link},
    }


def test_teacher_from_experiment_links_the_runs(tmp_path: Path, experiment, teacher_experiment: Path) -> None:
    run = load_run(experiment("student", **student_sections("teacher.yaml")))
    assert run.teacher_run is not None
    assert run.teacher_run.name == "teacher" and run.teacher_run.run_dir == tmp_path / "runs" / "teacher"
    assert run.prerequisites() == [run.teacher_run]
    assert run.cfg.teacher["checkpoint"] == str(tmp_path / "runs" / "teacher" / CHECKPOINT)
    assert run.cfg.teacher["name"] == "resnet10_cifar"  # the teacher experiment's model
    assert run.cfg.teacher["from_experiment"] == str(teacher_experiment)


def test_teacher_link_is_relative_to_the_file_that_sets_it(
    tmp_path: Path, yaml_file, experiment, teacher_experiment
) -> None:
    yaml_file("bases/student.yaml", {"_base_": "../student_base.yaml", **student_sections("../teacher.yaml")})
    experiment("student_base")
    run = load_run(yaml_file("exp.yaml", {"_base_": "bases/student.yaml"}))
    assert run.teacher_run is not None and run.teacher_run.run_dir == tmp_path / "runs" / "teacher"


def test_teacher_link_from_the_command_line_is_relative_to_the_experiment(experiment, teacher_experiment) -> None:
    path = experiment("student", model={"name": "deit_nano_distilled_patch4_32"}, loss={"name": "hard"})
    run = load_run(path, ["teacher.from_experiment=teacher.yaml"])
    assert run.teacher_run is not None and run.teacher_run.name == "teacher"


def test_every_variant_shares_the_teacher_run(experiment, teacher_experiment) -> None:
    ablation = {"grid": {"loss.alpha": [0.5, 0.9]}}
    runs = load_runs(experiment("student", **student_sections("teacher.yaml"), ablation=ablation))
    assert len(runs) == 2
    assert runs[0].teacher_run == runs[1].teacher_run
    assert "teacher.checkpoint" not in runs[0].differing


def test_teacher_link_to_a_missing_file(experiment) -> None:
    with pytest.raises(ConfigError, match="teacher.from_experiment: no experiment file .*nope.yaml"):
        load_run(experiment("student", **student_sections("nope.yaml")))


def test_teacher_link_to_itself(experiment) -> None:
    with pytest.raises(ConfigError, match="links back to itself"):
        load_run(experiment("student", **student_sections("student.yaml")))


def test_teacher_link_to_an_ablation(experiment) -> None:
    experiment("teachers", model={"name": "resnet10_cifar"}, ablation={"grid": {"seed": [0, 1]}})
    with pytest.raises(ConfigError, match="has 2 variants; it must make one run"):
        load_run(experiment("student", **student_sections("teachers.yaml")))


def test_teacher_link_and_checkpoint_together(tmp_path: Path, experiment, teacher_experiment) -> None:
    sections = student_sections("teacher.yaml")
    sections["teacher"]["checkpoint"] = str(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="either teacher.checkpoint or teacher.from_experiment"):
        load_run(experiment("student", **sections))


def test_error_in_the_teacher_experiment_names_the_teacher_file(experiment) -> None:
    experiment("teacher", model={"name": "resnet10_cifar"}, optim={"lrr": 1})
    with pytest.raises(ConfigError, match=r"teacher\.yaml: optim\.lrr"):
        load_run(experiment("student", **student_sections("teacher.yaml")))


# --- seeds: N -----------------------------------------------------------------------------------------


def test_seeds_run_every_variant_with_consecutive_seeds_in_seed_dirs(tmp_path: Path, experiment) -> None:
    ablation = {"baseline": "full", "variants": {"full": {}, "no_mixup": {"aug.mixup": 0.0}}}
    runs = load_runs(experiment("abl", seed=5, seeds=3, aug={"name": "cifar"}, ablation=ablation))
    assert names(runs) == [f"abl/{v}/seed{k}" for v in ("full", "no_mixup") for k in (5, 6, 7)]
    assert [run.run_dir for run in runs] == [tmp_path / "runs" / "abl" / v / f"seed{k}" for v in ("full", "no_mixup") for k in (5, 6, 7)]
    assert [run.cfg.seed for run in runs] == [5, 6, 7, 5, 6, 7]
    assert [run.cfg.variant for run in runs] == ["full"] * 3 + ["no_mixup"] * 3  # the variant without its seed
    assert [run.is_baseline for run in runs] == [True] * 3 + [False] * 3
    # the seed pairs the variants; it is no difference between them
    assert all(run.differing == {"aug.mixup": run.cfg.aug["mixup"]} for run in runs)
    assert [run.changes for run in runs[3:]] == [{"aug.mixup": 0.0}] * 3


def test_one_seed_keeps_the_layout(tmp_path: Path, experiment) -> None:
    runs = load_runs(experiment("abl", seeds=1, ablation={"variants": {"a": {}, "b": {"optim.lr": 1e-3}}}))
    assert [run.run_dir for run in runs] == [tmp_path / "runs" / "abl" / "a", tmp_path / "runs" / "abl" / "b"]
    assert {run.seed_dir for run in runs} == {""}


def test_seeds_of_an_experiment_without_variants(tmp_path: Path, experiment) -> None:
    runs = load_runs(experiment("single"), ["seeds=2"])
    assert names(runs) == ["single/seed0", "single/seed1"]
    assert [run.run_dir for run in runs] == [tmp_path / "runs" / "single" / "seed0", tmp_path / "runs" / "single" / "seed1"]
    assert [run.cfg.variant for run in runs] == ["", ""]


def test_only_picks_every_seed_of_a_variant(experiment) -> None:
    path = experiment("abl", ablation={"variants": {"a": {}, "b": {"optim.lr": 1e-3}}})
    assert names(load_runs(path, ["seeds=2"], only=["b"])) == ["abl/b/seed0", "abl/b/seed1"]
    with pytest.raises(ConfigError, match="no variant 'c'; its variants are a, b$"):
        load_runs(path, ["seeds=2"], only=["c"])


def test_seeds_cross_a_grid_and_a_variant_that_sets_its_own_seed(tmp_path: Path, experiment) -> None:
    ablation = {"variants": {"a": {}, "b": {"seed": 10}}, "grid": {"optim.lr": [1e-3, 2e-3]}}
    runs = load_runs(experiment("abl", seeds=2, ablation=ablation))
    assert len(runs) == 2 * 2 * 2
    assert [(run.variant, run.cfg.seed) for run in runs][-2:] == [("b,lr=0.002", 10), ("b,lr=0.002", 11)]


def test_seeds_are_bounded(experiment) -> None:
    with pytest.raises(ConfigError, match=r"seeds"):
        load_runs(experiment("abl"), ["seeds=0"])
    with pytest.raises(ConfigError, match=r"seed"):  # seed + i leaves the range numpy takes
        load_runs(experiment("abl", seed=2**32 - 2), ["seeds=3"])


def test_one_teacher_serves_every_seed(tmp_path: Path, experiment, teacher_experiment) -> None:
    runs = load_runs(experiment("student", **student_sections("teacher.yaml"), seeds=3))
    assert [run.cfg.seed for run in runs] == [0, 1, 2]
    assert {run.teacher_run.run_dir for run in runs if run.teacher_run} == {tmp_path / "runs" / "teacher"}
    assert {run.cfg.teacher["checkpoint"] for run in runs} == {str(tmp_path / "runs" / "teacher" / CHECKPOINT)}


def test_expand_lists_and_counts_the_seeded_runs(experiment, capsys) -> None:
    from research.cli import main

    path = experiment("abl", ablation={"variants": {"a": {}, "b": {"optim.lr": 1e-3}}})
    assert main(["expand", str(path), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "abl/a/seed0 (baseline)" in out and "abl/b/seed1" in out
    assert "\n4 runs\n" in out
    assert main(["expand", str(path), "--seeds", "0"]) == 2
    assert "seeds" in capsys.readouterr().err


def test_train_writes_each_seed_to_its_dir_with_its_seed(tmp_path: Path, experiment) -> None:
    from research.cli import main

    path = experiment("abl", ablation={"variants": {"a": {}, "b": {"optim.lr": 1e-3}}})
    assert main(["train", str(path), "--only", "b", "--seeds", "2"]) == 0
    for seed in (0, 1):
        saved = yaml.safe_load((tmp_path / "runs" / "abl" / "b" / f"seed{seed}" / "config.yaml").read_text())
        assert (saved["seed"], saved["variant"], saved["seeds"]) == (seed, "b", 2)
    assert not (tmp_path / "runs" / "abl" / "a").exists()
    assert not (tmp_path / "runs" / "abl" / "b" / "config.yaml").exists()
