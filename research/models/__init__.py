"""Student models (DeiT) and CNNs for 32x32 inputs; importing this package registers them in ``MODELS``."""

from research.models import airbench, cnn_cifar, deit  # noqa: F401  (registers the builders)
from research.models.deit import EVAL_HEADS, DeiT, DistilledDeiT
from research.models.finetune import FinetuneLoadResult, load_for_finetune

__all__ = ["EVAL_HEADS", "DeiT", "DistilledDeiT", "FinetuneLoadResult", "load_for_finetune"]
