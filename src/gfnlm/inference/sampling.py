"""Draw many samples in bounded batches (memory stays flat for any N), with a progress bar; a batch
that runs out of memory is retried at half the size."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.sampler import sample_trajectories


def sample_completions(model, space: ActionSpace, prompt: Sequence[int], n: int, batch_size: int = 256,
                       temperature: float = 1.0, generator: torch.Generator | None = None,
                       desc: str = "sample", progress: bool = True, insert_hook=None) -> list[list[int]]:
    """``n`` completions (token ids, terminator removed) of one prompt."""
    out: list[list[int]] = []
    with tqdm(total=n, desc=desc, disable=not progress, dynamic_ncols=True, leave=False) as bar:
        while len(out) < n:
            size = min(batch_size, n - len(out))
            try:
                traj = sample_trajectories(model, space, [tuple(prompt)], ["eval"], torch.zeros(size, dtype=torch.long),
                                           temperature=temperature, generator=generator, insert_hook=insert_hook)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc) or size == 1:
                    raise
                batch_size = max(1, size // 2)
                warnings.warn(f"Out of memory sampling {size} sequences at once; retrying with {batch_size}.")
                continue
            out.extend(traj.row(b) for b in range(traj.batch_size))
            bar.update(size)
    return out


@torch.no_grad()
def sample_per_prompt(model, space: ActionSpace, prompts: Sequence[Sequence[int]], per_prompt: int,
                      temperature: float, generator: torch.Generator, batch_prompts: int = 16,
                      shared_prefix: Sequence[int] = (), progress: bool = False,
                      desc: str = "sample") -> list[list[list[int]]]:
    """``per_prompt`` completions (token lists, terminator removed) of each prompt, ``batch_prompts`` prompts
    at a time; ``shared_prefix`` (e.g. worked examples) is read before every prompt and run once."""
    out: list[list[list[int]]] = []
    for start in tqdm(range(0, len(prompts), batch_prompts), desc=desc, disable=not progress, dynamic_ncols=True,
                      leave=False):
        chunk = [tuple(p) for p in prompts[start: start + batch_prompts]]
        index = torch.arange(len(chunk)).repeat_interleave(per_prompt)
        traj = sample_trajectories(model, space, chunk, [str(start + g) for g in range(len(chunk))], index,
                                   temperature=temperature, generator=generator, shared_prefix=shared_prefix)
        out += [[traj.row(b) for b in range(g * per_prompt, (g + 1) * per_prompt)] for g in range(len(chunk))]
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU allocator raises a RuntimeError that says so."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text
