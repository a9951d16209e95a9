"""Random draws that follow a seeded generator's device.

A run's generator lives on the model's device (cuda on a GPU) while small weight vectors (replay-buffer
priorities, particle weights) are built on the CPU; torch refuses the mix. Drawing on the generator's device
keeps such runs reproducible. Torch alone, so light modules (the replay buffer) can use it.
"""

from __future__ import annotations

import torch


def generator_device(generator: torch.Generator | None, tensor: torch.Tensor) -> torch.device:
    """Where random numbers for ``tensor`` must be drawn: on the generator's device, if there is one."""
    return tensor.device if generator is None else generator.device


def draw_indices(weights: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n indices drawn with replacement in proportion to ``weights`` (returned on the weights' device)."""
    return torch.multinomial(weights.to(generator_device(generator, weights)), n, replacement=True,
                             generator=generator).to(weights.device)
