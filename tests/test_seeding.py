"""research/seeding.py: distinct (seed, purpose, keys) never share a stream, and the streams are torch's own generators."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from research import seeding


def _keys(purpose: str, grid) -> list[int]:
    return [seeding.stream_key(*point[:1], purpose, *point[1:]) for point in grid]


BOX = {"seed": 1000, "epoch": 1000, "rank": 1024, "place": 1_281_167, "step": 2**27}  # place: ImageNet on one rank


def test_keys_are_injective_on_the_whole_box() -> None:
    """Over seeds x epochs (1,000) x ranks (1,024) x places: each field moves the key by its own
    power-of-two stride, and a field's whole range stays below the next field's stride, so no two
    points of the box share a key (checked on the function itself, field by field, in microseconds)."""
    for purpose, names in (("image", ("epoch", "rank", "place")), ("batch", ("epoch", "rank")), ("step", ("rank", "step"))):
        fields = ("seed", *names)
        origin = seeding.stream_key(0, purpose, *[0] * len(names))
        strides = []
        for i, name in enumerate(fields):
            point = [0] * len(fields)
            point[i] = 1
            stride = seeding.stream_key(point[0], purpose, *point[1:]) - origin
            point[i] = BOX[name] - 1
            assert seeding.stream_key(point[0], purpose, *point[1:]) - origin == (BOX[name] - 1) * stride  # linear
            strides.append(stride)
        for inner in range(1, len(fields)):  # the lower fields' full span stays below each field's stride
            assert sum((BOX[name] - 1) * stride for name, stride in zip(fields[inner:], strides[inner:])) < strides[inner - 1]


def test_keys_are_distinct_on_a_grid() -> None:
    """The same, exhaustively, on (seed, epoch) and (epoch, rank) planes with the other axes at both ends."""
    grid = [(s, e, r, p) for s in range(0, 1000, 3) for e in range(0, 1000, 3) for r, p in ((0, 0), (1023, 49_999))]
    grid += [(s, e, r, 0) for s in (0, 999) for e in range(0, 1000, 7) for r in range(1024)]
    grid = sorted(set(grid))
    assert len(set(_keys("image", grid))) == len(grid)


def test_the_old_collisions_are_gone() -> None:
    """seed*100_003 + epoch*7 + rank made (epoch e+1, rank r) the stream of (epoch e, rank r+7)."""
    for epoch in range(5):
        for rank in range(8):
            assert seeding.stream_key(0, "batch", epoch + 1, rank) != seeding.stream_key(0, "batch", epoch, rank + 7)
    assert seeding.stream_key(1, "data", 0) != seeding.stream_key(0, "data", 1)  # seed + epoch (DistributedSampler's)
    assert seeding.stream_key(0, "step", 1, 0) != seeding.stream_key(0, "image", 0, 1, 0)  # purposes apart
    # the key, not its low 32 bits, reaches the generator: torch.manual_seed would keep 32 bits only
    high = [seeding.generator(s, "data", 0) for s in (0, 2**31)]
    assert not torch.equal(*(torch.randperm(100, generator=g) for g in high))


def test_step_and_image_streams_draw_distinct_numbers() -> None:
    """The draws themselves: steps of 1,024 ranks and images of 1,000 epochs start distinct and are not shifted copies."""
    firsts = set()
    for rank in range(0, 1024, 31):
        for step in range(0, 100_000, 997):
            seeding.seed_globals(3, "step", rank, step)
            firsts.add(tuple(torch.randint(0, 2**62, (2,)).tolist()))
    assert len(firsts) == 34 * 101
    draws = [torch.randint(0, 2**62, (64,), generator=seeding.generator(3, "data", epoch)) for epoch in range(1000)]
    stacked = torch.stack(draws)  # (1000, 64): no two epochs share a draw anywhere in their first 64
    assert torch.unique(stacked).numel() == stacked.numel()


def test_seed_globals_sets_torch_numpy_and_random_reproducibly() -> None:
    def draw() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    seeding.seed_globals(5, "image", 2, 3, 4)
    first = draw()
    seeding.seed_globals(5, "image", 2, 3, 5)
    other = draw()
    seeding.seed_globals(5, "image", 2, 3, 4)
    assert draw() == first and all(a != b for a, b in zip(first, other))


def test_fork_restores_the_global_generators() -> None:
    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    with seeding.fork(0, "init"):
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    with seeding.fork(0, "init"):
        assert torch.equal(torch.rand(4), inside)


def test_the_state_layout_is_torchs() -> None:
    """Guard on torch's CPU generator state: the 624 words sit where this module writes them."""
    state = torch.Generator().manual_seed(77).get_state().numpy()
    words = state[seeding._TORCH_MT_OFFSET : seeding._TORCH_MT_OFFSET + 8 * 624].view(np.uint64)
    assert words.tolist() == np.random.RandomState(77).get_state()[1].tolist()  # numpy's MT seeding of 77
    written = seeding.torch_cpu_state(seeding.stream_key(9, "init"))
    assert written.numel() == state.size
    assert (
        written[seeding._TORCH_MT_OFFSET :].numpy().view(np.uint64)[1:5].tolist()
        == seeding.key_words(seeding.stream_key(9, "init")).tolist()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [((2**32, "init"), "seed"), ((0, "nope"), "unknown"), ((0, "data"), "takes keys"), ((0, "data", 2**28), "epoch")],
)
def test_out_of_range_keys_raise(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        seeding.stream_key(*args)
