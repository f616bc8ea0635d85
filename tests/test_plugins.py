"""Plugins, both ways: modules listed under ``plugins:`` in an experiment, and installed distributions
declaring a ``research.plugins`` entry point. Real modules are written to ``tmp_path`` and imported."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from research.config import ConfigError, load_run
from research.plugins import ENTRY_POINT_GROUP, PluginError, import_plugins, load_entry_point_plugins
from research.registry import LOSSES, MODELS

pytestmark = pytest.mark.usefixtures("restore_registries")


def unique(prefix: str) -> str:
    """Module and component names unique to one test: imports are cached per process."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def write_module(root: Path, dotted: str, source: str) -> Path:
    """``root/a/b.py`` for ``a.b``, with ``__init__.py`` in each package folder."""
    *packages, module = dotted.split(".")
    folder = root
    folder.mkdir(parents=True, exist_ok=True)
    for package in packages:
        folder = folder / package
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").touch()
    path = folder / f"{module}.py"
    path.write_text(textwrap.dedent(source))
    return path


def model_plugin_source(model: str) -> str:
    return f"""
        from torch import nn

        from research.registry import MODELS, ModelInfo


        @MODELS.register({model!r}, ModelInfo(distilled=False, default_img_size=32))
        def build(*, num_classes: int, img_size: int = 32, width: int = 8) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, width), nn.Linear(width, num_classes))
    """


# --- plugins: in an experiment file ----------------------------------------------------------------


def test_yaml_plugin_is_imported_before_its_component_is_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment
) -> None:
    package, model = unique("my_pkg"), unique("plugin_net")
    write_module(tmp_path / "code", f"{package}.my_module", model_plugin_source(model))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    path = experiment(plugins=[f"{package}.my_module"], model={"name": model, "width": 4})

    run = load_run(path)

    assert model in MODELS
    assert run.cfg.model == {"name": model, "img_size": 32, "width": 4}  # defaults from the plugin's builder
    assert run.cfg.plugins == [f"{package}.my_module"]
    net = MODELS.build(model, num_classes=10, **{k: v for k, v in run.cfg.model.items() if k != "name"})
    assert net[-1].out_features == 10


def test_yaml_plugin_keys_are_checked_like_built_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment
) -> None:
    package, model = unique("my_pkg"), unique("plugin_net")
    write_module(tmp_path / "code", f"{package}.models", model_plugin_source(model))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    path = experiment(plugins=[f"{package}.models"], model={"name": model, "widht": 4})
    with pytest.raises(ConfigError, match=r"model\.widht.*Did you mean model\.width"):
        load_run(path)


def test_yaml_plugin_listed_in_a_base_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment) -> None:
    package, model = unique("my_pkg"), unique("plugin_net")
    write_module(tmp_path / "code", f"{package}.models", model_plugin_source(model))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    experiment("base", plugins=[f"{package}.models"])
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: base.yaml\nmodel:\n  name: {model}\n")
    assert load_run(child).cfg.model["name"] == model


def test_yaml_plugin_that_is_missing_names_the_module_and_file(experiment) -> None:
    missing = unique("not_installed")
    path = experiment(plugins=[f"{missing}.models"])
    with pytest.raises(ConfigError) as caught:
        load_run(path)
    message = str(caught.value)
    assert f"{missing}.models" in message
    assert "tiny.yaml" in message and "plugin" in message


def test_yaml_plugin_that_raises_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment) -> None:
    module = unique("broken_plugin")
    write_module(tmp_path / "code", module, "raise RuntimeError('plugin is broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    with pytest.raises(ConfigError, match=rf"{module}.*plugin is broken on purpose"):
        load_run(experiment(plugins=[module]))


def test_yaml_plugin_with_a_duplicate_name_names_both_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment
) -> None:
    module = unique("clashing_plugin")
    write_module(tmp_path / "code", module, model_plugin_source("deit_tiny_patch16_224"))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    with pytest.raises(ConfigError) as caught:
        load_run(experiment(plugins=[module]))
    message = str(caught.value)
    assert "research.models.deit.deit_tiny_patch16_224" in message
    assert f"{module}.build" in message


def test_plugins_must_be_a_list(experiment) -> None:
    with pytest.raises(ConfigError, match="plugins"):
        load_run(experiment(plugins="just_a_string"))


def test_importing_a_plugin_twice_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, loss = unique("twice"), unique("loss")
    write_module(
        tmp_path / "code",
        module,
        f"from research.registry import LOSSES\nLOSSES.register({loss!r})(lambda: None)\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    import_plugins([module])
    import_plugins([module])  # a second experiment listing the same plugin: no duplicate registration
    assert loss in LOSSES
    with pytest.raises(PluginError, match="where.yaml"):
        import_plugins([unique("absent")], where="where.yaml")


# --- plugins: entry points of installed distributions ------------------------------------------------


def install_distribution(site: Path, entry_points: dict[str, str]) -> str:
    """A distribution as pip leaves it in site-packages: ``<name>-<version>.dist-info`` with METADATA
    and entry_points.txt. importlib.metadata finds it once ``site`` is on sys.path."""
    name = unique("research_plugin_dist")
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{key} = {value}" for key, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return name


def test_entry_point_plugin_registers_its_components(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, model = unique("ep_models"), unique("ep_net")
    write_module(tmp_path / "site", module, model_plugin_source(model))
    install_distribution(tmp_path / "site", {"nets": module})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert model not in MODELS

    loaded = load_entry_point_plugins()

    assert module in loaded
    assert model in MODELS
    assert MODELS.info(model).distilled is False


def test_entry_point_that_fails_to_import_raises_plugin_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = unique("ep_missing_module")
    install_distribution(tmp_path / "site", {"broken": missing})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(PluginError) as caught:
        load_entry_point_plugins()
    message = str(caught.value)
    assert "'broken'" in message and missing in message
    assert isinstance(caught.value, ImportError)


def test_entry_point_whose_module_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = unique("ep_raises")
    write_module(tmp_path / "site", module, "raise ValueError('bad plugin code')\n")
    install_distribution(tmp_path / "site", {"raises": module})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(PluginError, match="bad plugin code"):
        load_entry_point_plugins()


def test_yaml_plugin_is_found_in_the_launch_folder_without_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment
) -> None:
    """``plugins: [mylab.models]`` with ``./mylab/models.py``, as the README shows, and no PYTHONPATH=."""
    package, model = unique("mylab"), unique("plugin_net")
    write_module(tmp_path / "launch", f"{package}.models", model_plugin_source(model))
    monkeypatch.chdir(tmp_path / "launch")
    monkeypatch.setattr("sys.path", [entry for entry in sys.path if entry not in ("", ".", str(tmp_path / "launch"))])
    path = experiment(plugins=[f"{package}.models"], model={"name": model})

    assert load_run(path).cfg.model["name"] == model
