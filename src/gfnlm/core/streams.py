"""Sampling streams: each has its own random streams (which prompts and behaviours, which tokens)
and its own replay buffer.

Process ``rank`` with ``virtual_ranks`` V owns streams rank*V .. rank*V + V-1, seeded from (seed,
stream index) and stream 0 from the seed itself, so two processes never draw the same trajectories,
a single process is unchanged, and one process with V = N draws exactly what N processes draw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from gfnlm.core.buffer import ReplayBuffer
from gfnlm.infra.seeding import derive_seed, python_rng, stream_seed, torch_generator


@dataclass
class Stream:
    index: int
    rng: random.Random  # prompts, behaviour, sampling temperature
    generator: torch.Generator  # tokens and replay draws
    buffer: ReplayBuffer

    @classmethod
    def create(cls, index: int, seed: int, device: torch.device, buffer: ReplayBuffer) -> Stream:
        s = stream_seed(seed, index)
        return cls(index, python_rng(s), torch_generator(device, s), buffer)

    def reseed(self, *parts) -> None:
        """Fresh random streams for a stream whose saved state cannot be restored."""
        s = derive_seed("stream", self.index, *parts)
        self.rng, self.generator = python_rng(s), torch_generator(self.generator.device, s)

    def state(self) -> dict:
        """Everything needed to continue this stream exactly (plain data, to send to rank 0)."""
        version, internal, gauss = self.rng.getstate()
        return {"index": self.index, "python_rng": [version, list(internal), gauss],
                "generator": self.generator.get_state(), "buffer": self.buffer.to_text()}

    def set_python_rng(self, saved: list) -> None:
        version, internal, gauss = saved
        self.rng.setstate((version, tuple(internal), gauss))


# Checkpoint file names of stream g; stream 0 keeps the names of single-process checkpoints.
def buffer_file(index: int) -> str:
    return "buffer.jsonl" if index == 0 else f"buffer-{index}.jsonl"


def generator_key(index: int) -> str:
    return "sampler" if index == 0 else f"sampler-{index}"
