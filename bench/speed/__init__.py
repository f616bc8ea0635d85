"""The pieces of ``bench/throughput.py``, one concern per module.

* :mod:`speed.timing`: interleaved rounds, medians, per-round ratios, device synchronisation;
* :mod:`speed.flops`: FLOPs per image (counted by :mod:`research.models.flops`), the measured matmul
  ceiling, the card's spec peak;
* :mod:`speed.loops`: the engine's ``Loop``, built by ``research.launch.train.train`` itself;
* :mod:`speed.reference`: the reference loop, written the way facebookresearch/deit's ``engine.py`` runs;
* :mod:`speed.steps`: the train-step measurements (engine, reference, attention, compile, teacher);
* :mod:`speed.data`: the per-image augmentation pipeline and DataLoaders;
* :mod:`speed.epoch`: one CIFAR-10 epoch end to end, engine against the reference way;
* :mod:`speed.report`: the machine, the printed tables and the Markdown summary.

The scripts in ``bench/`` import it as ``speed`` (their folder is on ``sys.path`` when they run).
"""
