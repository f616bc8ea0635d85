"""The worked example of adding an augmentation technique from outside the package: 2 files.

One plugin module defines the technique, with its per-image and its batched path, and registers it;
one ablation file lists the module under ``plugins:`` and studies the technique's key. Nothing in
``research/`` changes: the key is then taken (and checked) by every recipe, ``research expand`` lists
the variants, both paths agree, and the variants train. (A technique added to the package instead is
tested by tests/data/test_techniques.py's parametrisation over ``TECHNIQUES``, through its ``example``.)

Files: 2
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from research.cli import main
from research.config import ConfigError, load_runs
from research.data.techniques import TECHNIQUES
from research.registry import AUGMENTATIONS

pytestmark = pytest.mark.usefixtures("restore_registries")

PLUGIN = '''
    """Invert: each image's colours made negative with probability ``invert`` (torchvision's RandomInvert)."""

    from dataclasses import dataclass
    from typing import Annotated

    import torch
    from torchvision import transforms as T

    from research.data.techniques import Technique, register_technique
    from research.registry import Range


    class BatchInvert:
        def __init__(self, probability):
            self.probability = probability

        def draw(self, count, size, generator, device):
            return {"invert": torch.rand(count, generator=generator, device=device) < self.probability}

        def apply(self, images, params):  # (B, 3, H, W) pixel values in [0, 255]
            return torch.where(params["invert"][:, None, None, None], 255 - images, images)


    @register_technique
    @dataclass(frozen=True)
    class Invert(Technique):
        stage = "pixels"
        example = {"invert": 0.5}
        invert: Annotated[float, Range(ge=0, le=1, hint="a probability")] = 0.0

        def tags(self, ctx):
            return ("invert",) if self.invert > 0 else ()

        def image_transforms(self, ctx):
            return [T.RandomInvert(self.invert)] if self.invert > 0 else []

        def batch_ops(self, ctx):
            return [BatchInvert(self.invert)] if self.invert > 0 else []
'''

ABLATION = {
    "baseline": "off",
    "variants": {
        "off": {},
        "invert": {"aug.invert": 0.5},
        "invert_batched": {"aug.invert": 0.5, "loader.batch_augment": True},
    },
}


@pytest.fixture
def ablation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment) -> Path:
    """The two files: ``invert_<id>.py`` and ``ablate_invert.yaml``, in the launch folder. The module name
    is the test's own: another test's folder stays on ``sys.path``, and its module would be found first."""
    module = f"invert_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.chdir(tmp_path)  # plugin modules are found in the launch folder, as `python -m` would
    return experiment("ablate_invert", plugins=[module], ablation=ABLATION)


def test_expand_lists_the_variants_and_every_recipe_takes_the_key(ablation: Path, capsys) -> None:
    assert main(["expand", str(ablation)]) == 0
    out = capsys.readouterr().out
    assert "ablate_invert/off (baseline)" in out and "3 runs" in out
    assert "ablate_invert/invert " in out and "aug.invert=0.5" in out
    assert TECHNIQUES[-1].__name__ == "Invert"
    assert all("invert" in AUGMENTATIONS.signature(name).parameters for name in AUGMENTATIONS.names())
    assert load_runs(ablation)[1].cfg.aug["invert"] == 0.5


def test_the_key_is_checked_like_a_built_in_one(ablation: Path) -> None:
    with pytest.raises(ConfigError, match=r"aug\.invert=1\.5: must be >= 0 and <= 1 \(a probability\)"):
        load_runs(ablation, ["aug.invert=1.5"])
    with pytest.raises(ConfigError, match=r"aug\.invetr.*Did you mean aug\.invert\?"):
        load_runs(ablation, ["aug.invetr=0.5"])


def test_per_image_and_batched_paths_agree(ablation: Path) -> None:
    load_runs(ablation)  # imports the plugin
    on = AUGMENTATIONS.build("none", img_size=32, simple_crop=True, invert=1.0)
    off = AUGMENTATIONS.build("none", img_size=32, simple_crop=True)
    pixels = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = on.batch_transform.sample(8, 32, 32, torch.Generator().manual_seed(1))
    batched = on.batch_transform.apply(pixels, params, torch.Generator().manual_seed(2))
    plain = off.batch_transform.apply(pixels, params)  # the same crops and flips, not inverted
    invert = on.ctx.techniques[-1]  # the plugin's, registered last
    assert type(invert).__name__ == "Invert" and on.techniques() == ["simple_crop", "hflip", "invert"]
    per_image = invert.image_transforms(on.ctx)[0]  # torchvision's RandomInvert(1.0), on a PIL image
    mean, std = torch.tensor(on.ctx.mean)[:, None, None], torch.tensor(on.ctx.std)[:, None, None]
    for image, expected in zip(plain, batched):
        levels = torch.round((image * std + mean) * 255).byte().movedim(0, -1).numpy()  # (H, W, 3) uint8
        torch.testing.assert_close(expected, on.eval_transform(per_image(Image.fromarray(levels))), atol=1e-5, rtol=0)
    assert not torch.allclose(batched, plain)


@pytest.mark.slow
def test_the_variants_train_on_both_paths(ablation: Path, tmp_path: Path) -> None:
    assert main(["train", str(ablation), "--only", "invert", "invert_batched"]) == 0
    for variant in ("invert", "invert_batched"):
        saved = yaml.safe_load((tmp_path / "runs" / "ablate_invert" / variant / "config.yaml").read_text())
        assert saved["aug"]["invert"] == 0.5 and (tmp_path / "runs" / "ablate_invert" / variant / "last.pt").is_file()
