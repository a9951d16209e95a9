"""Draw many samples in bounded batches (memory stays flat for any N), with a progress bar."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from gfnlm.action_space import ActionSpace
from gfnlm.sampler import sample_trajectories


def sample_completions(model, space: ActionSpace, prompt: Sequence[int], n: int, batch_size: int = 256,
                       temperature: float = 1.0, generator: torch.Generator | None = None,
                       desc: str = "sample", progress: bool = True) -> list[list[int]]:
    """``n`` completions (token ids, terminator removed) of one prompt."""
    out: list[list[int]] = []
    with tqdm(total=n, desc=desc, disable=not progress, dynamic_ncols=True, leave=False) as bar:
        while len(out) < n:
            size = min(batch_size, n - len(out))
            traj = sample_trajectories(model, space, [tuple(prompt)], ["eval"], torch.zeros(size, dtype=torch.long),
                                       temperature=temperature, generator=generator)
            out.extend(traj.row(b) for b in range(traj.batch_size))
            bar.update(size)
    return out
