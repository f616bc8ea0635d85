"""``research eval``: a checkpoint's validation metrics under a run's data and model config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from research.config import Run
from research.config.components import SECTIONS, build_component
from research.engine.checkpoint import load
from research.engine.evaluate import evaluate
from research.launch.data import build_data
from research.launch.dist import init_distributed


def evaluate_checkpoint(run: Run, checkpoint: Path) -> dict[str, Any]:
    """Top-1/top-5/loss of the checkpoint's weights (and of its EMA weights when it has them)."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    env = init_distributed()
    data = build_data(run.cfg, env)
    saved = load(checkpoint)
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "epoch": saved.get("epoch")}
    for key in ("model", "ema"):
        weights = saved.get(key) if "model" in saved else (saved if key == "model" else None)
        if weights is None:
            continue
        if key == "ema":  # timm's ModelEmaV3 keeps the copy under `module.`
            weights = {k.removeprefix("module."): v for k, v in weights.items()}
        model = build_component(SECTIONS["model"], run.cfg.model, num_classes=data.num_classes)
        model.load_state_dict(weights, strict=True)
        options = run.cfg.train
        views = {"hflip": options.eval_hflip, "translate": options.eval_translate}
        metrics = evaluate(model.to(env.device), data.loop_data.val_loader, env.device, options.precision, **views)
        results.update({f"{'val' if key == 'model' else 'val_ema'}/{k}": v for k, v in metrics.items()})
    return results
