"""Every random stream of a run, derived from the run's seed, a named purpose and integer keys.

A stream is ``(seed, purpose, *keys)``: ``("init",)`` the student's initial weights, ``("data", epoch)``
the epoch's order, ``("step", rank, step)`` a step's dropout and mixup, ``("image", epoch, rank, place)``
one image's augmentation, ... Distinct keys give distinct streams, by construction:

* :func:`stream_key` packs the tuple into fixed-width fields of one 128-bit integer (seed 32 bits,
  purpose 8, up to three keys of 28 bits each, range-checked), so two tuples never share a key.
  Additive formulas do not have that property: ``seed * 100_003 + epoch * 7 + rank`` made (epoch e + 1,
  rank r) the stream of (epoch e, rank r + 7).
* The key's four 32-bit words are written into words 1-4 of the Mersenne Twister state of torch's
  CPU generator (MT19937 reads only the top bit of word 0): distinct keys give distinct states.
  ``torch.manual_seed`` cannot do this: the CPU generator keeps only the low 32 bits of its seed.
  numpy's legacy generator and ``random`` are seeded with the key's words (MT19937's array seeding).
* CUDA's Philox generators take a 64-bit seed: the key's ``SeedSequence`` gives it (distinct keys
  collide there with odds about 2^-64 per pair).

The streams depend on the seed and their keys only, never on what was built or drawn before them, so
every variant of an ablation starts from the same student weights and sees the same data order.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

#: Each purpose and its keys. A purpose's code is its place here: append, never reorder.
PURPOSES: dict[str, tuple[str, ...]] = {
    "process": ("rank",),  # the global generators at start (anything not on a stream below)
    "init": (),  # the student's initial weights, the same on every rank
    "data": ("epoch",),  # the epoch's data order (the sampler's permutation)
    "subset": ("split",),  # loader.limit_train / limit_val: which images are kept
    "step": ("rank", "step"),  # the global generators at each step: dropout, drop-path, mixup
    "image": ("epoch", "rank", "place"),  # one image's augmentation, by its place in the epoch
    "batch": ("epoch", "rank"),  # the batched augmentation's generator for the epoch
}
SEED_BITS, PURPOSE_BITS, KEY_BITS, MAX_KEYS = 32, 8, 28, 3
_MT_WORDS = 624
_TORCH_MT_OFFSET = 24  # bytes before the 624 state words (uint64 each) in torch's CPU generator state


def stream_key(seed: int, purpose: str, *keys: int) -> int:
    """The stream's 128-bit key: seed, purpose code and keys in fixed-width fields (injective)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed stream {purpose!r}; known: {', '.join(PURPOSES)}")
    names = PURPOSES[purpose]
    if len(keys) != len(names):
        raise ValueError(f"seed stream {purpose!r} takes keys ({', '.join(names)}), got {keys}")
    if not 0 <= seed < 2**SEED_BITS:
        raise ValueError(f"seed {seed} is outside [0, 2**{SEED_BITS})")
    value = seed << PURPOSE_BITS | list(PURPOSES).index(purpose)
    for name, key in zip(names, keys):
        if not 0 <= key < 2**KEY_BITS:
            raise ValueError(f"seed stream {purpose!r}: {name}={key} is outside [0, 2**{KEY_BITS})")
        value = value << KEY_BITS | key
    return value << KEY_BITS * (MAX_KEYS - len(keys))  # (seed, purpose, k1, k2, k3): 124 bits


def key_words(key: int) -> np.ndarray:
    """The key's four 32-bit words, lowest first."""
    return np.array([(key >> 32 * i) & 0xFFFFFFFF for i in range(4)], dtype=np.uint32)


def cuda_seed(key: int) -> int:
    """The stream's 64-bit seed for CUDA's Philox generators."""
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


_FILL = np.random.RandomState(0)  # reseeded for each state it fills
_TEMPLATE = torch.Generator().manual_seed(0).get_state().numpy().copy()  # a freshly seeded CPU state


def torch_cpu_state(key: int) -> torch.Tensor:
    """A torch CPU generator state whose MT words 1-4 are the key, as ``manual_seed`` leaves one.

    The other 620 words are MT19937 outputs after its array seeding (init_by_array) of the key's words,
    so every bit of the key reaches every word (``manual_seed`` uses only the low 32 bits).
    """
    _FILL.seed(key_words(key))
    words = _FILL.randint(0, 2**32, _MT_WORDS, dtype=np.uint64)
    words[1:5] = key_words(key)
    state = _TEMPLATE.copy()
    state[:8] = np.frombuffer(np.uint64(key & (2**64 - 1)).tobytes(), dtype=np.uint8)  # initial_seed()
    state[_TORCH_MT_OFFSET : _TORCH_MT_OFFSET + 8 * _MT_WORDS] = words.view(np.uint8)
    return torch.from_numpy(state)


def generator(seed: int, purpose: str, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh torch generator on the stream ``(seed, purpose, *keys)``."""
    key = stream_key(seed, purpose, *keys)
    device = torch.device(device)
    made = torch.Generator(device)
    if device.type == "cpu":
        made.set_state(torch_cpu_state(key))
    else:
        made.manual_seed(cuda_seed(key))
    return made


def seed_globals(seed: int, purpose: str, *keys: int) -> None:
    """Put torch's (CPU and every CUDA device), numpy's and ``random``'s global generators on the stream."""
    key = stream_key(seed, purpose, *keys)
    torch.set_rng_state(torch_cpu_state(key))
    if torch.cuda.is_available():  # queued until CUDA starts, as torch.manual_seed does
        torch.cuda.manual_seed_all(cuda_seed(key))
    np.random.seed(key_words(key))  # MT19937's array seeding (init_by_array) of the key's words
    random.seed(key)  # the same, of the integer's 32-bit words


@contextlib.contextmanager
def fork(seed: int, purpose: str, *keys: int) -> Iterator[None]:
    """Run the block on the stream, then put every global generator back where it was."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    saved_cuda = torch.cuda.get_rng_state_all() if cuda else None
    try:
        seed_globals(seed, purpose, *keys)
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
