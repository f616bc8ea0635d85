"""Loading experiment files: ``_base_`` inheritance, typed overrides, resolved sections, and an error
that names the file (or the command line), the key path and the fix for every kind of bad input."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from research.config import ConfigError, ExperimentCfg, load_run, load_runs, slurm_minutes
from research.config.components import SECTIONS
from research.config.sources import COMMAND_LINE, parse_overrides


def error_of(path: Path, overrides: Sequence[str] = ()) -> str:
    """The message of the ConfigError that loading ``path`` raises; it must fit on one line."""
    with pytest.raises(ConfigError) as caught:
        load_runs(path, overrides)
    message = str(caught.value)
    assert "\n" not in message, "the CLI prints errors as one line"
    return message


@pytest.fixture
def teacher_checkpoint(tmp_path: Path) -> Path:
    """A file where a teacher checkpoint is expected (loading only checks it exists)."""
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"")
    return path


# --- resolved runs ---------------------------------------------------------------------------------


def test_a_tiny_experiment_resolves_to_one_run(tmp_path: Path, experiment) -> None:
    run = load_run(experiment("tiny"))
    assert isinstance(run.cfg, ExperimentCfg)
    assert run.name == run.experiment == run.cfg.name == "tiny"  # default name: the file's stem
    assert run.variant == "" and run.is_baseline
    assert run.run_dir == tmp_path / "runs" / "tiny"
    assert Path(run.cfg.output_dir).is_absolute()
    assert run.source == tmp_path / "tiny.yaml"
    assert run.teacher_run is None and run.prerequisites() == []


def test_name_key_sets_the_experiment_name(tmp_path: Path, experiment) -> None:
    run = load_run(experiment("tiny", name="renamed"))
    assert run.name == "renamed" and run.run_dir == tmp_path / "runs" / "renamed"


@pytest.mark.parametrize("key", list(SECTIONS))
def test_resolved_sections_hold_every_builder_default(experiment, teacher_checkpoint: Path, key: str) -> None:
    """What ran is fully written down: a section gets every settable parameter of its builder."""
    teacher = {"name": "resnet10_cifar", "checkpoint": str(teacher_checkpoint)}
    path = experiment("tiny", model={"name": "deit_nano_distilled_patch4_32"}, loss={"name": "hard"}, teacher=teacher)
    run = load_run(path)
    section = getattr(run.cfg, key)
    spec = SECTIONS[key]
    params = inspect.signature(spec.registry.get(section["name"])).parameters
    assert set(section) == {"name", *params} - set(spec.injected)


def test_defaults_are_filled_in_even_when_not_written(experiment) -> None:
    run = load_run(experiment("tiny", aug={"name": "cifar"}))
    assert run.cfg.aug["mixup"] == 0.8 and run.cfg.aug["cutmix"] == 1.0  # the recipe's defaults
    assert run.cfg.model["drop_path_rate"] == pytest.approx(0.1)
    assert run.cfg.optim.weight_decay == 0.05  # fixed sections: the schema's defaults


# --- _base_ inheritance ----------------------------------------------------------------------------


def test_base_chain_deep_merges_child_wins_lists_replace(tmp_path: Path, yaml_file) -> None:
    yaml_file(
        "bases/root.yaml",
        {
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": "deit_nano_patch4_32", "img_size": 32},
            "data": {"name": "synthetic", "size": 32},
            "aug": {"name": "none", "simple_crop": True},
            "logger": {"name": "none"},
            "loader": {"batch_size": 16, "workers": 0},
            "train": {"label_smoothing": 0.2},
        },
    )
    yaml_file(
        "bases/recipe.yaml",
        {
            "_base_": "root.yaml",  # relative to bases/, not to the child or the current directory
            "optim": {"lr": 1e-3, "weight_decay": 0.1},
            "aug": {"mixup": 0.5},
            "slurm": {"setup": ["module load a", "module load b"]},
        },
    )
    child = yaml_file(
        "exp.yaml",
        {"_base_": "bases/recipe.yaml", "optim": {"lr": 2e-3}, "slurm": {"setup": ["module load c"]}},
    )
    cfg = load_run(child).cfg
    assert cfg.name == "exp"
    assert cfg.optim.lr == 2e-3  # the child wins
    assert cfg.optim.weight_decay == 0.1  # ... over the keys it sets only: dicts merge deeply
    assert cfg.train.label_smoothing == 0.2  # two levels up
    assert cfg.aug["name"] == "none" and cfg.aug["mixup"] == 0.5 and cfg.aug["simple_crop"] is True
    assert cfg.slurm.setup == ["module load c"]  # lists replace, never concatenate


def test_list_of_bases_merges_in_order(tmp_path: Path, yaml_file, experiment) -> None:
    experiment("first", optim={"lr": 1e-3}, sched={"min_lr": 1e-6})
    yaml_file("second.yaml", {"optim": {"lr": 3e-3, "weight_decay": 0.2}})
    cfg = load_run(yaml_file("exp.yaml", {"_base_": ["first.yaml", "second.yaml"]})).cfg
    assert cfg.optim.lr == 3e-3  # the later base wins
    assert cfg.sched.min_lr == 1e-6 and cfg.optim.weight_decay == 0.2  # both bases contribute


def test_base_override_swaps_the_base(yaml_file, experiment) -> None:
    experiment("recipe_a", optim={"lr": 1e-3})
    experiment("recipe_b", optim={"lr": 2e-3})
    exp = yaml_file("exp.yaml", {"_base_": "recipe_a.yaml", "train": {"epochs": 3}})
    assert load_run(exp).cfg.optim.lr == 1e-3
    swapped = load_run(exp, ["_base_=recipe_b.yaml"]).cfg
    assert swapped.optim.lr == 2e-3 and swapped.train.epochs == 3


# --- overrides ---------------------------------------------------------------------------------------


def test_overrides_are_typed_from_the_schema_and_the_builders(experiment, teacher_checkpoint: Path) -> None:
    path = experiment(
        "tiny",
        model={"name": "deit_nano_distilled_patch4_32"},
        loss={"name": "hard"},
        teacher={"name": "resnet10_cifar", "checkpoint": str(teacher_checkpoint)},
    )
    assert load_run(path).cfg.teacher["checkpoint"] == str(teacher_checkpoint)
    cfg = load_run(
        path,
        ["optim.lr=1e-3", "aug.mixup=0", "model.name=deit_small_patch16_224", "teacher=null", "loss.name=none"],
    ).cfg
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.aug["mixup"] == 0.0 and isinstance(cfg.aug["mixup"], float)  # the builder annotates float
    assert cfg.model["name"] == "deit_small_patch16_224"
    assert "eval_head" not in cfg.model  # the parameters of the new builder, not the old one's
    assert cfg.teacher is None


def test_overrides_parse_yaml_values(experiment) -> None:
    cfg = load_run(experiment("tiny"), ["train.ema=true", "optim.betas=[0.9,0.95]", "resources.time=90", "seed=7"]).cfg
    assert cfg.train.ema is True
    assert cfg.optim.betas == [0.9, 0.95]
    assert cfg.resources.time == "90"  # a string field: the int becomes a string
    assert cfg.seed == 7


def test_slurm_time_is_not_read_as_a_base_60_number(yaml_file, experiment) -> None:
    """YAML 1.1 reads ``4:00:00`` as 14400; SLURM would read that as 14400 minutes (10 days)."""
    path = yaml_file("exp.yaml", f"_base_: {experiment('tiny').name}\nresources:\n  time: 4:00:00\n")
    assert load_run(path).cfg.resources.time == "4:00:00"
    assert load_run(path, ["resources.time=1:30:00"]).cfg.resources.time == "1:30:00"
    assert load_run(path, ["resources.time=90"]).cfg.resources.time == "90"


def test_the_old_slurm_resource_keys_still_load_as_resources(yaml_file, experiment, caplog) -> None:
    """Files, variants and command lines written before ``resources:`` keep working, with a warning."""
    text = f"_base_: {experiment('tiny').name}\nslurm:\n  time: 4:00:00\n  gpus_per_node: 2\n  partition: gpu\n"
    path = yaml_file("old.yaml", text + "ablation:\n  variants:\n    a: {}\n    b: {slurm.nodes: 3}\n")
    a, b = load_runs(path, ["slurm.mem_gb=4"])
    assert (a.cfg.resources.time, a.cfg.resources.gpus_per_node, a.cfg.resources.mem_gb, a.cfg.slurm.partition) == ("4:00:00", 2, 4, "gpu")
    assert (a.cfg.resources.nodes, b.cfg.resources.nodes) == (1, 3)
    assert "old.yaml: slurm.time is now resources.time" in caplog.text
    assert "command line: slurm.mem_gb is now resources.mem_gb" in caplog.text
    assert load_runs(path, ["~slurm.time"])[0].cfg.resources.time == "24:00:00"  # deleted: the default again
    with pytest.raises(ConfigError, match=r"resources.time='0': SLURM reads a time of 0 as no limit"):
        load_runs(path, ["slurm.time=0"])


def test_a_file_that_sets_a_key_under_both_names_is_refused(yaml_file, experiment) -> None:
    path = yaml_file("both.yaml", f"_base_: {experiment('tiny').name}\nslurm: {{time: '1:00:00'}}\nresources: {{time: '2:00:00'}}\n")
    with pytest.raises(ConfigError, match=r"both.yaml: sets both slurm.time and resources.time: .* keep resources.time only"):
        load_run(path)
    with pytest.raises(ConfigError, match="command line: sets both slurm.nodes and resources.nodes"):
        load_run(experiment("tiny"), ["slurm.nodes=2", "resources.nodes=2"])


def test_floats_without_a_dot_are_floats_in_files_and_overrides(experiment) -> None:
    run = load_run(experiment("tiny", ablation={"grid": {"optim.lr": [1e-3]}}), ["optim.weight_decay=5e-2"])
    assert run.cfg.optim.weight_decay == 0.05
    assert run.cfg.ablation.grid == {"optim.lr": [0.001]}  # an untyped place: still a number, not "1e-3"


def test_parse_overrides_nests_keys_and_extracts_base() -> None:
    tree, base = parse_overrides(["optim.lr=0.1", "model.name=x", "_base_=other.yaml"])
    assert tree == {"optim": {"lr": 0.1}, "model": {"name": "x"}}
    assert base == "other.yaml"


# --- bad input: every error names where the bad key came from -----------------------------------------


def test_malformed_yaml_names_file_line_and_column(yaml_file) -> None:
    path = yaml_file("broken.yaml", "model:\n  name: deit_nano_patch4_32\n  img_size: [32\n")
    assert error_of(path).startswith(f"{path}:")
    assert re.search(r"broken\.yaml:\d+:\d+: malformed YAML", error_of(path))


def test_malformed_yaml_in_a_base_names_the_base(yaml_file) -> None:
    yaml_file("base.yaml", "optim: {lr: 1e-3\n")
    message = error_of(yaml_file("exp.yaml", "_base_: base.yaml\n"))
    assert "base.yaml:" in message and "malformed YAML" in message


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such experiment file"


def test_missing_base_names_the_base(tmp_path: Path, yaml_file) -> None:
    assert str(tmp_path / "gone.yaml") in error_of(yaml_file("exp.yaml", "_base_: gone.yaml\n"))


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    assert "is a directory" in error_of(tmp_path)


def test_file_that_is_not_a_mapping(yaml_file) -> None:
    assert "mapping" in error_of(yaml_file("list.yaml", "- a\n- b\n"))


def test_base_cycle(yaml_file) -> None:
    yaml_file("b.yaml", "_base_: a.yaml\n")
    message = error_of(yaml_file("a.yaml", "_base_: b.yaml\n"))
    assert "_base_ cycle" in message
    assert message.count("a.yaml") >= 2 and "b.yaml" in message


def test_base_that_includes_itself(yaml_file) -> None:
    assert "_base_ cycle" in error_of(yaml_file("self.yaml", "_base_: self.yaml\n"))


def test_base_below_the_top_level(experiment) -> None:
    assert "only allowed at the top" in error_of(experiment("tiny", optim={"_base_": "x.yaml"}))


def test_unknown_key_in_a_fixed_section_from_a_file(experiment) -> None:
    message = error_of(experiment("tiny", optim={"lrr": 1e-3}))
    assert "tiny.yaml" in message and "optim.lrr" in message and "'lr'" in message


def test_unknown_key_in_a_fixed_section_from_a_base_names_the_base(yaml_file, experiment) -> None:
    experiment("base", optim={"lrr": 1e-3})
    message = error_of(yaml_file("child.yaml", {"_base_": "base.yaml", "optim": {"lr": 1e-3}}))
    assert "base.yaml" in message and "child.yaml" not in message and "optim.lrr" in message


def test_unknown_key_in_a_component_section_from_a_base_names_the_base(yaml_file, experiment) -> None:
    experiment("base", aug={"mixupp": 0.1})
    message = error_of(yaml_file("child.yaml", {"_base_": "base.yaml", "aug": {"cutmix": 0.0}}))
    assert "base.yaml" in message and "child.yaml" not in message
    assert "aug.mixupp" in message and "Did you mean aug.mixup?" in message


def test_unknown_top_level_key(experiment) -> None:
    message = error_of(experiment("tiny", modle={"name": "deit_nano_patch4_32"}))
    assert "tiny.yaml" in message and "modle" in message


# (overrides, the parts the message must hold). Every error names the command line as the source.
COMMAND_LINE_ERRORS = {
    "unknown fixed key": (["optim.lrr=1e-3"], ["optim.lrr", "'lr'"]),
    "unknown component key": (["aug.mixupp=0"], ["aug.mixupp", "Did you mean aug.mixup?"]),
    "wrong type": (["optim.lr=abc"], ["optim.lr", "'abc'", "Float"]),
    "wrong type in a component": (["model.img_size=abc"], ["model.img_size", "Integer", "deit_nano_patch4_32"]),
    "not a bool": (["train.ema=maybe"], ["train.ema", "maybe"]),
    "not a choice": (["aug.mixup_mode=nope"], ["aug.mixup_mode 'nope' is not one of batch, pair, elem"]),
    "unknown model": (["model.name=deit_tiny_patch16_22"], ["model.name", "Did you mean 'deit_tiny_patch16_224'"]),
    "unknown loss": (["loss.name=hrad"], ["loss.name", "'hard'"]),
    "injected parameter": (["model.num_classes=10"], ["model.num_classes", "comes from the dataset"]),
    "injected image size": (["aug.img_size=64"], ["aug.img_size", "model.img_size"]),
    "distillation needs a distilled model": (
        ["loss.name=hard"],
        ["loss 'hard'", "distillation token", "deit_nano_distilled_patch4_32", "deit_tiny_distilled_patch16_224"],
    ),
    "distillation needs a teacher": (["loss.name=hard", "model.name=deit_nano_distilled_patch4_32"], ["teacher"]),
    "odd batch with mixup": (["loader.batch_size=63", "aug.mixup=0.8"], ["loader.batch_size", "63", "even"]),
    "slurm time": (["resources.time=1:2:3:4"], ["resources.time", "'1:2:3:4'"]),
    "teacher checkpoint missing": (
        ["model.name=deit_nano_distilled_patch4_32", "loss.name=hard", "teacher.name=resnet10_cifar",
         "teacher.checkpoint=/does/not/exist.pt"],
        ["teacher.checkpoint", "/does/not/exist.pt", "no such file"],
    ),
    "teacher checkpoint required": (
        ["model.name=deit_nano_distilled_patch4_32", "loss.name=hard", "teacher.name=resnet10_cifar"],
        ["teacher.checkpoint is required"],
    ),
    "job type": (["job_type=pretrain"], ["job_type", "'pretrain'"]),
    "precision": (["train.precision=fp8"], ["train.precision", "'fp8'"]),
    "batch size": (["loader.batch_size=0"], ["loader.batch_size", ">= 1"]),
    "experiment name": (["name=a/b"], ["name 'a/b'"]),
    "unknown top-level key": (["nonsense=1"], ["nonsense"]),
}


@pytest.mark.parametrize(("overrides", "parts"), COMMAND_LINE_ERRORS.values(), ids=COMMAND_LINE_ERRORS.keys())
def test_bad_override_names_the_command_line(experiment, overrides: list[str], parts: list[str]) -> None:
    message = error_of(experiment("tiny"), overrides)
    assert message.startswith(f"{COMMAND_LINE}: "), message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# The same mistakes written in the file: the message names the file instead.
FILE_ERRORS = {
    "unknown component key": ({"aug": {"mixupp": 0.0}}, ["aug.mixupp", "aug.mixup"]),
    "wrong type": ({"optim": {"lr": "abc"}}, ["optim.lr", "Float"]),
    "unknown model": ({"model": {"name": "deit_tiny_patch16_22"}}, ["'deit_tiny_patch16_224'"]),
    "injected parameter": ({"model": {"num_classes": 10}}, ["model.num_classes", "comes from the dataset"]),
    "distillation needs a distilled model": ({"loss": {"name": "hard"}}, ["deit_nano_distilled_patch4_32"]),
    "odd batch with mixup": ({"loader": {"batch_size": 63}, "aug": {"mixup": 0.8}}, ["loader.batch_size", "63"]),
    "slurm time": ({"slurm": {"time": "soon"}}, ["resources.time", "'soon'"]),
    "no model": ({"model": None}, ["model.name is missing", "deit_tiny_patch16_224"]),
}


@pytest.mark.parametrize(("sections", "parts"), FILE_ERRORS.values(), ids=FILE_ERRORS.keys())
def test_bad_key_in_a_file_names_the_file(tmp_path: Path, experiment, sections: dict, parts: list[str]) -> None:
    message = error_of(experiment("tiny", **sections))
    assert message.startswith(f"{tmp_path / 'tiny.yaml'}: "), message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_odd_batch_is_fine_without_mixing(experiment) -> None:
    assert load_run(experiment("tiny"), ["loader.batch_size=63"]).cfg.loader.batch_size == 63


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim.lr 1e-3"])
def test_override_without_equals_sign(experiment, item: str) -> None:
    message = error_of(experiment("tiny"), [item])
    assert repr(item) in message and "dotted.key=value" in message


def test_error_from_a_base_file_set_on_the_command_line_names_the_command_line(experiment) -> None:
    """A key the command line sets last is the command line's, even when a file also set it."""
    message = error_of(experiment("tiny", optim={"lr": 1e-3}), ["optim.lr=abc"])
    assert message.startswith(COMMAND_LINE)


def test_load_run_refuses_an_ablation(experiment) -> None:
    path = experiment("tiny", ablation={"grid": {"optim.lr": [1e-3, 2e-3]}})
    with pytest.raises(ConfigError, match="has 2 variants"):
        load_run(path)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("90", 90),
        ("90:30", 91),
        ("1:30:00", 90),
        ("24:00:00", 1440),
        ("2-12", 3600),
        ("2-00:00:00", 2880),
        ("0-0:1", 1),
    ],
)
def test_slurm_minutes(text: str, minutes: int) -> None:
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "x-1", "1-", "1:a"])
def test_slurm_minutes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        slurm_minutes(text)


def test_negative_eval_translate_is_refused_at_load_time(experiment) -> None:
    message = error_of(experiment("tiny", train={"eval_translate": -1}))
    assert "train.eval_translate=-1: must be >= 0 (a number of pixels" in message


@pytest.mark.parametrize(
    ("optim", "message"),
    [
        ({"lookahead_every": -1}, "optim.lookahead_every=-1: must be >= 0 (a number of steps"),
        ({"lookahead_every": 5, "lookahead_max_decay": 1.0}, "optim.lookahead_max_decay=1.0: must be >= 0 and < 1"),
    ],
)
def test_bad_lookahead_is_refused_at_load_time(experiment, optim, message) -> None:
    assert message in error_of(experiment("tiny", optim=optim))


def test_sched_step_on_is_epoch_or_step(experiment) -> None:
    assert load_run(experiment()).cfg.sched.step_on == "epoch"  # the reference's, by default
    with pytest.raises(ConfigError, match=r"sched\.step_on 'batch' is not one of epoch, step"):
        load_run(experiment(sched={"step_on": "batch"}))


@pytest.mark.parametrize(
    ("loss", "key"), [("hard", "tau"), ("hard", "kl_reduction"), ("none", "alpha"), ("none", "tau")]
)
def test_a_loss_key_that_would_do_nothing_is_refused(experiment, loss: str, key: str) -> None:
    """Hard distillation has no temperature and the plain loss no weights: such a key is refused when
    the config loads, not silently ignored (loss.name is switched alone by the distillation ablation)."""
    path = experiment("tiny", model={"name": "deit_nano_distilled_patch4_32"})
    message = error_of(path, [f"loss.name={loss}", f"loss.{key}=1"])
    assert key in message and loss in message
