"""Every random generator of a run comes from here, seeded from the run's seed by one rule.

``derive_seed(seed, *parts)`` hashes the parts into a 63-bit seed far from small seeds and from other parts;
without parts a generator takes ``seed`` itself (a run's main stream, and rank 0 of a launch). Draws follow a
seeded generator's device: a run's generator lives on the model's device (cuda on a GPU) while small weight
vectors (replay-buffer priorities, particle weights) are built on the CPU, and torch refuses the mix.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed hashed from ``parts``: far from small seeds and from other parts."""
    digest = hashlib.sha256(" ".join(map(str, ("gfnlm",) + parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_of(seed: int, *parts) -> int:
    """``seed`` itself without parts, else the seed derived from it and the parts."""
    return derive_seed(seed, *parts) if parts else seed


def library_seed(seed: int, *parts) -> int:
    """``seed_of`` folded into 32 bits, for libraries that take no larger seed (numpy, and TRL through it)."""
    return seed_of(seed, *parts) % 2**32


def stream_seed(seed: int, index: int) -> int:
    """Seed of sampling stream (or rank) ``index``; index 0 keeps the run's seed, so one process is unchanged."""
    return seed if index == 0 else derive_seed("stream", seed, index)


def torch_generator(device, seed: int, *parts) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed_of(seed, *parts))


def python_rng(seed: int, *parts) -> random.Random:
    return random.Random(seed_of(seed, *parts))


def numpy_rng(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng(seed_of(seed, *parts))


def seed_globally(seed: int) -> None:
    """torch's global streams, for code that draws from them outside gfnlm's own generators."""
    torch.manual_seed(seed)


@contextmanager
def global_seed(seed: int, *parts):
    """Seed torch's global CPU stream inside the block only (for code that draws from it: peft's adapter
    initialization, transformers' generate), leaving the caller's stream where it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(seed, *parts))
        yield


def generator_device(generator: torch.Generator | None, tensor: torch.Tensor) -> torch.device:
    """Where random numbers for ``tensor`` must be drawn: on the generator's device, if there is one."""
    return tensor.device if generator is None else generator.device


def draw_indices(weights: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n indices drawn with replacement in proportion to ``weights`` (returned on the weights' device)."""
    return torch.multinomial(weights.to(generator_device(generator, weights)), n, replacement=True,
                             generator=generator).to(weights.device)
