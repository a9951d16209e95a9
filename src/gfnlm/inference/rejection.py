"""Rejection sampling from a proposal: the first of up to ``tries`` draws whose reward is not zero.

Exact for a target that is the proposal restricted to a set (e.g. the base LM's sentences that contain a
word, at reward temperature 1); otherwise a baseline. An output whose every try was rejected is the last
draw, so the acceptance shows in the outputs' own constraint rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.inference.sampling import sample_completions


@dataclass
class RejectionOutputs:
    rows: list[list[int]]
    generated_tokens: int  # tokens (with each stop) drawn up to each output's acceptance
    accepted_fraction: float  # outputs that found an accepted draw


def rejection_sample(model, space: ActionSpace, prompt: Sequence[int], outputs: int, tries: int,
                     log_reward: Callable[[list[list[int]]], list[float]], generator: torch.Generator
                     ) -> RejectionOutputs:
    draws = sample_completions(model, space, prompt, outputs * tries, generator=generator, progress=False)
    accepted = [v > -math.inf for v in log_reward(draws)]
    rows, tokens, found = [], 0, 0
    for k in range(outputs):
        group = range(k * tries, (k + 1) * tries)
        first = next((i for i in group if accepted[i]), None)
        last = group[-1] if first is None else first
        rows.append(draws[last])
        tokens += sum(len(draws[i]) + 1 for i in range(group[0], last + 1))
        found += first is not None
    return RejectionOutputs(rows, tokens, found / outputs)
