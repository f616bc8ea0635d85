"""The config syntax a new user meets (issue 17, section 6): deleting an inherited key (``~data.archive``),
replacing a whole section (``data={...}``), ``**kwargs`` builders, and files that are empty or not UTF-8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scripts import load_script

from research.cli import EXIT_BAD_INPUT, main
from research.config import ConfigError, load_run
from research.registry import MODELS

conftest = load_script("tests/conftest.py")  # TINY and write_yaml (a `conftest` import finds the nearest one)
TINY, write_yaml = conftest.TINY, conftest.write_yaml

JPEG = {"name": "cifar10_jpeg", "archive": "data/mine.tar.xz", "in_memory": True}
UNDECLARED = {"train_size": None, "val_size": None, "num_classes": None}  # imagefolder's sizes: counted, not declared


def jpeg_experiment(tmp_path: Path, **sections: Any) -> Path:
    """The tiny experiment on the JPEG archive dataset (no path is read at load time)."""
    return write_yaml(tmp_path / "tiny.yaml", {**TINY, "output_dir": str(tmp_path / "runs"), "data": JPEG, **sections})


def test_tilde_deletes_an_inherited_key(tmp_path: Path, yaml_file) -> None:
    base = jpeg_experiment(tmp_path)
    path = yaml_file("child.yaml", {"_base_": base.name, "name": "child"})
    assert load_run(path).cfg.data["archive"] == "data/mine.tar.xz"
    cfg = load_run(path, ["~data.archive"]).cfg
    assert cfg.data["archive"] == "../shared/data/cifar10-jpeg.tar.xz"  # the builder's default again
    assert cfg.data["in_memory"] is True


def test_tilde_of_a_key_no_file_sets_is_refused_with_a_did_you_mean(experiment) -> None:
    with pytest.raises(ConfigError, match=r"override '~data.siz': the experiment files set no data.siz to delete; did you mean ~data.size\?"):
        load_run(experiment("tiny"), ["~data.siz"])
    with pytest.raises(ConfigError, match="~dotted.key deletes a key and takes no value"):
        load_run(experiment("tiny"), ["~data.size=3"])


def test_tilde_then_new_keys_switch_the_dataset(tmp_path: Path) -> None:
    path = jpeg_experiment(tmp_path)
    cfg = load_run(path, ["~data.archive", "~data.in_memory", "data.name=imagefolder", f"data.root={tmp_path}"]).cfg
    assert cfg.data == {"name": "imagefolder", "root": str(tmp_path), **UNDECLARED}


def test_a_mapping_value_replaces_the_whole_section(tmp_path: Path) -> None:
    path = jpeg_experiment(tmp_path)
    with pytest.raises(ConfigError, match="dataset 'imagefolder' has no parameter 'archive'"):
        load_run(path, ["data.name=imagefolder"])  # merged: the file's archive stays behind
    cfg = load_run(path, [f"data={{name: imagefolder, root: {tmp_path}}}"]).cfg
    assert cfg.data == {"name": "imagefolder", "root": str(tmp_path), **UNDECLARED}
    cfg = load_run(path, ["data.root=/later", "data={name: imagefolder}"]).cfg  # values merge over the replacement
    assert cfg.data == {"name": "imagefolder", "root": "/later", **UNDECLARED}


def test_a_replaced_fixed_section_takes_its_defaults(experiment) -> None:
    path = experiment("tiny", loader={"batch_size": 16, "workers": 0, "limit_train": 8})
    cfg = load_run(path, ["loader={batch_size: 4}"]).cfg
    assert (cfg.loader.batch_size, cfg.loader.workers, cfg.loader.limit_train) == (4, 8, None)


def test_command_line_syntax_errors_are_one_line(capsys, experiment) -> None:
    for bad in ["data={1: 2}", "~", "~seed.x", "seed.x={a: 1}"]:
        assert main(["expand", str(experiment("tiny")), bad]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (bad, err)


def test_a_kwargs_builder_takes_any_key_unchecked(experiment, restore_registries) -> None:
    seen: dict[str, Any] = {}

    @MODELS.register("open_test_model")
    def open_model(*, num_classes: int, img_size: int = 32, **kwargs: Any) -> Any:
        seen.update(kwargs)

    path = experiment("tiny", model={"name": "open_test_model", "width": 8, "act": "gelu"})
    cfg = load_run(path, ["model.depth=[1, 2]"]).cfg
    assert cfg.model == {"name": "open_test_model", "img_size": 32, "width": 8, "act": "gelu", "depth": [1, 2]}
    with pytest.raises(ConfigError, match=r"model\.img_size"):  # the parameters it names are still checked
        load_run(path, ["model.img_size=abc"])
    with pytest.raises(ConfigError, match=r"model\.num_classes cannot be set here"):
        load_run(path, ["model.num_classes=3"])


def test_an_empty_file_is_named(capsys, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert main(["expand", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"research expand: error: {path}: model.name is missing"), err


def test_a_non_utf8_file_is_one_line_naming_the_byte(capsys, tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: café\n".encode("latin-1"))
    assert main(["expand", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == f"research expand: error: {path}: not UTF-8 text: byte 0xe9 at offset 16; save the file as UTF-8\n"


def test_a_control_character_is_one_line(capsys, tmp_path: Path) -> None:
    path = tmp_path / "ctl.yaml"
    path.write_text('description: "\x01"\n')
    assert main(["expand", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "malformed YAML" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=[]", "command line: model: cannot merge a list into the mapping set in"),
        ("optim.betas={a: 1}", "command line: optim.betas: a mapping does not fit its type in the schema"),
        ("slurm.extra=[]", "command line: slurm.extra: a list does not fit its type in the schema"),
        ("aug.scale={a: 1}", "command line: aug.scale: a mapping does not fit its type (augmentation recipe 'none')"),
        ('loss={"a\\nb": 1}', "command line: loss.a\\nb: loss 'none' has no parameter 'a\\nb'"),
        ('ablation.grid={"\\x1e": null}', "command line: ablation.grid.\\x1e: expected a non-empty list"),  # a line end to splitlines
    ],
)
def test_a_value_of_the_wrong_shape_is_one_line(capsys, experiment, override: str, message: str) -> None:
    """Found by tests/test_config_fuzz.py: OmegaConf's TypeError, a line break inside a key."""
    assert main(["expand", str(experiment("tiny")), override]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_variant_overrides_must_be_a_mapping_or_a_list(experiment) -> None:
    with pytest.raises(ConfigError, match=r"ablation\.variants\.a: expected overrides as a mapping"):
        load_run(experiment("tiny", ablation={"variants": {"a": True}}))
    with pytest.raises(ConfigError, match="a variant needs a name"):
        load_run(experiment("tiny", ablation={"variants": {"": {"seed": 1}}}))
