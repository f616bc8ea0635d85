"""``research eval``: a checkpoint's validation metrics under a run's data and model config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from research.config import Run
from research.config.components import SECTIONS, build_component
from research.engine.checkpoint import load
from research.engine.evaluate import eval_views, evaluate
from research.launch.dist import init_distributed
from research.launch.run_data import build_data
from research.safe_load import CheckpointError

_SHOWN_KEYS = 3


def evaluate_checkpoint(run: Run, checkpoint: Path) -> dict[str, Any]:
    """Top-1/top-5/loss of the checkpoint's weights (and of its EMA weights when it has them).

    Raises:
        CheckpointError: The file is missing, a directory, unreadable, unsafe, or holds another model.
    """
    saved = load(checkpoint)  # read first: a wrong file fails before the data is built
    env = init_distributed()
    data = build_data(run.cfg, env)
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "epoch": saved.get("epoch")}
    for key in ("model", "ema"):
        weights = saved.get(key) if "model" in saved else (saved if key == "model" else None)
        if weights is None:
            continue
        if key == "ema":  # timm's ModelEmaV3 keeps the copy under `module.`
            weights = {k.removeprefix("module."): v for k, v in weights.items()}
        model = build_component(SECTIONS["model"], run.cfg.model, num_classes=data.num_classes)
        _check_fits(weights, model, checkpoint=checkpoint, saved=saved, experiment_model=run.cfg.model["name"])
        model.load_state_dict(weights, strict=True)
        options = run.cfg.train
        metrics = evaluate(model.to(env.device), data.loop_data.val_loader, env.device, options.precision, **eval_views(options))
        results.update({f"{'val' if key == 'model' else 'val_ema'}/{k}": v for k, v in metrics.items()})
    return results


def _check_fits(
    weights: Mapping[str, Any], model: nn.Module, *, checkpoint: Path, saved: Mapping[str, Any], experiment_model: str
) -> None:
    """Raise one line naming both models and the first keys that differ, if ``weights`` cannot load."""
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k}: {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__} vs {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and (not isinstance(v, Tensor) or v.shape != expected[k].shape)
    ]
    if not problems:
        return
    shown = "; ".join(problems[:_SHOWN_KEYS]) + (f"; ... ({len(problems)} in all)" if len(problems) > _SHOWN_KEYS else "")
    raise CheckpointError(
        f"checkpoint {checkpoint} holds model {_saved_model(saved)!r}, the experiment builds {experiment_model!r}: "
        f"{shown}; evaluate it with the experiment that trained it (its run dir's config.yaml)"
    )


def _saved_model(saved: Mapping[str, Any]) -> str:
    config = saved.get("config")
    model = config.get("model") if isinstance(config, Mapping) else None
    return str(model.get("name", "?")) if isinstance(model, Mapping) else "unknown (no config saved)"
