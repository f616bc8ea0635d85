"""``loader.worker_nice``: DataLoader workers run at a lower priority than the training step."""

from __future__ import annotations

import os

import pytest
from torch.utils.data import Dataset

from research.config import ConfigError, load_run
from research.launch.data import _loader
from research.launch.dist import DistEnv


class NicenessOfTheReader(Dataset):
    """Each item is the niceness of the process that reads it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return os.nice(0)


@pytest.mark.parametrize(("workers", "nice"), [(1, 7), (2, 3), (1, 0)])
def test_workers_run_at_the_raised_niceness(experiment, workers: int, nice: int) -> None:
    run = load_run(experiment("tiny", loader={"workers": workers, "worker_nice": nice}))
    own = os.nice(0)
    batches = list(_loader(NicenessOfTheReader(), run.cfg, 2, DistEnv()))
    assert [int(v) for batch in batches for v in batch] == [min(own + nice, 19)] * 4
    assert os.nice(0) == own  # the training process itself keeps its priority


def test_worker_nice_out_of_range_is_refused_at_load_time(experiment) -> None:
    with pytest.raises(ConfigError, match="loader.worker_nice is a niceness increment, 0 \\(off\\) to 19"):
        load_run(experiment("tiny", loader={"worker_nice": 20}))
